"""What a contact point (or an operator on its behalf) does with its own network's node:
submit a message, read delivered messages, and track a message's state."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from broker import (
    RefusedMessage,
    SignedMessage,
    TrustStore,
    canonical_bytes,
    decode_payload,
    load_signing_key,
    open_envelope,
)
from broker.transport import QUARANTINE, SUBMIT, Incoming, Transport, deliver_queue
from nodes.audit import AUDIT_FILE, AuditLog, flow_meta, refusal
from nodes.config import NodeConfig
from nodes.directory import message_trust
from nodes.quarantine import claim
from nodes.store import OutboxEntry, Store, TrackEvent
from schemas import WireModel, payload_model
from schemas.submission import Submission

__all__ = [
    "ARCHIVE_FILE",
    "InboxItem",
    "Taken",
    "Tracking",
    "facilitation_request",
    "open_archive",
    "read_inbox",
    "submit",
    "submit_on",
    "take_delivered",
    "track",
]

log = structlog.get_logger("mlanet.contact")


def facilitation_request(
    sender: str,
    country: str,
    *,
    case_ref: str = "KH-MLA-2020-0042",
    summary: str = "Test request: no real case content.",
    offences: tuple[str, ...] = ("drug_trafficking",),
    measures: tuple[str, ...] = ("evidence",),
    languages: tuple[str, ...] = ("en",),
) -> Submission:
    """A facilitation request from contact point ``sender`` to ``country``, with a new id."""
    return Submission.model_validate(
        {
            "message_id": str(uuid.uuid4()),
            "kind": "facilitation_request",
            "sender": sender,
            "destination": {"country": country},
            "payload": {
                "case_ref": case_ref,
                "requesting_country": sender[:2].upper(),
                "requested_country": country,
                "offence_categories": list(offences),
                "measures_sought": list(measures),
                "languages": list(languages),
                "summary": summary,
            },
        }
    )


async def submit(config: NodeConfig, submission: Submission) -> str:
    """Validate locally, then hand the submission to the node (broker-confirmed)."""
    async with Transport(config.amqp_url()) as transport:
        return await submit_on(transport, submission)


async def submit_on(transport: Transport, submission: Submission) -> str:
    """:func:`submit` on a connection the caller keeps open (for clients that send a lot)."""
    payload_model(submission.kind).model_validate(submission.payload)
    body = canonical_bytes(submission.model_dump(mode="json", exclude_none=True))
    await transport.publish(SUBMIT, body, message_id=submission.message_id, kind=submission.kind)
    return submission.message_id


@dataclass(frozen=True)
class InboxItem:
    message: SignedMessage
    payload: WireModel
    new: bool


# The contact points' archive of delivered messages: a database of its own beside the node's,
# so that reading an inbox never waits for the node's write transactions (which the node holds
# across a whole batch of deliveries: its group commit). The archive's row is the contact
# point's dedupe record, written in one transaction with the message.
ARCHIVE_FILE = "inbox.sqlite3"


def open_archive(config: NodeConfig) -> Store:
    """Open the archive; the first time, adopt what an earlier version archived in the node's
    own database."""
    path = config.state_dir / ARCHIVE_FILE
    fresh = not path.exists()
    archive = Store(path)
    if fresh:
        archive.adopt_inbox(config.state_dir / "node.sqlite3")
    return archive


async def read_inbox(config: NodeConfig, contact_point: str) -> list[InboxItem]:
    """Move delivered messages into the contact point's archive (deduplicated), then list it.

    Each message is verified again end to end (origin and every hop) before it is archived.
    """
    trust = message_trust(config.load_directory())
    store = open_archive(config)
    try:
        async with Transport(config.amqp_url()) as transport:
            taken = await take_delivered(config, contact_point, transport, store, trust)
        fresh = {(t.origin, t.message_id) for t in taken if t.new}
        items = []
        for origin, message_id, _kind, wire, _at in store.inbox(contact_point):
            message = open_envelope(wire, trust, max_bytes=config.limits.max_message_bytes)
            items.append(InboxItem(message, decode_payload(message), (origin, message_id) in fresh))
        return items
    finally:
        store.close()


@dataclass(frozen=True)
class Taken:
    """A message moved from a contact point's delivery queue into its archive."""

    origin: str
    sender: str | None  # the origin's contact point; None for a message its node signed
    message_id: str
    kind: str
    new: bool  # False: the archive held it already (a repeat in the delivery queue)


