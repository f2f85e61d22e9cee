"""What the running node knows about its links that the broker does not say.

RabbitMQ reports a shovel's state and the depth of ``mlanet.out.<peer>``, but not when the link
last moved a message nor how long the oldest waiting message has waited. The node knows when
it put each message into the queue (the observer's ``forwarded`` point) and sees the queue's
acknowledgement counter grow when the shovel hands messages over (acked on the peer broker's
confirm). :class:`LinkTracker` joins the two:

- **last success**: the last poll at which the queue's acknowledgement counter had grown (or,
  at the broker's first figures for the queue, had acknowledged some of what this node sent);
- **oldest waiting**: the queue is first in, first out, so with ``n`` messages waiting the
  oldest is the ``n``-th newest this node put in. Messages put in before the node started are
  not in its memory: the age is then a lower bound (the node's uptime), marked as such;
- **state**: ``up``; ``down`` when the shovel is not running; ``stalled`` when it runs but
  messages wait and nothing was handed over for :data:`STALL_SECONDS` (a peer broker that
  refuses, a missing exchange at the peer). ``down_since`` is when it stopped being up;
- **unanswered since**: a peer's broker accepts whatever the link hands over, whether or not
  the peer's node consumes it, so a link stays ``up`` while the node behind it is stopped. The
  answer to an own message (one that gets a receipt) is its receipt: ``unanswered_since`` is
  when the link handed over the oldest own message that has no receipt and no newer message
  handed over the same link has one either (a receipt for a later message shows the peer's node
  consumes; the earlier one is then ``receipts_overdue``'s concern). Anything else the peer's
  node sends us (a notice about a message it refused, a message of its own) answers too. A
  receipt comes from the destination, so a network behind the peer that does not consume looks
  the same: the alert (``peer_silent``) names both. Kept in memory: after a restart, from the
  next own message on.

Figures from the management API lag by its statistics interval (5 s by default), so the ages
are accurate to a few seconds.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mlanet.nodes.config import NodeConfig, PeerConfig
from mlanet.nodes.runtime.link_plan import diagnose, plan_link
from mlanet.nodes.runtime.observe import Flow, Observer
from mlanet.schemas.directory import Directory

__all__ = ["DIAGNOSE_EVERY", "STALL_SECONDS", "LinkDiagnosis", "LinkTracker", "LinkView"]

STALL_SECONDS = 30.0
DIAGNOSE_EVERY = 30.0  # seconds between two TLS handshakes of a diagnosis for a link that is down


@dataclass(frozen=True)
class LinkView:
    """One peer link as operators see it."""

    peer: str
    state: str  # up, down, stalled, unknown
    shovel: str | None  # running, starting, terminated, missing; None: not known
    reason: str | None  # why the shovel is not running, when the broker says
    backlog: int | None  # messages waiting in mlanet.out.<peer>
    last_success: float | None  # epoch seconds
    oldest_waiting: float | None  # seconds
    oldest_at_least: bool  # oldest_waiting is a lower bound (messages from before start)
    down_since: float | None  # epoch seconds
    unanswered_since: float | None = None  # own messages handed over, no receipt since (epoch s)
    unanswered: int = 0  # how many own messages handed over the link wait for their receipt
    # how it goes (nodes/runtime/link_plan.py): amqps, plaintext (development only), refused
    # (``reason`` says why); None: not known
    transport: str | None = None


@dataclass(slots=True)
class _Own:
    """An own message put into the link's queue, awaiting its receipt."""

    put_in: float
    handed_over: float | None = None  # the poll that saw it leave the queue


@dataclass
class _Link:
    sent: deque[float] = field(default_factory=deque)
    sent_total: int = 0  # messages this node put in since it started
    acked: int | None = None
    last_success: float | None = None
    down_since: float | None = None
    waiting_since: float | None = None  # backlog without progress since
    own: OrderedDict[str, _Own] = field(default_factory=OrderedDict)  # by message id, in order


