"""The wire models are strict, and the JSON Schemas shipped for other implementations match them."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from pydantic import TypeAdapter, ValidationError

from mlanet.schemas import (
    KINDS,
    PAYLOADS,
    CaseReference,
    ContactPointId,
    CountryCode,
    Header,
    HopRecord,
    KeyId,
    MessageId,
    NetworkId,
    Notice,
    Timestamp,
    format_timestamp,
    json_schemas,
    parse_timestamp,
)
from mlanet.schemas.base import LanguageCode
from mlanet.schemas.catalogue import JSON_SCHEMA_DIR, render
from tests.unit.wirekit import header_dict, sample_payloads, signed

_MODELS: dict[str, type[Any]] = {"header": Header, "hop_record": HopRecord}
_MODELS.update({str(kind): model for kind, model in PAYLOADS.items()})


def _validator(name: str) -> Draft202012Validator:
    schema = json.loads((JSON_SCHEMA_DIR / f"{name}.json").read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


# --- the JSON Schema files ----------------------------------------------------------------------


def test_json_schema_files_match_the_models_byte_for_byte() -> None:
    generated = json_schemas()
    on_disk = {path.name for path in Path(JSON_SCHEMA_DIR).glob("*.json")}
    assert on_disk == set(generated), "run `mlanet schemas write` to regenerate schemas/json/"
    for name, schema in generated.items():
        text = (JSON_SCHEMA_DIR / name).read_text(encoding="utf-8")
        assert text == render(schema), (
            f"schemas/json/{name} differs from the models: run `mlanet schemas write`"
        )


def test_there_is_a_schema_for_the_header_the_hop_record_every_kind_and_the_directory() -> None:
    directory = {"directory", "signed_directory"}  # checked in tests/unit/test_protocol_doc.py
    assert set(json_schemas()) == {f"{name}.json" for name in (*_MODELS, *directory)}
    assert set(_MODELS) == {"header", "hop_record", *KINDS}
    for name in (*_MODELS, *directory):
        schema = json.loads((JSON_SCHEMA_DIR / f"{name}.json").read_text(encoding="utf-8"))
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"].endswith(f"/v1/{name}.json")
        assert schema["additionalProperties"] is False


@pytest.mark.parametrize("kind", KINDS)
def test_example_messages_validate_against_the_json_schemas(kind: str) -> None:
    """What a node signs (header, hop records, payload) is valid under the shipped schemas."""
    message = signed(kind, hops=2)  # type: ignore[arg-type]
    header = json.loads(json.dumps(message.header.model_dump(mode="json", exclude_none=True)))
    _validator("header").validate(header)
    for hop in message.hops:
        _validator("hop_record").validate(hop.record.model_dump(mode="json"))
    _validator(kind).validate(json.loads(message.payload_bytes))


@pytest.mark.parametrize(
    "changes",
    [
        {"extra": 1},
        {"kind": "gossip"},
        {"message_id": "5B0C2F1E-8D3A-4C6B-9E7F-0A1B2C3D4E5F"},
        {"destination": {"network": "CASC"}},
        {"created_at": "2026-03-02T09:30:00.125"},
        {"created_at": "2026-03-02T09:30:00.125+00:00"},
        {"hop_limit": 17},
        {"hop_limit": "6"},
        {"format": 2},
        {"format": True},
        {"content": "sealed"},
        {"key_id": "ed25519:01"},
        {"origin": {"network": "seajust", "region": "x"}},
    ],
    ids=lambda changes: ",".join(changes),
)
def test_models_and_json_schemas_both_refuse_invalid_headers(changes: dict[str, Any]) -> None:
    header = header_dict(**changes)
    with pytest.raises(ValidationError):
        Header.model_validate(header)
    assert not _validator("header").is_valid(header)


@pytest.mark.parametrize(
    ("kind", "changes"),
    [
        ("facilitation_request", {"summary": "x" * 4001}),
        ("facilitation_request", {"languages": []}),
        ("facilitation_request", {"case_ref": "lower-case"}),
        ("facilitation_request", {"offence_categories": ["jaywalking"]}),
        ("receipt", {"content_sha256": "short"}),
        ("receipt", {"received_at": "2026-03-02T09:30:01Z"}),
        ("status_update", {"status": "lost"}),
        ("meeting_request", {"participant_countries": ["KH"]}),
        ("directory_update", {"directory": {"mlanet_directory": 1}}),
        ("notice", {"reason": "Not A Code"}),
        ("notice", {"title": "line\u0000break"}),
    ],
)
def test_models_and_json_schemas_both_refuse_invalid_payloads(
    kind: str, changes: dict[str, Any]
) -> None:
    value = {**sample_payloads()[kind].model_dump(mode="json"), **changes}  # type: ignore[index]
    with pytest.raises(ValidationError):
        PAYLOADS[kind].model_validate(value)  # type: ignore[index]
    assert not _validator(kind).is_valid(value)


def test_a_notice_needs_no_reason() -> None:
    """``reason`` is optional (it is set on delivery notices only)."""
    value = {"topic": "plenary", "title": "Annual plenary"}
    assert Notice.model_validate(value).reason is None
    _validator("notice").validate(value)


# --- model strictness ---------------------------------------------------------------------------


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf"), 6.0, True, "6"])
def test_number_fields_refuse_non_integers_and_non_finite_values(number: object) -> None:
    with pytest.raises(ValidationError):
        Header.model_validate(header_dict(hop_limit=number))


@pytest.mark.parametrize("name", sorted(_MODELS))
def test_every_model_refuses_unknown_fields(name: str) -> None:
    if name == "header":
        value = header_dict()
    elif name == "hop_record":
        value = signed(hops=1).hops[0].record.model_dump(mode="json")
    else:
        value = sample_payloads()[name].model_dump(mode="json")  # type: ignore[index]
    _MODELS[name].model_validate(value)
    with pytest.raises(ValidationError, match="extra_forbidden"):
        _MODELS[name].model_validate({**value, "unexpected": None})


def test_models_are_frozen() -> None:
    header = Header.model_validate(header_dict())
    with pytest.raises(ValidationError):
        header.hop_limit = 3  # type: ignore[misc]


def test_header_defaults_are_explicit_on_the_wire() -> None:
    header = Header.model_validate(
        {k: v for k, v in header_dict().items() if k not in {"format", "hop_limit", "urgency"}}
    )
    dumped = header.model_dump(mode="json", exclude_none=True)
    assert (dumped["format"], dumped["hop_limit"], dumped["urgency"], dumped["content"]) == (
        1,
        6,
        "normal",
        "json",
    )


_TS: TypeAdapter[datetime] = TypeAdapter(Timestamp)


@pytest.mark.parametrize(
    "text",
    [
        "2026-03-02T09:30:00.125Z",
        "2024-02-29T23:59:59.999Z",
        "0001-01-01T00:00:00.000Z",
    ],
)
def test_timestamps_in_the_one_form_are_accepted_and_round_trip(text: str) -> None:
    value = _TS.validate_python(text)
    assert value.tzinfo is UTC
    assert _TS.dump_python(value, mode="json") == text
    assert format_timestamp(parse_timestamp(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "2026-03-02T09:30:00.125",
        "2026-03-02T09:30:00.125+00:00",
        "2026-03-02T09:30:00.125z",
        "2026-03-02T09:30:00Z",
        "2026-03-02T09:30:00.1Z",
        "2026-03-02T09:30:00.125000Z",
        "2026-03-02 09:30:00.125Z",
        "2026-3-2T09:30:00.125Z",
        "2026-02-29T09:30:00.125Z",
        "2026-03-02T24:00:00.000Z",
        "2026-03-02T09:30:60.000Z",
        "0000-01-01T00:00:00.000Z",
        "\uff12026-03-02T09:30:00.125Z",
        " 2026-03-02T09:30:00.125Z",
        "2026-03-02T09:30:00.125Z\n",
        "",
    ],
)
def test_timestamps_in_any_other_form_are_refused(text: str) -> None:
    with pytest.raises(ValidationError):
        _TS.validate_python(text)


def test_timestamps_from_python_must_be_aware_utc() -> None:
    aware = datetime(2026, 3, 2, 9, 30, 0, 125_999, tzinfo=UTC)
    assert _TS.validate_python(aware) == aware.replace(microsecond=125_000)
    assert _TS.validate_python(datetime(2026, 3, 2, tzinfo=timezone(timedelta(0))))
    for bad in (
        datetime(2026, 3, 2, 9, 30),  # naive
        datetime(2026, 3, 2, 10, 30, tzinfo=timezone(timedelta(hours=1))),
        1772443800,
        date(2026, 3, 2),
    ):
        with pytest.raises(ValidationError):
            _TS.validate_python(bad)
    with pytest.raises(ValueError, match="UTC"):
        format_timestamp(datetime(2026, 3, 2, 9, 30))


_GRAMMARS: list[tuple[Any, list[str], list[str]]] = [
    (
        NetworkId,
        ["seajust", "casc", "ejn", "gl-jc", "a1", "a" * 32],
        [
            "",
            "a",
            "SEAJUST",
            "1net",
            "-net",
            "net_work",
            "a" * 33,
            "caf\u00e9",
            "net work",
            "ejn\n",
        ],
    ),
    (CountryCode, ["UZ", "KH"], ["uz", "U", "UZB", "U1", "\u00dcZ", ""]),
    (
        ContactPointId,
        ["uz-gpo-1", "kh-ago", "kh-a", "kh-" + "a" * 32],
        ["uz", "uz-", "uz-gpo-", "UZ-gpo", "uz--", "uz-Gpo", "uz-" + "a" * 33, "uzb-gpo"],
    ),
    (
        KeyId,
        ["ed25519:0", "ed25519:1", "ed25519:123456789"],
        ["ed25519:01", "ed25519:", "Ed25519:1", "ed25519:1234567890", "rsa:1", "ed25519:1\n"],
    ),
    (
        MessageId,
        ["5b0c2f1e-8d3a-4c6b-9e7f-0a1b2c3d4e5f"],
        [
            "5B0C2F1E-8D3A-4C6B-9E7F-0A1B2C3D4E5F",
            "5b0c2f1e8d3a4c6b9e7f0a1b2c3d4e5f",
            "{5b0c2f1e-8d3a-4c6b-9e7f-0a1b2c3d4e5f}",
            "5b0c2f1e-8d3a-4c6b-9e7f-0a1b2c3d4e5",
        ],
    ),
    (
        CaseReference,
        ["KH-MLA-2020-0042", "ABC", "A/B.C_D-E", "X" * 64],
        ["AB", "kh-mla-1", "-KH", "KH MLA", "X" * 65, "KH\u2013MLA"],
    ),
    (LanguageCode, ["en", "ru"], ["EN", "eng", "e", ""]),
]


@pytest.mark.parametrize(
    ("grammar", "good", "bad"), _GRAMMARS, ids=lambda x: getattr(x, "__name__", "")
)
def test_identifier_grammars(grammar: Any, good: list[str], bad: list[str]) -> None:
    adapter: TypeAdapter[str] = TypeAdapter(grammar)
    for value in good:
        assert adapter.validate_python(value) == value
    for value in bad:
        with pytest.raises(ValidationError):
            adapter.validate_python(value)
    with pytest.raises(ValidationError):
        adapter.validate_python(1)


def test_a_contact_point_belongs_to_its_country() -> None:
    with pytest.raises(ValidationError, match="starts with its country"):
        Header.model_validate(
            header_dict(origin={"network": "seajust", "country": "KH", "contact_point": "uz-x-1"})
        )
    with pytest.raises(ValidationError, match="needs its country"):
        Header.model_validate(header_dict(destination={"network": "casc", "contact_point": "uz-x"}))
    with pytest.raises(ValidationError, match="network or a country"):
        Header.model_validate(header_dict(destination={"contact_point": "uz-x"}))
