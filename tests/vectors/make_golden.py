"""Write tests/vectors/golden.json: one signed, relayed message from fixed seeds.

Run once (``.venv/bin/python tests/vectors/make_golden.py``); the file is then frozen and
``tests/unit/test_golden.py`` recomputes every value from the seeds and compares byte for byte.
Ed25519 signatures are deterministic, so the same seeds and inputs always give the same bytes.
Regenerating (``--force``) is a wire-format change: every other implementation must follow.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from mlanet.broker import SigningKey, add_hop, sign_message
from mlanet.broker.keys import b64u_decode, b64u_encode
from mlanet.schemas import Destination, FacilitationRequest, Header, Origin

GOLDEN = Path(__file__).with_name("golden.json")

SEEDS = {
    "seajust": ("ed25519:1", bytes(range(32))),
    "casc": ("ed25519:1", bytes(range(0x20, 0x40))),
}


def build() -> dict[str, Any]:
    keys = {net: SigningKey.from_seed(net, kid, seed) for net, (kid, seed) in SEEDS.items()}
    header = Header(
        kind="facilitation_request",
        message_id="4f1d2c3b-5a69-4e7d-8c0b-1a2b3c4d5e6f",
        origin=Origin(network="seajust", country="KH", contact_point="kh-ago-1"),
        destination=Destination(network="ejn", country="DE"),
        created_at=datetime(2026, 3, 2, 9, 30, 0, 125000, tzinfo=UTC),
        key_id="ed25519:1",
        urgency="urgent",
    )
    payload = FacilitationRequest(
        case_ref="KH-MLA-2020-0042",
        requesting_country="KH",
        requested_country="DE",
        offence_categories=["drug_trafficking", "money_laundering"],
        measures_sought=["evidence", "asset_freezing"],
        urgency="urgent",
        deadline=date(2026, 6, 30),
        languages=["en", "de"],
        summary="Example only, no real case: bank records for 2019\u20132020 (M\u00fcnchen).",
    )
    message = sign_message(header, payload, keys["seajust"])
    relayed = add_hop(
        message,
        keys["casc"],
        to="ejn",
        at=datetime(2026, 3, 2, 9, 30, 1, 500000, tzinfo=UTC),
    )
    hop = relayed.hops[0]
    assert hop.record.prev == _link_digest(relayed.signing_input, relayed.signature_b64)
    golden: dict[str, Any] = {
        "about": "mlanet format 1 golden vector; see docs/PROTOCOL.md. Do not edit by hand.",
        "keys": {
            net: {
                "key_id": key.key_id,
                "seed_hex": SEEDS[net][1].hex(),
                "public_key": key.public_b64(),
            }
            for net, key in keys.items()
        },
        "header": header.model_dump(mode="json", exclude_none=True),
        "header_bytes": _text(b64u_decode(relayed.header_b64)),
        "header_b64": relayed.header_b64,
        "payload": payload.model_dump(mode="json", exclude_none=True),
        "payload_bytes": _text(relayed.payload_bytes),
        "payload_b64": relayed.payload_b64,
        "origin_signing_input": _text(relayed.signing_input),
        "origin_signature": relayed.signature_b64,
        "origin_link_digest": _link_digest(relayed.signing_input, relayed.signature_b64),
        "content_sha256": relayed.content_sha256,
        "hop": {
            "record": hop.record.model_dump(mode="json"),
            "record_bytes": _text(b64u_decode(hop.record_b64)),
            "record_b64": hop.record_b64,
            "signing_input": _text(hop.signing_input),
            "signature": hop.signature_b64,
            "link_digest": _link_digest(hop.signing_input, hop.signature_b64),
        },
        "wire": _text(relayed.to_bytes()),
    }
    return golden


def _link_digest(signing_input: bytes, signature_b64: str) -> str:
    return b64u_encode(hashlib.sha256(signing_input + b"." + signature_b64.encode()).digest())


def _text(raw: bytes) -> str:
    return raw.decode("ascii")  # every part is ASCII: canonical JSON escapes the rest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = parser.parse_args()
    if GOLDEN.exists() and not args.force:
        print(f"{GOLDEN.name} exists; it is frozen (use --force for a format change)")
        return 1
    GOLDEN.write_text(json.dumps(build(), indent=2, sort_keys=True) + "\n", encoding="ascii")
    print(f"wrote {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
