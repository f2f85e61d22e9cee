"""Sealed payloads (``broker/seal.py``, the envelope's sealed path; docs/PROTOCOL.md section 16):
a payload sealed for CASC opens only there, only under the header it was sealed with, only with
a key CASC lists and has not revoked; relays carry it byte for byte; the delivered form holds the
plaintext exactly when the header says ``sealed``."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from mlanet.broker import (
    KeyRefused,
    Reason,
    RefusedMessage,
    SignedMessage,
    add_hop,
    canonical_bytes,
    decode_payload,
    open_delivered,
    open_envelope,
    sign_message,
)
from mlanet.broker.keys import b64u_decode, b64u_encode
from mlanet.broker.seal import (
    ENC_BYTES,
    SEAL_OVERHEAD,
    PrivateSealKey,
    SealKeyring,
    generate_seal_key_files,
    load_seal_key,
    parse_encryption_key,
    seal_info,
    seal_payload,
)
from mlanet.nodes.config import Policy
from mlanet.nodes.runtime.pipeline import unseal
from mlanet.schemas import Destination, Header, Origin
from mlanet.schemas.sealing import OPEN_KINDS, SEAL_SUITE, SEALED_KINDS, EncryptionKey, Sealed
from tests.unit.wirekit import (
    CASC,
    SEAJUST,
    T0,
    T1,
    WACAP,
    make_header,
    sample_payloads,
    sign_parts,
    trust_store,
)

# CASC's encryption key hpke:1, from fixed bytes (never use such a key for anything else).
CASC_SEAL = PrivateSealKey("casc", "hpke:1", bytes(range(64)), bytes(range(64, 96)))
OTHER_SEAL = PrivateSealKey("casc", "hpke:1", bytes(range(1, 65)), bytes(range(65, 97)))
LISTED = EncryptionKey(key_id="hpke:1", public_key=CASC_SEAL.public_b64())
FOR_CASC = Sealed(suite=SEAL_SUITE, network="casc", key_id="hpke:1")


def _sealed(kind: str = "facilitation_request", **changes: Any) -> SignedMessage:
    """A message of ``kind`` from SEAJust to CASC, sealed with CASC's key ``hpke:1``."""
    header = make_header(kind, sealed=changes.pop("sealed", FOR_CASC), **changes)
    return sign_message(header, sample_payloads()[kind], SEAJUST, seal_with=CASC_SEAL.public_b64())


def _keyring(*keys: PrivateSealKey) -> SealKeyring:
    return SealKeyring("casc", {key.key_id: key for key in keys or (CASC_SEAL,)})


def _reason(message: SignedMessage, listed: list[EncryptionKey] | None = None) -> str:
    """What CASC says when it opens ``message`` as received (its wire bytes)."""
    received = open_envelope(message.to_bytes(), trust_store())
    try:
        _keyring().open(
            received.header, received.header_b64, received.payload_bytes, listed or [LISTED]
        )
    except RefusedMessage as refused:
        return refused.reason.value
    return "opened"


@pytest.mark.parametrize("kind", sorted(SEALED_KINDS))
def test_a_sealed_payload_opens_at_its_destination_to_the_plaintext(kind: str) -> None:
    message = _sealed(kind)
    plaintext = canonical_bytes(sample_payloads()[kind].model_dump(mode="json", exclude_none=True))
    assert message.opened == plaintext
    assert len(message.payload_bytes) == len(plaintext) + SEAL_OVERHEAD
    assert plaintext not in message.to_bytes()
    received = open_envelope(message.to_bytes(), trust_store())  # verified like any message
    assert received.opened is None
    opened = _keyring().open(received.header, received.header_b64, received.payload_bytes, [LISTED])
    assert opened == plaintext
    assert decode_payload(replace(received, opened=opened)) == sample_payloads()[kind]


def test_the_origin_signature_covers_the_sealed_payload_exactly_as_sent() -> None:
    message = _sealed()
    assert message.signing_input.endswith(b"." + message.payload_b64.encode("ascii"))
    sealed = bytearray(message.payload_bytes)
    sealed[ENC_BYTES + 3] ^= 1
    wire = {**message.to_wire(), "payload": b64u_encode(bytes(sealed))}
    with pytest.raises(RefusedMessage) as refused:
        open_envelope(json.dumps(wire).encode("ascii"), trust_store())
    assert refused.value.reason is Reason.BAD_SIGNATURE


