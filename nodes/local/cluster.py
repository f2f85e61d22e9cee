"""A RabbitMQ cluster of three nodes on this machine, for local development: what ``mlanet
cluster up`` starts and ``mlanet cluster down`` stops and removes (docs/OPERATIONS.md, "A
RabbitMQ cluster on one machine").

Each node is a :class:`~mlanet.nodes.local.brokers.LocalBroker` without TLS files: its own name
(``mlanet-cluster-<random>-<n>@localhost``), its own ports (plaintext AMQP, the management API
over HTTP, Erlang distribution; all on 127.0.0.1), its own data, log and config folder, the
plugins management, shovel and shovel management, mlanet's message size cap and a raised
open-file limit. The three share one ``HOME`` (one Erlang cookie, which only they and their
``rabbitmqctl`` read) and one administrator (``mlanet-admin``, a random password). Under the
root::

    cluster.json          the record: what `status` and `down` find the nodes by
    admin.password        the administrator's password (0600), the same on the three nodes
    home/.erlang.cookie   the nodes' one Erlang cookie (0400)
    node1/ node2/ node3/  each node's config, plugins, data (mnesia/) and log (log/)

:meth:`LocalCluster.start` starts the three at once, joins nodes 2 and 3 to node 1 (``stop_app``,
``join_cluster``, ``start_app``) and waits until ``cluster_status`` shows three running nodes.
Every wait has a deadline and ends in one :class:`LocalBrokerError` line. A new quorum queue
gets a member on each of the three nodes (RabbitMQ's ``quorum_cluster_size`` is 3; mlanet names
no ``x-quorum-initial-group-size``), so it goes on with one node down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from mlanet.nodes.local.brokers import (
    ADMIN_USER,
    BrokerRecord,
    LocalBroker,
    LocalBrokerError,
    LocalBrokerSpec,
    Ports,
    free_ports,
    process_alive,
)

__all__ = [
    "NODES",
    "ClusterStatus",
    "LocalCluster",
    "NodeStatus",
]

NODES = 3
RECORD = "cluster.json"
RECORD_KIND = "mlanet local RabbitMQ cluster"
PASSWORD_FILE = "admin.password"  # noqa: S105 - the file's name, not a password
START_WITHIN = 180.0  # seconds for the three nodes to serve (at once, on 2 cores: ~20)
JOIN_WITHIN = 60.0  # seconds for each rabbitmqctl step of a join
CLUSTER_WITHIN = 60.0  # seconds for cluster_status to show every node running
STOP_WITHIN = 60.0  # seconds for each node to stop before it is killed


@dataclass(frozen=True)
class NodeStatus:
    """One node as ``mlanet cluster status`` shows it."""

    nodename: str
    amqp: str  # host:port
    management_url: str
    running: bool  # its process runs and its AMQP port accepts connections


@dataclass(frozen=True)
class ClusterStatus:
    """Each node, and the cluster's own view: the running nodes as ``asked`` (the first node
    that answered ``cluster_status``) sees them, or None when none answered."""

    nodes: tuple[NodeStatus, ...]
    asked: str | None
    running_nodes: tuple[str, ...] | None

    @property
    def whole(self) -> bool:
        """Every node runs and the cluster sees all of them running."""
        names = {node.nodename for node in self.nodes}
        return (
            all(node.running for node in self.nodes)
            and self.running_nodes is not None
            and set(self.running_nodes) == names
        )


def _record_error(root: Path, why: str) -> LocalBrokerError:
    return LocalBrokerError(f"{root / RECORD} is not a local cluster's record ({why})")


class LocalCluster:
    """``async with LocalCluster.prepare(root) as cluster``: three started, joined nodes,
    stopped and removed at the end. ``LocalCluster.attach(root)`` finds them again from
    another process."""

    def __init__(self, root: Path, nodes: tuple[LocalBroker, ...]) -> None:
        self.root = root
        self.nodes = nodes

    # --- the folder and its record --------------------------------------------------------------
    @classmethod
    def prepare(cls, root: Path) -> LocalCluster:
        """Write the three nodes' folders, the shared cookie and password, and the record;
        nothing is started. LocalBrokerError when ``root`` is not a new or empty folder."""
        if (root / RECORD).exists():
            raise LocalBrokerError(
                f"{root} holds a local cluster already: mlanet cluster status --root {root}, "
                f"or remove it with mlanet cluster down --root {root}"
            )
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise LocalBrokerError(f"{root} is not an empty folder: give a new one")
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o700)
        password = secrets.token_urlsafe(24)
        _write_private(root / PASSWORD_FILE, password + "\n")
        name = f"mlanet-cluster-{secrets.token_hex(3)}"
        ports = free_ports(3 * NODES)  # all at once: no two nodes get the same port
        nodes = []
        for index in range(NODES):
            amqp, management, dist = ports[3 * index : 3 * index + 3]
            spec = LocalBrokerSpec(
                f"{name}-{index + 1}",
                root / f"node{index + 1}",
                None,
                home=root / "home",
                clustered=True,
            )
            nodes.append(
                LocalBroker(
                    spec,
                    nodename=f"{name}-{index + 1}@localhost",
                    ports=Ports(None, management, dist, amqp),
                    admin_password=password,
                )
            )
        cluster = cls(root, tuple(nodes))
        (root / RECORD).write_text(json.dumps(cluster.record(), indent=2) + "\n", "utf-8")
        return cluster

    def record(self) -> dict[str, Any]:
        """The record's JSON form (no secret: the password is a file beside it)."""
        return {
            "kind": RECORD_KIND,
            "version": 1,
            "nodes": [node.record().to_json() for node in self.nodes],
        }

    @classmethod
    def attach(cls, root: Path) -> LocalCluster:
        """The cluster recorded in ``root``, running or not. LocalBrokerError when there is no
        record, or a record that is not one this module wrote for this folder (a node folder
        outside it would be removed by ``stop``)."""
        try:
            raw = json.loads((root / RECORD).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LocalBrokerError(
                f"no local cluster in {root} (no {RECORD}): nothing there was started by "
                "mlanet cluster up"
            ) from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise _record_error(root, type(exc).__name__) from None
        nodes = _records(root, raw)
        return cls(root, tuple(LocalBroker.attach(record) for record in nodes))

    # --- what clients use -------------------------------------------------------------------------
    @property
    def password_file(self) -> Path:
        return self.root / PASSWORD_FILE

    @property
    def admin_user(self) -> str:
        return ADMIN_USER

    def amqp_addresses(self) -> list[str]:
        """``host:port`` of each node's AMQP listener, node 1 first."""
        return [f"127.0.0.1:{node.amqp_port}" for node in self.nodes]

    def management_urls(self) -> list[str]:
        return [node.admin.url for node in self.nodes]

    # --- lifecycle --------------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop(remove=False)  # the logs say why
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, within: float = START_WITHIN) -> None:
        """Start the three nodes at once, join nodes 2 and 3 to node 1, and wait until node 1
        sees all three running. LocalBrokerError names the node and the step that failed."""
        try:
            async with asyncio.TaskGroup() as group:
                for node in self.nodes:
                    group.create_task(node.start(within))
        except BaseExceptionGroup as group_error:
            raise group_error.exceptions[0] from None  # the first to fail names its node
        first = self.nodes[0]
        for node in self.nodes[1:]:
            await self._join(node, first, within)
        await self.wait_whole(CLUSTER_WITHIN)

    async def _join(self, node: LocalBroker, first: LocalBroker, within: float) -> None:
        await node.ctl("stop_app", within=JOIN_WITHIN)
        await node.ctl("join_cluster", first.nodename, within=JOIN_WITHIN)
        await node.ctl("start_app", within=JOIN_WITHIN)
        await node.wait_serving(within)

    async def wait_whole(self, within: float) -> None:
        """Wait until node 1 sees every node running (LocalBrokerError after ``within``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        names = {node.nodename for node in self.nodes}
        seen: tuple[str, ...] = ()
        while True:
            with contextlib.suppress(LocalBrokerError):  # not answering yet: asked again
                seen = await self.running_nodes(self.nodes[0])
                if set(seen) == names:
                    return
            if loop.time() > deadline:
                raise LocalBrokerError(
                    f"the cluster in {self.root} showed {len(set(seen) & names)} of "
                    f"{len(names)} nodes running after {within:.0f} s; see the logs in "
                    f"{self.root}/node<n>/log"
                )
            await asyncio.sleep(0.5)

    async def running_nodes(self, node: LocalBroker, within: float = 30.0) -> tuple[str, ...]:
        """The cluster's running nodes as ``node`` sees them (``rabbitmqctl cluster_status``);
        LocalBrokerError when it does not answer within ``within`` seconds."""
        text = await node.ctl("cluster_status", "--formatter", "json", within=within)
        try:
            found = json.loads(text).get("running_nodes")
        except (ValueError, AttributeError):
            raise LocalBrokerError(
                f"rabbitmqctl cluster_status on {node.nodename} answered no JSON object"
            ) from None
        if not isinstance(found, list):
            raise LocalBrokerError(f"rabbitmqctl cluster_status on {node.nodename}: no nodes")
        return tuple(str(name) for name in found)

    async def status(self) -> ClusterStatus:
        """Each node (process and AMQP port) and the cluster's view from the first running node
        that answers ``cluster_status``."""
        nodes = []
        for node in self.nodes:
            pid = node.pid
            running = pid is not None and process_alive(pid) and await _open(node.amqp_port)
            nodes.append(
                NodeStatus(node.nodename, f"127.0.0.1:{node.amqp_port}", node.admin.url, running)
            )
        for node, seen in zip(self.nodes, nodes, strict=True):
            if not seen.running:
                continue
            with contextlib.suppress(LocalBrokerError):
                return ClusterStatus(tuple(nodes), node.nodename, await self.running_nodes(node))
        return ClusterStatus(tuple(nodes), None, None)

    async def stop(self, within: float = STOP_WITHIN, *, remove: bool = True) -> None:
        """Stop the three nodes at once (each killed when it does not stop within ``within``)
        and remove the root (unless ``remove`` is False: after a failed start its logs say
        why). Idempotent. LocalBrokerError when a node does not exit (the root is kept)."""
        results = await asyncio.gather(
            *(node.stop(within, remove=False) for node in self.nodes), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)


def _records(root: Path, raw: object) -> list[BrokerRecord]:
    """The nodes' records, each checked to be this folder's node ``n`` (KeyError and the like
    become one LocalBrokerError line)."""
    if not isinstance(raw, Mapping) or raw.get("kind") != RECORD_KIND:
        raise _record_error(root, "not written by mlanet cluster up")
    items = raw.get("nodes")
    if not isinstance(items, list) or len(items) != NODES:
        raise _record_error(root, f"it does not list {NODES} nodes")
    found = []
    for index, item in enumerate(items):
        try:
            record = BrokerRecord.from_json(item)
        except (KeyError, TypeError, ValueError):
            raise _record_error(root, f"node {index + 1} is not readable") from None
        expected = (root / f"node{index + 1}", root / "home", None)
        named = re.fullmatch(
            rf"mlanet-cluster-[0-9a-f]{{6}}-{index + 1}@localhost", record.nodename
        )
        if (record.spec.root, record.spec.home, record.spec.tls) != expected or not named:
            raise _record_error(root, f"node {index + 1} is not one of this folder's nodes")
        found.append(record)
    return found


def _write_private(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(text)


async def _open(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True
