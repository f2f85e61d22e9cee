"""Receipts and notices: what the node answers about a message, and what it takes back about its
own.

The destination of a message that gets a receipt (:data:`RECEIPTED`) signs one back to its origin; a
refused message's origin is told with a signed refusal notice (``nodes/runtime/refusals.py``). A
receipt or a notice about one of this node's messages is taken only from the network that message
was addressed to (the target it was forwarded to, or this network when delivered here): a relay, or
anyone who learnt the id, cannot mark it delivered or failed. A refusal notice is taken from a
network that held the message (``docs/PROTOCOL.md`` section 10.1)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog

from mlanet.broker import (
    Reason,
    RefusedMessage,
    SignedMessage,
    TransportError,
    decode_payload,
    open_envelope,
)
from mlanet.broker.provenance import check_addressee, check_path, check_refuser, refused_copy
from mlanet.broker.routing import Deliver, Forward, Refuse, route, target_network
from mlanet.nodes.logs import bound
from mlanet.nodes.runtime.actions import message_context, reply_to
from mlanet.nodes.runtime.observe import Observers
from mlanet.nodes.runtime.pipeline import unseal
from mlanet.nodes.runtime.refusals import NoticeGate, deserves_notice, refusal_notice
from mlanet.nodes.runtime.seams import Outbound, ViewSource
from mlanet.nodes.state.store import OutboxEntry, Store
from mlanet.schemas import Notice, Receipt, WireModel

__all__ = ["RECEIPTED", "Receipts"]

log = structlog.get_logger("mlanet.node")

RECEIPTED = {
    "facilitation_request",
    "status_update",
    "information_request",
    "information_response",
    "meeting_request",
}


class Receipts:
    """Receipts and notices sent, and those about the node's own messages received."""

    def __init__(
        self,
        views: ViewSource,
        *,
        clock: Callable[[], datetime],
        store: Store,
        observe: Observers,
        actions: Outbound,
    ) -> None:
        self._views = views
        self._clock = clock
        self._store = store
        self._observe = observe
        self._actions = actions
        self._notices = NoticeGate()  # how often the origin of a refused message is told

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
        await self.send_own(back)

    async def tell_origin(self, message: SignedMessage, refused: RefusedMessage) -> None:
        """Send the origin of ``message``, which this node refused, one signed refusal notice
        (``nodes/runtime/refusals.py``): not about a node's own message, and not more often than the
        gate allows. A notice that cannot be routed back is logged; the refusal itself is in
        the quarantine already."""
        header = message.header
        if not deserves_notice(header, self._views.view.config.network):
            return
        with bound(**message_context(header)):
            if not self._notices.allow(header.origin.network, header.message_id):
                log.info("refusal_notice_withheld", reason=refused.reason.value)
                return
            notice = refusal_notice(message, refused)
            back = self._actions.sign(
                "notice", reply_to(header), notice, in_reply_to=header.message_id
            )
            try:
                await self.send_own(back)
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

    async def send_own(self, message: SignedMessage) -> None:
        """Route and send a message this node signed (receipts, notices)."""
        view = self._views.view
        config = view.config
        routing = route(message.header, (), view.directory, config.routes, config.network)
        if isinstance(routing, Refuse):
            raise RefusedMessage(routing.reason, routing.detail)
        if isinstance(routing, Forward):
            await self._actions.forward(message, routing)
        else:
            await self.deliver_own(message, routing)

    async def deliver_own(self, message: SignedMessage, routing: Deliver) -> None:
        """A message whose origin and destination are both here."""
        view = self._views.view
        if message.header.sealed is not None and message.opened is None:  # read from the outbox
            message = unseal(message, view.seal_keys, view.config, view.held.directory)
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
            self._store.event(payload.receipt_for, "receipt_unmatched", by=signer)
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
                payload.regarding,
                "failed",
                f"{payload.reason}: refused by {signer}",
                record=True,
                reason=payload.reason,
                by=signer,
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
