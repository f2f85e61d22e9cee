"""What the node owns on its broker, kept in place: its links' shovels, its peers' doors and
its queues' policies.

Only the node's own broker user (and the broker's administrator) can change anything in the
node's vhost or its doors: a peer's link user may only write its one inbox exchange, in its own
door vhost ``<vhost>:door:<peer>`` (see "Security model" in docs/OPERATIONS.md). Still, a
shovel, a door's exchange, queue or binding, or a policy deleted or altered under the node would
lose or divert case messages without a word, so the node checks every few seconds
(``nodes/runtime/node.py`` calls :meth:`Reconciler.reconcile`), with one listing of each kind over
every vhost its user may see (its own and its doors), whatever the number of peers:

- each link's shovel (``mlanet-link-<peer>``, into the peer's door for us) exists with exactly
  the definition the node declares, else it is put back (``broker_repaired``); a
  ``mlanet-link-*`` shovel of a network that is no longer a peer is removed, and so is that
  network's inbox exchange in its door here, so that its link user can no longer publish to
  this node (``link_removed``); the node's own vhost holds no inbox exchange at all;
- each peer's door holds its inbox exchange, bound to its inbox queue; a door the operator has
  not made yet (``mlanet directory provision``) is logged as ``door_missing``;
- each policy the node owns (``mlanet.nodes.runtime.fairness.node_policies``) exists as the
  node set it;
- anything else that acts on the node's queues (a policy or operator policy the node did not set,
  a shovel it did not declare, in its vhost or a door) is a finding: logged once as
  ``broker_foreign`` and shown as a critical alert by ``mlanet status`` and the dashboard
  (:func:`foreign`), never silently kept.

The node's own queues, exchanges and bindings are declared again by the node in the same pass
(:meth:`mlanet.broker.transport.Transport.declare`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from mlanet.broker.management import Management, ManagementEndpoint, QueueFigures, ShovelSpec
from mlanet.broker.topology import (
    LINK_PREFIX,
    door_sender,
    link_name,
    peer_of_inbox_exchange,
    peer_of_link,
    peer_of_peer_inbox,
)
from mlanet.broker.transport import door_vhost, inbox_exchange, out_queue, peer_inbox
from mlanet.nodes.config import NodeConfig
from mlanet.nodes.runtime.fairness import node_policies
from mlanet.nodes.runtime.link_plan import LinkPlan, local_uri, plan_link, tls_uris
from mlanet.schemas.directory import Directory

__all__ = [
    "LINK_PREFIX",
    "Reconciler",
    "doors",
    "expected_shovels",
    "foreign",
    "link_name",
    "link_plans",
]

log = structlog.get_logger("mlanet.reconcile")

MOVE_PREFIX = "mlanet-move-"  # moves what an older version's inbox queue held into the door


def link_plans(config: NodeConfig, directory: Directory, at: datetime) -> dict[str, LinkPlan]:
    """How each peer's link goes at ``at`` (``nodes/runtime/link_plan.py``), by peer."""
    return {
        peer.network: plan_link(config, peer, directory.network(peer.network), at)
        for peer in config.peers
    }


def expected_shovels(
    config: NodeConfig, directory: Directory, at: datetime | None = None
) -> dict[str, ShovelSpec]:
    """One on-confirm shovel per peer whose link is not refused: ``mlanet.out.<peer>`` here
    (a direct connection inside our broker) -> ``mlanet.inbox.from.<us>`` in our door at the
    peer (``<its vhost>:door:<us>``), over AMQPS with our link certificate, or in plaintext with
    our link user's password where allowed."""
    shovels = {}
    for peer, plan in link_plans(config, directory, at or datetime.now(UTC)).items():
        entry = directory.network(peer)
        if plan.refused or entry is None:
            continue
        door = door_vhost(entry.broker.vhost, config.network)
        if plan.transport == "amqps":
            dest: str | tuple[str, ...] = tls_uris(config, plan, door)
        else:
            peer_config = config.peer(peer)
            assert peer_config is not None
            dest = config.peer_amqp_url(
                peer_config, entry.broker.model_copy(update={"vhost": door})
            )
        shovels[link_name(peer)] = ShovelSpec(
            name=link_name(peer),
            vhost=config.broker.vhost,
            src_uri=local_uri(config.broker.vhost),
            src_queue=out_queue(peer),
            dest_uri=dest,
            dest_exchange=inbox_exchange(config.network),
        )
    return shovels


