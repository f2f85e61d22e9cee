"""What a contact point (or an operator on its behalf) does with its own network's node:
submit a message, read delivered messages, and track a message's state."""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlencode

import structlog

from mlanet.broker import (
    RefusedMessage,
    SignedMessage,
    TrustStore,
    decode_payload,
    open_delivered,
)
from mlanet.broker.contact_point_keys import ContactPointKey
from mlanet.broker.handling import kept_until
from mlanet.broker.submission_signing import sign_returned, sign_submission
from mlanet.broker.transport import SUBMIT, SUBMIT_EXCHANGE, Transport, deliver_queue
from mlanet.nodes.config import NodeConfig
from mlanet.nodes.directory.book import load_directory, message_trust
from mlanet.nodes.directory.contact_points import Credentials
from mlanet.nodes.state.store import OutboxEntry, Purged, Store, TrackEvent, open_node_store
from mlanet.schemas import WireModel, payload_model
from mlanet.schemas.submission import Submission

__all__ = [
    "ARCHIVE_FILE",
    "CLIENT_CERT",
    "CLIENT_KEY",
    "InboxItem",
    "Taken",
    "Tracking",
    "contact_point_url",
    "facilitation_request",
    "open_archive",
    "purge_expired",
    "read_inbox",
    "read_purged",
    "status_update",
    "submit",
    "submit_on",
    "take_delivered",
    "track",
]

log = structlog.get_logger("mlanet.contact")

# A contact point's own client certificate, in its credentials folder, for a broker whose TLS
# listener asks every client for one (it still logs in with its password: a node's
# [broker.tls] client certificate is the node's, never handed to a contact point).
CLIENT_CERT, CLIENT_KEY = "client.pem", "client.key"


def contact_point_url(config: NodeConfig, credentials: Credentials) -> str:
    """The node's broker and vhost as the contact point's own user: over TLS when the node's
    ``[broker.tls]`` says so, checked against the same CA file, with the contact point's own
    client certificate when its folder holds one."""
    url = config.broker.url(credentials.user(config), credentials.password)
    cert, key = credentials.folder / CLIENT_CERT, credentials.folder / CLIENT_KEY
    if config.broker.tls is not None and cert.exists() and key.exists():
        url += "&" + urlencode({"certfile": str(cert), "keyfile": str(key)})
    return url


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


def status_update(
    sender: str,
    to: str,
    in_reply_to: str,
    *,
    case_ref: str = "KH-MLA-2020-0042",
    status: str = "in_progress",
) -> Submission:
    """Contact point ``sender``'s status update to contact point ``to`` (of its country) about
    the message ``in_reply_to``, with a new id."""
    return Submission.model_validate(
        {
            "message_id": str(uuid.uuid4()),
            "kind": "status_update",
            "sender": sender,
            "destination": {"country": to[:2].upper(), "contact_point": to},
            "in_reply_to": in_reply_to,
            "payload": {"case_ref": case_ref, "status": status, "regarding": in_reply_to},
        }
    )


async def submit(config: NodeConfig, credentials: Credentials, submission: Submission) -> str:
    """Validate locally, then hand the submission to the node, signed with the contact point's
    key and as its broker user (broker-confirmed)."""
    async with Transport(contact_point_url(config, credentials)) as transport:
        return await submit_on(transport, credentials.key, submission)


async def submit_on(transport: Transport, key: ContactPointKey, submission: Submission) -> str:
    """:func:`submit` on a connection the caller keeps open (for clients that send a lot)."""
    payload_model(submission.kind).model_validate(submission.payload)
    body = sign_submission(submission, key)
    await transport.publish(
        SUBMIT,
        body,
        message_id=submission.message_id,
        kind=submission.kind,
        exchange=SUBMIT_EXCHANGE,
    )
    return submission.message_id


@dataclass(frozen=True)
class InboxItem:
    message: SignedMessage
    payload: WireModel
    new: bool


# A contact point's archive of delivered messages: a database in its own credentials folder
# (only its own messages, never the node's or another contact point's), which reading an inbox
# never has to share with the node's write transactions. The archive's row is the contact
# point's dedupe record, written in one transaction with the message.
ARCHIVE_FILE = "inbox.sqlite3"


def open_archive(config: NodeConfig, credentials: Credentials) -> Store:
    """Open the contact point's archive; the first time, adopt its own messages from what an
    earlier version archived in the node's state folder (when this reader may read it)."""
    path = credentials.folder / ARCHIVE_FILE
    fresh = not path.exists()
    archive = Store(path, database=config.database, purpose="contact point archive")
    if fresh and config.database is None:
        for older in (config.state_dir / ARCHIVE_FILE, config.state_dir / "node.sqlite3"):
            with contextlib.suppress(sqlite3.Error):  # not ours to read: nothing to adopt
                archive.adopt_inbox(older, contact_point=credentials.contact_point)
    return archive


