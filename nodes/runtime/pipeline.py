"""The receiving pipeline, as named steps a reader can follow.

    size_cap -> sender_of -> transport -> verify -> authorise -> provenance -> dedupe -> route
    -> unseal -> validate

``verify`` checks the signatures over the exact bytes and validates the header and hop records
strictly; ``provenance`` holds the origin and the hop records to the directory (the origin's
country and contact point belong to its network, the path is one of links, in time);
``unseal`` opens a payload sealed for this network (``broker/seal.py``; at the destination
only: a relay holds no key that opens it); ``validate`` checks the payload against its kind's
schema, and what it says about who asks, at the destination only (relays route on the signed
header and never read case content).

Each step either returns what the next one needs or raises :class:`RefusedMessage` with a
reason code. :func:`receive` runs them in order (:func:`open_delivery` up to ``verify``, then
:func:`judge`); the node then delivers, forwards or quarantines (``nodes/runtime/node.py``), and
tells the origin of a refusal in :func:`judge`'s steps. Nothing here touches AMQP or writes
anything."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from mlanet.broker import (
    Reason,
    RefusedMessage,
    SignedMessage,
    TrustStore,
    decode_payload,
    open_envelope,
)
from mlanet.broker.provenance import check_origin, check_path, check_payload_origin
from mlanet.broker.routing import Deliver, Routing, route
from mlanet.broker.seal import SealKeyring
from mlanet.broker.topology import peer_of_inbox_exchange
from mlanet.broker.transport import CONTENT_TYPE, body_size
from mlanet.nodes.config import NodeConfig
from mlanet.nodes.state.store import Seen, Store
from mlanet.schemas import WireModel
from mlanet.schemas.directory import Directory
from mlanet.schemas.sealing import SEALED_KINDS

__all__ = ["Accepted", "Properties", "judge", "open_delivery", "receive"]


@dataclass(frozen=True, slots=True)
class Accepted:
    message: SignedMessage
    payload: WireModel | None  # None when this node only relays the message
    sender: str
    routing: Routing
    duplicate: Seen | None


@dataclass(frozen=True, slots=True)
class Properties:
    """The AMQP properties of a delivery that the pipeline checks; all others are ignored.

    The defaults are what mlanet's own transport sets.
    """

    content_type: str | None = CONTENT_TYPE
    content_encoding: str | None = None
    expires: bool = False


def size_cap(body: bytes, config: NodeConfig) -> None:
    if len(body) > config.limits.max_message_bytes:  # body_size: of a body the transport cut too
        raise RefusedMessage(
            Reason.OVERSIZED, f"{body_size(body)} bytes > {config.limits.max_message_bytes}"
        )


def sender_of(exchange: str, config: NodeConfig) -> str:
    """The peer that handed us the message: only its user may write its inbox exchange."""
    sender = peer_of_inbox_exchange(exchange)
    if sender is None:
        raise RefusedMessage(Reason.BAD_TRANSPORT, "message did not arrive through a peer inbox")
    if config.peer(sender) is None:
        raise RefusedMessage(Reason.UNAUTHORISED, f"{sender} is not a configured peer")
    return sender


def transport(properties: Properties) -> None:
    """The body is an mlanet envelope as it is: no other content type, no content encoding, and
    no expiration (a message that expired in our queue would leave without a reason code).
    The peer's values are never echoed: they are text the peer chose."""
    if properties.content_type != CONTENT_TYPE:
        raise RefusedMessage(Reason.BAD_TRANSPORT, "content type is not " + CONTENT_TYPE)
    if properties.content_encoding is not None:
        raise RefusedMessage(Reason.BAD_TRANSPORT, "a content encoding is set")
    if properties.expires:
        raise RefusedMessage(Reason.BAD_TRANSPORT, "an expiration is set")


def verify(body: bytes, trust: TrustStore, config: NodeConfig, now: datetime) -> SignedMessage:
    return open_envelope(body, trust, max_bytes=config.limits.max_message_bytes, now=now)


def validate(message: SignedMessage, config: NodeConfig, held: Directory) -> WireModel:
    payload = decode_payload(message, max_bytes=config.limits.max_message_bytes)
    check_payload_origin(message.header, payload, held)
    return payload


def unseal(
    message: SignedMessage,
    keyring: SealKeyring | None,
    config: NodeConfig,
    held: Directory,
) -> SignedMessage:
    """Open a sealed payload here, at its destination; the message with its plaintext.

    Under ``[policy] require_sealed`` a sealed kind must come sealed (``not_sealed``) to this
    network, which then lists an encryption key (section 16.4). Kinds every node reads are
    never sealed (the header model refuses that)."""
    header = message.header
    me = held.network(config.network)
    listed = me.encryption_keys if me is not None else []
    if header.sealed is None:
        if header.kind in SEALED_KINDS and config.policy.require_sealed:
            raise RefusedMessage(
                Reason.NOT_SEALED, f"a {header.kind} to {config.network} is sealed"
            )
        return message
    if keyring is None:
        raise RefusedMessage(Reason.UNKNOWN_ENCRYPTION_KEY, "this node holds no encryption key")
    opened = keyring.open(header, message.header_b64, message.payload_bytes, listed)
    return replace(message, opened=opened)