@pytest.mark.parametrize(
    "changes",
    [
        {"message_id": "0f9e8d7c-6b5a-4a39-8271-605f4e3d2c1b"},
        {"kind": "information_request"},
        {"origin": Origin(network="seajust", country="KH", contact_point="kh-moj-1")},
        {"destination": Destination(network="casc", country="KZ")},
        {"created_at": T1},
        {"urgency": "urgent"},
    ],
    ids=["message_id", "kind", "origin", "destination", "created_at", "urgency"],
)
def test_a_sealed_payload_moved_into_another_message_does_not_open(
    changes: dict[str, Any],
) -> None:
    """The seal's ``info`` is the signed header: the same sealed bytes under another header
    (signed by the origin itself, so every signature verifies) is ``seal_does_not_open``."""
    original = _sealed()
    other = make_header(**{"kind": "facilitation_request", "sealed": FOR_CASC, **changes})
    header_bytes = canonical_bytes(other.model_dump(mode="json", exclude_none=True))
    wire = sign_parts(header_bytes, original.payload_bytes)
    received = open_envelope(json.dumps(wire).encode("ascii"), trust_store())
    assert received.header != original.header
    with pytest.raises(RefusedMessage) as refused:
        _keyring().open(received.header, received.header_b64, received.payload_bytes, [LISTED])
    assert refused.value.reason is Reason.SEAL_DOES_NOT_OPEN
    # and the same bytes under the header they were sealed with do open
    assert CASC_SEAL.open(original.payload_bytes, original.header_b64) == original.opened


def test_a_payload_sealed_for_another_network_is_refused_before_opening() -> None:
    message = _sealed(sealed=Sealed(suite=SEAL_SUITE, network="wacap", key_id="hpke:1"))
    assert _reason(message) == "sealed_for_other_network"


def test_an_unknown_encryption_key_is_refused() -> None:
    """A key id the directory does not list, one CASC holds no private key for, and a key file
    that is not the one the directory lists."""
    message = _sealed(sealed=Sealed(suite=SEAL_SUITE, network="casc", key_id="hpke:2"))
    assert _reason(message) == "unknown_encryption_key"
    received = open_envelope(_sealed().to_bytes(), trust_store())
    parts = (received.header, received.header_b64, received.payload_bytes, [LISTED])
    with pytest.raises(RefusedMessage) as empty:
        SealKeyring("casc", {}).open(*parts)
    assert empty.value.reason is Reason.UNKNOWN_ENCRYPTION_KEY
    with pytest.raises(RefusedMessage) as mismatched:
        _keyring(OTHER_SEAL).open(*parts)
    assert mismatched.value.reason is Reason.UNKNOWN_ENCRYPTION_KEY


def test_a_revoked_key_opens_nothing_whenever_it_sealed() -> None:
    later = T0 + timedelta(days=3)
    revoked = LISTED.model_copy(update={"revoked_at": later})
    assert _reason(_sealed(), [revoked]) == "encryption_key_revoked"


def test_a_key_that_expired_after_the_message_was_created_still_opens_it() -> None:
    """A message in flight during a rotation: its key's ``not_after`` has passed since
    ``created_at``. A key that had ended by ``created_at`` (``not_after`` exclusive), or had
    not begun, is ``unknown_encryption_key``."""
    since = LISTED.model_copy(update={"not_after": T0 + timedelta(minutes=1)})
    assert _reason(_sealed(), [since]) == "opened"
    ended = LISTED.model_copy(update={"not_after": T0})
    assert _reason(_sealed(), [ended]) == "unknown_encryption_key"
    ahead = LISTED.model_copy(update={"not_before": T0 + timedelta(seconds=1)})
    assert _reason(_sealed(), [ahead]) == "unknown_encryption_key"


def test_key_files_are_written_owner_only_and_one_readable_by_others_is_refused(
    tmp_path: Path,
) -> None:
    private, public = generate_seal_key_files(tmp_path, "casc", "hpke:3")
    assert (private.name, public.name) == ("casc.seal.3.key", "casc.seal.3.pub")
    assert private.stat().st_mode & 0o777 == 0o600
    loaded = load_seal_key(private)
    assert loaded.public_b64() == json.loads(public.read_text(encoding="ascii"))["public_key"]
    assert SealKeyring.load(tmp_path, "casc").key_ids == ("hpke:3",)
    os.chmod(private, 0o640)
    with pytest.raises(KeyRefused) as refused:
        load_seal_key(private)
    assert refused.value.reason is Reason.MALFORMED_KEY
    keyring = SealKeyring.load(tmp_path, "casc")
    assert keyring.key_ids == ()
    assert [exc.reason for exc in keyring.refused] == [Reason.MALFORMED_KEY]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("not base64url!", Reason.MALFORMED_KEY),
        (b64u_encode(b64u_decode(LISTED.public_key)[:-1]), Reason.MALFORMED_KEY),
        (b64u_encode(b"\xff" * 1184 + b64u_decode(LISTED.public_key)[1184:]), Reason.MALFORMED_KEY),
        (b64u_encode(b64u_decode(LISTED.public_key)[:1184] + bytes(32)), Reason.WEAK_KEY),
    ],
    ids=["not-base64url", "short", "mlkem-out-of-range", "x25519-zero"],
)
def test_a_malformed_public_key_is_refused_and_nothing_is_sealed_with_it(
    raw: str, reason: Reason
) -> None:
    with pytest.raises(KeyRefused) as refused:
        parse_encryption_key(raw)
    assert refused.value.reason is reason
    with pytest.raises(KeyRefused):
        seal_payload(b"{}", "eyJ9", raw)