async def read_inbox(config: NodeConfig, credentials: Credentials) -> list[InboxItem]:
    """Move the contact point's delivered messages into its archive (deduplicated), purge the
    content whose retention has passed (:func:`purge_expired`), then list what is left; as its
    own broker user, which may read its own delivery queue only.

    Each message is verified again end to end (origin and every hop) before it is archived.
    """
    trust = message_trust(load_directory(config))
    store = open_archive(config, credentials)
    try:
        async with Transport(contact_point_url(config, credentials)) as transport:
            taken = await take_delivered(config, credentials.key, transport, store, trust)
        purge_expired(config, store, credentials.contact_point)
        fresh = {(t.origin, t.message_id) for t in taken if t.new}
        items = []
        for origin, message_id, _kind, wire, _at in store.inbox(credentials.contact_point):
            message = open_delivered(wire, trust, max_bytes=config.limits.max_message_bytes)
            items.append(InboxItem(message, decode_payload(message), (origin, message_id) in fresh))
        return items
    finally:
        store.close()


def purge_expired(
    config: NodeConfig, store: Store, contact_point: str, *, now: datetime | None = None
) -> list[Purged]:
    """Purge from ``contact_point``'s archive the content of every message whose retention has
    passed (the period its sender asked for, capped by ``[policy] max_retention_days``),
    keeping its metadata (``docs/PROTOCOL.md`` section 17). Each purge is one log line of
    metadata; the archive's row is its record."""
    at = (now or datetime.now(UTC)).timestamp()
    purged = store.inbox_purge(contact_point, now=at, max_days=config.policy.max_retention_days)
    for item in purged:
        log.info(
            "content_purged",
            message_id=item.message_id,
            origin=item.origin,
            kind=item.kind,
            contact_point=contact_point,
            content_sha256=item.content_sha256,
        )
    return purged


def read_purged(config: NodeConfig, credentials: Credentials) -> list[Purged]:
    """What the contact point's archive keeps of the messages whose content it purged."""
    store = open_archive(config, credentials)
    try:
        return store.inbox_purged(credentials.contact_point)
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
    key: ContactPointKey,
    transport: Transport,
    store: Store,
    trust: TrustStore,
    *,
    on_taken: Callable[[Taken], None] | None = None,
) -> list[Taken]:
    """Move every message delivered to ``key``'s contact point into its archive (deduplicated
    on origin and message id), each verified end to end first and acked only once archived.
    ``on_taken`` hears of each one at once (the returned list is lost if a later one fails).

    Verification is against the node's directory now: a message whose signing key was revoked
    (or expired) since the node delivered it is not handed over. It is handed back to the node,
    signed by the contact point, through ``mlanet.submit`` (published with a confirm before it
    leaves the delivery queue); the node quarantines it with the reason and records it where
    ``mlanet track`` reads (the contact point's user may do neither itself)."""
    taken = []
    contact_point = key.contact_point
    queue = deliver_queue(contact_point)
    while (incoming := await transport.get(queue)) is not None:
        try:
            message = open_delivered(
                incoming.body,
                trust,
                max_bytes=config.limits.max_message_bytes,
                now=datetime.now(UTC),
            )
        except RefusedMessage as refused:
            await transport.publish(
                SUBMIT,
                sign_returned(incoming.body, refused.reason, key),
                message_id=str(uuid.uuid4()),
                kind="returned",
                exchange=SUBMIT_EXCHANGE,
            )
            await incoming.ack()
            log.warning("refused_at_delivery", reason=refused.reason.value, via=queue)
            continue
        header = message.header
        until = kept_until(header)  # the sender's period; the reader's cap applies at purge
        new = store.inbox_add(
            contact_point,
            header.origin.network,
            header.message_id,
            message.content_sha256,
            header.kind,
            incoming.body,
            created_at=header.created_at.timestamp(),
            retain_until=None if until is None else until.timestamp(),
        )
        await incoming.ack()
        origin = header.origin
        taken.append(
            Taken(origin.network, origin.contact_point, header.message_id, header.kind, new)
        )
        if on_taken is not None:
            on_taken(taken[-1])
    return taken


@dataclass(frozen=True)
class Tracking:
    entry: OutboxEntry | None
    events: list[TrackEvent]


def track(config: NodeConfig, message_id: str) -> Tracking:
    store = open_node_store(config, readonly=True)
    try:
        return Tracking(store.outbox_get(message_id), store.events(message_id))
    finally:
        store.close()
