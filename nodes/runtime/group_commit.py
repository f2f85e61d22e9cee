"""The node's group commit: one SQLite commit (and one signed audit checkpoint) shared by the
deliveries that finish together, before any of them is acked.

A delivery's handler runs inside :meth:`GroupCommit.working`, writes its state (dedupe record,
outbox, quarantine entry, audit records) into the stores' open transactions, then awaits
:meth:`GroupCommit.durable`. When it asks:

- nothing else in flight (no other delivery is being handled): the commit runs at the end of
  the current pass of the event loop. A lone message waits for no window;
- others in flight (load): the commit waits until each of them has asked too, or at most
  ``window`` seconds, so that the deliveries whose publishes the broker confirmed together
  share it. Batches grow with the load, and so does the share of a commit each one pays.

The commit runs synchronously in the event loop, audit trail first (committed state never
lacks the record of what was done). If it fails, every delivery waiting for it gets the error:
the node requeues them, so none is acked without its record. A write outside a delivery (the
resend loop, the directory keeper) is committed by :meth:`GroupCommit.run` within ``every``
seconds, or by the next delivery's commit, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from types import TracebackType

import structlog

from mlanet.nodes.logs import error_fields

__all__ = ["COMMIT_EVERY", "GROUP_WAIT", "GroupCommit"]

log = structlog.get_logger("mlanet.node")

COMMIT_EVERY = 0.2  # seconds: the longest a write outside a delivery waits for its commit
GROUP_WAIT = 0.005  # seconds: the longest a finished delivery waits for others in flight


class GroupCommit:
    """Runs ``commit`` (which commits every store the node writes) for the deliveries that
    ask for it, in groups. Used from one event loop."""

    def __init__(
        self,
        commit: Callable[[], None],
        *,
        window: float = GROUP_WAIT,
        every: float = COMMIT_EVERY,
    ) -> None:
        self._commit = commit
        self._window = window
        self._every = every
        self._pending: asyncio.Future[None] | None = None  # the commit being gathered
        self._timer: asyncio.TimerHandle | None = None
        self._soon = False  # a flush at the end of this pass is scheduled
        self._working = 0  # deliveries being handled that have not yet asked for their commit
        self.commits = 0  # commits run for deliveries (with ``waited``: the mean batch)
        self.waited = 0  # deliveries that waited for one of them
        self._work = _Working(self)  # one for all: it keeps no state of its own

    def working(self) -> _Working:
        """``with commits.working():`` counts a delivery being handled; when the last one
        stops, a waiting commit runs."""
        return self._work

    def _start_work(self) -> None:
        self._working += 1

    def _end_work(self) -> None:
        self._working -= 1
        if self._working <= 0 and self._pending is not None:
            self._flush_soon()  # nobody else is coming

    async def durable(self) -> None:
        """Return once every write made so far is committed; raise the commit's error."""
        pending = self._pending
        if pending is None:
            loop = asyncio.get_running_loop()
            pending = self._pending = loop.create_future()
            self._timer = loop.call_later(self._window, self._flush)
        self.waited += 1
        self._working -= 1  # waiting now, not working
        try:
            if self._working <= 0:
                self._flush_soon()
            # shielded: a waiter that is cancelled (the node stops) leaves the others' commit
            await asyncio.shield(pending)
        finally:
            self._working += 1

    def commit_now(self) -> None:
        """Commit what was written so far (outside deliveries, and at stop)."""
        self._commit()

    async def run(self, stop: asyncio.Event) -> None:
        """Commit writes made outside deliveries every ``every`` seconds, until ``stop``."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._every)
            try:
                self._commit()
            except Exception as exc:  # the state cannot be written now: the next round retries
                log.warning("commit_failed", **error_fields(exc))

    def _flush_soon(self) -> None:
        if not self._soon:
            self._soon = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._soon = False
        done, self._pending = self._pending, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if done is None:
            return
        self.commits += 1
        try:
            self._commit()
        except Exception as exc:  # the waiters requeue: nothing acked without its record
            done.set_exception(exc)
        else:
            done.set_result(None)


class _Working:
    """The context manager of :meth:`GroupCommit.working` (a class: one is made per node, not
    one generator per delivery)."""

    __slots__ = ("_commits",)

    def __init__(self, commits: GroupCommit) -> None:
        self._commits = commits

    def __enter__(self) -> None:
        self._commits._start_work()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._commits._end_work()
