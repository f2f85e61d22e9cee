"""Build envelopes the way a misbehaving peer would: every part can be any bytes, and every part
can still carry a valid signature, so that a hostile message fails exactly where it is meant to.

``Frame`` is the envelope as a plain dict (``wire()`` serialises it canonically, ``text()``
lets a test write any JSON text). Headers and payloads are dicts signed over their canonical
bytes, or raw bytes signed as they are. ``seal_and_sign`` seals any plaintext bytes for a
network's public encryption key under the header's exact bytes, as an honest origin does
(``broker/seal.py``), and signs the sealed payload; ``sealed`` is the header's statement.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime
from typing import Any

from mlanet.broker import SigningKey, canonical_bytes
from mlanet.broker.keys import b64u_encode
from mlanet.broker.seal import seal_payload
from mlanet.schemas.base import format_timestamp
from mlanet.schemas.sealing import SEAL_SUITE

__all__ = [
    "ORIGIN_CONTEXT",
    "Frame",
    "facilitation_payload",
    "header",
    "hop",
    "link_digest",
    "origin_signing_input",
    "receipt_payload",
    "seal_and_sign",
    "sealed",
    "sign",
]

ORIGIN_CONTEXT = b"mlanet-v1:origin:"
HOP_CONTEXT = b"mlanet-v1:hop:"

Frame = dict[str, Any]


def header(
    key: SigningKey,
    at: datetime,
    *,
    to_country: str = "UZ",
    kind: str = "facilitation_request",
    contact_point: str | None = None,
    **changes: Any,
) -> dict[str, Any]:
    """The JSON form of a header signed by ``key``'s network, for a destination country."""
    country = {"seajust": "KH", "casc": "UZ", "ejn": "FR", "wacap": "NG", "gljc": "KE"}.get(
        key.network, "KH"
    )
    value: dict[str, Any] = {
        "content": "json",
        "created_at": format_timestamp(at),
        "destination": {"country": to_country},
        "format": 1,
        "hop_limit": 6,
        "key_id": key.key_id,
        "kind": kind,
        "message_id": str(uuid.uuid4()),
        "origin": {
            "contact_point": contact_point or f"{country.lower()}-cp-1",
            "country": country,
            "network": key.network,
        },
        "urgency": "normal",
    }
    value.update(changes)
    return value


def facilitation_payload(**changes: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "case_ref": "KH-MLA-2020-0042",
        "languages": ["en"],
        "measures_sought": ["evidence"],
        "offence_categories": ["drug_trafficking"],
        "requested_country": "UZ",
        "requesting_country": "KH",
        "summary": "Test request: no real case content.",
    }
    value.update(changes)
    return value


def receipt_payload(receipt_for: str, at: datetime) -> dict[str, Any]:
    return {
        "content_sha256": b64u_encode(hashlib.sha256(b"never sent").digest()),
        "receipt_for": receipt_for,
        "received_at": format_timestamp(at),
        "received_by": "node",
    }


def _finite(value: Any) -> bool:
    try:
        canonical_bytes(value)
    except (ValueError, TypeError):
        return False
    return True


def _loose(value: Any) -> bytes:
    """Canonical layout, but NaN and Infinity written as the literals a hostile peer would."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True
    ).encode("ascii")


def _bytes(value: dict[str, Any] | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    return canonical_bytes(value) if _finite(value) else _loose(value)


def origin_signing_input(header_b64: str, payload_b64: str) -> bytes:
    return ORIGIN_CONTEXT + header_b64.encode("ascii") + b"." + payload_b64.encode("ascii")


def link_digest(signing_input: bytes, signature_b64: str) -> str:
    return b64u_encode(hashlib.sha256(signing_input + b"." + signature_b64.encode()).digest())


def sign(
    header_value: dict[str, Any] | bytes, payload: dict[str, Any] | bytes, key: SigningKey
) -> Frame:
    """An envelope whose origin signature by ``key`` is valid over exactly these parts."""
    header_b64, payload_b64 = b64u_encode(_bytes(header_value)), b64u_encode(_bytes(payload))
    signature = key.sign(origin_signing_input(header_b64, payload_b64))
    return {
        "header": header_b64,
        "hops": [],
        "mlanet": 1,
        "payload": payload_b64,
        "signature": b64u_encode(signature),
    }


def sealed(network: str, key_id: str = "hpke:1", suite: str = SEAL_SUITE) -> dict[str, str]:
    """The header's ``sealed`` member: the payload is sealed for ``network``'s ``key_id``."""
    return {"key_id": key_id, "network": network, "suite": suite}


def seal_and_sign(
    header_value: dict[str, Any] | bytes,
    plaintext: dict[str, Any] | bytes,
    key: SigningKey,
    public_key: str,
) -> Frame:
    """An envelope whose payload is ``plaintext`` sealed for ``public_key`` (base64url, as the
    directory lists it) under this header's bytes, and whose origin signature by ``key`` is
    valid over the sealed payload as sent. Whatever the header says about the seal is not
    checked here: it can name any network, key or suite."""
    header_bytes = _bytes(header_value)
    payload = seal_payload(_bytes(plaintext), b64u_encode(header_bytes), public_key)
    return sign(header_bytes, payload, key)


def _last_link(frame: Frame) -> str:
    if frame["hops"]:
        last = frame["hops"][-1]
        return link_digest(HOP_CONTEXT + last["record"].encode("ascii"), last["signature"])
    return link_digest(origin_signing_input(frame["header"], frame["payload"]), frame["signature"])


def hop(
    frame: Frame,
    key: SigningKey,
    *,
    to: str,
    at: datetime,
    signer: SigningKey | None = None,
    record_changes: dict[str, Any] | None = None,
    **changes: Any,
) -> Frame:
    """``frame`` with one more hop record by ``key``'s network (signed by ``signer``, default
    the same key), chained to the signature before it unless ``prev`` is given. Any member can
    be set to anything through ``changes`` or ``record_changes`` (``at`` and ``to`` included);
    the record is then written as canonically as JSON allows (NaN included)."""
    record: dict[str, Any] = {
        "at": format_timestamp(at),
        "key_id": key.key_id,
        "network": key.network,
        "prev": _last_link(frame),
        "to": to,
    }
    record.update(changes)
    record.update(record_changes or {})
    record_b64 = b64u_encode(canonical_bytes(record) if _finite(record) else _loose(record))
    signature = (signer or key).sign(HOP_CONTEXT + record_b64.encode("ascii"))
    entry = {"record": record_b64, "signature": b64u_encode(signature)}
    return {**frame, "hops": [*frame["hops"], entry]}


def wire(frame: Frame) -> bytes:
    return canonical_bytes(frame)


def text(value: Any, **dumps: Any) -> bytes:
    """Any JSON text of a frame, or of anything else (for layouts canonical_bytes would never
    write)."""
    return json.dumps(value, **dumps).encode("utf-8")
