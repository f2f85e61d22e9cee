"""One network of a local federation on a RabbitMQ cluster of its own, the others on the
federation's shared broker: links in plaintext, as in shared-broker mode
(``nodes/local/federation.py``, ``build(clusters=...)``).

A :class:`ClusterSite` says where that network's broker is and how ``build``, ``provision`` and
``teardown`` reach it:

- its node config's ``[broker]`` names the cluster's first node (``host``, ``port``,
  ``management_url``) and the others (``cluster``, ``cluster_management_urls``), so that the
  node and each of its replicas fail over to another node when theirs goes
  (``broker/transport.py``, ``broker/management.py``);
- its directory entry lists ONE node, ``listed``: a plaintext link's shovel URI names one host
  and port (the directory's ``broker`` entry has one address; only a TLS entry lists several
  endpoints), so every peer's link into the network goes to that node and waits, its messages
  kept in the peer's out queue, while that node is down. The cluster's other nodes may go down
  without the peers noticing. By default the last node is listed, the first one is where the
  node connects first: a fault test that kills the first node kills the node's connections and
  leaves its peers' links alone (``tests/battery/test_cluster_battery.py``);
- its vhost, node user, contact points' users and doors are provisioned on the cluster with
  the cluster's administrator (``admin_user``, the password in ``admin_password_file``), both
  recorded in ``federation.json``, so that ``teardown`` (``mlanet federation down``) finds them
  from the record alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlanet.broker.management import ManagementEndpoint
from mlanet.nodes.local.cluster import LocalCluster

__all__ = ["ClusterSite"]


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


@dataclass(frozen=True)
class ClusterSite:
    """``network``'s broker: the cluster whose nodes' AMQP addresses (``host:port``) and
    management URLs are listed in the same order, the node its config names first first."""

    network: str
    nodes: tuple[str, ...]
    management_urls: tuple[str, ...]
    listed: int  # which of ``nodes`` the directory lists: where peers' links go
    admin_user: str
    admin_password_file: Path

    def __post_init__(self) -> None:
        if len(self.nodes) < 2 or len(self.management_urls) != len(self.nodes):
            raise ValueError("a cluster site names at least two nodes, each with its API")
        if not 0 <= self.listed < len(self.nodes):
            raise ValueError(f"listed must be one of the {len(self.nodes)} nodes' indexes")

    @classmethod
    def of(cls, network: str, cluster: LocalCluster, *, listed: int = -1) -> ClusterSite:
        """``network`` on the local ``cluster`` (``nodes/local/cluster.py``); the directory
        lists node ``listed`` (default: the last)."""
        nodes = tuple(cluster.amqp_addresses())
        return cls(
            network,
            nodes,
            tuple(cluster.management_urls()),
            listed % len(nodes),
            cluster.admin_user,
            cluster.password_file,
        )

    @property
    def first(self) -> tuple[str, int]:
        """The node the network's node connects to first."""
        return _split(self.nodes[0])

    @property
    def listed_address(self) -> tuple[str, int]:
        """The node the directory lists (peers' links go there)."""
        return _split(self.nodes[self.listed])

    def broker_lines(self) -> str:
        """The ``[broker]`` lines that name the cluster's other nodes."""
        others = ", ".join(f'"{node}"' for node in self.nodes[1:])
        apis = ", ".join(f'"{url}"' for url in self.management_urls[1:])
        return f"cluster = [{others}]\ncluster_management_urls = [{apis}]\n"

    def admin(self) -> ManagementEndpoint:
        """The cluster's management API as its administrator (the other nodes' APIs tried in
        turn when the first does not answer)."""
        password = self.admin_password_file.read_text(encoding="ascii").strip()
        return ManagementEndpoint(
            self.management_urls[0],
            self.admin_user,
            password,
            fallback_urls=self.management_urls[1:],
        )

    def to_json(self) -> dict[str, Any]:
        """The record's JSON form (no secret: the password stays in its file)."""
        return {
            "network": self.network,
            "nodes": list(self.nodes),
            "management_urls": list(self.management_urls),
            "listed": self.listed,
            "admin_user": self.admin_user,
            "admin_password_file": str(self.admin_password_file),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ClusterSite:
        """What ``to_json`` wrote (KeyError, TypeError or ValueError when it is not)."""
        return cls(
            str(raw["network"]),
            tuple(str(node) for node in raw["nodes"]),
            tuple(str(url) for url in raw["management_urls"]),
            int(raw["listed"]),
            str(raw["admin_user"]),
            Path(str(raw["admin_password_file"])),
        )
