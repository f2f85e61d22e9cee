"""The README's main job: what a person sees mlanet do."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker import (
    RefusedMessage,
    SigningKey,
    TrustStore,
    decode_payload,
    open_envelope,
    sign_message,
)
from schemas import Destination, FacilitationRequest, Header, Origin


def run_signing_demo(say: Callable[[str], None]) -> None:
    key = SigningKey("seajust", "ed25519:1", Ed25519PrivateKey.generate())
    trust = TrustStore()
    trust.add_signing_key(key)
    header = Header(
        kind="facilitation_request",
        message_id=str(uuid.uuid4()),
        origin=Origin(network="seajust", country="KH", contact_point="kh-ago-1"),
        destination=Destination(country="UZ"),
        created_at=datetime.now(UTC),
        key_id=key.key_id,
    )
    payload = FacilitationRequest(
        case_ref="KH-MLA-2020-0042",
        requesting_country="KH",
        requested_country="UZ",
        offence_categories=["drug_trafficking"],
        measures_sought=["evidence", "asset_freezing"],
        languages=["en", "ru"],
        summary="Demo request: no real case content.",
    )
    wire = sign_message(header, payload, key).to_bytes()
    say(f"signed {header.kind} {header.message_id}: {len(wire)} bytes, key {key.key_id}")
    message = open_envelope(wire, trust)
    say(
        f"verified: origin {message.header.origin.network}, to {message.header.destination.country}"
    )
    say(f"payload kind {type(decode_payload(message)).__name__} validates")
    tampered = bytearray(wire)
    tampered[len(wire) // 2] ^= 0x01
    try:
        open_envelope(bytes(tampered), trust)
    except RefusedMessage as exc:
        say(f"tampered copy refused: {exc.reason.value}")
    else:  # pragma: no cover - would be a signing defect
        raise SystemExit("tampered message was accepted")