def doors(config: NodeConfig) -> dict[str, str]:
    """Each peer's door vhost on this node's broker, by peer."""
    return {peer.network: door_vhost(config.broker.vhost, peer.network) for peer in config.peers}


@dataclass(frozen=True)
class Repair:
    what: str  # shovel, policy, exchange, queue, binding
    name: str  # in a door: <door vhost>/<name>
    change: str  # missing, changed, removed


def foreign(
    config: NodeConfig, queues: Iterable[QueueFigures], shovels: Iterable[tuple[str, str]]
) -> list[str]:
    """What acts on the node's vhost or its doors that the node did not put there, one line
    each (no definitions: a shovel's holds credentials). ``queues`` and ``shovels`` (vhost,
    name) as the node's user sees them: its own vhost and its doors."""
    vhost = config.broker.vhost
    own = {(policy.vhost, policy.name) for policy in node_policies(config)}

    def where(name: str, at: str | None) -> str:
        return name if at in (None, vhost) else f"{name} in {at}"

    found = []
    for figures in sorted(queues, key=lambda q: (q.vhost or "", q.name)):
        at = figures.vhost or vhost
        if figures.policy is not None and (at, figures.policy) not in own:
            found.append(
                f"policy {figures.policy} on {where(figures.name, at)} was not set by the node"
            )
        if figures.operator_policy is not None:
            found.append(f"operator policy {figures.operator_policy} on {where(figures.name, at)}")
    for at, shovel in sorted(shovels):
        if at != vhost or not shovel.startswith((LINK_PREFIX, MOVE_PREFIX)):
            found.append(f"shovel {where(shovel, at)} was not declared by the node")
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
        self._missing: tuple[str, ...] = ()  # peers whose door vhost is not there (logged)
        self._first = True  # what the first pass puts is declared, not repaired
        self._plans: dict[str, LinkPlan] = {}  # each peer's link at the last pass
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
        visible = set(await management.vhost_names())
        shovels = await management.shovels_everywhere()
        current = {name: value for (at, name), value in shovels.items() if at == vhost}
        now = datetime.now(UTC)
        self._say_plans(link_plans(config, directory, now))
        wanted = expected_shovels(config, directory, now)
        for name, spec in wanted.items():
            value = spec.definition()["value"]
            if current.get(name) != value:
                await management.put_shovel(spec)
                repairs.append(Repair("shovel", name, "changed" if name in current else "missing"))
        for name in current:
            if name.startswith(LINK_PREFIX) and name not in wanted:
                await management.delete_shovel(vhost, name)
                repairs.append(Repair("shovel", name, "removed"))
                log.info("link_removed", peer=peer_of_link(name) or "(not a network id)")
        queues = await management.queue_figures(None)
        repairs += await self._doors(management, config, visible, queues)
        repairs += await self._move_in(management, config, visible, queues, set(current))
        policies = {
            (str(p.get("vhost")), str(p.get("name"))): p for p in await management.policies(None)
        }
        for policy in node_policies(config):
            if policy.vhost not in visible:
                continue  # a door not made yet: door_missing
            found = policies.get((policy.vhost, policy.name))
            if found is None or not _same_policy(
                found, policy.pattern, policy.definition, policy.priority
            ):
                await management.put_policy(
                    policy.vhost,
                    policy.name,
                    pattern=policy.pattern,
                    definition=policy.definition,
                    priority=policy.priority,
                )
                repairs.append(
                    Repair("policy", policy.name, "missing" if found is None else "changed")
                )
        first, self._first = self._first, False
        for repair in repairs:
            if repair.change != "removed" and not first:
                log.warning(
                    "broker_repaired", what=repair.what, name=repair.name, change=repair.change
                )
        self._report(foreign(config, queues, shovels))
        return repairs

    async def _doors(
        self,
        management: Management,
        config: NodeConfig,
        visible: set[str],
        figures: list[QueueFigures],
    ) -> list[Repair]:
        """Each peer's door holds its inbox exchange bound to its inbox queue; a former peer's
        door (until the operator removes it) and the node's own vhost hold no inbox exchange."""
        vhost = config.broker.vhost
        open_doors = {peer: door for peer, door in doors(config).items() if door in visible}
        missing = tuple(sorted(set(doors(config)) - set(open_doors)))
        if missing != self._missing:
            self._missing = missing
            for peer in missing:
                log.warning(
                    "door_missing",
                    peer=peer,
                    detail="run mlanet directory provision to make its door vhost",
                )
        repairs = []
        exchanges = await management.exchanges_everywhere()
        for at, exchange in sorted(exchanges):
            if peer_of_inbox_exchange(exchange) is None:
                continue
            sender = door_sender(vhost, at)
            if at == vhost or (sender is not None and sender not in open_doors):
                # a former peer's link user keeps its door until the operator runs mlanet
                # directory provision; without the exchange it cannot publish anything
                await management.delete_exchange(at, exchange)
                repairs.append(Repair("exchange", f"{at}/{exchange}", "removed"))
        queues = {(q.vhost, q.name) for q in figures}
        bindings = await management.bindings_everywhere()
        for peer, door in sorted(open_doors.items()):
            exchange, queue = inbox_exchange(peer), peer_inbox(peer)
            if (door, exchange) not in exchanges:
                await management.put_exchange(door, exchange)
                repairs.append(Repair("exchange", f"{door}/{exchange}", "missing"))
            if (door, queue) not in queues:
                await management.put_queue(door, queue, {"x-queue-type": "quorum"})
                repairs.append(Repair("queue", f"{door}/{queue}", "missing"))
            if (door, exchange, queue) not in bindings:
                await management.bind(door, exchange, queue)
                repairs.append(Repair("binding", f"{door}/{exchange}", "missing"))
        return repairs

    async def _move_in(
        self,
        management: Management,
        config: NodeConfig,
        visible: set[str],
        figures: list[QueueFigures],
        moving: set[str],
    ) -> list[Repair]:
        """Versions before doors kept each peer's inbox queue in the node's vhost. What such a
        queue still holds moves into the peer's door, through its inbox exchange there (so the
        node sees the same sender), by a shovel of the node's (``mlanet-move-<peer>``). Once
        the queue is empty the shovel goes (what it had not acknowledged goes back to the queue,
        and is moved again), and once the broker's figures show the queue empty with no
        consumer, the queue goes (RabbitMQ deletes no quorum queue ``if-empty``)."""
        vhost = config.broker.vhost
        open_doors = {peer: door for peer, door in doors(config).items() if door in visible}
        repairs = []
        for figures_of in figures:
            sender = peer_of_peer_inbox(figures_of.name)
            if figures_of.vhost != vhost or sender is None or sender not in open_doors:
                continue
            move = f"{MOVE_PREFIX}{sender}"
            if figures_of.messages == 0 and move in moving:
                await management.delete_shovel(vhost, move)
            elif figures_of.messages == 0 and figures_of.consumers == 0:
                await management.delete_queue(vhost, figures_of.name)
                repairs.append(Repair("queue", figures_of.name, "removed"))
                log.info("inbox_moved_to_door", peer=sender)
            elif figures_of.messages and move not in moving:
                await management.put_shovel(
                    ShovelSpec(
                        name=move,
                        vhost=vhost,
                        src_uri=local_uri(vhost),
                        src_queue=figures_of.name,
                        dest_uri=local_uri(open_doors[sender]),
                        dest_exchange=inbox_exchange(sender),
                    )
                )
                log.info("inbox_moving_to_door", peer=sender, messages=figures_of.messages)
        return repairs

    @property
    def plans(self) -> dict[str, LinkPlan]:
        """How each peer's link went at the last pass (the operator surface shows it)."""
        return dict(self._plans)

    def _say_plans(self, plans: dict[str, LinkPlan]) -> None:
        """Log a refused or plaintext link at the node's first pass (every start) and whenever
        a link's plan changes (a rotation, a CA that expired or was revoked)."""
        for peer, plan in sorted(plans.items()):
            before = self._plans.get(peer)
            if before is not None and before.describe() == plan.describe():
                continue
            if plan.refusal is not None:
                log.error("link_refused", peer=peer, reason=plan.refusal.value, detail=plan.detail)
            elif plan.transport == "plaintext":
                log.warning("link_plaintext", peer=peer, detail=plan.describe())
            elif before is not None:
                log.info("link_tls", peer=peer, detail=plan.describe())
        self._plans = plans

    def _report(self, findings: list[str]) -> None:
        if tuple(findings) != self._reported:
            self._reported = tuple(findings)
            for finding in findings:
                log.warning("broker_foreign", detail=finding)
