"""A noisy peer must not starve the others: each peer has its own bounded inbox and its own rate.

Each peer's inbox exchange feeds that peer's own quorum queue ``mlanet.inbox.<peer>``, both in
that peer's door vhost (``mlanet.broker.topology.door_vhost``). Two limits from the node's config
(``mlanet.nodes.config.PeerLimits``) keep one peer's flood to that peer's share:

- **Bound**: a policy per peer queue, in the peer's door vhost (``max-length``,
  ``max-length-bytes``, ``overflow: reject-publish``). When the queue is full the broker
  refuses the peer's publishes with a nack, never dropping what it already holds
  (``drop-head`` would drop the oldest, possibly valid, messages). The peer's link, a shovel
  in on-confirm mode, answers a nack by returning the message to the peer's own
  ``mlanet.out.<us>`` queue and trying again: the backlog waits on the sender's side, as it
  does when the link is down, and nothing is lost.
- **Rate**: the node consumes each peer queue (over a connection to its door) with a prefetch of its
  own, and takes tokens from that peer's :class:`TokenBucket` before handling each delivery
  (valid, invalid or oversized alike): one per started :data:`BYTES_PER_TOKEN` of the body, as
  the cost of refusing a message grows with its size (``bench/bench_hostile.py``: a 220 KB
  body costs ~50 times a 1 KB valid message). A flooding peer gets its rate; the other peers'
  queues are consumed independently, so their messages never wait behind the flood.

The contact points' delivery queues ``mlanet.deliver.<contact point>`` are bounded too (one
policy for all of them, :func:`deliver_policy`; ``limits.deliver_queue_messages`` and
``deliver_queue_bytes``), so that a contact point that stops reading cannot fill the broker:
once its queue is full the broker nacks the node's delivery, the node hands the message back
to its inbox, and after ``delivery_limit`` tries the inbox dead-letters it into the quarantine
as ``delivery_limit``, from where an operator releases it once the contact point has read its
queue. Nothing already delivered is dropped; ``mlanet status`` raises ``delivery_queue`` first.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mlanet.broker.management import Management
from mlanet.broker.transport import Handler, Incoming, deliver_queue, door_vhost, peer_inbox
from mlanet.nodes.config import NodeConfig, PeerLimits

__all__ = [
    "BYTES_PER_TOKEN",
    "INBOX_POLICY_PRIORITY",
    "OwnPolicy",
    "TokenBucket",
    "bound_inboxes",
    "deliver_policy",
    "inbox_policy",
    "node_policies",
    "paced",
]

# Above a policy an operator might put on every queue (priority 0); see docs/OPERATIONS.md.
INBOX_POLICY_PRIORITY = 50
# A delivery costs one token per started 8 KiB of body (a usual message: one token).
BYTES_PER_TOKEN = 8192


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; :meth:`take` waits for them.

    Waiters are served in turn (one lock), so a burst of deliveries wakes one task per take,
    not every waiting task; while nobody waits, a take that finds its tokens there takes them
    without the lock. A take of more than ``burst`` tokens takes ``burst``.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._at = clock()
        self._lock = asyncio.Lock()
        self._queued = 0  # takes waiting for the lock or holding it

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    async def take(self, tokens: int = 1) -> None:
        wanted = min(float(tokens), self.burst)
        if not self._queued:  # nobody waits: no lock to take when the tokens are there
            self._refill()
            if self._tokens >= wanted:
                self._tokens -= wanted
                return
        self._queued += 1
        try:
            async with self._lock:
                self._refill()
                if self._tokens < wanted:
                    await self._sleep((wanted - self._tokens) / self.rate)
                    self._refill()
                self._tokens -= wanted
        finally:
            self._queued -= 1


def paced(bucket: TokenBucket, handler: Handler) -> Handler:
    """``handler``, taking tokens from ``bucket`` before each delivery (one per started
    :data:`BYTES_PER_TOKEN` of its body)."""

    async def handle(incoming: Incoming) -> None:
        await bucket.take(1 + max(len(incoming.body) - 1, 0) // BYTES_PER_TOKEN)
        await handler(incoming)

    return handle


def inbox_policy(peer: str, limits: PeerLimits) -> tuple[str, str, dict[str, object]]:
    """(name, pattern, definition) of the policy that bounds ``peer``'s inbox queue."""
    return (
        f"mlanet-inbox-{peer}",
        f"^{re.escape(peer_inbox(peer))}$",
        {
            "max-length": limits.queue_messages,
            "max-length-bytes": limits.queue_bytes,
            "overflow": "reject-publish",
        },
    )


def deliver_policy(config: NodeConfig) -> tuple[str, str, dict[str, object]]:
    """(name, pattern, definition) of the policy that bounds every contact point's delivery
    queue (``mlanet.deliver.<contact point>``)."""
    return (
        "mlanet-deliver",
        f"^{re.escape(deliver_queue(''))}",
        {
            "max-length": config.limits.deliver_queue_messages,
            "max-length-bytes": config.limits.deliver_queue_bytes,
            "overflow": "reject-publish",
        },
    )


@dataclass(frozen=True)
class OwnPolicy:
    """A policy that the node puts on its own vhost or one of its doors and keeps in place
    (nodes/runtime/reconcile.py repairs it when it was changed or removed under the node)."""

    vhost: str
    name: str
    pattern: str
    definition: dict[str, object]
    priority: int


def node_policies(config: NodeConfig) -> list[OwnPolicy]:
    """Every policy the node owns on its vhost and its peers' doors: the single list that the
    node puts, checks and repairs. A policy on the node's queues that is not in this list was
    set by someone else."""
    vhost = config.broker.vhost
    policies = []
    for peer in config.peers:
        name, pattern, definition = inbox_policy(peer.network, config.peer_limits(peer.network))
        door = door_vhost(vhost, peer.network)
        policies.append(OwnPolicy(door, name, pattern, definition, INBOX_POLICY_PRIORITY))
    name, pattern, definition = deliver_policy(config)
    policies.append(OwnPolicy(vhost, name, pattern, definition, INBOX_POLICY_PRIORITY))
    return policies


async def bound_inboxes(management: Management, config: NodeConfig) -> None:
    """Put (or update) every policy the node owns (idempotent)."""
    for policy in node_policies(config):
        await management.put_policy(
            policy.vhost,
            policy.name,
            pattern=policy.pattern,
            definition=policy.definition,
            priority=policy.priority,
        )
