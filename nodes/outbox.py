"""The node's own messages: its contact points' submissions, signed and kept in the outbox until
the destination's receipt; resent until then; receipts and notices it sends and receives.

A receipt or a notice about a message is taken only from the network that message was
addressed to (the target it was forwarded to, or this network when delivered here): a relay,
or anyone who learnt the id, cannot mark it delivered or failed. A refusal notice is taken from
a network that held the message (``docs/PROTOCOL.md`` section 10.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog
from pydantic import ValidationError
from structlog.contextvars import bound_contextvars

from broker import (
    Reason,
    RefusedMessage,
    SignedMessage,
    TransportError,
    decode_payload,
    open_envelope,
)
from broker.contact_point_keys import KeyFolder
from broker.errors import error_location
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
from broker.transport import SUBMIT, Transport, deliver_queue, out_queue
from nodes import crashpoints
from nodes.actions import describe, message_context, reply_to
from nodes.audit import AuditError
from nodes.observe import Flow, Observers
from nodes.quarantine import claim
from nodes.refusals import NoticeGate, deserves_notice, refusal_notice
from nodes.seams import Commit, Outbound, ViewSource
from nodes.store import OutboxEntry, Store
from schemas import Destination, Notice, Receipt, WireModel, payload_model
from schemas.submission import Submission

__all__ = ["RECEIPTED", "Outbox"]

log = structlog.get_logger("mlanet.node")

RECEIPTED = {
    "facilitation_request",
    "status_update",
    "information_request",
    "information_response",
    "meeting_request",
}


class Outbox:
    """Submissions in, the node's own messages out, and what comes back about them."""

    def __init__(
        self,
        views: ViewSource,
        *,
        clock: Callable[[], datetime],
        transport: Transport,
        store: Store,
        observe: Observers,
        actions: Outbound,
        contact_point_keys: KeyFolder,
        durable: Commit,
    ) -> None:
        self._views = views
        self._clock = clock
        self._transport = transport
        self._store = store
        self._observe = observe
        self._actions = actions
        self._contact_point_keys = contact_point_keys
        self._durable = durable
        self._notices = NoticeGate()  # how often the origin of a refused message is told

    # --- local submissions ------------------------------------------------------------------
    async def submit(self, body: bytes) -> None:
        """A contact point's submission: its signature is checked (against the key this node
        vouches for the contact point it names as sender) before anything else is read."""
        view = self._views.view
        try:
            opened = open_submission(
                body, self._contact_point_keys, max_bytes=view.config.limits.max_message_bytes
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
            origin=view.config.network,
            destination=describe(submission.destination),
            kind=submission.kind,
        ):
            if submission.sender not in self._views.view.contact_points:
                await self._refuse_submission(
                    body,
                    RefusedMessage(
                        Reason.UNAUTHORISED, f"{submission.sender} is not a contact point here"
                    ),
                )
                return
            if (closed := self._views.closed()) is not None:
                await self._refuse_closed(body, submission, closed)
                return
            entry = self._store.outbox_get(submission.message_id)
            if entry is None:
                message = self._actions.sign(
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
                    held = self._views.view.held.directory
                    check_origin(message.header, held)
                    check_payload_origin(message.header, payload, held)
                except RefusedMessage as refused:
                    await self._actions.quarantine(body, refused, SUBMIT)
                    return
                self._store.outbox_add(
                    message_id=submission.message_id,
                    kind=submission.kind,
                    sender=submission.sender,
                    destination=describe(submission.destination),
                    content_sha256=message.content_sha256,
                    wire=message.to_bytes(),
                    next_attempt=time.time() + self._views.view.config.receipts.retry_after_seconds,
                )
                log.info("message_queued")
                # Durable before it is published: after a crash the same signed bytes are sent
                # again, never a second signature of the same message id (an equivocation).
                await self._durable()
                crashpoints.reached("after_sign_before_forward")
                self._observe.submitted(submission.sender, Flow.of(message.header))
            elif entry.state != "queued":
                log.info("submission_repeated", state=entry.state)
                return
            await self.send_from_outbox(submission.message_id)

    async def _refuse_submission(self, body: bytes, refused: RefusedMessage) -> None:
        """Quarantine a refused submission, never signed or sent; ``mlanet track`` shows the
        refusal under the message id it claims. No notice: its sender may not be who it says."""
        await self._actions.quarantine(body, refused, SUBMIT)
        max_bytes = self._views.view.config.limits.max_message_bytes
        claimed = claim(body, max_bytes=frame_cap(max_bytes))
        if claimed.message_id:
            self._store.event(claimed.message_id, "refused", str(refused))

    async def _refuse_closed(
        self, body: bytes, submission: Submission, refused: RefusedMessage
    ) -> None:
        """A new message while the directory is too old to trust: quarantined, the reason
        recorded for ``mlanet track`` and sent to the submitting contact point as a notice."""
        await self._actions.quarantine(body, refused, SUBMIT)
        self._store.event(submission.message_id, "failed", str(refused))
        notice = Notice(
            topic="delivery",
            title="Message refused: the node's directory is too old to trust",
            regarding=submission.message_id,
            reason=refused.reason.value,
        )
        sender = submission.sender
        network = self._views.view.config.network
        await self._actions.deliver(
            self._actions.sign(
                "notice",
                Destination(network=network, country=sender[:2].upper(), contact_point=sender),
                notice,
                in_reply_to=submission.message_id,
            ),
            Deliver((sender,)),
        )

    async def _returned(self, returned: Returned) -> None:
        """A delivered message its contact point would not take (no longer valid when it read
        its queue): quarantined with the contact point's reason, the way in being its delivery
        queue, and recorded for ``mlanet track``."""
        via = deliver_queue(returned.contact_point)
        refused = RefusedMessage(
            returned.reason, f"refused at delivery by {returned.contact_point}"
        )
        await self._actions.quarantine(returned.message, refused, via)
        max_bytes = self._views.view.config.limits.max_message_bytes
        claimed = claim(returned.message, max_bytes=max_bytes)
        if claimed.message_id:
            self._store.event(claimed.message_id, "quarantined", f"at delivery: {refused}")

    # --- sending and resending --------------------------------------------------------------
    async def send_from_outbox(self, message_id: str) -> None:
        view = self._views.view
        config = view.config
        entry = self._store.outbox_get(message_id)
        assert entry is not None
        message = open_envelope(entry.wire, view.trust)
        routing = route(message.header, (), view.directory, config.routes, config.network)
        retry_at = time.time() + config.receipts.retry_after_seconds * 2 ** min(entry.attempts, 5)
        if isinstance(routing, Refuse):
            self._store.outbox_update(message_id, "failed", routing.reason.value)
            log.warning("message_not_routable", reason=routing.reason.value)
            notice = Notice(
                topic="delivery",
                title="Message could not be routed",
                regarding=message_id,
                reason=routing.reason.value,
                content_sha256=entry.content_sha256,
            )
            if entry.sender is not None:
                await self._actions.deliver(
                    self._actions.sign(
                        "notice",
                        Destination(
                            network=config.network,
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
            await self._transport.publish(
                out_queue(routing.peer), entry.wire, message_id=message_id, kind=entry.kind
            )
            crashpoints.reached("after_forward_before_record")
            self._store.outbox_update(
                message_id,
                "forwarded",
                f"to {routing.peer}",
                target=routing.target,
                next_attempt=retry_at,
                attempt=True,
            )
            log.info("message_forwarded", peer=routing.peer, target=routing.target)
            self._observe.forwarded(routing.peer, Flow.of(message.header))
        else:
            await self._deliver_own(message, routing)

    async def resend(self, stop: asyncio.Event) -> None:
        """Until ``stop``: resend what has no receipt yet, give up on what is too old."""
        receipts = self._views.view.config.receipts
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), receipts.check_every_seconds)
            if stop.is_set():
                return
            now = time.time()
            for entry in self._store.outbox_due(now):
                with bound_contextvars(
                    message_id=entry.message_id,
                    origin=self._views.view.config.network,
                    destination=entry.destination,
                    kind=entry.kind,
                ):
                    try:
                        if now - entry.created_at > receipts.undeliverable_after_seconds:
                            self._store.outbox_update(
                                entry.message_id, "undeliverable", "no receipt in time"
                            )
                            log.warning("message_undeliverable", attempts=entry.attempts)
                            self._observe.undeliverable(entry.message_id)
                            continue
                        log.info("message_resent", attempt=entry.attempts + 1)
                        await self.send_from_outbox(entry.message_id)
                    except TransportError as exc:
                        log.warning("resend_failed", error=str(exc))
                        break  # the broker failed us: the rest waits for the next round
                    except (RefusedMessage, AuditError) as exc:
                        log.warning("resend_failed", error=str(exc))

    async def send_receipt(self, message: SignedMessage, routing: Deliver) -> None:
        header = message.header
        receipt = Receipt(
            receipt_for=header.message_id,
            content_sha256=message.content_sha256,
            received_at=self._clock(),
            received_by="node",
            delivered_to=routing.contact_points[0] if routing.contact_points else None,
        )
        back = self._actions.sign(
            "receipt", reply_to(header), receipt, in_reply_to=header.message_id
        )
        await self._send_own(back)

    async def tell_origin(self, message: SignedMessage, refused: RefusedMessage) -> None:
        """Send the origin of ``message``, which this node refused, one signed refusal notice
        (``nodes/refusals.py``): not about a node's own message, and not more often than the
        gate allows. A notice that cannot be routed back is logged; the refusal itself is in
        the quarantine already."""
        header = message.header
        if not deserves_notice(header, self._views.view.config.network):
            return
        with bound_contextvars(**message_context(header)):
            if not self._notices.allow(header.origin.network, header.message_id):
                log.info("refusal_notice_withheld", reason=refused.reason.value)
                return
            notice = refusal_notice(message, refused)
            back = self._actions.sign(
                "notice", reply_to(header), notice, in_reply_to=header.message_id
            )
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
        view = self._views.view
        config = view.config
        routing = route(message.header, (), view.directory, config.routes, config.network)
        if isinstance(routing, Refuse):
            raise RefusedMessage(routing.reason, routing.detail)
        if isinstance(routing, Forward):
            await self._actions.forward(message, routing)
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
        await self._actions.deliver(message, routing)
        if header.kind in RECEIPTED and self._store.outbox_get(header.message_id) is not None:
            self._store.outbox_update(
                header.message_id,
                "delivered",
                "delivered locally",
                target=self._views.view.config.network,
            )

    # --- receipts and notices for our own messages -------------------------------------------
    def on_receipt(self, message: SignedMessage, payload: WireModel) -> None:
        assert isinstance(payload, Receipt)
        entry = self._store.outbox_get(payload.receipt_for)
        signer = message.header.origin.network
        if entry is None:
            # A verified receipt for a message signed with our key that this node has no record
            # of: it was signed around the node (a tool holding the key), or before the node's
            # state was lost. Not the signer's fault, so not a refusal: recorded and raised as
            # an alert (mlanet status: receipts_unmatched), never put into the quarantine.
            self._store.event(payload.receipt_for, "receipt_unmatched", f"receipt from {signer}")
            log.warning("receipt_unmatched", receipt_for=payload.receipt_for, by=signer)
            return
        check_addressee("receipt", signer, self._addressee(entry))
        if entry.content_sha256 != payload.content_sha256:
            raise RefusedMessage(Reason.UNAUTHORISED, f"receipt from {signer} does not match")
        if entry.state != "delivered":
            self._store.outbox_update(
                payload.receipt_for,
                "delivered",
                f"receipt from {signer} ({payload.delivered_to or 'node'})",
            )
            log.info("receipt_received", receipt_for=payload.receipt_for, by=signer)
            self._observe.receipt(payload.receipt_for, signer, time.time() - entry.created_at)

    def _addressee(self, entry: OutboxEntry) -> str | None:
        """Where our message was sent: as recorded when it was forwarded (or delivered here);
        before that record (a crash between the publish and the record), where it is routed."""
        if entry.target is not None:
            return entry.target
        view = self._views.view
        try:
            header = open_envelope(entry.wire, view.trust).header
        except RefusedMessage:
            return None
        return target_network(header, view.directory, view.config.network)

    def on_notice(self, message: SignedMessage, payload: WireModel) -> None:
        """A notice about a message this node sent: one with a reason (a refusal notice) marks
        it failed, when it comes from a network that held the message (``docs/PROTOCOL.md``
        section 10.1); one without, only from the network it was addressed to. A notice about
        a message this node did not send is only delivered."""
        assert isinstance(payload, Notice)
        if payload.regarding is None:
            return
        entry = self._store.outbox_get(payload.regarding)
        if entry is None:
            return
        signer = message.header.origin.network
        if payload.reason is None:
            check_addressee("notice", signer, self._addressee(entry))
            return
        self._check_refusal(signer, entry, payload)
        if entry.state not in ("delivered", "failed"):
            self._store.outbox_update(
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
        now = self._clock()
        view = self._views.view
        config = view.config
        sent = open_envelope(entry.wire, view.trust)
        copy = refused_copy(sent, notice.content_sha256, notice.hops or (), view.trust, now=now)
        check_path(
            copy.header,
            tuple(hop.record for hop in copy.hops),
            view.held.directory,
            now=now,
            skew=timedelta(seconds=config.limits.max_clock_skew_seconds),
        )
        routing = route(sent.header, (), view.directory, config.routes, config.network)
        check_refuser(
            refuser,
            copy,
            addressee=self._addressee(entry),
            first_step=routing.peer if isinstance(routing, Forward) else None,
        )
