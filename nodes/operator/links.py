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
  refuses, a missing exchange at the peer). ``down_since`` is when it stopped being up.

Figures from the management API lag by its statistics interval (5 s by default), so the ages
are accurate to a few seconds.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from nodes.observe import Flow, Observer

__all__ = ["STALL_SECONDS", "LinkTracker", "LinkView"]

STALL_SECONDS = 30.0


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


@dataclass
class _Link:
    sent: deque[float] = field(default_factory=deque)
    sent_total: int = 0  # messages this node put in since it started
    acked: int | None = None
    last_success: float | None = None
    down_since: float | None = None
    waiting_since: float | None = None  # backlog without progress since


class LinkTracker(Observer):
    """Per-peer memory of sends and hand-overs; fed by the observer seam and by polls."""

    def __init__(self, peers: tuple[str, ...], *, started: float, keep: int = 100_000) -> None:
        self.started = started
        self._keep = keep
        self._links = {peer: _Link() for peer in peers}

    def forwarded(self, peer: str, flow: Flow) -> None:
        link = self._links.get(peer)
        if link is None:
            return
        link.sent.append(time.time())
        link.sent_total += 1
        if len(link.sent) > self._keep:
            link.sent.popleft()

    def update(
        self,
        peer: str,
        *,
        shovel: str | None,
        reason: str | None,
        backlog: int | None,
        acked: int | None,
        now: float,
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
        )
