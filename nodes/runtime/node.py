"""The running node of one network: consumes its inbox and local submissions, delivers,
forwards, quarantines, sends receipts and resends what was not acknowledged.

Delivery guarantees (see ``docs/OPERATIONS.md``):
- a delivery is acked only after everything it caused is broker-confirmed or committed;
- a refused message is written to the quarantine store (committed) before it is acked, never
  dropped; what RabbitMQ puts into ``mlanet.quarantine`` is taken into that store the same way;
- a transient failure requeues; a message that keeps failing is dead-lettered to quarantine by
  the queue's delivery limit, so one bad message never blocks the ones behind it;
- the destination dedupes on (origin, message id) + content hash; relays forward repeats.

The node wires its parts (``nodes/runtime/seams.py`` draws how they see each other) and runs them:

- the directory keeper (``nodes/directory/keeper.py``) owns what the node trusts, the
  :class:`~mlanet.nodes.runtime.seams.DirectoryView` every part reads;
- the actions (``nodes/runtime/actions.py``): sign, forward, deliver, quarantine;
- the outbox (``nodes/runtime/outbox.py``): submissions, the node's own messages until their
  receipt;
- receipts and notices (``nodes/runtime/receipts.py``), sent and taken in;
- the links (``nodes/runtime/links.py``): topology, shovels, peer consumers;
- its fellow replicas, with ``[database]`` (``nodes/runtime/replicas.py``): claims on messages,
  duties, heartbeats and fencing through PostgreSQL;
- here: the lifecycle, the receiving of each delivery (``nodes/runtime/pipeline.py`` judges it) and
  the group commit that makes its records durable before it is acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import secrets
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime

import structlog

from mlanet.broker import (
    Reason,
    RefusedMessage,
    SignedMessage,
    TransportError,
    canonical_bytes,
)
from mlanet.broker.contact_point_keys import KeyFolder
from mlanet.broker.keys import SigningKey, TrustStore
from mlanet.broker.routing import Forward, Refuse
from mlanet.broker.transport import QUARANTINE, SUBMIT, Incoming, Transport, inbox_exchange
from mlanet.nodes.config import NodeConfig
from mlanet.nodes.directory.keeper import REPLICA_SOURCE, DirectoryKeeper, DirectoryPorts
from mlanet.nodes.logs import bound, error_fields, failure_fields
from mlanet.nodes.operator import OperatorSurface
from mlanet.nodes.runtime import crashpoints
from mlanet.nodes.runtime.actions import Actions, describe
from mlanet.nodes.runtime.doors import over_limit
from mlanet.nodes.runtime.group_commit import GroupCommit
from mlanet.nodes.runtime.keyed_lock import KeyedLock
from mlanet.nodes.runtime.lifecycle import LifecycleFile, Phase
from mlanet.nodes.runtime.links import Links
from mlanet.nodes.runtime.observe import Flow, Observers
from mlanet.nodes.runtime.outbox import Outbox
from mlanet.nodes.runtime.pipeline import Accepted, Properties, dedupe, judge, open_delivery
from mlanet.nodes.runtime.receipts import RECEIPTED, Receipts
from mlanet.nodes.runtime.reconcile import Reconciler
from mlanet.nodes.runtime.replicas import Alone, Member, Replicas, default_replica_name
from mlanet.nodes.runtime.seams import DirectoryView
from mlanet.nodes.state import state_dir
from mlanet.nodes.state.audit import AuditTrail
from mlanet.nodes.state.db import unavailable
from mlanet.nodes.state.journal import StateUnavailable
from mlanet.nodes.state.quarantine import claim, log_context
from mlanet.nodes.state.quarantine_store import open_quarantine
from mlanet.nodes.state.store import open_node_store
from mlanet.schemas.directory import Directory
from mlanet.schemas.submission import Submission

__all__ = ["RECEIPTED", "Node"]

log = structlog.get_logger("mlanet.node")

START_BACKOFF_FIRST = 1.0  # seconds before the second attempt to start; doubles each time
START_BACKOFF_MAX = 30.0  # seconds: the longest wait between two attempts to start
DRAIN_SECONDS = 5.0  # on stop: the longest wait for the deliveries being handled
STOP_GRACE = 3.0  # on stop: the longest wait for a cancelled start or the operator surface
PURGE_EVERY = 600.0  # seconds between two looks for quarantined content whose retention passed
STATE_RETRY = 1.0  # seconds between two looks whether the database answers again

# The claims (origin, message id) a delivery took from the other replicas: released once its
# outcome is committed and it is acked or handed back (``Node.settle``).
_CLAIMED: contextvars.ContextVar[list[tuple[str, str]] | None] = contextvars.ContextVar(
    "mlanet_claimed", default=None
)


def _now() -> datetime:
    return datetime.now(UTC)


class Node:
    """One network's node. ``run()`` until ``stop()``."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        clock: Callable[[], datetime] = _now,
        replica: str | None = None,
    ) -> None:
        """``replica``: this process's name among its network's replicas (with
        ``[database]``; default ``MLANET_REPLICA`` or the machine's name)."""
        state_dir.secure(config.state_dir)  # owner-only before anything in it is read or written
        self.clock = clock
        # The newest valid signed directory: peers, trust, routes and contact points follow it,
        # and follow its updates while the node runs (nodes/directory/keeper.py).
        self.keeper = DirectoryKeeper(config, clock)
        if self.key.network != config.network:
            raise RefusedMessage(Reason.MALFORMED_KEY, "signing key belongs to another network")
        # the contact points' keys this node's operator vouches for
        # (nodes/directory/contact_points.py)
        self.contact_point_keys = KeyFolder(config.contact_points.keys)
        # dedupe, outbox and the journal of every fact (nodes/state/journal.py), signed by the key
        # the node holds at each commit
        self.store = open_node_store(config, key=lambda: self.key)
        # Group commit: one SQLite commit for every delivery finished in one pass of the event
        # loop, before any of them is acked (nodes/runtime/group_commit.py).
        self.store.group_commits()
        # Refused messages, indexed: written at the same group commit, before the acks.
        self.quarantined = open_quarantine(config)
        self.commits = GroupCommit(self._commit_all)
        # the other processes of this network's node, when its state is in PostgreSQL
        self.replicas: Replicas = (
            Alone()
            if config.database is None
            else Member(
                config.database,
                replica or default_replica_name(),
                backends=lambda: [*self.store.backend_pids(), *self.quarantined.backend_pids()],
            )
        )
        # a body above the size cap is never read whole (broker/amqp_decode.py)
        self.transport = Transport(config.amqp_url(), max_body=config.limits.max_message_bytes)
        # its API client is closed when run() ends; over HTTPS checked against [broker.tls]
        self.reconciler = Reconciler(config.management_endpoint())
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()  # stop() twice: no waiting for deliveries being handled
        self.lifecycle = LifecycleFile(config.state_dir, config.network)
        self.ready = asyncio.Event()
        self._handling = KeyedLock()  # copies of one message are handled one at a time
        self.observe = Observers()  # metrics, dashboard flow and audit trail watch here
        self.operator: OperatorSurface | None = None  # /metrics and the dashboard, while running
        # the journal row of a delivery is committed before its ack, or it is not acked
        self.audit = self.store.journal  # committed with the store's group commit
        self.observe.add(AuditTrail(self.audit), required=True)
        # --- the parts, each reading the keeper's view when it acts ---
        self.actions = Actions(
            self.keeper,
            clock=clock,
            transport=self.transport,
            store=self.store,
            quarantined=self.quarantined,
            observe=self.observe,
            durable=self.commits.durable,
        )
        self.receipts = Receipts(
            self.keeper, clock=clock, store=self.store, observe=self.observe, actions=self.actions
        )
        self.outbox = Outbox(
            self.keeper,
            transport=self.transport,
            store=self.store,
            observe=self.observe,
            actions=self.actions,
            own=self.receipts,
            contact_point_keys=self.contact_point_keys,
            durable=self.commits.durable,
        )
        self.links = Links(
            self.keeper,
            transport=self.transport,
            reconciler=self.reconciler,
            # looked up at each delivery: a test may wrap the node's handler after it is built
            on_inbox=lambda incoming: self.on_inbox(incoming),
            ready=self.ready,
        )
        self._ports = DirectoryPorts(
            transport=self.transport,
            store=self.store,
            outbound=self.actions,
            links=self.links,
            settle=self.settle,
            applied=self._directory_applied,
        )

    # --- what the node trusts now: the keeper's view, read, never copied --------------------
    @property
    def view(self) -> DirectoryView:
        return self.keeper.view

    @property
    def config(self) -> NodeConfig:
        return self.keeper.view.config

    @property
    def directory(self) -> Directory:
        return self.keeper.view.directory

    @property
    def trust(self) -> TrustStore:
        return self.keeper.view.trust

    @property
    def contact_points(self) -> tuple[str, ...]:
        return self.keeper.view.contact_points

    @property
    def key(self) -> SigningKey:
        return self.keeper.view.key

    # --- lifecycle ----------------------------------------------------------------------------
    # starting -> (retrying -> starting)* -> running -> draining -> stopped, or failed; each
    # change is written to <state_dir>/lifecycle.json and logged (nodes/runtime/lifecycle.py).
    # stop() ends every phase within a few seconds: an attempt to start is cancelled, a wait between
    # attempts ends, and a running node drains for at most DRAIN_SECONDS.
    def stop(self) -> None:
        """Stop (a second call: stop without waiting for the deliveries being handled)."""
        if self._stop.is_set():
            self._hurry.set()
        self._stop.set()

    async def run(self) -> None:
        """Start, retrying with backoff while the broker cannot be reached or fails the start;
        run until :meth:`stop`; then drain and close. An error that retrying cannot mend
        (a refused key or directory, a defect) is logged as ``node_failed`` and raised."""
        self.lifecycle.enter(Phase.STARTING)
        try:
            async with AsyncExitStack() as stack:
                stack.callback(self.store.close)  # closed last: after the consumers are gone
                stack.callback(self.quarantined.close)
                stack.callback(self.replicas.leave)
                stack.push_async_callback(self.transport.aclose)
                stack.push_async_callback(self.reconciler.aclose)
                if await self._start(stack):
                    await self._serve()
        except Exception as exc:  # a defect by its place only, never its text (values)
            self.lifecycle.enter(Phase.FAILED, **failure_fields(exc))
            raise
        self.lifecycle.enter(Phase.STOPPED)

    async def _start(self, stack: AsyncExitStack) -> bool:
        """Start; True once running, False when stop() came first."""
        attempt = 0
        while not self._stop.is_set():
            work = asyncio.ensure_future(self._start_once(stack))
            try:
                return await self._unless_stopped(work)
            except TransportError as exc:
                attempt += 1
                await self.transport.aclose()
                self.links.forget_consumers()
                wait = min(START_BACKOFF_MAX, START_BACKOFF_FIRST * 2 ** min(attempt - 1, 10))
                wait *= 0.8 + secrets.randbelow(41) / 100  # nodes of one broker spread out
                retry_at = time.time() + wait
                self.lifecycle.enter(
                    Phase.RETRYING, attempt=attempt, retry_at=retry_at, error=str(exc)
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), wait)
                if not self._stop.is_set():  # the last error stays until this attempt ends
                    self.lifecycle.enter(Phase.STARTING, attempt=attempt, error=str(exc))
        return False

    async def _unless_stopped(self, work: asyncio.Future[None]) -> bool:
        """Wait for ``work``; True when it finished (its error is raised), False when stop()
        came first (it is cancelled)."""
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait((work, stop), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # run() itself is cancelled: so is the attempt
            work.cancel()
            raise
        finally:
            stop.cancel()
        if not work.done():
            work.cancel()
            await asyncio.wait((work,), timeout=STOP_GRACE)
            if work.done() and not work.cancelled():
                work.exception()  # retrieved: whatever it was, the node stops
            return False
        work.result()
        return True

    async def _start_once(self, stack: AsyncExitStack) -> None:
        """One attempt: connect, declare, links, consumers, directory, operator surface."""
        self.replicas.join(self.keeper.book.version)  # (alone: nothing to join)
        await self.transport.connect()
        await self.transport.declare(self.links.topology())
        await self.ensure_links()
        prefetch = self.config.limits.prefetch
        await self.links.consume_peers()
        # mlanet.inbox only drains what an older version of the node left there
        await self.transport.consume("mlanet.inbox", self.on_inbox, prefetch=prefetch)
        await self.transport.consume(SUBMIT, self.on_submit, prefetch=prefetch)
        await self.transport.consume(QUARANTINE, self.on_quarantine, prefetch=prefetch)
        await self.keeper.start(self._ports)
        if self.config.operator.enabled and self.operator is None:
            operator = OperatorSurface(self)
            await operator.start()
            self.operator = operator
            stack.push_async_callback(self._close_operator)

    async def _close_operator(self) -> None:
        operator, self.operator = self.operator, None
        if operator is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_GRACE):
                    await operator.aclose()

    async def _serve(self) -> None:
        """Running until stop(); then draining: consume nothing new, let the deliveries being
        handled finish (at most DRAIN_SECONDS), commit."""
        self.lifecycle.enter(Phase.RUNNING, peers=[p.network for p in self.config.peers])
        self.ready.set()
        async with asyncio.TaskGroup() as group:
            background = [
                group.create_task(
                    self.outbox.resend(self._stop, duty=lambda: self.replicas.holds("outbox"))
                ),
                group.create_task(self.keeper.maintain(self._ports, self._stop)),
                group.create_task(self.commits.run(self._stop)),
                group.create_task(self.links.keep(self._stop)),
                group.create_task(self._purge(self._stop)),
                group.create_task(
                    self.replicas.run(self._stop, newer_directory=self._shared_directory)
                ),
            ]
            await self._stop.wait()
            self.ready.clear()
            self.lifecycle.enter(Phase.DRAINING)
            for task in background:  # what they were doing is done again at the next start
                task.cancel()
        unfinished = await self.transport.drain(DRAIN_SECONDS, self._hurry)
        if unfinished:
            log.info("deliveries_returned", count=unfinished)  # unacked: the broker has them
        self.commits.commit_now()

    async def _purge(self, stop: asyncio.Event) -> None:
        """Until ``stop``: every :data:`PURGE_EVERY` seconds, :meth:`purge_quarantine`."""
        while not stop.is_set():
            try:
                if self.replicas.holds("purge"):  # one replica purges for all
                    self.purge_quarantine()
            except Exception as exc:  # the store is busy or cannot be written: next time
                log.error("content_purge_failed", **error_fields(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PURGE_EVERY)

    def purge_quarantine(self, now: float | None = None) -> int:
        """Purge the quarantined bodies whose retention has passed (the period the message
        claims, or ``[policy] max_retention_days`` after it was refused; ``docs/PROTOCOL.md``
        section 17): each entry stays as metadata. Recorded first, one journal row
        (``content_purged``) each; returns how many bodies were purged."""
        at = self.clock().timestamp() if now is None else now
        due = self.quarantined.due_bodies(at, self.config.policy.max_retention_days)
        if not due:
            return 0
        for entry in due:
            claimed = entry.claim
            self.store.event(
                claimed.message_id or "-",
                "content_purged",
                "retention period over",
                quarantine_id=entry.id,
                origin=claimed.origin or None,
                kind=claimed.kind or None,
            )
        self.commits.commit_now()  # the record before the purge
        return self.quarantined.purge_bodies([entry.id for entry in due])

    async def ensure_links(self) -> None:
        """Put the links' shovels and policies, consume a new peer's inbox (``links.py``)."""
        await self.links.ensure_links()

    # --- fellow replicas (with [database]) --------------------------------------------------
    def _directory_applied(self, version: int, body: bytes) -> None:
        """Every replica holds the directory one of them applied (``replicas.py``)."""
        self.replicas.share_directory(version, body)

    async def _shared_directory(self, version: int, body: bytes) -> None:
        if version <= self.keeper.book.version:
            self.replicas.held_directory(version)
            return
        try:
            await self.keeper.apply(self._ports, body, REPLICA_SOURCE)
        except (RefusedMessage, TransportError) as exc:
            log.warning("shared_directory_not_applied", version=version, error=str(exc))
        self.replicas.held_directory(version)

    # --- from peers -------------------------------------------------------------------------
    async def on_inbox(self, incoming: Incoming) -> None:
        await self.settle(incoming, lambda: self._inbox(incoming))

    async def _inbox(self, incoming: Incoming) -> None:
        started = time.perf_counter()
        now = self.clock()
        opened: SignedMessage | None = None  # once verified: its origin is told of a refusal
        if over_limit(incoming, self.config.limits.delivery_limit):  # a door has no broker limit
            refused = RefusedMessage(
                Reason.DELIVERY_LIMIT, f"handed out {incoming.delivery_count} time(s) unfinished"
            )
            await self.actions.quarantine(
                incoming.body, refused, incoming.exchange, redelivered=True
            )
            return
        view = self.keeper.view  # one view for the whole judgement (nothing here awaits)
        try:
            sender, opened = open_delivery(
                incoming.body,
                incoming.exchange,
                config=view.config,
                trust=view.trust,
                now=now,
                properties=Properties(
                    content_type=incoming.content_type,
                    content_encoding=incoming.content_encoding,
                    expires=incoming.expires,
                ),
            )
            self.observe.timing("verify", time.perf_counter() - started)
            accepted = judge(
                opened,
                sender,
                config=view.config,
                directory=view.directory,
                store=self.store,
                now=now,
                held=view.held.directory,
                timing=self.observe.timing,
                keyring=view.seal_keys,
                # with replicas the record is read once the claim is held (_act), not twice
                look_up=not self.replicas.shared,
            )
        except RefusedMessage as refused:
            if await self.keeper.salvage(self._ports, incoming.body, refused):
                await self._inbox(incoming)  # a newer directory came with it: try again
                return
            if self.keeper.may_be_behind(incoming.body, refused, incoming.redelivered):
                raise TransportError("a newer key than the directory lists: one more try") from None
            await self.actions.quarantine(
                incoming.body,
                refused,
                incoming.exchange,
                message=opened,
                redelivered=incoming.redelivered,
            )
            if opened is not None:
                await self.receipts.tell_origin(opened, refused)
            return
        crashpoints.reached("after_receive_before_forward")
        header = accepted.message.header
        self.observe.received(accepted.sender, Flow.of(header))
        with bound(
            message_id=header.message_id,
            origin=header.origin.network,
            destination=describe(header.destination),
            kind=header.kind,
        ):
            key = (header.origin.network, header.message_id)
            async with self._handling.hold(key) as waited:
                if self.replicas.shared:
                    # another replica may have recorded it since judge() looked: look again
                    await self._claim(key)
                    waited = True
                await self._act(accepted, recheck=waited, redelivered=incoming.redelivered)
        self.observe.timing("handle", time.perf_counter() - started)

    async def _act(
        self, accepted: Accepted, *, recheck: bool = True, redelivered: bool = False
    ) -> None:
        """Deliver, forward or refuse an accepted message, holding its key. ``recheck``: look
        for an earlier copy again (one was handled while this one waited for the key);
        ``redelivered``: the broker delivered this copy before (a refusal of it is not counted
        as one more copy)."""
        message, routing = accepted.message, accepted.routing
        header = message.header
        try:
            duplicate = dedupe(message, self.store) if recheck else accepted.duplicate
            if await self.keeper.on_update(self._ports, accepted):
                self.store.journal.settled(header.message_id)
                return
            if (closed := self.keeper.closed()) is not None:
                raise closed  # the directory is too old to trust: fail closed
            if isinstance(routing, Refuse):
                raise RefusedMessage(routing.reason, routing.detail)
            if isinstance(routing, Forward):
                await self.actions.forward(message, routing)
                return
            if header.kind == "receipt":
                assert accepted.payload is not None  # validated: this node is the destination
                self.receipts.on_receipt(message, accepted.payload)
                self.store.remember(
                    header.origin.network, header.message_id, message.content_sha256, "consumed"
                )
                self.store.journal.settled(header.message_id)
                return
            if header.kind == "notice":
                assert accepted.payload is not None
                self.receipts.on_notice(message, accepted.payload)
            if duplicate is None:
                await self.actions.deliver(message, routing)
            else:
                self.store.event(header.message_id, "duplicate", "already delivered; not again")
            if header.kind in RECEIPTED:
                await self.receipts.send_receipt(message, routing)
        except RefusedMessage as refused:
            await self.actions.quarantine(
                message.to_bytes(),
                refused,
                inbox_exchange(accepted.sender),
                Flow.of(header),
                message=message,
                redelivered=redelivered,
            )
            await self.receipts.tell_origin(message, refused)

    async def _claim(self, key: tuple[str, str]) -> None:
        """Hold ``key`` against the other replicas until this delivery is settled."""
        await self.replicas.claim(*key)
        held = _CLAIMED.get()
        if held is None:  # not within settle(): nothing would release it later
            self.replicas.release(*key)
            raise RuntimeError("a claim outside a delivery")
        held.append(key)

    async def settle(
        self, incoming: Incoming, work: Awaitable[None] | Callable[[], Awaitable[None]]
    ) -> None:
        """Ack once the work is durable; requeue on a transient failure; never crash. While
        the node's database is out of reach, the delivery waits (unacked) and its work is done
        again once it answers, when ``work`` can be started again (a callable)."""
        held: list[tuple[str, str]] = []
        token = _CLAIMED.set(held)
        try:
            while True:
                attempt = work() if callable(work) else work
                try:
                    await self._settle_once(incoming, attempt)
                    return
                except StateUnavailable as gone:
                    self._release(held)
                    if not callable(work) or not await self._state_back(incoming, gone):
                        await incoming.requeue()
                        return
        finally:
            _CLAIMED.reset(token)
            self._release(held)

    def _release(self, held: list[tuple[str, str]]) -> None:
        while held:
            self.replicas.release(*held.pop())

    async def _state_back(self, incoming: Incoming, cause: BaseException) -> bool:
        """Wait until the database answers again; False when the node stops first."""
        with bound(**self._about(incoming)):
            log.warning("state_unavailable_waiting", error=str(cause))
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), STATE_RETRY)
            if self.store.answers():
                return not self._stop.is_set()
        return False

    async def _settle_once(self, incoming: Incoming, work: Awaitable[None]) -> None:
        losses = self._losses()
        try:
            with self.commits.working():
                await work
                await self.commits.durable()
            if self._losses() != losses:  # some of its writes may have gone with a connection
                raise StateUnavailable("the database connection was lost during the delivery")
        except StateUnavailable:
            raise
        except Exception as exc:
            if unavailable(exc):
                raise StateUnavailable(
                    f"the database is out of reach ({type(exc).__name__})"
                ) from exc
            await self._failed(incoming, exc)
            return
        await incoming.ack()

    def _losses(self) -> int:
        return self.store.losses() + self.quarantined.losses()

    async def _failed(self, incoming: Incoming, exc: Exception) -> None:
        """Requeue after a transient failure, or a defect (a defect must not stop the node;
        the queue's delivery limit applies)."""
        with bound(**self._about(incoming)):
            if isinstance(exc, TransportError):
                log.warning("transient_failure_requeued", error=str(exc))
            else:
                log.error("unexpected_failure_requeued", **error_fields(exc))
        if isinstance(exc, TransportError):
            self.links.doubt()
            await asyncio.sleep(0.5)
        await incoming.requeue()

    def _commit_all(self) -> None:
        """The state with its journal first (one transaction): committed state never lacks
        the record of what was done."""
        self.store.commit()
        self.quarantined.commit()

    def _about(self, incoming: Incoming) -> dict[str, str]:
        """What a failed delivery claims to be, for its log lines (read on failure only)."""
        own = self.config.network if incoming.routing_key == SUBMIT else None
        found = claim(incoming.body, max_bytes=self.config.limits.max_message_bytes)
        return log_context(found.flow(origin=own))

    # --- local submissions and what RabbitMQ quarantined ---------------------------------
    async def on_submit(self, incoming: Incoming) -> None:
        started = time.perf_counter()
        await self.settle(incoming, lambda: self.outbox.submit(incoming.body))
        self.observe.timing("submit", time.perf_counter() - started)

    async def on_quarantine(self, incoming: Incoming) -> None:
        """Take what RabbitMQ put into ``mlanet.quarantine`` (dead-lettered by a delivery limit,
        caught by an alternate exchange, or refused by a contact point's reader) into the
        quarantine store; acked once committed. Never dead-lettered: a failure waits a moment
        and hands the message back."""
        try:
            with self.commits.working():
                self.actions.take_in(incoming)
                await self.commits.durable()
        except Exception as exc:  # the store cannot be written now (a full disk): retry
            log.error("quarantine_intake_failed", **error_fields(exc))
            await asyncio.sleep(1.0)
            await incoming.requeue()
            return
        await incoming.ack()


def submission_bytes(submission: Submission) -> bytes:
    return canonical_bytes(submission.model_dump(mode="json", exclude_none=True))
