"""Shared builders for the unit tests: fixed keys, a valid payload for every kind, raw framing.

The keys come from fixed seeds so that failures are reproducible. ``frame`` and ``sign_parts``
build envelopes from arbitrary bytes, so that a test can make a message whose signatures are
all valid and whose only fault is the one under test.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime
from typing import Any

from mlanet.broker import (
    SignedMessage,
    SigningKey,
    TrustStore,
    add_hop,
    canonical_bytes,
    sign_message,
)
from mlanet.broker.directory_signing import sign_directory
from mlanet.broker.keys import b64u_encode
from mlanet.schemas import (
    Destination,
    DirectoryUpdate,
    FacilitationRequest,
    Header,
    InformationRequest,
    InformationResponse,
    Kind,
    MeetingRequest,
    Notice,
    Origin,
    Receipt,
    StatusUpdate,
    WireModel,
)
from mlanet.schemas.directory import Directory

SEAJUST = SigningKey.from_seed("seajust", "ed25519:1", bytes(range(32)))
CASC = SigningKey.from_seed("casc", "ed25519:1", bytes(range(32, 64)))
WACAP = SigningKey.from_seed("wacap", "ed25519:2", bytes(range(64, 96)))
# Known to nobody's trust store.
STRANGER = SigningKey.from_seed("gljc", "ed25519:1", bytes(range(96, 128)))

T0 = datetime(2026, 3, 2, 9, 30, 0, 125000, tzinfo=UTC)
T1 = datetime(2026, 3, 2, 9, 30, 1, 500000, tzinfo=UTC)
T2 = datetime(2026, 3, 2, 9, 31, 7, 0, tzinfo=UTC)
MESSAGE_ID = "5b0c2f1e-8d3a-4c6b-9e7f-0a1b2c3d4e5f"
OTHER_ID = "0f9e8d7c-6b5a-4a39-8271-605f4e3d2c1b"
DIGEST = b64u_encode(hashlib.sha256(b"example").digest())


# The coordinator's directory key (a fixed seed too).
COORDINATOR = SigningKey.from_seed("unodc", "ed25519:1", bytes(range(128, 160)))


def sample_directory() -> Any:
    """A small directory signed by COORDINATOR (a directory_signing.VerifiedDirectory)."""
    directory = Directory.model_validate(
        {
            "version": 3,
            "issued_at": "2026-03-02T09:00:00.000Z",
            "valid_until": "2026-04-01T09:00:00.000Z",
            "coordinator": "unodc",
            "coordinator_keys": [{"key_id": "ed25519:1", "public_key": COORDINATOR.public_b64()}],
            "networks": [
                {
                    "id": "casc",
                    "name": "CASC",
                    "members": ["UZ"],
                    "contact_points": [
                        {"id": "uz-gpo-1", "country": "UZ", "successor": "uz-gpo-2"},
                        {"id": "uz-gpo-2", "country": "UZ", "role": "Prosecutor"},
                    ],
                    "keys": [{"key_id": "ed25519:1", "public_key": CASC.public_b64()}],
                    "broker": {"host": "127.0.0.1", "vhost": "casc"},
                }
            ],
            "links": [],
        },
        strict=False,
    )
    return sign_directory(directory, COORDINATOR)


def trust_store() -> TrustStore:
    trust = TrustStore()
    for key in (SEAJUST, CASC, WACAP):
        trust.add_signing_key(key)
    return trust


def sample_payloads() -> dict[Kind, WireModel]:
    """One valid payload per kind, using most optional fields."""
    return {
        "facilitation_request": FacilitationRequest(
            case_ref="KH-MLA-2020-0042",
            requesting_country="KH",
            requested_country="UZ",
            offence_categories=["drug_trafficking", "money_laundering"],
            measures_sought=["evidence", "asset_freezing"],
            urgency="urgent",
            deadline=date(2026, 6, 30),
            mla_request_sent_on=date(2025, 11, 3),
            languages=["en", "ru"],
            summary="Test summary, no real case: Caf\u00e9 \u2013 \u0442\u0435\u0441\u0442.",
        ),
        "receipt": Receipt(
            receipt_for=OTHER_ID,
            content_sha256=DIGEST,
            received_at=T1,
            received_by="contact_point",
            delivered_to="uz-gpo-1",
        ),
        "status_update": StatusUpdate(
            case_ref="KH-MLA-2020-0042", status="in_progress", regarding=OTHER_ID, note="Noted."
        ),
        "information_request": InformationRequest(
            case_ref="KH-MLA-2020-0042",
            questions=["Which account?", "Which period?\nPlease list."],
            respond_by=date(2026, 4, 1),
        ),
        "information_response": InformationResponse(
            case_ref="KH-MLA-2020-0042", answers=["Account A.", "2019\t2020"]
        ),
        "meeting_request": MeetingRequest(
            case_ref="KH-MLA-2020-0042",
            purpose="Agree the order of execution.",
            meeting_format="video",
            proposed_slots=[T1, T2],
            participant_countries=["KH", "UZ"],
        ),
        "directory_update": DirectoryUpdate(directory=sample_directory().signed),
        "notice": Notice(
            topic="plenary",
            title="Annual plenary",
            body="Dates to follow.",
            event_date=date(2026, 9, 14),
            regarding=OTHER_ID,
            reason="no_route",
        ),
    }


def make_header(kind: Kind = "facilitation_request", **changes: Any) -> Header:
    fields: dict[str, Any] = {
        "kind": kind,
        "message_id": MESSAGE_ID,
        "origin": Origin(network="seajust", country="KH", contact_point="kh-ago-1"),
        "destination": Destination(network="casc", country="UZ", contact_point="uz-gpo-1"),
        "created_at": T0,
        "key_id": SEAJUST.key_id,
    }
    fields.update(changes)
    return Header(**fields)


def header_dict(**changes: Any) -> dict[str, Any]:
    """The JSON form of a valid header (as the origin would sign it), with changes applied."""
    value: dict[str, Any] = make_header().model_dump(mode="json", exclude_none=True)
    value.update(changes)
    return value


def signed(kind: Kind = "facilitation_request", hops: int = 0) -> SignedMessage:
    """A signed message of ``kind`` relayed by ``hops`` networks (casc, then wacap)."""
    message = sign_message(make_header(kind), sample_payloads()[kind], SEAJUST)
    relays = [(CASC, "wacap", T1), (WACAP, "ejn", T2)]
    for key, to, at in relays[:hops]:
        message = add_hop(message, key, to=to, at=at)
    return message


def frame(
    header_b64: str,
    payload_b64: str,
    signature_b64: str,
    hops: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    wire: dict[str, Any] = {
        "mlanet": 1,
        "header": header_b64,
        "payload": payload_b64,
        "signature": signature_b64,
        "hops": hops or [],
    }
    wire.update(extra)
    return wire


def sign_parts(header: bytes, payload: bytes, key: SigningKey = SEAJUST) -> dict[str, Any]:
    """Frame arbitrary header and payload bytes with a valid origin signature over them."""
    header_b64, payload_b64 = b64u_encode(header), b64u_encode(payload)
    signing_input = b"mlanet-v1:origin:" + f"{header_b64}.{payload_b64}".encode("ascii")
    return frame(header_b64, payload_b64, b64u_encode(key.sign(signing_input)))


def sign_hop(record: bytes, key: SigningKey = CASC) -> dict[str, str]:
    """A hop entry over arbitrary record bytes with a valid signature."""
    record_b64 = b64u_encode(record)
    signature = key.sign(b"mlanet-v1:hop:" + record_b64.encode("ascii"))
    return {"record": record_b64, "signature": b64u_encode(signature)}


def wire_bytes(value: Any) -> bytes:
    return canonical_bytes(value)
