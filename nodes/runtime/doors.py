"""The node's side of its peers' doors: one consumer per peer, in that peer's door vhost.

A peer's link lands in a vhost of its own on this node's broker, ``<vhost>:door:<peer>``
(``mlanet.broker.topology.door_vhost``), made by the operator (``mlanet directory provision``) and
holding only the peer's inbox exchange and queue; the peer's link user may write that one
exchange there and has no right in the node's own vhost, so it can learn nothing about the
node's other queues (a passive ``queue.declare`` needs no permission). The node's user consumes
each door's queue over a connection of its own (a channel cannot leave its vhost), at the peer's
own rate (``nodes/runtime/fairness.py``). The door's exchange, queue, binding and policy are
repaired every few seconds (``nodes/runtime/reconcile.py``).

A door's queue has no broker-side delivery limit: there is no quarantine in a door to
dead-letter into, and a limit without one would drop the message. The node counts instead:
a redelivery that the broker already handed out ``delivery_limit`` times unfinished
(``x-delivery-count``) is quarantined as ``delivery_limit`` before it is handled again
(:func:`over_limit`).
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from mlanet.broker.errors import TransportError
from mlanet.broker.topology import peer_of_inbox_exchange
from mlanet.broker.transport import (
    Handler,
    Incoming,
    Transport,
    door_vhost,
    peer_inbox,
)
from mlanet.nodes.config import NodeConfig
from mlanet.nodes.runtime.fairness import TokenBucket, paced

__all__ = ["DoorPublisher", "Doors", "over_limit"]

log = structlog.get_logger("mlanet.doors")


def over_limit(incoming: Incoming, limit: int) -> bool:
    """Did the broker already hand this delivery out ``limit`` times without an ack?

    Only a redelivery's ``x-delivery-count`` is the broker's: a quorum queue writes its count
    over the header once it hands a message out again, but on the first delivery the header is
    whatever the publisher set (a peer's link shovel copies the count of the peer's own out
    queue, where nacked messages went round; a hostile peer may write any number)."""
    return incoming.redelivered and incoming.delivery_count >= limit


class Doors:
    """Consumers of the peers' inbox queues, one connection per door vhost (opened, drained and
    closed with the node's :class:`Transport`)."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._consumed: set[str] = set()
        self._closed: dict[str, str] = {}  # peer -> why its door could not be opened (logged)

    @property
    def consumed(self) -> frozenset[str]:
        return frozenset(self._consumed)

    def reset(self) -> None:
        """The transport was closed: every door is opened again at the next :meth:`open`."""
        self._consumed.clear()

    async def open(self, config: NodeConfig, handler: Handler) -> None:
        """Consume each peer's inbox queue in its door at the peer's rate; a peer already
        consumed is left as it is. A door that cannot be opened (not made yet: the operator
        runs ``mlanet directory provision``) is logged once as ``door_closed`` and tried again
        at the next call; the other peers are consumed meanwhile."""
        for peer in config.peers:
            if peer.network in self._consumed:
                continue
            limits = config.peer_limits(peer.network)
            try:
                door = await self._transport.door(door_vhost(config.broker.vhost, peer.network))
                for queue in await door.declare_inbox(peer.network):
                    log.warning("queue_declared_otherwise", queue=queue, peer=peer.network)
                await door.consume(
                    peer_inbox(peer.network),
                    paced(TokenBucket(limits.rate, limits.burst), handler),
                    prefetch=limits.prefetch or config.limits.prefetch,
                )
            except TransportError as exc:
                if self._closed.get(peer.network) != str(exc):
                    self._closed[peer.network] = str(exc)
                    log.warning("door_closed", peer=peer.network, error=str(exc))
                continue
            if self._closed.pop(peer.network, None) is not None:
                log.info("door_opened", peer=peer.network)
            self._consumed.add(peer.network)


class DoorPublisher:
    """Publishes as the node's :class:`Transport` does, except through a peer's inbox exchange,
    which is in that peer's door (a quarantined message released the way it came in)."""

    def __init__(self, transport: Transport, vhost: str) -> None:
        self._transport = transport
        self._vhost = vhost

    async def publish(
        self,
        queue: str,
        body: bytes,
        *,
        message_id: str,
        kind: str,
        headers: Mapping[str, str] | None = None,
        exchange: str | None = None,
    ) -> None:
        target = self._transport
        # the wire grammar reads the sender back: a name that is not a network id opens no door
        sender = peer_of_inbox_exchange(exchange) if exchange is not None else None
        if sender is not None:
            target = await self._transport.door(door_vhost(self._vhost, sender))
        await target.publish(
            queue, body, message_id=message_id, kind=kind, headers=headers, exchange=exchange
        )
