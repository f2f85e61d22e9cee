"""The node's links and topology on its broker, kept matching the directory's current view.

- :meth:`Links.ensure_links`: one on-confirm shovel per peer and the node's policies
  (``nodes/runtime/reconcile.py``), and a consumer of each peer's inbox queue;
- :meth:`Links.keep`: every TOPOLOGY_EVERY seconds, and at once after a publish failed, the
  queues, exchanges and bindings are declared again and the shovels and policies put back;
- :meth:`Links.follow`: after the directory keeper swapped its view, the topology of new peers
  and contact points, the links of peers that came or went, and what the operator must do about
  a peer's write access here (a node never holds the broker administrator's password).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from mlanet.broker import TransportError
from mlanet.broker.transport import Handler, Topology, Transport
from mlanet.nodes.runtime.doors import Doors
from mlanet.nodes.runtime.reconcile import Reconciler
from mlanet.nodes.runtime.seams import DirectoryView, ViewSource
from mlanet.schemas.directory import BrokerAddress

__all__ = ["TOPOLOGY_EVERY", "Links"]

log = structlog.get_logger("mlanet.node")
directory_log = structlog.get_logger("mlanet.directory")

TOPOLOGY_EVERY = 3.0  # seconds between two checks of the node's queues, bindings, links, policies


@dataclass(frozen=True)
class _LinkState:
    """What the links are in one view: peers and their link users and brokers."""

    peers: frozenset[str]
    users: dict[str, str]
    brokers: dict[str, BrokerAddress]

    @classmethod
    def of(cls, view: DirectoryView) -> _LinkState:
        peers = frozenset(peer.network for peer in view.config.peers)
        users, brokers = {}, {}
        for peer in peers:
            entry = view.directory.network(peer)
            if entry is not None:
                brokers[peer] = entry.broker
                if entry.link_user is not None:
                    users[peer] = entry.link_user.name
        return cls(peers, users, brokers)


class Links:
    """Topology, shovels and peer consumers of one node."""

    def __init__(
        self,
        views: ViewSource,
        *,
        transport: Transport,
        reconciler: Reconciler,
        on_inbox: Handler,
        ready: asyncio.Event,
    ) -> None:
        self._views = views
        self._transport = transport
        self._reconciler = reconciler
        self._on_inbox = on_inbox  # what each peer's inbox queue is consumed with
        self._ready = ready  # the node consumes: a new peer's inbox is consumed at once
        self._doubt = asyncio.Event()  # a publish failed: is a queue missing?
        self._doors = Doors(transport)  # each peer's inbox, in its door vhost

    def topology(self) -> Topology:
        view = self._views.view
        return Topology(
            peers=tuple(peer.network for peer in view.config.peers),
            contact_points=view.contact_points,
            delivery_limit=view.config.limits.delivery_limit,
        )

    def doubt(self) -> None:
        """A publish failed: check the topology now rather than at the next round."""
        self._doubt.set()

    async def keep(self, stop: asyncio.Event) -> None:
        """Until ``stop``, every TOPOLOGY_EVERY seconds, and at once after a publish failed,
        declare the topology again and put back the shovels and policies the node owns
        (nodes/runtime/reconcile.py): a queue, exchange, binding, shovel or policy deleted or
        changed under the node comes back within seconds (what a deleted queue held is resent by its
        origin, which got no receipt) before the delivery limit turns the messages that could
        not be published into quarantine."""
        while not stop.is_set():
            doubt = asyncio.ensure_future(self._doubt.wait())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait(
                (doubt, stopped), timeout=TOPOLOGY_EVERY, return_when=asyncio.FIRST_COMPLETED
            )
            doubt.cancel()
            stopped.cancel()
            self._doubt.clear()
            if stop.is_set():
                return
            try:
                for queue in await self._transport.declare(self.topology()):
                    log.warning("queue_declared_otherwise", queue=queue)
                view = self._views.view
                await self._reconciler.reconcile(view.config, view.directory)
                await self.consume_peers()  # a door the operator made meanwhile
            except TransportError as exc:
                log.warning("topology_check_failed", error=str(exc))

    async def ensure_links(self) -> None:
        """Put one on-confirm shovel per peer (out.<peer> here -> inbox.from.<us> there) and
        the policies that bound each peer's inbox queue here; consume a new peer's inbox."""
        view = self._views.view
        await self._reconciler.reconcile(view.config, view.directory)
        if self._ready.is_set():
            await self.consume_peers()

    async def consume_peers(self) -> None:
        """Consume each peer's own inbox queue, in its door vhost, at that peer's rate
        (nodes/runtime/doors.py); a peer already consumed is left as it is."""
        await self._doors.open(self._views.view.config, self._on_inbox)

    def forget_consumers(self) -> None:
        """The connection is gone, and every consumer with it."""
        self._doors.reset()

    async def follow(self, before: DirectoryView | None) -> None:
        """Make the broker match the current view (idempotent; the keeper retries it):
        ``before`` is the view it replaced (None at start: nothing to compare with)."""
        view = self._views.view
        now = _LinkState.of(view)
        await self._transport.declare(
            Topology(
                peers=tuple(sorted(now.peers)),
                contact_points=view.contact_points,
                delivery_limit=view.config.limits.delivery_limit,
            )
        )
        prior = _LinkState.of(before) if before is not None else None
        if prior is not None and (prior.peers != now.peers or prior.brokers != now.brokers):
            await self.ensure_links()  # also removes the links of former peers
        _peer_access(prior, now)


def _peer_access(before: _LinkState | None, now: _LinkState) -> None:
    """A node never holds the broker administrator's password: a new peer's link user gets its
    write permission here when the operator runs ``mlanet directory provision``. A former peer
    cannot publish any more once its inbox exchange is gone (nodes/runtime/reconcile.py); its
    permission entry goes at the same command."""
    if before is None:
        return
    for peer in sorted(now.peers - before.peers):
        directory_log.warning(
            "peer_access_needs_operator",
            peer=peer,
            user=now.users.get(peer),
            detail="run mlanet directory provision to let its link write its inbox here",
        )
    for peer in sorted(before.peers - now.peers):
        directory_log.warning(
            "peer_access_needs_operator",
            peer=peer,
            user=before.users.get(peer),
            detail="no longer linked: run mlanet directory provision to remove its access",
        )
