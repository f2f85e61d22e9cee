"""Write tests/vectors/sealed.json: the worked example of docs/PROTOCOL.md section 16, a sealed
message, from fixed key material.

The message is the golden facilitation request (``golden.json``, section 13) with ``sealed`` in
its header: its payload sealed for EJN, signed by SEAJust. The keys are fixed: SEAJust's
Ed25519 seed is the golden one (00 01 .. 1f); EJN's encryption key ``hpke:1`` is made from the
ML-KEM-768 seed 40 41 .. 7f (64 bytes) and the X25519 private key 80 81 .. 9f (32 bytes).

HPKE encryption is randomised (the ephemeral KEM randomness cannot be fixed through
``cryptography``'s API), so unlike the other vectors this one cannot be recomputed byte for
byte: it records one sealed payload, made once. A second implementation reproduces it by
deriving EJN's public key from the seeds, opening the payload under the recorded header to the
exact plaintext, and verifying SEAJust's signature over the payload as sent.
``tests/unit/test_protocol_sealed.py`` does both, with the reference and with
``tests/independent.py``, and checks the document's excerpt against this file.

Run once (``.venv/bin/python tests/vectors/make_sealed.py``); the file is then frozen.
Regenerating (``--force``) makes a new ciphertext: every other implementation's copy changes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mlanet.broker import RefusedMessage, SigningKey, canonical_bytes, sign_message
from mlanet.broker.keys import b64u_decode, b64u_encode
from mlanet.broker.seal import ENC_BYTES, PrivateSealKey, SealKeyring, seal_info
from mlanet.schemas import FacilitationRequest, Header
from mlanet.schemas.sealing import SEAL_SUITE, EncryptionKey

OUT = Path(__file__).with_name("sealed.json")
GOLDEN = Path(__file__).with_name("golden.json")

ORIGIN_SEED = bytes(range(0x00, 0x20))  # SEAJust's Ed25519 seed (the golden vector's)
MLKEM_SEED = bytes(range(0x40, 0x80))  # EJN's ML-KEM-768 seed (d || z of FIPS 203), 64 bytes
X25519_PRIVATE = bytes(range(0x80, 0xA0))  # EJN's X25519 private key, 32 bytes
KEY_ID = "hpke:1"

# What the destination's checks (section 16) say about the sealed payload of this message when
# one thing is changed: in the header (the payload moved into another message, re-signed by
# the origin), in the directory's listing of EJN's key, or in the sealed bytes.
CASES: list[dict[str, Any]] = [
    {"change": "none"},
    {"change": "message_id", "header": {"message_id": "0e0d0c0b-0a09-4807-8605-040302010000"}},
    {"change": "kind", "header": {"kind": "information_request"}},
    {"change": "destination", "header": {"destination": {"country": "FR", "network": "ejn"}}},
    {"change": "created_at", "header": {"created_at": "2026-03-02T09:30:00.126Z"}},
    {
        "change": "sealed.network",
        "header": {"sealed": {"key_id": KEY_ID, "network": "casc", "suite": SEAL_SUITE}},
    },
    {
        "change": "sealed.key_id",
        "header": {"sealed": {"key_id": "hpke:2", "network": "ejn", "suite": SEAL_SUITE}},
    },
    {"change": "revoked", "listed": {"revoked_at": "2026-03-05T00:00:00.000Z"}},
    {"change": "expired since", "listed": {"not_after": "2026-03-02T10:00:00.000Z"}},
    {"change": "expired before", "listed": {"not_after": "2026-03-01T00:00:00.000Z"}},
    {"change": "not yet valid", "listed": {"not_before": "2026-03-03T00:00:00.000Z"}},
    {"change": "enc", "flip": 0},
    {"change": "ciphertext", "flip": ENC_BYTES + 10},
]


def destination_key() -> PrivateSealKey:
    return PrivateSealKey("ejn", KEY_ID, MLKEM_SEED, X25519_PRIVATE)


def _verdict(
    golden_header: dict[str, Any], sealed: bytes, listed: dict[str, Any], case: dict[str, Any]
) -> str:
    """The reference's verdict on the sealed payload under ``case``'s change."""
    header = Header.model_validate({**golden_header, **case.get("header", {})})
    header_b64 = b64u_encode(canonical_bytes(header.model_dump(mode="json", exclude_none=True)))
    if "flip" in case:
        at = case["flip"]
        sealed = sealed[:at] + bytes([sealed[at] ^ 1]) + sealed[at + 1 :]
    key = EncryptionKey.model_validate({**listed, **case.get("listed", {})})
    keyring = SealKeyring("ejn", {KEY_ID: destination_key()})
    try:
        keyring.open(header, header_b64, sealed, [key])
    except RefusedMessage as refused:
        return refused.reason.value
    return "accepted"


def build() -> dict[str, Any]:
    golden = json.loads(GOLDEN.read_text(encoding="ascii"))
    origin = SigningKey.from_seed("seajust", "ed25519:1", ORIGIN_SEED)
    assert origin.public_b64() == golden["keys"]["seajust"]["public_key"]
    destination = destination_key()
    listed = {"key_id": KEY_ID, "public_key": destination.public_b64()}
    header_value = {
        **golden["header"],
        "sealed": {"key_id": KEY_ID, "network": "ejn", "suite": SEAL_SUITE},
    }
    header = Header.model_validate(header_value)
    payload = FacilitationRequest.model_validate(golden["payload"])
    message = sign_message(header, payload, origin, seal_with=destination.public_b64())
    assert message.opened == golden["payload_bytes"].encode("ascii")
    sealed = message.payload_bytes
    assert destination.open(sealed, message.header_b64) == message.opened
    cases = [{**case, "reason": _verdict(header_value, sealed, listed, case)} for case in CASES]
    return {
        "about": "mlanet format 1 sealed payload; see docs/PROTOCOL.md section 16. "
        "Made once (HPKE is randomised): do not edit by hand.",
        "origin_key": {
            "network": "seajust",
            "key_id": "ed25519:1",
            "seed_hex": ORIGIN_SEED.hex(),
            "public_key": origin.public_b64(),
        },
        "destination_key": {
            "network": "ejn",
            "key_id": KEY_ID,
            "suite": SEAL_SUITE,
            "mlkem768_seed_hex": MLKEM_SEED.hex(),
            "x25519_private_hex": X25519_PRIVATE.hex(),
            "public_key": destination.public_b64(),
        },
        "listed": listed,
        "key_file": json.dumps(
            {
                "network": "ejn",
                "key_id": KEY_ID,
                "suite": SEAL_SUITE,
                "mlkem768_seed": b64u_encode(MLKEM_SEED),
                "x25519": b64u_encode(X25519_PRIVATE),
            }
        ),
        "header": header.model_dump(mode="json", exclude_none=True),
        "header_bytes": b64u_decode(message.header_b64).decode("ascii"),
        "header_b64": message.header_b64,
        "info": seal_info(message.header_b64).decode("ascii"),
        "plaintext": message.opened.decode("ascii"),
        "enc_b64": b64u_encode(sealed[:ENC_BYTES]),
        "ciphertext_b64": b64u_encode(sealed[ENC_BYTES:]),
        "payload_b64": message.payload_b64,
        "origin_signature": message.signature_b64,
        "content_sha256": message.content_sha256,
        "wire": message.to_bytes().decode("ascii"),
        "delivered": message.to_delivered_bytes().decode("ascii"),
        "cases": cases,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = parser.parse_args()
    if OUT.exists() and not args.force:
        print(f"{OUT.name} exists; it is frozen (use --force to seal the example again)")
        return 1
    OUT.write_text(json.dumps(build(), indent=2, sort_keys=True) + "\n", encoding="ascii")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
