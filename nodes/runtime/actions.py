"""What the node does with a message once it is decided: sign, forward, deliver, quarantine.

Every action is recorded (the store, the audit trail through the observers, a log line) before
the delivery that caused it is acked: the node's group commit (``nodes/runtime/node.py``) commits
those records together, and :meth:`Actions.quarantine` waits for it, so that its caller may ack.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from datetime import datetime

import structlog

from mlanet.broker import Reason, RefusedMessage, SignedMessage, add_hop, sign_message
from mlanet.broker.quarantine_headers import REASON as QUARANTINE_REASON
from mlanet.broker.routing import Deliver, Forward
from mlanet.broker.seal import sealing_for
from mlanet.broker.transport import (
    SUBMIT,
    Incoming,
    Transport,
    body_sha256,
    body_size,
    deliver_queue,
    out_queue,
)
from mlanet.nodes.logs import bound
from mlanet.nodes.runtime import crashpoints
from mlanet.nodes.runtime.observe import Flow, Observers
from mlanet.nodes.runtime.seams import Commit, ViewSource
from mlanet.nodes.state.quarantine import Entry, claim, entry_of, log_context, refusal_id
from mlanet.nodes.state.quarantine_store import Bound, QuarantineStore
from mlanet.nodes.state.store import Store
from mlanet.schemas import Destination, Header, Origin, WireModel

__all__ = ["Actions", "describe", "message_context", "reply_to"]

log = structlog.get_logger("mlanet.node")

_REASONS = frozenset(reason.value for reason in Reason)


class Actions:
    """The node's outbound actions; each reads the directory's current view when it runs."""

    def __init__(
        self,
        views: ViewSource,
        *,
        clock: Callable[[], datetime],
        transport: Transport,
        store: Store,
        quarantined: QuarantineStore,
        observe: Observers,
        durable: Commit,
    ) -> None:
        self._views = views
        self._clock = clock
        self._transport = transport
        self._store = store
        self._quarantined = quarantined
        self._observe = observe
        self._durable = durable

    def sign(
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
        direct_only: bool | None = None,
        retention_days: int | None = None,
    ) -> SignedMessage:
        """A new message of this network, signed with the key it signs with now; its handling
        rules (``members_only``, ``direct_only``, ``retention_days``) as given: the network's
        policy is applied by whoever signs a contact point's message (``outbox.py``). A sealed
        kind is sealed for its destination network when that network lists an encryption key
        (``docs/PROTOCOL.md`` section 16)."""
        view = self._views.view
        header = Header.model_validate(
            {
                "kind": kind,
                "message_id": message_id or str(uuid.uuid4()),
                "origin": Origin(
                    network=view.config.network, country=country, contact_point=contact_point
                ),
                "destination": destination,
                "created_at": self._clock(),
                "hop_limit": hop_limit,
                "key_id": view.key.key_id,
                "urgency": urgency,
                "in_reply_to": in_reply_to,
                "members_only": True if members_only else None,
                "direct_only": True if direct_only else None,
                "retention_days": retention_days,
            }
        )
        sealing = sealing_for(header, view.directory, view.config.network)
        if sealing is None:  # a kind every node reads, or a network that lists no key
            return sign_message(header, payload, view.key)
        statement, public_key = sealing  # a sealed kind: the header's one check on it holds
        sealed = header.model_copy(update={"sealed": statement})
        return sign_message(sealed, payload, view.key, seal_with=public_key)

    async def forward(self, message: SignedMessage, routing: Forward) -> None:
        view = self._views.view
        header = message.header
        outgoing = message
        if header.origin.network != view.config.network:
            outgoing = add_hop(message, view.key, to=routing.peer, at=self._clock())
        await crashpoints.in_flight(
            "after_forward_before_confirm",
            self._transport.publish(
                out_queue(routing.peer),
                outgoing.to_bytes(),
                message_id=header.message_id,
                kind=header.kind,
            ),
        )
        crashpoints.reached("after_confirm_before_ack")
        self._store.remember(
            header.origin.network,
            header.message_id,
            message.content_sha256,
            "forwarded",
        )
        with bound(**message_context(header)):  # a receipt or notice names itself
            self._observe.forwarded(routing.peer, Flow.of(header))  # its journal row and log line

    async def deliver(self, message: SignedMessage, routing: Deliver) -> None:
        header = message.header
        for contact_point in routing.contact_points:
            await self._transport.publish(
                deliver_queue(contact_point),
                message.to_delivered_bytes(),  # a sealed payload with its opened plaintext
                message_id=header.message_id,
                kind=header.kind,
            )
        crashpoints.reached("after_delivery_before_ack")
        self._store.remember(
            header.origin.network,
            header.message_id,
            message.content_sha256,
            "delivered",
        )
        with bound(**message_context(header)):
            self._observe.delivered(routing.contact_points, Flow.of(header))  # row and log line

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
        config = self._views.view.config
        limits = config.limits
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
            if not self._quarantined.claimed(derived):
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
        seen = flow or claimed.flow(origin=config.network if via == SUBMIT else None)
        with bound(quarantine_id=entry.id, **log_context(seen)):
            body_kept = self._quarantined.add(
                entry,
                kept,
                self._bound(entry.peer),
                fresh=fresh,
                redelivered=redelivered,
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
            self._observe.refused(refused.reason.value, via, flow)
            self._observe.quarantined(entry.id, refused.reason.value, refused.detail, via, seen)
        await self._durable()

    def _bound(self, peer: str) -> Bound:
        """What one peer's refused messages may keep in the quarantine (``""``: local ones)."""
        config = self._views.view.config
        limits = config.peer_limits(peer) if peer else config.limits.peer
        return Bound(limits.quarantine_messages, limits.quarantine_bytes)

    def take_in(self, incoming: Incoming) -> None:
        """What RabbitMQ put into ``mlanet.quarantine``, into the quarantine store (committed
        by the caller's group commit)."""
        entry = entry_of(incoming.body, incoming.exchange, incoming.message_id, incoming.headers)
        body = incoming.body
        added = self._quarantined.add(
            entry,
            body,
            self._bound(entry.peer),
            fresh=False,
            redelivered=incoming.redelivered,
        )
        if added is None:
            return  # already in the store: redelivered, or one more copy of it
        flow = entry.claim.flow()
        # a refusal's publisher (a contact point's reader) recorded it in track and the audit
        # trail already: one fact, one record
        recorded = QUARANTINE_REASON in incoming.headers
        with bound(quarantine_id=entry.id, **log_context(flow)):
            log.warning(
                "message_quarantined",
                reason=entry.reason,
                detail=entry.detail,
                via=entry.via,
                body_kept=added,
            )
            if not recorded:
                reason = entry.reason if entry.reason in _REASONS else "unknown"
                self._observe.refused(reason, entry.via, flow)
                self._observe.quarantined(entry.id, reason, entry.detail, entry.via, flow)


def reply_to(header: Header) -> Destination:
    """Where an answer to ``header``'s message goes: back to its origin."""
    origin = header.origin
    return Destination(
        network=origin.network, country=origin.country, contact_point=origin.contact_point
    )


def message_context(header: Header) -> dict[str, str]:
    """What every log line about this message binds."""
    bound = {
        "message_id": header.message_id,
        "origin": header.origin.network,
        "destination": describe(header.destination),
        "kind": header.kind,
    }
    if header.in_reply_to:
        bound["in_reply_to"] = header.in_reply_to
    return bound


def describe(destination: Destination) -> str:
    return destination.contact_point or destination.country or destination.network or "?"
