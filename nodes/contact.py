"""What a contact point (or an operator on its behalf) does with its own network's node:
submit a message, read delivered messages, and track a message's state."""

from __future__ import annotations

from dataclasses import dataclass

from broker import RefusedMessage, SignedMessage, canonical_bytes, decode_payload, open_envelope
from broker.transport import SUBMIT, Transport, deliver_queue
from nodes.config import NodeConfig
from nodes.node import trust_from_directory
from nodes.store import OutboxEntry, Store, TrackEvent
from schemas import WireModel, payload_model
from schemas.submission import Submission

__all__ = ["InboxItem", "Tracking", "read_inbox", "submit", "track"]


async def submit(config: NodeConfig, submission: Submission) -> str:
    """Validate locally, then hand the submission to the node (broker-confirmed)."""
    payload_model(submission.kind).model_validate(submission.payload)
    body = canonical_bytes(submission.model_dump(mode="json", exclude_none=True))
    async with Transport(config.amqp_url()) as transport:
        await transport.publish(
            SUBMIT, body, message_id=submission.message_id, kind=submission.kind
        )
    return submission.message_id


@dataclass(frozen=True)
class InboxItem:
    message: SignedMessage
    payload: WireModel
    new: bool


async def read_inbox(config: NodeConfig, contact_point: str) -> list[InboxItem]:
    """Move delivered messages into the contact point's archive (deduplicated), then list it.

    Each message is verified again end to end (origin and every hop) before it is archived.
    """
    trust = trust_from_directory(config.load_directory())
    store = Store(config.state_dir / "node.sqlite3")
    fresh: set[tuple[str, str]] = set()
    try:
        async with Transport(config.amqp_url()) as transport:
            while (incoming := await transport.get(deliver_queue(contact_point))) is not None:
                try:
                    message = open_envelope(
                        incoming.body, trust, max_bytes=config.limits.max_message_bytes
                    )
                except RefusedMessage:
                    await incoming.requeue()  # the node delivered it: keep it for an operator
                    raise
                header = message.header
                if store.inbox_add(
                    contact_point,
                    header.origin.network,
                    header.message_id,
                    message.content_sha256,
                    header.kind,
                    incoming.body,
                ):
                    fresh.add((header.origin.network, header.message_id))
                await incoming.ack()
        items = []
        for origin, message_id, _kind, wire, _at in store.inbox(contact_point):
            message = open_envelope(wire, trust, max_bytes=config.limits.max_message_bytes)
            items.append(InboxItem(message, decode_payload(message), (origin, message_id) in fresh))
        return items
    finally:
        store.close()


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
