"""The golden vector pins the wire format: recomputed from its seeds, every byte must be equal."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mlanet.broker import (
    SigningKey,
    TrustStore,
    add_hop,
    canonical_bytes,
    decode_payload,
    open_envelope,
    sign_message,
)
from mlanet.broker.keys import b64u_decode, b64u_encode
from mlanet.schemas import FacilitationRequest, Header, HopRecord

GOLDEN_PATH = Path(__file__).parents[1] / "vectors" / "golden.json"


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    value: dict[str, Any] = json.loads(GOLDEN_PATH.read_text(encoding="ascii"))
    return value


def _keys(golden: dict[str, Any]) -> dict[str, SigningKey]:
    return {
        network: SigningKey.from_seed(network, entry["key_id"], bytes.fromhex(entry["seed_hex"]))
        for network, entry in golden["keys"].items()
    }


def test_public_keys_derive_from_the_seeds(golden: dict[str, Any]) -> None:
    keys = _keys(golden)
    assert set(keys) == {"seajust", "casc"}
    for network, key in keys.items():
        assert key.public_b64() == golden["keys"][network]["public_key"]
    # RFC 8032 / libsodium agree on this one: the seed 00 01 .. 1f.
    assert golden["keys"]["seajust"]["seed_hex"] == bytes(range(32)).hex()
    assert b64u_decode(keys["seajust"].public_b64()).hex() == (
        "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
    )


def test_signing_the_recorded_message_again_gives_the_same_bytes(golden: dict[str, Any]) -> None:
    keys = _keys(golden)
    header = Header.model_validate(golden["header"])
    payload = FacilitationRequest.model_validate(golden["payload"])
    message = sign_message(header, payload, keys["seajust"])
    record = HopRecord.model_validate(golden["hop"]["record"])
    relayed = add_hop(message, keys["casc"], to=record.to, at=record.at)
    hop = relayed.hops[0]

    assert b64u_decode(relayed.header_b64) == golden["header_bytes"].encode("ascii")
    assert relayed.header_b64 == golden["header_b64"]
    assert relayed.payload_bytes == golden["payload_bytes"].encode("ascii")
    assert relayed.payload_b64 == golden["payload_b64"]
    assert relayed.signing_input == golden["origin_signing_input"].encode("ascii")
    assert relayed.signature_b64 == golden["origin_signature"]
    assert relayed.content_sha256 == golden["content_sha256"]
    assert hop.record == record
    assert b64u_decode(hop.record_b64) == golden["hop"]["record_bytes"].encode("ascii")
    assert hop.record_b64 == golden["hop"]["record_b64"]
    assert hop.signing_input == golden["hop"]["signing_input"].encode("ascii")
    assert hop.signature_b64 == golden["hop"]["signature"]
    assert relayed.last_link_digest() == golden["hop"]["link_digest"]
    assert relayed.to_bytes() == golden["wire"].encode("ascii")


def test_recorded_parts_follow_the_documented_formulas(golden: dict[str, Any]) -> None:
    """Recompute canonical bytes, signing inputs, signatures and digests without the envelope."""
    header_bytes = golden["header_bytes"].encode("ascii")
    assert canonical_bytes(golden["header"]) == header_bytes
    assert canonical_bytes(golden["payload"]) == golden["payload_bytes"].encode("ascii")
    assert canonical_bytes(golden["hop"]["record"]) == golden["hop"]["record_bytes"].encode()
    assert golden["header_b64"] == b64u_encode(header_bytes)

    origin_input = f"mlanet-v1:origin:{golden['header_b64']}.{golden['payload_b64']}".encode()
    assert origin_input == golden["origin_signing_input"].encode("ascii")
    seajust = Ed25519PrivateKey.from_private_bytes(
        bytes.fromhex(golden["keys"]["seajust"]["seed_hex"])
    )
    assert b64u_encode(seajust.sign(origin_input)) == golden["origin_signature"]

    link = hashlib.sha256(origin_input + b"." + golden["origin_signature"].encode()).digest()
    assert b64u_encode(link) == golden["origin_link_digest"] == golden["hop"]["record"]["prev"]
    assert b64u_encode(hashlib.sha256(origin_input).digest()) == golden["content_sha256"]

    hop_input = f"mlanet-v1:hop:{golden['hop']['record_b64']}".encode()
    assert hop_input == golden["hop"]["signing_input"].encode("ascii")
    casc = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(golden["keys"]["casc"]["seed_hex"]))
    assert b64u_encode(casc.sign(hop_input)) == golden["hop"]["signature"]
    hop_link = hashlib.sha256(hop_input + b"." + golden["hop"]["signature"].encode()).digest()
    assert b64u_encode(hop_link) == golden["hop"]["link_digest"]

    wire = {
        "header": golden["header_b64"],
        "hops": [{"record": golden["hop"]["record_b64"], "signature": golden["hop"]["signature"]}],
        "mlanet": 1,
        "payload": golden["payload_b64"],
        "signature": golden["origin_signature"],
    }
    assert json.dumps(wire, separators=(",", ":")).encode() == golden["wire"].encode("ascii")


def test_the_golden_wire_bytes_open(golden: dict[str, Any]) -> None:
    trust = TrustStore()
    for network, entry in golden["keys"].items():
        trust.add(network, entry["key_id"], entry["public_key"])
    message = open_envelope(golden["wire"].encode("ascii"), trust)
    assert message.path == ("seajust", "casc")
    assert message.header.model_dump(mode="json", exclude_none=True) == golden["header"]
    assert decode_payload(message).model_dump(mode="json", exclude_none=True) == golden["payload"]
    assert message.content_sha256 == golden["content_sha256"]
