"""Sign, relay and verify every message kind: what the origin signed is what the receiver gets."""

from __future__ import annotations

import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mlanet.broker import (
    Reason,
    RefusedMessage,
    SigningKey,
    add_hop,
    decode_payload,
    open_envelope,
    sign_message,
)
from mlanet.broker.keys import b64u_decode, b64u_encode
from mlanet.schemas import KINDS, PAYLOADS, Kind
from tests.unit.wirekit import (
    CASC,
    SEAJUST,
    T1,
    T2,
    WACAP,
    make_header,
    sample_payloads,
    signed,
    trust_store,
)


def test_sample_payloads_cover_every_kind_with_its_model() -> None:
    payloads = sample_payloads()
    assert set(payloads) == set(KINDS) == set(PAYLOADS)
    for kind, payload in payloads.items():
        assert type(payload) is PAYLOADS[kind]


@pytest.mark.parametrize("hops", [0, 1, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_round_trips_through_relays(kind: Kind, hops: int) -> None:
    """The receiver gets the origin's header and payload back, and the path names every relay."""
    message = signed(kind, hops)
    opened = open_envelope(message.to_bytes(), trust_store())

    assert opened == message
    assert opened.header == make_header(kind)
    assert decode_payload(opened) == sample_payloads()[kind]
    assert opened.path == ("seajust", "casc", "wacap")[: hops + 1]
    assert opened.last_sender == opened.path[-1]
    assert [hop.record.network for hop in opened.hops] == ["casc", "wacap"][:hops]
    assert [hop.record.to for hop in opened.hops] == ["wacap", "ejn"][:hops]
    assert [hop.record.at for hop in opened.hops] == [T1, T2][:hops]


def test_relays_do_not_change_what_the_origin_signed() -> None:
    """Adding hop records leaves header, payload, origin signature and content hash untouched."""
    direct, relayed = signed(hops=0), signed(hops=2)
    assert relayed.header_b64 == direct.header_b64
    assert relayed.payload_b64 == direct.payload_b64
    assert relayed.signature_b64 == direct.signature_b64
    assert relayed.content_sha256 == direct.content_sha256
    expected = hashlib.sha256(direct.signing_input).digest()
    assert b64u_decode(relayed.content_sha256) == expected


def _public(key: SigningKey) -> Ed25519PublicKey:
    """The key's public half in another library (OpenSSL), to verify independently."""
    return Ed25519PublicKey.from_public_bytes(key.public_raw())


def test_final_verifier_checks_origin_and_every_hop_end_to_end() -> None:
    """Each signature in the chain verifies under its signer's public key, and links to the last."""
    message = open_envelope(signed(hops=2).to_bytes(), trust_store())
    keys = {"seajust": SEAJUST, "casc": CASC, "wacap": WACAP}

    parts = f"{message.header_b64}.{message.payload_b64}"
    origin_input = b"mlanet-v1:origin:" + parts.encode("ascii")
    assert message.signing_input == origin_input
    _public(SEAJUST).verify(b64u_decode(message.signature_b64), origin_input)

    prev_input, prev_sig = origin_input, message.signature_b64
    for hop in message.hops:
        link = hashlib.sha256(prev_input + b"." + prev_sig.encode("ascii")).digest()
        assert hop.record.prev == b64u_encode(link)
        hop_input = b"mlanet-v1:hop:" + hop.record_b64.encode("ascii")
        assert hop.signing_input == hop_input
        _public(keys[hop.record.network]).verify(b64u_decode(hop.signature_b64), hop_input)
        prev_input, prev_sig = hop_input, hop.signature_b64


def test_a_verifier_missing_one_relay_key_refuses_the_message() -> None:
    """Every hop is verified, not only the origin: without wacap's key the message is refused."""
    trust = trust_store()
    partial = type(trust)()
    partial.add_signing_key(SEAJUST)
    partial.add_signing_key(CASC)
    wire = signed(hops=2).to_bytes()
    open_envelope(signed(hops=1).to_bytes(), partial)
    with pytest.raises(RefusedMessage) as refused:
        open_envelope(wire, partial)
    assert refused.value.reason is Reason.UNKNOWN_KEY


def test_wire_form_is_the_documented_frame() -> None:
    """The frame has exactly the five members, and header/payload decode to canonical JSON."""
    message = signed(hops=1)
    wire = json.loads(message.to_bytes())
    assert sorted(wire) == ["header", "hops", "mlanet", "payload", "signature"]
    assert wire["mlanet"] == 1
    assert sorted(wire["hops"][0]) == ["record", "signature"]
    header = b64u_decode(wire["header"])
    canonical = json.dumps(
        json.loads(header), sort_keys=True, separators=(",", ":"), ensure_ascii=True
    )
    assert header == canonical.encode("ascii")
    assert len(b64u_decode(wire["signature"])) == 64


def test_payload_bytes_are_signed_as_sent() -> None:
    """A payload given as bytes is carried byte for byte, even when it is not canonical."""
    payload = b'{ "title": "Plenary",\n  "topic": "plenary" }'
    message = sign_message(make_header("notice"), payload, SEAJUST)
    opened = open_envelope(message.to_bytes(), trust_store())
    assert opened.payload_bytes == payload
    assert decode_payload(opened) == PAYLOADS["notice"].model_validate(
        {"title": "Plenary", "topic": "plenary"}
    )


def test_signing_with_a_key_that_the_header_does_not_name_is_refused() -> None:
    with pytest.raises(ValueError, match="signing key"):
        sign_message(make_header(), sample_payloads()["facilitation_request"], CASC)
    other_id = SigningKey.from_seed("seajust", "ed25519:2", bytes(32))
    with pytest.raises(ValueError, match="signing key"):
        sign_message(make_header(), sample_payloads()["facilitation_request"], other_id)


def test_sign_and_add_hop_return_new_objects() -> None:
    message = signed()
    relayed = add_hop(message, CASC, to="wacap", at=T1)
    assert message.hops == ()
    assert len(relayed.hops) == 1
