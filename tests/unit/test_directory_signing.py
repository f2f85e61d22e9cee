"""The signed directory and signed requests: the format (checked by an independent verifier), and
every refusal with its own reason code."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mlanet.broker import Reason, RefusedMessage, SigningKey
from mlanet.broker.directory_signing import (
    DIRECTORY_CONTEXT,
    coordinator_trust,
    open_directory,
    open_request,
    request_signed_by,
    sign_directory,
    sign_request,
)
from mlanet.broker.keys import b64u_decode, b64u_encode
from mlanet.broker.strictjson import canonical_bytes
from mlanet.schemas.directory import Directory, JoinRequest, KeyRotationRequest, NetworkKey
from tests.unit.wirekit import CASC, COORDINATOR, SEAJUST, sample_directory

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def _trust(**window: Any) -> Any:
    trust = coordinator_trust("unodc", [])
    trust.add("unodc", COORDINATOR.key_id, COORDINATOR.public_b64(), **window)
    return trust


def _frame() -> dict[str, Any]:
    return dict(json.loads(sample_directory().to_bytes()))


def _open(frame: dict[str, Any] | bytes, **window: Any) -> Any:
    data = frame if isinstance(frame, bytes) else json.dumps(frame).encode()
    return open_directory(data, _trust(**window), now=NOW)


def _refused(frame: dict[str, Any] | bytes, **window: Any) -> Reason:
    with pytest.raises(RefusedMessage) as caught:
        _open(frame, **window)
    return caught.value.reason


def test_a_signed_directory_opens_and_round_trips_byte_for_byte() -> None:
    signed = sample_directory()
    opened = _open(signed.to_bytes())
    assert opened.directory == signed.directory
    assert opened.to_bytes() == signed.to_bytes()
    assert opened.digest == signed.digest


def test_the_format_verifies_with_nothing_but_the_documented_steps() -> None:
    """docs/PROTOCOL.md section 14: Ed25519 over the context and the document's B64U text; the
    document is the directory's JSON."""
    frame = _frame()
    assert set(frame) == {"mlanet_directory", "signer", "key_id", "document", "signature"}
    public = Ed25519PublicKey.from_public_bytes(
        base64.urlsafe_b64decode(COORDINATOR.public_b64() + "=")
    )
    signature = base64.urlsafe_b64decode(frame["signature"] + "==")
    public.verify(signature, b"mlanet-v1:directory:" + frame["document"].encode("ascii"))
    text = frame["document"]
    document = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    assert document["version"] == 3
    assert document["coordinator"] == "unodc"
    assert DIRECTORY_CONTEXT == b"mlanet-v1:directory:"


def test_a_bare_directory_or_a_missing_signature_is_unsigned() -> None:
    bare = sample_directory().directory.model_dump(mode="json", exclude_none=True)
    assert _refused(bare) is Reason.UNSIGNED_DIRECTORY
    frame = _frame()
    frame["signature"] = ""
    assert _refused(frame) is Reason.UNSIGNED_DIRECTORY
    del frame["signature"]
    assert _refused(frame) is Reason.UNSIGNED_DIRECTORY


def test_a_changed_document_is_a_bad_signature() -> None:
    frame = _frame()
    document = json.loads(b64u_decode(frame["document"]))
    document["version"] = 4
    frame["document"] = b64u_encode(canonical_bytes(document))
    assert _refused(frame) is Reason.BAD_SIGNATURE


def test_a_signature_by_another_key_is_refused() -> None:
    impostor = SigningKey.from_seed("unodc", "ed25519:2", bytes(range(200, 232)))
    other = sign_directory(sample_directory().directory, impostor).to_bytes()
    assert _refused(other) is Reason.UNKNOWN_KEY
    same_id = SigningKey.from_seed("unodc", "ed25519:1", bytes(range(200, 232)))
    forged = sign_directory(sample_directory().directory, same_id).to_bytes()
    assert _refused(forged) is Reason.BAD_SIGNATURE


def test_a_network_key_cannot_sign_the_directory() -> None:
    directory = sample_directory().directory.model_copy(update={"coordinator": "casc"})
    by_casc = sign_directory(directory, CASC).to_bytes()
    trust = coordinator_trust("unodc", [(COORDINATOR.key_id, COORDINATOR.public_b64())])
    with pytest.raises(RefusedMessage) as caught:
        open_directory(by_casc, trust, now=NOW)
    assert caught.value.reason is Reason.UNKNOWN_KEY


def test_a_revoked_or_expired_coordinator_key_is_refused() -> None:
    data = sample_directory().to_bytes()
    assert _refused(data, revoked=True) is Reason.KEY_REVOKED
    assert _refused(data, not_after=NOW - timedelta(seconds=1)) is Reason.EXPIRED


