"""Any change to a signed message is detected, and the reason names what was tampered with."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from mlanet.broker import MlanetError, Reason, RefusedMessage, TrustStore, add_hop, open_envelope
from mlanet.broker.keys import b64u_decode, b64u_encode
from mlanet.broker.strictjson import canonical_bytes, loads_strict
from tests.unit.wirekit import (
    CASC,
    SEAJUST,
    STRANGER,
    T0,
    T1,
    WACAP,
    frame,
    header_dict,
    make_header,
    sample_payloads,
    sign_hop,
    sign_parts,
    signed,
    trust_store,
    wire_bytes,
)

L = 2**252 + 27742317777372353535851937790883648493  # the group order (RFC 8032)

# Replacement strategies for one byte: bit flips, and characters that matter to JSON and base64.
_FLIPS = (0x01, 0x02, 0x20, 0x80)
_SUBSTITUTES = b' "\\-_0A=+/}{:,\x00'


_TRUST = trust_store()


def _reason(data: bytes, trust: TrustStore = _TRUST) -> Reason:
    with pytest.raises(RefusedMessage) as refused:
        open_envelope(data, trust)
    assert isinstance(refused.value, MlanetError)
    return refused.value.reason


def _variants(byte: int) -> set[int]:
    return ({byte ^ flip for flip in _FLIPS} | set(_SUBSTITUTES)) - {byte}


def test_every_single_byte_change_of_a_relayed_message_is_refused() -> None:
    """Flip or replace each byte of the wire form in turn: every variant is refused.

    A change could only pass if it left the message semantically the same; the frame has no
    such byte (keys, base64 text and the version leave no slack), so refusal is required.
    """
    wire = signed(hops=1).to_bytes()
    open_envelope(wire, _TRUST)  # the original is accepted
    reasons: Counter[Reason] = Counter()
    tried = 0
    for position, byte in enumerate(wire):
        for value in _variants(byte):
            mutated = wire[:position] + bytes([value]) + wire[position + 1 :]
            reasons[_reason(mutated)] += 1
            tried += 1
    assert tried > 10 * len(wire)
    # The refusals come from every layer, not from one catch-all.
    for reason in (
        Reason.INVALID_JSON,
        Reason.NOT_UTF8,
        Reason.BAD_ENVELOPE,
        Reason.BAD_BASE64,
        Reason.BAD_SIGNATURE,
        Reason.BAD_HOP_SIGNATURE,
    ):
        assert reasons[reason] > 0, reasons


def _is_canonical_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = loads_strict(raw, max_bytes=2048, max_depth=4)
    except RefusedMessage:
        return None
    if isinstance(value, dict) and canonical_bytes(value) == raw:
        return value
    return None


def test_every_bit_flip_of_the_decoded_header_is_a_bad_signature() -> None:
    """Changing the header's bytes (and re-encoding them as valid base64url) breaks the origin
    signature; flips that still give canonical JSON naming a trusted signer are bad_signature."""
    message = signed(hops=1)
    header = b64u_decode(message.header_b64)
    trusted = {("seajust", "ed25519:1"), ("casc", "ed25519:1"), ("wacap", "ed25519:2")}
    checked: Counter[Reason] = Counter()
    for position in range(len(header)):
        for bit in range(8):
            mutated = bytearray(header)
            mutated[position] ^= 1 << bit
            wire = replace(message, header_b64=b64u_encode(bytes(mutated))).to_bytes()
            reason = _reason(wire)
            value = _is_canonical_object(bytes(mutated))
            if value is None:
                continue  # refused before the signature: not JSON, or not canonical
            origin = value.get("origin")
            network = origin.get("network") if isinstance(origin, dict) else None
            signer = (network, value.get("key_id"))
            if not all(isinstance(name, str) for name in signer):
                expected = Reason.SCHEMA_INVALID  # the header does not name its signer
            elif signer in trusted:
                expected = Reason.BAD_SIGNATURE
            else:
                expected = Reason.UNKNOWN_KEY
            assert reason is expected, (position, bit, bytes(mutated))
            checked[reason] += 1
    assert checked[Reason.BAD_SIGNATURE] > 8 * len(header) // 3
    assert checked[Reason.UNKNOWN_KEY] > 0


def test_every_bit_flip_of_the_decoded_payload_is_a_bad_signature() -> None:
    message = signed(hops=1)
    payload = message.payload_bytes
    for position in range(len(payload)):
        for bit in range(8):
            mutated = bytearray(payload)
            mutated[position] ^= 1 << bit
            wire = replace(message, payload_b64=b64u_encode(bytes(mutated))).to_bytes()
            assert _reason(wire) is Reason.BAD_SIGNATURE


def test_truncated_or_extended_payload_is_a_bad_signature() -> None:
    message = signed()
    for payload in (message.payload_bytes[:-1], message.payload_bytes + b" ", b""):
        wire = replace(message, payload_b64=b64u_encode(payload)).to_bytes()
        assert _reason(wire) is Reason.BAD_SIGNATURE


def test_origin_signature_changes_are_bad_signature() -> None:
    """Flipped bits, a foreign signature, wrong lengths and the malleable S + L are refused."""
    message = signed()
    signature = b64u_decode(message.signature_b64)
    variants = [bytes([signature[0] ^ 1]) + signature[1:], signature[:-1], signature + b"\x00"]
    variants.append(b64u_decode(signed("notice").signature_b64))
    s = int.from_bytes(signature[32:], "little")
    assert s + L < 2**256
    variants.append(signature[:32] + (s + L).to_bytes(32, "little"))
    variants.append(bytes(64))
    for variant in variants:
        wire = replace(message, signature_b64=b64u_encode(variant)).to_bytes()
        assert _reason(wire) is Reason.BAD_SIGNATURE


def test_every_bit_flip_of_a_hop_record_is_a_bad_hop_signature() -> None:
    message = signed(hops=2)
    hop = message.hops[0]
    record = b64u_decode(hop.record_b64)
    checked = 0
    for position in range(len(record)):
        for bit in range(8):
            mutated = bytearray(record)
            mutated[position] ^= 1 << bit
            value = _is_canonical_object(bytes(mutated))
            tampered = replace(hop, record_b64=b64u_encode(bytes(mutated)))
            wire = replace(message, hops=(tampered, message.hops[1])).to_bytes()
            reason = _reason(wire)
            if value is not None and (value.get("network"), value.get("key_id")) == (
                "casc",
                "ed25519:1",
            ):
                assert reason is Reason.BAD_HOP_SIGNATURE, (position, bit)
                checked += 1
    assert checked > 8 * len(record) // 3


def test_hop_signature_changes_are_bad_hop_signature() -> None:
    message = signed(hops=2)
    for index in (0, 1):
        hop = message.hops[index]
        signature = b64u_decode(hop.signature_b64)
        flipped = signature[:5] + bytes([signature[5] ^ 0x10]) + signature[6:]
        other = message.hops[1 - index].signature_b64
        for variant in (b64u_encode(flipped), other, b64u_encode(signature[:63]), ""):
            hops = list(message.hops)
            hops[index] = replace(hop, signature_b64=variant)
            wire = replace(message, hops=tuple(hops)).to_bytes()
            assert _reason(wire) is Reason.BAD_HOP_SIGNATURE


def test_a_hop_record_signed_by_another_network_is_a_bad_hop_signature() -> None:
    """wacap cannot add a record in casc's name: the record is checked under casc's key."""
    message = signed()
    real = add_hop(message, CASC, to="wacap", at=T1)
    forged = sign_hop(b64u_decode(real.hops[0].record_b64), WACAP)
    wire = wire_bytes({**json.loads(real.to_bytes()), "hops": [forged]})
    assert _reason(wire) is Reason.BAD_HOP_SIGNATURE


def test_reordered_hops_break_the_chain() -> None:
    message = signed(hops=2)
    wire = replace(message, hops=message.hops[::-1]).to_bytes()
    assert _reason(wire) is Reason.HOP_CHAIN_BROKEN


def test_removing_the_first_hop_breaks_the_chain() -> None:
    message = signed(hops=2)
    wire = replace(message, hops=message.hops[1:]).to_bytes()
    assert _reason(wire) is Reason.HOP_CHAIN_BROKEN


def test_duplicated_hop_breaks_the_chain() -> None:
    message = signed(hops=1)
    wire = replace(message, hops=message.hops * 2).to_bytes()
    assert _reason(wire) is Reason.HOP_CHAIN_BROKEN


def test_removing_the_last_hop_leaves_the_previous_message_and_sender() -> None:
    """Dropping the last record gives back the message as it was before that relay: it verifies,
    but its last sender is the previous network, which the transport checks (wrong_sender)."""
    message = signed(hops=2)
    opened = open_envelope(replace(message, hops=message.hops[:1]).to_bytes(), trust_store())
    assert opened.last_sender == "casc"
    assert opened == signed(hops=1)


def test_hops_moved_to_another_message_break_the_chain() -> None:
    """A hop record is bound to its message by the link digest: it cannot be reused."""
    donor = signed("notice", hops=1)
    target = signed("receipt")
    assert donor.hops[0].record.prev != target.last_link_digest()
    wire = replace(target, hops=donor.hops).to_bytes()
    assert _reason(wire) is Reason.HOP_CHAIN_BROKEN
    # Also when the other message differs only in its payload.
    twin = replace(target, payload_b64=b64u_encode(b"{}"))
    twin = replace(twin, signature_b64=b64u_encode(SEAJUST.sign(twin.signing_input)))
    relayed_twin = add_hop(twin, CASC, to="wacap", at=T1)
    wire = replace(target, hops=relayed_twin.hops).to_bytes()
    assert _reason(wire) is Reason.HOP_CHAIN_BROKEN


def test_hop_with_a_valid_signature_but_a_wrong_prev_breaks_the_chain() -> None:
    message = signed()
    record = {
        "at": "2026-03-02T09:30:01.500Z",
        "key_id": "ed25519:1",
        "network": "casc",
        "prev": b64u_encode(bytes(32)),
        "to": "wacap",
    }
    wire = wire_bytes({**json.loads(message.to_bytes()), "hops": [sign_hop(wire_bytes(record))]})
    assert _reason(wire) is Reason.HOP_CHAIN_BROKEN


def test_unknown_origin_key_is_refused_as_unknown_key() -> None:
    header = header_dict(origin={"network": "gljc"})
    wire = wire_bytes(sign_parts(wire_bytes(header), b"{}", STRANGER))
    assert _reason(wire) is Reason.UNKNOWN_KEY


def test_unknown_key_id_of_a_known_network_is_refused_as_unknown_key() -> None:
    header = header_dict(key_id="ed25519:7")
    wire = wire_bytes(sign_parts(wire_bytes(header), b"{}", SEAJUST))
    assert _reason(wire) is Reason.UNKNOWN_KEY


def test_unknown_relay_key_is_refused_as_unknown_key() -> None:
    message = add_hop(signed(), STRANGER, to="casc", at=T1)
    assert _reason(message.to_bytes()) is Reason.UNKNOWN_KEY


def test_keys_outside_their_validity_window_are_refused_when_a_time_is_given() -> None:
    trust = TrustStore()
    trust.add(
        "seajust",
        "ed25519:1",
        SEAJUST.public_b64(),
        not_before=T0 - timedelta(days=1),
        not_after=T0 + timedelta(days=1),
    )
    wire = signed().to_bytes()
    assert open_envelope(wire, trust, now=T0).header == make_header()
    with pytest.raises(RefusedMessage) as refused:
        open_envelope(wire, trust, now=T0 + timedelta(days=2))
    assert refused.value.reason is Reason.EXPIRED
    with pytest.raises(RefusedMessage) as refused:
        open_envelope(wire, trust, now=T0 - timedelta(days=2))
    assert refused.value.reason is Reason.EXPIRED


def test_a_message_re_signed_by_another_trusted_network_is_refused() -> None:
    """casc cannot pass off a message as seajust's by signing it with its own key."""
    payload = wire_bytes(sample_payloads()["notice"].model_dump(mode="json", exclude_none=True))
    parts = sign_parts(wire_bytes(header_dict(kind="notice")), payload, CASC)
    assert _reason(wire_bytes(parts)) is Reason.BAD_SIGNATURE
    unsigned = frame(parts["header"], parts["payload"], "")
    assert _reason(wire_bytes(unsigned)) is Reason.BAD_SIGNATURE
