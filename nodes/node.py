"""The running node of one network: consumes its inbox and local submissions, delivers,
forwards, quarantines, sends receipts and resends what was not acknowledged.

Delivery guarantees (see ``docs/OPERATIONS.md``):
- a delivery is acked only after everything it caused is broker-confirmed or committed;
- a refused message is written to the quarantine store (committed) before it is acked, never
  dropped; what RabbitMQ puts into ``mlanet.quarantine`` is taken into that store the same way;
- a transient failure requeues; a message that keeps failing is dead-lettered to quarantine by
  the queue's delivery limit, so one bad message never blocks the ones behind it;
- the destination dedupes on (origin, message id) + content hash; relays forward repeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

import structlog
from pydantic import ValidationError
from structlog.contextvars import bound_contextvars

from broker import (
    Reason,
    RefusedMessage,
    SignedMessage,
    TransportError,
    add_hop,
    canonical_bytes,
    decode_payload,
    open_envelope,
    sign_message,
)
from broker.contact_point_keys import KeyFolder
from broker.errors import error_location
from broker.keys import SigningKey
from broker.management import ManagementEndpoint
from broker.provenance import (
    check_addressee,
    check_origin,
    check_path,
    check_payload_origin,
    check_refuser,
    refused_copy,
)
from broker.routing import Deliver, Forward, Refuse, route, target_network
from broker.submission_signing import Returned, frame_cap, open_submission
from broker.transport import (
    QUARANTINE,
    SUBMIT,
    Incoming,
    Topology,
    Transport,
    body_sha256,
    body_size,
    deliver_queue,
    inbox_exchange,
    out_queue,
)
from nodes import crashpoints, state_dir
from nodes.audit import AUDIT_FILE, AuditError, AuditLog, AuditTrail
from nodes.config import NodeConfig, _read_secret
from nodes.directory_runtime import DirectoryKeeper
from nodes.doors import Doors, over_limit
from nodes.keyed_lock import KeyedLock
from nodes.lifecycle import LifecycleFile, Phase
from nodes.logs import error_fields, failure_fields
from nodes.observe import Flow, Observers
from nodes.operator import OperatorSurface
from nodes.pipeline import Accepted, Properties, dedupe, judge, open_delivery
from nodes.quarantine import Entry, claim, entry_of, log_context, refusal_id
from nodes.quarantine_store import QUARANTINE_FILE, Bound, QuarantineStore
from nodes.reconcile import Reconciler
from nodes.refusals import NoticeGate, deserves_notice, refusal_notice
from nodes.store import OutboxEntry, Store
from schemas import Destination, Header, Notice, Origin, Receipt, WireModel, payload_model
from schemas.submission import Submission

__all__ = ["Node"]

log = structlog.get_logger("mlanet.node")

COMMIT_EVERY = 0.2  # seconds: the longest a write outside a delivery waits for its commit
START_BACKOFF_FIRST = 1.0  # seconds before the second attempt to start; doubles each time
START_BACKOFF_MAX = 30.0  # seconds: the longest wait between two attempts to start
DRAIN_SECONDS = 5.0  # on stop: the longest wait for the deliveries being handled
STOP_GRACE = 3.0  # on stop: the longest wait for a cancelled start or the operator surface
GROUP_WAIT = 0.005  # seconds: the longest a finished delivery waits for others to share its commit
TOPOLOGY_EVERY = 3.0  # seconds between two checks of the node's queues, bindings, links, policies

_REASONS = frozenset(reason.value for reason in Reason)

RECEIPTED = {
    "facilitation_request",
    "status_update",
    "information_request",
    "information_response",
    "meeting_request",
}


def _now() -> datetime:
    return datetime.now(UTC)


class Node:
    """One network's node. ``run()`` until ``stop()``."""

    def __init__(self, config: NodeConfig, *, clock: Callable[[], datetime] = _now) -> None:
        state_dir.secure(config.state_dir)  # owner-only before anything in it is read or written
        self.clock = clock
        # The newest valid signed directory: peers, trust, routes and contact points follow it,
        # and follow its updates while the node runs (nodes/directory_runtime.py).
        self.keeper = DirectoryKeeper(config, clock)
        self.config = self.keeper.config
        self.key: SigningKey = self.keeper.signing_key()
        if self.key.network != config.network:
            raise RefusedMessage(Reason.MALFORMED_KEY, "signing key belongs to another network")
        self.directory = self.keeper.view
        self.trust = self.keeper.trust
        self.contact_points = self.keeper.contact_points
        # the contact points' keys this node's operator vouches for (nodes/contact_points.py)
        self.contact_point_keys = KeyFolder(config.contact_points.keys)
        self.store = Store(config.state_dir / "node.sqlite3")
        # Group commit: one SQLite commit for every delivery finished in one pass of the event
        # loop, before any of them is acked (see _durable); a writer outside a delivery is
        # committed within COMMIT_EVERY seconds by _commit_loop.
        self.store.group_commits()
        # Refused messages, indexed: written at the same group commit, before the acks.
        self.quarantined = QuarantineStore(config.state_dir / QUARANTINE_FILE)
        self._commit: asyncio.Future[None] | None = None
        self._commit_timer: asyncio.TimerHandle | None = None
        self._working = 0  # deliveries being handled that have not yet asked for their commit
        # a body above the size cap is never read whole (broker/amqp_decode.py)
        self.transport = Transport(config.amqp_url(), max_body=config.limits.max_message_bytes)
        broker = config.broker
        self.reconciler = Reconciler(
            ManagementEndpoint(
                broker.management_url, broker.user, _read_secret(broker.password_file)
            )
        )
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()  # stop() twice: no waiting for deliveries being handled
        self.lifecycle = LifecycleFile(config.state_dir, config.network)
        self._topology_doubt = asyncio.Event()  # a publish failed: is a queue missing?
        self.ready = asyncio.Event()
        self._handling = KeyedLock()  # copies of one message are handled one at a time
        self._notices = NoticeGate()  # how often the origin of a refused message is told
        self.doors = Doors(self.transport)  # each peer's inbox, in its door vhost
        self.observe = Observers()  # metrics, dashboard flow and audit trail watch here
        self.operator: OperatorSurface | None = None  # /metrics and the dashboard, while running
        # the audit record of a delivery is committed before its ack, or it is not acked
        self.audit = AuditLog(config.state_dir / AUDIT_FILE, self.key)
        self.observe.add(AuditTrail(self.audit), required=True)
        self.audit.group_commits()  # committed with the store's group commit (_commit_all)

    # --- lifecycle ----------------------------------------------------------------------------
    # starting -> (retrying -> starting)* -> running -> draining -> stopped, or failed; each
    # change is written to <state_dir>/lifecycle.json and logged (nodes/lifecycle.py). stop()
    # ends every phase within a few seconds: an attempt to start is cancelled, a wait between
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
                stack.callback(self.audit.close)
                stack.push_async_callback(self.transport.aclose)
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
                self.doors.reset()
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
        await self.transport.connect()
        await self.transport.declare(self.topology())
        await self.ensure_links()
        prefetch = self.config.limits.prefetch
        await self.consume_peers()
        # mlanet.inbox only drains what an older version of the node left there
        await self.transport.consume("mlanet.inbox", self.on_inbox, prefetch=prefetch)
        await self.transport.consume(SUBMIT, self.on_submit, prefetch=prefetch)
        await self.transport.consume(QUARANTINE, self.on_quarantine, prefetch=prefetch)
        await self.keeper.start(self)
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
                group.create_task(self._resend_loop()),
                group.create_task(self.keeper.maintain(self, self._stop)),
                group.create_task(self._commit_loop()),
                group.create_task(self._keep_topology()),
            ]
            await self._stop.wait()
            self.ready.clear()
            self.lifecycle.enter(Phase.DRAINING)
            for task in background:  # what they were doing is done again at the next start
                task.cancel()
        unfinished = await self.transport.drain(DRAIN_SECONDS, self._hurry)
        if unfinished:
            log.info("deliveries_returned", count=unfinished)  # unacked: the broker has them
        self._commit_all()

    def topology(self) -> Topology:
        return Topology(
            peers=tuple(peer.network for peer in self.config.peers),
            contact_points=self.contact_points,
            delivery_limit=self.config.limits.delivery_limit,
        )

    async def _keep_topology(self) -> None:
        """Every TOPOLOGY_EVERY seconds, and at once after a publish failed, declare the
        topology again and put back the shovels and policies the node owns
        (nodes/reconcile.py): a queue, exchange, binding, shovel or policy deleted or changed
        under the node comes back within seconds (what a deleted queue held is resent by its
        origin, which got no receipt) before the delivery limit turns the messages that could
        not be published into quarantine."""
        while not self._stop.is_set():
            doubt = asyncio.ensure_future(self._topology_doubt.wait())
            stop = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait(
                (doubt, stop), timeout=TOPOLOGY_EVERY, return_when=asyncio.FIRST_COMPLETED
            )
            doubt.cancel()
            stop.cancel()
            self._topology_doubt.clear()
            if self._stop.is_set():
                return
            try:
                for queue in await self.transport.declare(self.topology()):
                    log.warning("queue_declared_otherwise", queue=queue)
                await self.reconciler.reconcile(self.config, self.directory)
                await self.consume_peers()  # a door the operator made meanwhile
            except TransportError as exc:
                log.warning("topology_check_failed", error=str(exc))

    async def ensure_links(self) -> None:
        """Put one on-confirm shovel per peer (out.<peer> here -> inbox.from.<us> there) and
        the policies that bound each peer's inbox queue here; consume a new peer's inbox."""
        await self.reconciler.reconcile(self.config, self.directory)
        if self.ready.is_set():
            await self.consume_peers()

    async def consume_peers(self) -> None:
        """Consume each peer's own inbox queue, in its door vhost, at that peer's rate
        (nodes/doors.py); a peer already consumed is left as it is."""
        await self.doors.open(self.config, self.on_inbox)

    # --- from peers -------------------------------------------------------------------------
    async def on_inbox(self, incoming: Incoming) -> None:
        await self._settle(incoming, self._inbox(incoming))

    async def _inbox(self, incoming: Incoming) -> None:
        started = time.perf_counter()
        now = self.clock()
        opened: SignedMessage | None = None  # once verified: its origin is told of a refusal
        if over_limit(incoming, self.config.limits.delivery_limit):  # a door has no broker limit
            refused = RefusedMessage(
                Reason.DELIVERY_LIMIT, f"handed out {incoming.delivery_count} time(s) unfinished"
            )
            await self.quarantine(incoming.body, refused, incoming.exchange, redelivered=True)
            return
        try:
            sender, opened = open_delivery(
                incoming.body,
                incoming.exchange,
                config=self.config,
                trust=self.trust,
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
                config=self.config,
                directory=self.directory,
                store=self.store,
                now=now,
                held=self.keeper.book.held.directory,
                timing=self.observe.timing,
            )
        except RefusedMessage as refused:
            if await self.keeper.salvage(self, incoming.body, refused):
                await self._inbox(incoming)  # a newer directory came with it: try again
                return
            if self.keeper.may_be_behind(incoming.body, refused, incoming.redelivered):
                raise TransportError("a newer key than the directory lists: one more try") from None
            await self.quarantine(
                incoming.body,
                refused,
                incoming.exchange,
                message=opened,
                redelivered=incoming.redelivered,
            )
            if opened is not None:
                await self.tell_origin(opened, refused)
            return
        crashpoints.reached("after_receive_before_forward")
        header = accepted.message.header
        self.observe.received(accepted.sender, Flow.of(header))
        with bound_contextvars(
            message_id=header.message_id,
            origin=header.origin.network,
            destination=_describe(header.destination),
            kind=header.kind,
        ):
            async with self._handling.hold((header.origin.network, header.message_id)) as waited:
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
            if await self.keeper.on_update(self, accepted):
                return
            if (closed := self.keeper.closed()) is not None:
                raise closed  # the directory is too old to trust: fail closed
            if isinstance(routing, Refuse):
                raise RefusedMessage(routing.reason, routing.detail)
            if isinstance(routing, Forward):
                await self.forward(message, routing)
                return
            if header.kind == "receipt":
                assert accepted.payload is not None  # validated: this node is the destination
                self.on_receipt(message, accepted.payload)
                self.store.remember(
                    header.origin.network, header.message_id, message.content_sha256, "consumed"
                )
                return
            if header.kind == "notice":
                assert accepted.payload is not None
                self.on_notice(message, accepted.payload)
            if duplicate is None:
                await self.deliver(message, routing)
            else:
                self.store.event(header.message_id, "duplicate", "already delivered; not again")
                log.info("duplicate_not_delivered_again")
            if header.kind in RECEIPTED:
                await self.send_receipt(message, routing)
        except RefusedMessage as refused:
            await self.quarantine(
                message.to_bytes(),
                refused,
                inbox_exchange(accepted.sender),
                Flow.of(header),
                message=message,
                redelivered=redelivered,
            )
            await self.tell_origin(message, refused)

    async def _settle(self, incoming: Incoming, work: Awaitable[None]) -> None:
        """Ack once the work is durable; requeue on a transient failure; never crash."""
        try:
            with self._at_work():
                await work
                await self._durable()
        except TransportError as exc:
            with bound_contextvars(**self._about(incoming)):
                log.warning("transient_failure_requeued", error=str(exc))
            self._topology_doubt.set()
            await asyncio.sleep(0.5)
            await incoming.requeue()
            return
        except Exception as exc:  # a defect must not stop the node; the delivery limit applies
            with bound_contextvars(**self._about(incoming)):
                log.error("unexpected_failure_requeued", **error_fields(exc))
            await incoming.requeue()
            return
        await incoming.ack()

    @contextlib.contextmanager
    def _at_work(self) -> Iterator[None]:
        """Count a delivery being handled; when the last one stops, a waiting commit runs."""
        self._working += 1
        try:
            yield
        finally:
            self._working -= 1
            if self._working <= 0 and self._commit is not None:
                asyncio.get_running_loop().call_soon(self._flush)  # nobody else is coming

    def _commit_all(self) -> None:
        """Audit records first: committed state never lacks the record of what was done."""
        self.audit.commit()
        self.quarantined.commit()
        self.store.commit()

    async def _durable(self) -> None:
        """Wait until every store and audit write so far is committed.

        Group commit: one commit (and one audit checkpoint signature) serves every delivery
        that asks for it meanwhile. It runs as soon as no other delivery is still being
        handled (a lone message is not kept waiting), else after at most GROUP_WAIT seconds,
        so that under load the deliveries whose publishes the broker confirmed together share
        it."""
        loop = asyncio.get_running_loop()
        if self._commit is None:
            self._commit = loop.create_future()
            self._commit_timer = loop.call_later(GROUP_WAIT, self._flush)
        commit = self._commit
        self._working -= 1  # waiting now, not working
        try:
            if self._working <= 0:
                loop.call_soon(self._flush)
            await asyncio.shield(commit)
        finally:
            self._working += 1

    def _flush(self) -> None:
        done, self._commit = self._commit, None
        if self._commit_timer is not None:
            self._commit_timer.cancel()
            self._commit_timer = None
        if done is None:
            return
        try:
            self._commit_all()
        except Exception as exc:  # the waiters requeue: nothing acked without its record
            done.set_exception(exc)
        else:
            done.set_result(None)

    async def _commit_loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), COMMIT_EVERY)
            self._commit_all()

    def _about(self, incoming: Incoming) -> dict[str, str]:
        """What a failed delivery claims to be, for its log lines (read on failure only)."""
        own = self.config.network if incoming.routing_key == SUBMIT else None
        found = claim(incoming.body, max_bytes=self.config.limits.max_message_bytes)
        return log_context(found.flow(origin=own))

    # --- actions ----------------------------------------------------------------------------
    async def forward(self, message: SignedMessage, routing: Forward) -> None:
        header = message.header
        outgoing = message
        if header.origin.network != self.config.network:
            outgoing = add_hop(message, self.key, to=routing.peer, at=self.clock())
        await crashpoints.in_flight(
            "after_forward_before_confirm",
            self.transport.publish(
                out_queue(routing.peer),
                outgoing.to_bytes(),
                message_id=header.message_id,
                kind=header.kind,
            ),
        )
        crashpoints.reached("after_confirm_before_ack")
        self.store.remember(
            header.origin.network,
            header.message_id,
            message.content_sha256,
            "forwarded",
            f"forwarded to {routing.peer} (for {routing.target})",
        )
        with bound_contextvars(**_context(header)):  # a receipt or notice names itself
            log.info("message_forwarded", peer=routing.peer, target=routing.target)
        self.observe.forwarded(routing.peer, Flow.of(header))

    async def deliver(self, message: SignedMessage, routing: Deliver) -> None:
        header = message.header
        for contact_point in routing.contact_points:
            await self.transport.publish(
                deliver_queue(contact_point),
                message.to_bytes(),
                message_id=header.message_id,
                kind=header.kind,
            )
        crashpoints.reached("after_delivery_before_ack")
        self.store.remember(
            header.origin.network,
            header.message_id,
            message.content_sha256,
            "delivered",
            "delivered to " + ",".join(routing.contact_points),
        )
        with bound_contextvars(**_context(header)):
            log.info("message_delivered", contact_points=list(routing.contact_points))
        self.observe.delivered(routing.contact_points, Flow.of(header))

    async def quarantine(
        self,
        body: bytes,
        refused: RefusedMessage,
        via: str,
        flow: Flow | None = None,
        *,
        message: SignedMessage | None = None,
        redelivered: bool = False,
    ) -> None:
        """Put a refused message into the quarantine store with its reason; committed (with
        its audit record) when this returns, so the caller may ack the delivery.

        ``message``: the refused message, opened (its origin signature verified). Every copy of
        one message refused for one reason is then one entry, counting its copies (the origin
        resends until it hears; relays add other hop records): its id is derived from the
        origin, message id, content hash and reason. A ``redelivered`` copy is not counted
        again."""
        limits = self.config.limits
        # Never acceptable at any size: an oversized body keeps its first max_message_bytes,
        # its full size and digest, so that a peer cannot fill the disk with huge bodies.
        kept = body[: limits.max_message_bytes]
        truncated = len(kept) < len(body)
        claimed = claim(kept, max_bytes=limits.max_message_bytes)
        entry_id = str(uuid.uuid4())  # the quarantine entry's id (mlanet quarantine show ID)
        fresh = True
        if message is not None:
            derived = refusal_id(message.header, message.content_sha256, refused.reason.value)
            # an entry being released or dropped goes away with whatever is counted on it: a
            # copy refused meanwhile (the released one, refused again) is an entry of its own
            if not self.quarantined.claimed(derived):
                entry_id, fresh = derived, False
        entry = Entry(
            id=entry_id,
            reason=refused.reason.value,
            detail=refused.detail,
            via=via,
            at=time.time(),
            size=len(kept),
            body_sha256=hashlib.sha256(kept).hexdigest(),
            returns=0,
            claim=claimed,
            # of the whole body, also when the transport cut it (broker/amqp_decode.py)
            truncated_from=body_size(body) if truncated else None,
            full_sha256=body_sha256(body).hex() if truncated else None,
        )
        # Refused before it could be verified: bind what it claims (identifiers only).
        seen = flow or claimed.flow(origin=self.config.network if via == SUBMIT else None)
        with bound_contextvars(quarantine_id=entry.id, **log_context(seen)):
            body_kept = self.quarantined.add(
                entry,
                kept,
                self._quarantine_bound(entry.peer),
                fresh=fresh,
                redelivered=redelivered,
            )
            self.store.event(
                "-", "quarantined", f"{refused.reason.value}: {refused.detail} (via {via})"
            )
            log.warning(
                "message_quarantined",
                reason=refused.reason.value,
                detail=refused.detail,
                via=via,
                body_kept=body_kept,
            )
            if refused.reason is Reason.EQUIVOCATION:
                log.error("equivocation_detected", via=via)
            self.observe.refused(refused.reason.value, via, flow)
            self.observe.quarantined(entry.id, refused.reason.value, refused.detail, via, seen)
        await self._durable()

    def _quarantine_bound(self, peer: str) -> Bound:
        """What one peer's refused messages may keep in the quarantine (``""``: local ones)."""
        limits = self.config.peer_limits(peer) if peer else self.config.limits.peer
        return Bound(limits.quarantine_messages, limits.quarantine_bytes)

    async def on_quarantine(self, incoming: Incoming) -> None:
        """Take what RabbitMQ put into ``mlanet.quarantine`` (dead-lettered by a delivery limit,
        caught by an alternate exchange, or refused by a contact point's reader) into the
        quarantine store; acked once committed. Never dead-lettered: a failure waits a moment
        and hands the message back."""
        try:
            with self._at_work():
                self._take_in(incoming)
                await self._durable()
        except Exception as exc:  # the store cannot be written now (a full disk): retry
            log.error("quarantine_intake_failed", **error_fields(exc))
            await asyncio.sleep(1.0)
            await incoming.requeue()
            return
        await incoming.ack()

    def _take_in(self, incoming: Incoming) -> None:
        entry = entry_of(incoming.body, incoming.exchange, incoming.message_id, incoming.headers)
        body = incoming.body
        added = self.quarantined.add(
            entry,
            body,
            self._quarantine_bound(entry.peer),
            fresh=False,
            redelivered=incoming.redelivered,
        )
        if added is None:
            return  # already in the store: redelivered, or one more copy of it
        flow = entry.claim.flow()
        # a refusal's publisher (a contact point's reader) recorded it in track and the audit
        # trail already: one fact, one record
        recorded = "x-mlanet-reason" in incoming.headers
        with bound_contextvars(quarantine_id=entry.id, **log_context(flow)):
            if not recorded:
                self.store.event(
                    "-",
                    "quarantined",
                    f"{entry.reason}: {entry.detail} (via {entry.via})",
                )
            log.warning(
                "message_quarantined",
                reason=entry.reason,
                detail=entry.detail,
                via=entry.via,
                body_kept=added,
            )
            if not recorded:
                reason = entry.reason if entry.reason in _REASONS else "unknown"
                self.observe.refused(reason, entry.via, flow)
                self.observe.quarantined(entry.id, reason, entry.detail, entry.via, flow)

    def _sign(
        self,
        kind: str,
        destination: Destination,
        payload: WireModel,
        *,
        in_reply_to: str | None = None,
        country: str | None = None,
        contact_point: str | None = None,
        urgency: str = "normal",
        hop_limit: int = 6,
        message_id: str | None = None,
        members_only: bool | None = None,
    ) -> SignedMessage:
        header = Header.model_validate(
            {
                "kind": kind,
                "message_id": message_id or str(uuid.uuid4()),
                "origin": Origin(
                    network=self.config.network, country=country, contact_point=contact_point
                ),
                "destination": destination,
                "created_at": self.clock(),
                "hop_limit": hop_limit,
                "key_id": self.key.key_id,
                "urgency": urgency,
                "in_reply_to": in_reply_to,
                "members_only": members_only,
            }
        )
        return sign_message(header, payload, self.key)

    async def send_receipt(self, message: SignedMessage, routing: Deliver) -> None:
        header = message.header
        receipt = Receipt(
            receipt_for=header.message_id,
            content_sha256=message.content_sha256,
            received_at=self.clock(),
            received_by="node",
            delivered_to=routing.contact_points[0] if routing.contact_points else None,
        )
        back = self._sign("receipt", _reply_to(header), receipt, in_reply_to=header.message_id)
        await self._send_own(back)

    async def tell_origin(self, message: SignedMessage, refused: RefusedMessage) -> None:
        """Send the origin of ``message``, which this node refused, one signed refusal notice
        (``nodes/refusals.py``): not about a node's own message, and not more often than the
        gate allows. A notice that cannot be routed back is logged; the refusal itself is in
        the quarantine already."""
        header = message.header
        if not deserves_notice(header, self.config.network):
            return
        with bound_contextvars(**_context(header)):
            if not self._notices.allow(header.origin.network, header.message_id):
                log.info("refusal_notice_withheld", reason=refused.reason.value)
                return
            notice = refusal_notice(message, refused)
            back = self._sign("notice", _reply_to(header), notice, in_reply_to=header.message_id)
            try:
                await self._send_own(back)
            except RefusedMessage as again:
                log.warning("refusal_notice_not_routable", reason=again.reason.value)
                return
            except TransportError:  # requeued: the copy that comes back tells the origin
                self._notices.forget(header.origin.network, header.message_id)
                raise
            log.info(
                "refusal_notice_sent",
                reason=refused.reason.value,
                notice_id=back.header.message_id,
            )

    async def _send_own(self, message: SignedMessage) -> None:
        """Route and send a message this node signed (receipts, notices)."""
        routing = route(message.header, (), self.directory, self.config.routes, self.config.network)
        if isinstance(routing, Refuse):
            raise RefusedMessage(routing.reason, routing.detail)
        if isinstance(routing, Forward):
            await self.forward(message, routing)
        else:
            await self._deliver_own(message, routing)

    async def _deliver_own(self, message: SignedMessage, routing: Deliver) -> None:
        """A message whose origin and destination are both here."""
        header = message.header
        payload = decode_payload(message)
        if header.kind == "receipt":
            self.on_receipt(message, payload)
            return
        if header.kind == "notice":
            self.on_notice(message, payload)
        await self.deliver(message, routing)
        if header.kind in RECEIPTED and self.store.outbox_get(header.message_id) is not None:
            self.store.outbox_update(
                header.message_id, "delivered", "delivered locally", target=self.config.network
            )

    # --- receipts and notices for our own messages -------------------------------------------
    # A receipt or a notice about a message is taken only from the network that message was
    # addressed to (the target it was forwarded to, or this network when delivered here): a
    # relay, or anyone who learnt the id, cannot mark it delivered or failed.
    def on_receipt(self, message: SignedMessage, payload: WireModel) -> None:
        assert isinstance(payload, Receipt)
        entry = self.store.outbox_get(payload.receipt_for)
        signer = message.header.origin.network
        if entry is None:
            # A verified receipt for a message signed with our key that this node has no record
            # of: it was signed around the node (a tool holding the key), or before the node's
            # state was lost. Not the signer's fault, so not a refusal: recorded and raised as
            # an alert (mlanet status: receipts_unmatched), never put into the quarantine.
            self.store.event(payload.receipt_for, "receipt_unmatched", f"receipt from {signer}")
            log.warning("receipt_unmatched", receipt_for=payload.receipt_for, by=signer)
            return
        check_addressee("receipt", signer, self._addressee(entry))
        if entry.content_sha256 != payload.content_sha256:
            raise RefusedMessage(Reason.UNAUTHORISED, f"receipt from {signer} does not match")
        if entry.state != "delivered":
            self.store.outbox_update(
                payload.receipt_for,
                "delivered",
                f"receipt from {signer} ({payload.delivered_to or 'node'})",
            )
            log.info("receipt_received", receipt_for=payload.receipt_for, by=signer)
            self.observe.receipt(payload.receipt_for, signer, time.time() - entry.created_at)

    def _addressee(self, entry: OutboxEntry) -> str | None:
        """Where our message was sent: as recorded when it was forwarded (or delivered here);
        before that record (a crash between the publish and the record), where it is routed."""
        if entry.target is not None:
            return entry.target
        try:
            header = open_envelope(entry.wire, self.trust).header
        except RefusedMessage:
            return None
        return target_network(header, self.directory, self.config.network)

    def on_notice(self, message: SignedMessage, payload: WireModel) -> None:
        """A notice about a message this node sent: one with a reason (a refusal notice) marks
        it failed, when it comes from a network that held the message (``docs/PROTOCOL.md``
        section 10.1); one without, only from the network it was addressed to. A notice about
        a message this node did not send is only delivered."""
        assert isinstance(payload, Notice)
        if payload.regarding is None:
            return
        entry = self.store.outbox_get(payload.regarding)
        if entry is None:
            return
        signer = message.header.origin.network
        if payload.reason is None:
            check_addressee("notice", signer, self._addressee(entry))
            return
        self._check_refusal(signer, entry, payload)
        if entry.state not in ("delivered", "failed"):
            self.store.outbox_update(
                payload.regarding, "failed", f"{payload.reason}: refused by {signer}"
            )
            log.warning(
                "message_refused_downstream",
                regarding=payload.regarding,
                reason=payload.reason,
                by=signer,
            )

    def _check_refusal(self, refuser: str, entry: OutboxEntry, notice: Notice) -> None:
        """Did ``refuser`` hold our message ``entry``, of which its notice speaks? Its hop
        entries must chain to the message we sent, describe a path of the directory's links,
        and end at ``refuser`` (or it is the addressee, or our own first step when it carries
        none); raises RefusedMessage otherwise."""
        now = self.clock()
        sent = open_envelope(entry.wire, self.trust)
        copy = refused_copy(sent, notice.content_sha256, notice.hops or (), self.trust, now=now)
        check_path(
            copy.header,
            tuple(hop.record for hop in copy.hops),
            self.keeper.book.held.directory,
            now=now,
            skew=timedelta(seconds=self.config.limits.max_clock_skew_seconds),
        )
        routing = route(sent.header, (), self.directory, self.config.routes, self.config.network)
        check_refuser(
            refuser,
            copy,
            addressee=self._addressee(entry),
            first_step=routing.peer if isinstance(routing, Forward) else None,
        )

    # --- local submissions ------------------------------------------------------------------
    async def on_submit(self, incoming: Incoming) -> None:
        started = time.perf_counter()
        await self._settle(incoming, self._submit(incoming.body))
        self.observe.timing("submit", time.perf_counter() - started)

    async def _submit(self, body: bytes) -> None:
        """A contact point's submission: its signature is checked (against the key this node
        vouches for the contact point it names as sender) before anything else is read."""
        try:
            opened = open_submission(
                body, self.contact_point_keys, max_bytes=self.config.limits.max_message_bytes
            )
            if isinstance(opened, Returned):
                await self._returned(opened)
                return
            submission = opened.submission
            payload = payload_model(submission.kind).model_validate(submission.payload)
        except RefusedMessage as refused:
            await self._refuse_submission(body, refused)
            return
        except ValidationError as exc:  # locations only, never the input
            errors = exc.errors(include_input=False, include_url=False)
            where = ", ".join(error_location(e) for e in errors[:5])
            await self._refuse_submission(body, RefusedMessage(Reason.SCHEMA_INVALID, where))
            return
        with bound_contextvars(
            message_id=submission.message_id,
            origin=self.config.network,
            destination=_describe(submission.destination),
            kind=submission.kind,
        ):
            if submission.sender not in self.contact_points:
                await self._refuse_submission(
                    body,
                    RefusedMessage(
                        Reason.UNAUTHORISED, f"{submission.sender} is not a contact point here"
                    ),
                )
                return
            if (closed := self.keeper.closed()) is not None:
                await self.keeper.refuse_submission(self, body, submission, closed)
                return
            entry = self.store.outbox_get(submission.message_id)
            if entry is None:
                message = self._sign(
                    submission.kind,
                    submission.destination,
                    payload,
                    in_reply_to=submission.in_reply_to,
                    country=submission.sender[:2].upper(),
                    contact_point=submission.sender,
                    urgency=submission.urgency,
                    hop_limit=submission.hop_limit,
                    message_id=submission.message_id,
                    members_only=submission.members_only,
                )
                try:  # what the destination will check, checked before anything is signed out
                    held = self.keeper.book.held.directory
                    check_origin(message.header, held)
                    check_payload_origin(message.header, payload, held)
                except RefusedMessage as refused:
                    await self.quarantine(body, refused, SUBMIT)
                    return
                self.store.outbox_add(
                    message_id=submission.message_id,
                    kind=submission.kind,
                    sender=submission.sender,
                    destination=_describe(submission.destination),
                    content_sha256=message.content_sha256,
                    wire=message.to_bytes(),
                    next_attempt=time.time() + self.config.receipts.retry_after_seconds,
                )
                log.info("message_queued")
                # Durable before it is published: after a crash the same signed bytes are sent
                # again, never a second signature of the same message id (an equivocation).
                await self._durable()
                crashpoints.reached("after_sign_before_forward")
                self.observe.submitted(submission.sender, Flow.of(message.header))
            elif entry.state != "queued":
                log.info("submission_repeated", state=entry.state)
                return
            await self.send_from_outbox(submission.message_id)

    async def _refuse_submission(self, body: bytes, refused: RefusedMessage) -> None:
        """Quarantine a refused submission, never signed or sent; ``mlanet track`` shows the
        refusal under the message id it claims. No notice: its sender may not be who it says."""
        await self.quarantine(body, refused, SUBMIT)
        claimed = claim(body, max_bytes=frame_cap(self.config.limits.max_message_bytes))
        if claimed.message_id:
            self.store.event(claimed.message_id, "refused", str(refused))

    async def _returned(self, returned: Returned) -> None:
        """A delivered message its contact point would not take (no longer valid when it read
        its queue): quarantined with the contact point's reason, the way in being its delivery
        queue, and recorded for ``mlanet track``."""
        via = deliver_queue(returned.contact_point)
        refused = RefusedMessage(
            returned.reason, f"refused at delivery by {returned.contact_point}"
        )
        await self.quarantine(returned.message, refused, via)
        claimed = claim(returned.message, max_bytes=self.config.limits.max_message_bytes)
        if claimed.message_id:
            self.store.event(claimed.message_id, "quarantined", f"at delivery: {refused}")

    async def send_from_outbox(self, message_id: str) -> None:
        entry = self.store.outbox_get(message_id)
        assert entry is not None
        message = open_envelope(entry.wire, self.trust)
        routing = route(message.header, (), self.directory, self.config.routes, self.config.network)
        retry_at = time.time() + self.config.receipts.retry_after_seconds * 2 ** min(
            entry.attempts, 5
        )
        if isinstance(routing, Refuse):
            self.store.outbox_update(message_id, "failed", routing.reason.value)
            log.warning("message_not_routable", reason=routing.reason.value)
            notice = Notice(
                topic="delivery",
                title="Message could not be routed",
                regarding=message_id,
                reason=routing.reason.value,
                content_sha256=entry.content_sha256,
            )
            if entry.sender is not None:
                await self.deliver(
                    self._sign(
                        "notice",
                        Destination(
                            network=self.config.network,
                            country=entry.sender[:2].upper(),
                            contact_point=entry.sender,
                        ),
                        notice,
                        in_reply_to=message_id,
                    ),
                    Deliver((entry.sender,)),
                )
            return
        if isinstance(routing, Forward):
            await self.transport.publish(
                out_queue(routing.peer), entry.wire, message_id=message_id, kind=entry.kind
            )
            crashpoints.reached("after_forward_before_record")
            self.store.outbox_update(
                message_id,
                "forwarded",
                f"to {routing.peer}",
                target=routing.target,
                next_attempt=retry_at,
                attempt=True,
            )
            log.info("message_forwarded", peer=routing.peer, target=routing.target)
            self.observe.forwarded(routing.peer, Flow.of(message.header))
        else:
            await self._deliver_own(message, routing)

    async def _resend_loop(self) -> None:
        receipts = self.config.receipts
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), receipts.check_every_seconds)
            if self._stop.is_set():
                return
            now = time.time()
            for entry in self.store.outbox_due(now):
                with bound_contextvars(
                    message_id=entry.message_id,
                    origin=self.config.network,
                    destination=entry.destination,
                    kind=entry.kind,
                ):
                    try:
                        if now - entry.created_at > receipts.undeliverable_after_seconds:
                            self.store.outbox_update(
                                entry.message_id, "undeliverable", "no receipt in time"
                            )
                            log.warning("message_undeliverable", attempts=entry.attempts)
                            self.observe.undeliverable(entry.message_id)
                            continue
                        log.info("message_resent", attempt=entry.attempts + 1)
                        await self.send_from_outbox(entry.message_id)
                    except TransportError as exc:
                        log.warning("resend_failed", error=str(exc))
                        break  # the broker failed us: the rest waits for the next round
                    except (RefusedMessage, AuditError) as exc:
                        log.warning("resend_failed", error=str(exc))


def _reply_to(header: Header) -> Destination:
    origin = header.origin
    return Destination(
        network=origin.network, country=origin.country, contact_point=origin.contact_point
    )


def _context(header: Header) -> dict[str, str]:
    """What every log line about this message binds."""
    bound = {
        "message_id": header.message_id,
        "origin": header.origin.network,
        "destination": _describe(header.destination),
        "kind": header.kind,
    }
    if header.in_reply_to:
        bound["in_reply_to"] = header.in_reply_to
    return bound


def _describe(destination: Destination) -> str:
    return destination.contact_point or destination.country or destination.network or "?"


def submission_bytes(submission: Submission) -> bytes:
    return canonical_bytes(submission.model_dump(mode="json", exclude_none=True))