def authorise(message: SignedMessage, sender: str, config: NodeConfig, now: datetime) -> None:
    header = message.header
    if message.last_sender != sender:
        raise RefusedMessage(
            Reason.WRONG_SENDER, f"handed over by {sender}, last signed by {message.last_sender}"
        )
    if message.hops and message.hops[-1].record.to != config.network:
        raise RefusedMessage(Reason.WRONG_SENDER, "the last hop was addressed to another network")
    peer = config.peer(sender)
    if peer is None or header.kind not in peer.kinds:
        raise RefusedMessage(Reason.UNAUTHORISED, f"{sender} may not send {header.kind}")
    if len(message.hops) > header.hop_limit:
        raise RefusedMessage(Reason.HOP_LIMIT_EXCEEDED, f"{len(message.hops)} hops")
    skew = timedelta(seconds=config.limits.max_clock_skew_seconds)
    if header.created_at > now + skew:
        raise RefusedMessage(Reason.CLOCK_SKEW, "created in the future beyond the allowed skew")
    if header.created_at < now - timedelta(seconds=config.limits.max_age_seconds):
        raise RefusedMessage(Reason.EXPIRED, "older than the maximum message age")


def provenance(message: SignedMessage, config: NodeConfig, held: Directory, now: datetime) -> None:
    """The origin is who the directory says it may be at the message's time, and the hop
    records describe a path of the directory's links, in time (``broker/provenance.py``).
    ``held`` is the directory as signed, not a view at one instant: a contact point that
    retired since the message was created still belonged to its network then."""
    check_origin(message.header, held)
    check_path(
        message.header,
        tuple(hop.record for hop in message.hops),
        held,
        now=now,
        skew=timedelta(seconds=config.limits.max_clock_skew_seconds),
    )


def dedupe(message: SignedMessage, store: Store) -> Seen | None:
    """None for a new message; the earlier record for a repeat; equivocation when it differs."""
    seen = store.seen(message.header.origin.network, message.header.message_id)
    if seen is not None and seen.content_sha256 != message.content_sha256:
        raise RefusedMessage(
            Reason.EQUIVOCATION, "same origin and message id with different content"
        )
    return seen


def open_delivery(
    body: bytes,
    exchange: str,
    *,
    config: NodeConfig,
    trust: TrustStore,
    now: datetime,
    properties: Properties,
) -> tuple[str, SignedMessage]:
    """The steps before anything in the message can be trusted: size, sender, transport and
    the signatures (``verify``). Returns the sending peer and the opened message. A refusal
    here is of bytes whose origin nobody can vouch for: nobody is told of it."""
    size_cap(body, config)
    sender = sender_of(exchange, config)
    transport(properties)
    return sender, verify(body, trust, config, now)


def judge(
    message: SignedMessage,
    sender: str,
    *,
    config: NodeConfig,
    directory: Directory,
    store: Store,
    now: datetime,
    held: Directory | None = None,
    timing: Callable[[str, float], None] | None = None,
    keyring: SealKeyring | None = None,
    look_up: bool = True,
) -> Accepted:
    """The steps after opening: authorise, provenance, dedupe, route, unseal and validate at
    the destination (with ``keyring``, this network's encryption keys). A refusal here
    is of a message its origin really signed: the node tells the origin
    (``nodes/runtime/refusals.py``, ``docs/PROTOCOL.md`` section 10.1). Not ``look_up``: the
    dedupe record is not read here (the caller reads it once it holds the message's claim)."""
    signed = directory if held is None else held
    started = time.perf_counter()

    def timed(step: str) -> None:
        nonlocal started
        now_ = time.perf_counter()
        if timing is not None:
            timing(step, now_ - started)
        started = now_

    authorise(message, sender, config, now)
    provenance(message, config, signed, now)
    duplicate = dedupe(message, store) if look_up else None
    timed("authorise")
    routing = route(message.header, message.path, directory, config.routes, config.network)
    timed("route")
    # The payload is validated where it is read: at the destination. A relay routes on the
    # origin-signed header (validated strictly by verify) and never needs the case content.
    payload = None
    if isinstance(routing, Deliver):
        message = unseal(message, keyring, config, signed)
        timed("unseal")
        payload = validate(message, config, signed)
    timed("validate")
    return Accepted(message, payload, sender, routing, duplicate)


def receive(
    body: bytes,
    exchange: str,
    *,
    config: NodeConfig,
    trust: TrustStore,
    directory: Directory,
    store: Store,
    now: datetime,
    properties: Properties,
    timing: Callable[[str, float], None] | None = None,
    held: Directory | None = None,
    keyring: SealKeyring | None = None,
) -> Accepted:
    """Run every step of the receiving pipeline on one delivery from a peer:
    :func:`open_delivery`, then :func:`judge`.

    ``directory`` is the view at ``now`` that routing follows; ``held``, the directory as
    signed (default: ``directory``), is what membership is judged by at the message's own
    time. ``timing(step, seconds)``, when given, is told how long verify, validate, authorise
    (with provenance and dedupe) and route took.
    """
    started = time.perf_counter()
    sender, message = open_delivery(
        body, exchange, config=config, trust=trust, now=now, properties=properties
    )
    if timing is not None:
        timing("verify", time.perf_counter() - started)
    return judge(
        message,
        sender,
        config=config,
        directory=directory,
        store=store,
        now=now,
        held=held,
        timing=timing,
        keyring=keyring,
    )
