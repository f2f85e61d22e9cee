"""Error texts (the ``detail`` that goes to quarantine headers, logs and the audit trail) never
repeat the sender's own text: not an unexpected field's name, not a malformed key or network."""

from __future__ import annotations

import pytest

from mlanet.broker import (
    Reason,
    RefusedMessage,
    SigningKey,
    TrustStore,
    canonical_bytes,
    sign_message,
)
from mlanet.broker.envelope import decode_payload
from mlanet.broker.errors import error_location
from mlanet.schemas import Destination, Header, Origin

CANARY = "CANARY-ERROR-TEXT-5E1D"
KEY = SigningKey.from_seed("seajust", "ed25519:1", bytes(range(32)))


def test_locations_keep_field_names_and_indexes_and_hide_the_senders_text() -> None:
    assert error_location({"loc": ("questions", 3), "type": "string_too_long"}) == "questions.3"
    assert error_location({"loc": ("payload", CANARY), "type": "extra_forbidden"}) == (
        "payload.(unexpected field)"
    )
    assert error_location({"loc": ("names", CANARY, "x"), "type": "int_type"}) == (
        "names.(field).x"
    )
    assert error_location({"loc": (), "type": "model_type"}) == "(root)"


def test_an_unexpected_payload_field_is_refused_without_its_name() -> None:
    header = Header(
        kind="notice",
        message_id="5b0c2f1e-8d3a-4c6b-9e7f-0a1b2c3d4e5f",
        origin=Origin(network="seajust"),
        destination=Destination(network="casc"),
        created_at="2026-03-02T09:30:00.000Z",  # type: ignore[arg-type]
        key_id="ed25519:1",
    )
    payload = canonical_bytes({"topic": "general", "title": "t", CANARY.lower(): CANARY})
    with pytest.raises(RefusedMessage) as refused:
        decode_payload(sign_message(header, payload, KEY))
    assert refused.value.reason is Reason.SCHEMA_INVALID
    assert CANARY.lower() not in str(refused.value).lower()
    assert "(unexpected field)" in refused.value.detail


def test_an_unknown_malformed_signer_is_not_repeated() -> None:
    trust = TrustStore()
    trust.add_signing_key(KEY)
    with pytest.raises(RefusedMessage) as refused:
        trust.verify(CANARY, CANARY, b"", b"", reason=Reason.BAD_SIGNATURE)
    assert refused.value.reason is Reason.UNKNOWN_KEY
    assert refused.value.detail == "no trusted key (malformed key id) for (malformed network id)"
    with pytest.raises(RefusedMessage) as known_form:
        trust.verify("casc", "ed25519:9", b"", b"", reason=Reason.BAD_SIGNATURE)
    assert known_form.value.detail == "no trusted key ed25519:9 for casc"