class LinkTracker(Observer):
    """Per-peer memory of sends and hand-overs; fed by the observer seam and by polls.

    ``network`` is this node's network and ``answered`` the kinds that get a receipt: an own
    message of those kinds is followed until its receipt comes (``unanswered_since``)."""

    def __init__(
        self,
        peers: tuple[str, ...],
        *,
        started: float,
        network: str = "",
        answered: Collection[str] = (),
        keep: int = 100_000,
    ) -> None:
        self.started = started
        self._network = network
        self._answered = frozenset(answered)
        self._keep = keep
        self._links = {peer: _Link() for peer in peers}

    def forwarded(self, peer: str, flow: Flow) -> None:
        link = self._links.get(peer)
        if link is None:
            return
        now = time.time()
        link.sent.append(now)
        link.sent_total += 1
        if len(link.sent) > self._keep:
            link.sent.popleft()
        if flow.origin == self._network and flow.kind in self._answered:
            link.own.setdefault(flow.message_id, _Own(now))  # a resend keeps the first
            if len(link.own) > self._keep:
                link.own.popitem(last=False)

    def receipt(self, for_id: str, by: str, waited: float) -> None:
        """The peer's node (or one behind it) consumed: this message and every own message
        handed over the same link before it are answered for this purpose."""
        for link in self._links.values():
            if for_id in link.own:
                while link.own:
                    message_id, _ = link.own.popitem(last=False)
                    if message_id == for_id:
                        break

    def received(self, sender: str, flow: Flow) -> None:
        """Anything the peer's node sent that passed our checks (a receipt, a notice about a
        message it refused, a message of its own) shows it runs: what it was handed before is
        answered for this purpose."""
        link = self._links.get(sender)
        if link is None:
            return
        for message_id in [m for m, own in link.own.items() if own.handed_over is not None]:
            del link.own[message_id]

    def undeliverable(self, for_id: str) -> None:
        for link in self._links.values():
            link.own.pop(for_id, None)

    def _unanswered(self, link: _Link, backlog: int | None, now: float) -> float | None:
        """Mark the own messages that left the queue as handed over (at this poll); when the
        oldest of them was."""
        if backlog is not None:
            # the queue is first in, first out, and ``sent`` holds the put-in times of the
            # messages waiting in it: what was put in before the oldest of them has left
            if backlog == 0:
                waiting_from = math.inf
            elif backlog <= len(link.sent):
                waiting_from = link.sent[0]
            else:  # messages this node does not know of wait before them: all still wait
                waiting_from = -math.inf
            for own in link.own.values():
                if own.handed_over is None and own.put_in < waiting_from:
                    own.handed_over = now
        handed = [own.handed_over for own in link.own.values() if own.handed_over is not None]
        return min(handed) if handed else None

    def update(
        self,
        peer: str,
        *,
        shovel: str | None,
        reason: str | None,
        backlog: int | None,
        acked: int | None,
        now: float,
        transport: str | None = None,
    ) -> LinkView:
        """Take one poll's figures for ``peer`` and return the link as it stands."""
        link = self._links.setdefault(peer, _Link())
        progressed = False
        if acked is not None:
            if link.acked is not None and acked >= link.acked:
                progressed = acked > link.acked
            else:  # the broker's first figures (or the queue was declared again): some of
                # what we sent since start went over
                progressed = acked > 0 and backlog is not None and backlog < link.sent_total
            if progressed:
                link.last_success = now
            link.acked = acked
        oldest: float | None = None
        at_least = False
        if backlog is not None:
            while len(link.sent) > backlog:
                link.sent.popleft()
            if backlog > 0:
                first = link.sent[0] if link.sent else self.started
                oldest = max(0.0, now - first)
                at_least = backlog > len(link.sent)
            if backlog == 0 or progressed:
                link.waiting_since = None
            elif link.waiting_since is None:
                link.waiting_since = now
        if shovel is None:  # the management API did not answer
            state = "unknown"
        elif shovel != "running":
            state = "down"
        elif link.waiting_since is not None and now - link.waiting_since >= STALL_SECONDS:
            state = "stalled"
        else:
            state = "up"
        if state in ("up", "unknown"):
            link.down_since = None
        elif link.down_since is None:
            link.down_since = link.waiting_since if state == "stalled" else now
        unanswered_since = self._unanswered(link, backlog, now)
        return LinkView(
            peer=peer,
            state=state,
            shovel=shovel,
            reason=reason,
            backlog=backlog,
            last_success=link.last_success,
            oldest_waiting=oldest,
            oldest_at_least=at_least,
            down_since=link.down_since,
            unanswered_since=unanswered_since,
            unanswered=sum(1 for own in link.own.values() if own.handed_over is not None),
            transport=transport,
        )


class LinkDiagnosis:
    """How each link goes (``nodes/runtime/link_plan.py``) and, for a TLS link whose shovel
    does not run, why: a handshake with the peer's endpoints as the shovel would make it, at
    most every ``every`` seconds per peer (a peer's broker is not probed at every poll)."""

    def __init__(self, every: float = DIAGNOSE_EVERY) -> None:
        self._every = every
        self._found: dict[str, tuple[float, str | None]] = {}

    async def note(
        self, config: NodeConfig, directory: Directory, peer: PeerConfig, shovel: str | None
    ) -> tuple[str | None, str | None]:
        """(transport, reason) of the link to ``peer``: ``refused`` and its reason, or how it
        goes and, when its shovel is known not to run, what a handshake finds."""
        now = time.time()
        plan = plan_link(config, peer, directory.network(peer.network), _at(now))
        if plan.refused:
            return "refused", plan.describe()
        if plan.transport != "amqps" or shovel in (None, "running"):
            self._found.pop(peer.network, None)
            return plan.transport, None
        known = self._found.get(peer.network)
        if known is None or now - known[0] >= self._every:
            known = (now, await diagnose(config, plan))
            self._found[peer.network] = known
        return plan.transport, known[1]


def _at(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)