def test_the_delivered_form_holds_the_plaintext_exactly_when_the_header_is_sealed() -> None:
    message = _sealed()
    delivered = message.to_delivered_bytes()
    assert json.loads(delivered)["opened"] == b64u_encode(message.opened or b"")
    read = open_delivered(delivered, trust_store())
    assert read.plaintext == message.opened
    assert decode_payload(read) == sample_payloads()["facilitation_request"]
    # sealed without opened
    with pytest.raises(RefusedMessage) as missing:
        open_delivered(message.to_bytes(), trust_store())
    assert missing.value.reason is Reason.BAD_ENVELOPE
    # opened without sealed
    plain = sign_message(make_header(), sample_payloads()["facilitation_request"], SEAJUST)
    assert plain.to_delivered_bytes() == plain.to_bytes()
    smuggled = {**plain.to_wire(), "opened": b64u_encode(b'{"case_ref":"OTHER"}')}
    with pytest.raises(RefusedMessage) as extra:
        open_delivered(canonical_bytes(smuggled), trust_store())
    assert extra.value.reason is Reason.BAD_ENVELOPE
    # a node that has not opened the payload cannot make the delivered form
    with pytest.raises(ValueError, match="only once opened"):
        open_envelope(message.to_bytes(), trust_store()).to_delivered_bytes()


def test_relays_carry_the_sealed_payload_byte_for_byte() -> None:
    """A relay opens the envelope without any encryption key, adds its hop record, and the
    payload, origin signature and content hash are unchanged; the destination still opens it."""
    message = _sealed()
    at_relay = open_envelope(message.to_bytes(), trust_store())
    relayed = add_hop(at_relay, WACAP, to="casc", at=T1)
    again = add_hop(open_envelope(relayed.to_bytes(), trust_store()), CASC, to="ejn", at=T1)
    for copy in (relayed, again):
        assert copy.payload_b64 == message.payload_b64
        assert copy.signature_b64 == message.signature_b64
        assert copy.content_sha256 == message.content_sha256
        assert json.loads(copy.to_bytes())["payload"] == message.payload_b64
    received = open_envelope(relayed.to_bytes(), trust_store())
    opened = _keyring().open(received.header, received.header_b64, received.payload_bytes, [LISTED])
    assert opened == message.opened


@pytest.mark.parametrize("kind", sorted(OPEN_KINDS))
def test_a_kind_that_is_never_sealed_refuses_a_sealed_header(kind: str) -> None:
    with pytest.raises(ValidationError, match="never sealed"):
        make_header(kind, sealed=FOR_CASC)
    header = {**make_header(kind).model_dump(mode="json", exclude_none=True)}
    header["sealed"] = FOR_CASC.model_dump(mode="json")
    wire = sign_parts(canonical_bytes(header), b"{}")
    with pytest.raises(RefusedMessage) as refused:
        open_envelope(json.dumps(wire).encode("ascii"), trust_store())
    assert refused.value.reason is Reason.SCHEMA_INVALID


def test_info_is_the_context_and_the_header_text() -> None:
    message = _sealed()
    assert seal_info(message.header_b64) == b"mlanet-v1:seal:" + message.header_b64.encode()
    assert Header.model_validate_json(b64u_decode(message.header_b64)).sealed == FOR_CASC


def _destination(require_sealed: bool) -> tuple[Any, Any]:
    """CASC's config and held directory as the ``unseal`` step reads them."""
    config = SimpleNamespace(network="casc", policy=Policy(require_sealed=require_sealed))
    entry = SimpleNamespace(encryption_keys=[LISTED])
    held = SimpleNamespace(network=lambda network: entry if network == "casc" else None)
    return config, held


def test_the_unseal_step_opens_and_require_sealed_refuses_an_unsealed_request() -> None:
    config, held = _destination(require_sealed=True)
    received = open_envelope(_sealed().to_bytes(), trust_store())
    assert unseal(received, _keyring(), config, held).plaintext == _sealed().opened
    plain = sign_message(make_header(), sample_payloads()["facilitation_request"], SEAJUST)
    with pytest.raises(RefusedMessage) as refused:
        unseal(plain, _keyring(), config, held)
    assert refused.value.reason is Reason.NOT_SEALED
    notice = sign_message(make_header("notice"), sample_payloads()["notice"], SEAJUST)
    assert unseal(notice, _keyring(), config, held) is notice  # never sealed: not refused
    relaxed, _ = _destination(require_sealed=False)
    assert unseal(plain, _keyring(), relaxed, held) is plain
