"""What the node owns on its broker, kept in place: its links' shovels and its queues' policies.

Only the node's own broker user (and the broker's administrator) can change anything in the
node's vhost: no peer holds a right there beyond writing its one inbox exchange (see "Security
model" in docs/OPERATIONS.md). Still, a shovel or a policy deleted or altered under the node
would lose or divert case messages without a word, so the node checks every few seconds
(``nodes/links.py`` calls :meth:`Reconciler.reconcile`):

- each link's shovel (``mlanet-link-<peer>``) exists with exactly the definition the node
  declares, else it is put back (``broker_repaired``); a ``mlanet-link-*`` shovel of a network
  that is no longer a peer is removed, and so is that network's inbox exchange here, so that
  its link user can no longer publish to this node (``link_removed``);
- each policy the node owns (``nodes.fairness.node_policies``) exists as the node set it;
- anything else that acts on the node's queues (a policy or operator policy the node did not set,
  a shovel it did not declare) is a finding: logged once as ``broker_foreign`` and shown as a
  critical alert by ``mlanet status`` and the dashboard (:func:`foreign`), never silently kept.

Queues, exchanges and bindings are declared again by the node in the same pass
(:meth:`broker.transport.Transport.declare`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from broker.management import Management, ManagementEndpoint, QueueFigures, ShovelSpec
from broker.topology import LINK_PREFIX, link_name, peer_of_inbox_exchange, peer_of_link
from broker.transport import inbox_exchange, out_queue
from nodes.config import NodeConfig
from nodes.fairness import node_policies
from schemas.directory import Directory

__all__ = ["LINK_PREFIX", "Reconciler", "expected_shovels", "foreign", "link_name"]

log = structlog.get_logger("mlanet.reconcile")


def expected_shovels(config: NodeConfig, directory: Directory) -> dict[str, ShovelSpec]:
    """One on-confirm shovel per peer the directory lists a broker for: ``mlanet.out.<peer>``
    here -> ``mlanet.inbox.from.<us>`` at the peer, logged in as our link user there."""
    shovels = {}
    for peer in config.peers:
        entry = directory.network(peer.network)
        if entry is None:
            continue
        shovels[link_name(peer.network)] = ShovelSpec(
            name=link_name(peer.network),
            vhost=config.broker.vhost,
            src_uri=config.amqp_url(),
            src_queue=out_queue(peer.network),
            dest_uri=config.peer_amqp_url(peer, entry.broker),
            dest_exchange=inbox_exchange(config.network),
        )
    return shovels


@dataclass(frozen=True)
class Repair:
    what: str  # shovel, policy, exchange
    name: str
    change: str  # missing, changed, removed


def foreign(
    config: NodeConfig, queues: Mapping[str, QueueFigures], shovels: Iterable[str]
) -> list[str]:
    """What acts on the node's vhost that the node did not put there, one line each (no
    definitions: a shovel's holds credentials)."""
    own = {policy.name for policy in node_policies(config)}
    found = []
    for name, figures in sorted(queues.items()):
        if figures.policy is not None and figures.policy not in own:
            found.append(f"policy {figures.policy} on {name} was not set by the node")
        if figures.operator_policy is not None:
            found.append(f"operator policy {figures.operator_policy} on {name}")
    for shovel in sorted(shovels):
        if not shovel.startswith(LINK_PREFIX):
            found.append(f"shovel {shovel} was not declared by the node")
    return found


def _same_policy(current: Mapping[str, Any], pattern: str, definition: Any, priority: int) -> bool:
    return (
        current.get("pattern") == pattern
        and current.get("definition") == definition
        and current.get("priority") == priority
        and current.get("apply-to") == "queues"
    )


class Reconciler:
    """Puts and repairs the node's shovels and policies through the management API, as the
    node's own broker user."""

    def __init__(self, endpoint: ManagementEndpoint) -> None:
        self._endpoint = endpoint
        self._reported: tuple[str, ...] = ()
        self._first = True  # what the first pass puts is declared, not repaired
        # one client for every pass (its connection kept alive between them), made at the first
        # pass and closed by aclose(): the node reconciles every few seconds
        self._management: Management | None = None

    async def aclose(self) -> None:
        """Close the API client (idempotent; a later pass makes a new one)."""
        management, self._management = self._management, None
        if management is not None:
            await management.aclose()

    async def reconcile(self, config: NodeConfig, directory: Directory) -> list[Repair]:
        """One pass; returns what had to be put back or removed (empty when all was in place)."""
        vhost = config.broker.vhost
        repairs: list[Repair] = []
        if self._management is None:
            self._management = Management(self._endpoint, timeout=5.0)
        management = self._management
        current = await management.shovel_definitions(vhost)
        wanted = expected_shovels(config, directory)
        for name, spec in wanted.items():
            value = spec.definition()["value"]
            if current.get(name) != value:
                await management.put_shovel(spec)
                repairs.append(Repair("shovel", name, "changed" if name in current else "missing"))
        peers = {peer.network for peer in config.peers}
        for name in current:
            if name.startswith(LINK_PREFIX) and name not in wanted:
                await management.delete_shovel(vhost, name)
                repairs.append(Repair("shovel", name, "removed"))
                log.info("link_removed", peer=peer_of_link(name) or "(not a network id)")
        for exchange in await management.exchange_names(vhost):
            sender = peer_of_inbox_exchange(exchange)
            if sender is not None and sender not in peers:
                # its link user keeps a write permission until the operator runs mlanet
                # directory provision; without the exchange it cannot publish anything
                await management.delete_exchange(vhost, exchange)
                repairs.append(Repair("exchange", exchange, "removed"))
        policies = {str(p.get("name")): p for p in await management.policies(vhost)}
        for policy in node_policies(config):
            found = policies.get(policy.name)
            if found is None or not _same_policy(
                found, policy.pattern, policy.definition, policy.priority
            ):
                await management.put_policy(
                    vhost,
                    policy.name,
                    pattern=policy.pattern,
                    definition=policy.definition,
                    priority=policy.priority,
                )
                repairs.append(
                    Repair("policy", policy.name, "missing" if found is None else "changed")
                )
        queues = {q.name: q for q in await management.queue_figures(vhost)}
        first, self._first = self._first, False
        for repair in repairs:
            if repair.change != "removed" and not first:
                log.warning(
                    "broker_repaired", what=repair.what, name=repair.name, change=repair.change
                )
        self._report(foreign(config, queues, current))
        return repairs

    def _report(self, findings: list[str]) -> None:
        if tuple(findings) != self._reported:
            self._reported = tuple(findings)
            for finding in findings:
                log.warning("broker_foreign", detail=finding)