async def take_delivered(
    config: NodeConfig,
    contact_point: str,
    transport: Transport,
    store: Store,
    trust: TrustStore,
    *,
    on_taken: Callable[[Taken], None] | None = None,
) -> list[Taken]:
    """Move every delivered message into the contact point's archive (deduplicated on origin
    and message id), each verified end to end first and acked only once archived.
    ``on_taken`` hears of each one at once (the returned list is lost if a later one fails).

    Verification is against the node's directory now: a message whose signing key was revoked
    (or expired) since the node delivered it is not handed over; it goes to quarantine with its
    reason (see :func:`_refuse_delivered`)."""
    taken = []
    queue = deliver_queue(contact_point)
    while (incoming := await transport.get(queue)) is not None:
        try:
            message = open_envelope(
                incoming.body,
                trust,
                max_bytes=config.limits.max_message_bytes,
                now=datetime.now(UTC),
            )
        except RefusedMessage as refused:
            await _refuse_delivered(config, transport, incoming, refused, queue)
            continue
        header = message.header
        new = store.inbox_add(
            contact_point,
            header.origin.network,
            header.message_id,
            message.content_sha256,
            header.kind,
            incoming.body,
        )
        await incoming.ack()
        origin = header.origin
        taken.append(
            Taken(origin.network, origin.contact_point, header.message_id, header.kind, new)
        )
        if on_taken is not None:
            on_taken(taken[-1])
    return taken


async def _refuse_delivered(
    config: NodeConfig,
    transport: Transport,
    incoming: Incoming,
    refused: RefusedMessage,
    queue: str,
) -> None:
    """Quarantine a message of a delivery queue that no longer verifies, and take it out.

    Published to quarantine with a confirm, then recorded in the audit trail (a ``refused``
    record, its ``via`` the delivery queue) and where ``mlanet track`` reads, and only then
    acked: a refusal is never taken out of the queue unrecorded (if this stops half-way, the
    message is still in the delivery queue, and is refused again next time). The audit trail is
    opened, with the node's signing key, before anything is published."""
    entry_id = str(uuid.uuid4())  # the quarantine entry's id (mlanet quarantine show ID)
    flow = claim(incoming.body, max_bytes=config.limits.max_message_bytes).flow()
    with AuditLog(config.state_dir / AUDIT_FILE, load_signing_key(config.signing_key)) as audit:
        await transport.publish(
            QUARANTINE,
            incoming.body,
            message_id=entry_id,
            kind="refused",
            headers={
                "x-mlanet-reason": refused.reason.value,
                "x-mlanet-detail": refused.detail,
                "x-mlanet-via": queue,
                "x-mlanet-at": datetime.now(UTC).isoformat(),
            },
        )
        audit.append(
            "refused",
            refusal(flow_meta(flow), entry_id, refused.reason.value, refused.detail, queue),
        )
    if incoming.message_id:  # in the node's database, where `mlanet track` reads
        tracking = Store(config.state_dir / "node.sqlite3")
        try:
            tracking.event(incoming.message_id, "quarantined", f"at delivery: {refused}")
        finally:
            tracking.close()
    await incoming.ack()
    log.warning(
        "refused_at_delivery", reason=refused.reason.value, via=queue, quarantine_id=entry_id
    )


@dataclass(frozen=True)
class Tracking:
    entry: OutboxEntry | None
    events: list[TrackEvent]


def track(config: NodeConfig, message_id: str) -> Tracking:
    store = Store(config.state_dir / "node.sqlite3", readonly=True)
    try:
        return Tracking(store.outbox_get(message_id), store.events(message_id))
    finally:
        store.close()
