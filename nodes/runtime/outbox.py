"""The node's own messages: its contact points' submissions, checked, signed and kept in the
outbox until the destination's receipt (``nodes/runtime/receipts.py``), and resent until then.

A submission is durable in the outbox before it is published: after a crash the same signed
bytes are sent again, never a second signature of the same message id. One that is refused
(unsigned, not a contact point here, a directory too old to trust) is quarantined and never
signed; the last also tells its contact point with a notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog
from pydantic import ValidationError

from mlanet.broker import (
    Reason,
    RefusedMessage,
    SignedMessage,
    TransportError,
    open_envelope,
)
from mlanet.broker.contact_point_keys import KeyFolder
from mlanet.broker.errors import error_location
from mlanet.broker.handling import handling_of
from mlanet.broker.provenance import (
    check_origin,
    check_payload_origin,
)
from mlanet.broker.routing import Deliver, Forward, Refuse, route
from mlanet.broker.submission_signing import Returned, open_submission
from mlanet.broker.transport import SUBMIT, Transport, deliver_queue, out_queue
from mlanet.nodes.config import NodeConfig, Receipts
from mlanet.nodes.logs import bound
from mlanet.nodes.runtime import crashpoints
from mlanet.nodes.runtime.actions import describe
from mlanet.nodes.runtime.observe import Flow, Observers
from mlanet.nodes.runtime.seams import Commit, Outbound, OwnDelivery, ViewSource
from mlanet.nodes.state.audit import AuditError
from mlanet.nodes.state.db import DB_ERRORS
from mlanet.nodes.state.store import Store
from mlanet.schemas import Destination, Notice, payload_model
from mlanet.schemas.sealing import SEALED_KINDS
from mlanet.schemas.submission import Submission

__all__ = ["Outbox"]

log = structlog.get_logger("mlanet.node")


class Outbox:
    """Submissions in, the node's own messages out until their receipt."""

    def __init__(
        self,
        views: ViewSource,
        *,
        transport: Transport,
        store: Store,
        observe: Observers,
        actions: Outbound,
        own: OwnDelivery,
        contact_point_keys: KeyFolder,
        durable: Commit,
    ) -> None:
        self._views = views
        self._transport = transport
        self._store = store
        self._observe = observe
        self._actions = actions
        self._own = own
        self._contact_point_keys = contact_point_keys
        self._durable = durable

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
        with bound(
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
                rules = handling_of(submission, self._views.view.config.policy)
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
                    members_only=rules.members_only,
                    direct_only=rules.direct_only,
                    retention_days=rules.retention_days,
                )
                try:  # what the destination will check, checked before anything is signed out
                    _sealed_if_required(message, self._views.view.config)
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
                # recorded in the same transaction as the outbox row
                self._observe.submitted(submission.sender, Flow.of(message.header))
                # Durable before it is published: after a crash the same signed bytes are sent
                # again, never a second signature of the same message id (an equivocation).
                await self._durable()
                crashpoints.reached("after_sign_before_forward")
            elif entry.state != "queued":
                log.info("submission_repeated", state=entry.state)
                return
            await self.send_from_outbox(submission.message_id)

    async def _refuse_submission(self, body: bytes, refused: RefusedMessage) -> None:
        """Quarantine a refused submission, never signed or sent; ``mlanet track`` shows the
        refusal under the message id it claims. No notice: its sender may not be who it says."""
        await self._actions.quarantine(body, refused, SUBMIT)  # its journal row names the id

    async def _refuse_closed(
        self, body: bytes, submission: Submission, refused: RefusedMessage
    ) -> None:
        """A new message while the directory is too old to trust: quarantined, the reason
        recorded for ``mlanet track`` and sent to the submitting contact point as a notice."""
        await self._actions.quarantine(body, refused, SUBMIT)
        self._store.event(
            submission.message_id, "failed", refused.detail, reason=refused.reason.value
        )
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
        await self._actions.quarantine(returned.message, refused, via)  # its row names the id

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
            self._store.outbox_update(
                message_id, "failed", routing.reason.value, record=True, reason=routing.reason.value
            )
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
            self._observe.forwarded(routing.peer, Flow.of(message.header))  # row and log line
        else:
            await self._own.deliver_own(message, routing)

    async def resend(self, stop: asyncio.Event, *, duty: Callable[[], bool] = lambda: True) -> None:
        """Until ``stop``: resend what has no receipt yet, give up on what is too old; each
        round only while ``duty()`` (one replica resends for all: ``replicas.py``)."""
        receipts = self._views.view.config.receipts
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), receipts.check_every_seconds)
            if stop.is_set():
                return
            if not duty():
                continue
            try:
                await self._resend_round(receipts)
            except DB_ERRORS as exc:  # the database is out of reach: the next round retries
                log.warning("resend_round_failed", error=type(exc).__name__)

    async def _resend_round(self, receipts: Receipts) -> None:
        """One round: resend what is due, give up on what is too old."""
        now = time.time()
        for entry in self._store.outbox_due(now):
            with bound(
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
                        self._observe.undeliverable(entry.message_id)
                        continue
                    log.info("message_resent", attempt=entry.attempts + 1)
                    await self.send_from_outbox(entry.message_id)
                except TransportError as exc:
                    log.warning("resend_failed", error=str(exc))
                    break  # the broker failed us: the rest waits for the next round
                except (RefusedMessage, AuditError) as exc:
                    log.warning("resend_failed", error=str(exc))


def _sealed_if_required(message: SignedMessage, config: NodeConfig) -> None:
    """Under ``[policy] require_sealed`` a sealed kind leaves only sealed: a destination that
    lists no encryption key is not sent one (``no_encryption_key``)."""
    header = message.header
    if config.policy.require_sealed and header.kind in SEALED_KINDS and header.sealed is None:
        raise RefusedMessage(
            Reason.NO_ENCRYPTION_KEY, "the destination network lists no valid encryption key"
        )