def test_the_signer_must_be_the_directorys_coordinator() -> None:
    other = SigningKey.from_seed("unodc", "ed25519:1", bytes(range(128, 160)))
    directory = sample_directory().directory.model_copy(update={"coordinator": "unodc"})
    frame = json.loads(sign_directory(directory, other).to_bytes())
    document = json.loads(b64u_decode(frame["document"]))
    document["coordinator"] = "casc"
    frame["document"] = b64u_encode(canonical_bytes(document))
    frame["signature"] = b64u_encode(
        other.sign(b"mlanet-v1:directory:" + frame["document"].encode())
    )
    assert _refused(frame) is Reason.UNAUTHORISED


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (b'{"version": 3, "version": 4}', Reason.DUPLICATE_KEY),
        (b'{"version": NaN}', Reason.NON_FINITE_NUMBER),
        (b'{"version": 3}', Reason.SCHEMA_INVALID),
        (b"[" * 20 + b"]" * 20, Reason.TOO_DEEP),
    ],
)
def test_the_document_is_parsed_strictly_after_the_signature(
    document: bytes, reason: Reason
) -> None:
    frame = _frame()
    frame["document"] = b64u_encode(document)
    frame["signature"] = b64u_encode(
        COORDINATOR.sign(b"mlanet-v1:directory:" + frame["document"].encode())
    )
    assert _refused(frame) is reason


def test_the_frame_is_exact() -> None:
    frame = _frame()
    frame["extra"] = 1
    assert _refused(frame) is Reason.BAD_ENVELOPE
    assert _refused(b"[1]") is Reason.BAD_ENVELOPE
    assert _refused(b'{"mlanet_directory": 1, "signature": "x", "x": 1') is Reason.INVALID_JSON


def test_held_coordinator_keys_carry_their_window_over_a_pin() -> None:
    held = sample_directory().directory
    key = held.coordinator_keys[0].model_copy(update={"revoked_at": NOW})
    revoking = held.model_copy(update={"coordinator_keys": [key]})
    trust = coordinator_trust("unodc", [(COORDINATOR.key_id, COORDINATOR.public_b64())], revoking)
    with pytest.raises(RefusedMessage) as caught:
        open_directory(sample_directory().to_bytes(), trust, now=NOW)
    assert caught.value.reason is Reason.KEY_REVOKED


# --- requests ----------------------------------------------------------------------------------


def _join() -> JoinRequest:
    network = sample_directory().directory.networks[0].model_dump(mode="json")
    network.update(
        id="pilon",
        members=["FJ"],
        contact_points=[{"id": "fj-cp-1", "country": "FJ"}],
        keys=[{"key_id": "ed25519:1", "public_key": NEWCOMER.public_b64()}],
        link_user={"name": "pilon", "password_hash": "A" * 48},
    )
    return JoinRequest.model_validate(
        {"type": "join", "network": network, "links": ["casc"], "requested_at": NOW},
        strict=False,
    )


NEWCOMER = SigningKey.from_seed("pilon", "ed25519:1", bytes(range(160, 192)))


def test_a_join_request_is_signed_by_the_key_it_brings() -> None:
    signed = sign_request(_join(), [NEWCOMER])
    request, reopened = open_request(canonical_bytes(signed.model_dump(mode="json")))
    assert request == _join()
    request_signed_by(reopened, "ed25519:1", NEWCOMER.public_b64())
    with pytest.raises(RefusedMessage) as caught:
        request_signed_by(reopened, "ed25519:1", SEAJUST.public_b64())
    assert caught.value.reason is Reason.BAD_SIGNATURE
    with pytest.raises(RefusedMessage) as caught:
        request_signed_by(reopened, "ed25519:2", NEWCOMER.public_b64())
    assert caught.value.reason is Reason.UNKNOWN_KEY


def test_a_request_for_another_network_than_it_says_is_refused() -> None:
    signed = sign_request(_join(), [NEWCOMER]).model_copy(update={"network": "casc"})
    with pytest.raises(RefusedMessage) as caught:
        open_request(canonical_bytes(signed.model_dump(mode="json")))
    assert caught.value.reason is Reason.UNAUTHORISED
    with pytest.raises(ValueError, match="requesting network"):
        sign_request(_join(), [SEAJUST])


def test_a_rotation_request_carries_both_signatures() -> None:
    new = SigningKey.from_seed("seajust", "ed25519:2", bytes(range(192, 224)))
    rotation = KeyRotationRequest(
        type="key_rotation",
        network="seajust",
        current_key_id="ed25519:1",
        new_key=NetworkKey(key_id="ed25519:2", public_key=new.public_b64()),
        requested_at=NOW,
    )
    signed = sign_request(rotation, [SEAJUST, new])
    request, reopened = open_request(canonical_bytes(signed.model_dump(mode="json")))
    assert isinstance(request, KeyRotationRequest)
    request_signed_by(reopened, "ed25519:1", SEAJUST.public_b64())
    request_signed_by(reopened, "ed25519:2", new.public_b64())


def test_a_directory_must_name_its_coordinator_to_be_signed() -> None:
    directory = Directory.model_validate(
        {**sample_directory().directory.model_dump(mode="json"), "coordinator": "casc"},
        strict=False,
    )
    with pytest.raises(ValueError, match="another coordinator"):
        sign_directory(directory, COORDINATOR)
