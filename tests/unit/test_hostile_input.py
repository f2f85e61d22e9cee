"""Every kind of hostile input is refused with its own reason code, and with nothing else.

Each case builds input whose only fault is the one named: where a fault sits inside the header,
a hop record or the payload, those parts are signed with a trusted key so that no signature check
can be what refuses them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from mlanet.broker import (
    DEFAULT_MAX_BYTES,
    MlanetError,
    Reason,
    RefusedMessage,
    decode_payload,
    loads_strict,
    open_envelope,
    sign_message,
)
from mlanet.broker.keys import b64u_encode
from mlanet.schemas import Kind
from tests.unit.wirekit import (
    DIGEST,
    SEAJUST,
    header_dict,
    make_header,
    sign_hop,
    sign_parts,
    signed,
    trust_store,
    wire_bytes,
)

_TRUST = trust_store()
VALID = signed(hops=1).to_bytes()
VALID_WIRE: dict[str, Any] = json.loads(VALID)


def _refusal(call: Callable[[], object]) -> Reason:
    """The reason ``call`` is refused with; any exception but RefusedMessage fails the test."""
    with pytest.raises(RefusedMessage) as refused:
        call()
    assert isinstance(refused.value, MlanetError)
    assert type(refused.value) is RefusedMessage
    return refused.value.reason


def _open(data: bytes) -> Reason:
    return _refusal(lambda: open_envelope(data, _TRUST))


def _with(**changes: Any) -> bytes:
    """The valid wire object with members replaced (``None`` removes a member)."""
    wire = {k: v for k, v in {**VALID_WIRE, **changes}.items() if v is not None}
    return json.dumps(wire).encode()


def _signed_header(header: bytes) -> bytes:
    return wire_bytes(sign_parts(header, b"{}"))


def _payload_refusal(payload: bytes, kind: Kind = "facilitation_request") -> Reason:
    """Sign ``payload`` as sent, check that the envelope opens, then decode the payload."""
    message = open_envelope(sign_message(make_header(kind), payload, SEAJUST).to_bytes(), _TRUST)
    return _refusal(lambda: decode_payload(message))


def _raw_frame(**members: str) -> bytes:
    """A frame written by hand from raw JSON member texts, in the given order."""
    return ("{" + ",".join(f'"{k}":{v}' for k, v in members.items()) + "}").encode()


_H, _P, _S = (json.dumps(VALID_WIRE[k]) for k in ("header", "payload", "signature"))
_HOPS = json.dumps(VALID_WIRE["hops"])


def test_the_unmodified_message_opens() -> None:
    """The base of every case below is accepted: each case's refusal is due to its change."""
    open_envelope(VALID, _TRUST)
    open_envelope(_with(), _TRUST)
    open_envelope(_raw_frame(mlanet="1", header=_H, payload=_P, signature=_S, hops=_HOPS), _TRUST)
    resigned = open_envelope(_signed_header(wire_bytes(header_dict())), _TRUST)
    assert resigned.header == make_header()


# --- size and encoding -------------------------------------------------------------------------


def test_oversized_input_is_refused_before_anything_else() -> None:
    assert _open(b"\xff" * (DEFAULT_MAX_BYTES + 1)) is Reason.OVERSIZED
    assert _open(VALID + b" " * (DEFAULT_MAX_BYTES - len(VALID) + 1)) is Reason.OVERSIZED
    small = _refusal(lambda: open_envelope(VALID, _TRUST, max_bytes=len(VALID) - 1))
    assert small is Reason.OVERSIZED
    open_envelope(VALID, _TRUST, max_bytes=len(VALID))


def test_oversized_header_part_is_refused() -> None:
    header = header_dict()
    header["padding"] = "x" * 2100
    assert _open(_signed_header(wire_bytes(header))) is Reason.OVERSIZED


def test_oversized_payload_is_refused_by_decode_payload() -> None:
    message = open_envelope(VALID, _TRUST)
    assert _refusal(lambda: decode_payload(message, max_bytes=10)) is Reason.OVERSIZED


@pytest.mark.parametrize(
    "data",
    [
        b'{"mlanet":1,"x":"\xff"}',
        b'{"mlanet":1,"x":"\xc0\xaf"}',  # overlong encoding of "/"
        b'{"mlanet":1,"x":"\xed\xa0\x80"}',  # a surrogate encoded as UTF-8
        b'{"mlanet":1,"x":"\xe2\x82"}',  # truncated sequence
        VALID[:-1] + b"\x80",
    ],
    ids=["ff", "overlong", "encoded-surrogate", "truncated-sequence", "continuation-at-end"],
)
def test_invalid_utf8_is_not_utf8(data: bytes) -> None:
    assert _open(data) is Reason.NOT_UTF8


@pytest.mark.parametrize(
    "data",
    [
        b"\xef\xbb\xbf" + VALID,
        b"\xff\xfe" + VALID.decode().encode("utf-16-le"),
        b"\xfe\xff" + VALID.decode().encode("utf-16-be"),
        VALID.decode().encode("utf-16"),
    ],
    ids=["utf8-bom", "utf16le-bom", "utf16be-bom", "utf16-native"],
)
def test_byte_order_marks_are_refused(data: bytes) -> None:
    assert _open(data) is Reason.BYTE_ORDER_MARK


@pytest.mark.parametrize(
    "data",
    [
        rb'{"x":"\ud800"}',
        rb'{"x":"a\udfffb"}',
        rb'{"x":"\udc00\ud800"}',
        rb'{"\ud800":1}',
        rb'{"x":["\uDBFF"]}',
    ],
    ids=["high", "low-in-text", "reversed-pair", "as-key", "upper-case-in-list"],
)
def test_lone_surrogates_are_refused(data: bytes) -> None:
    assert _open(data) is Reason.LONE_SURROGATE
    assert _refusal(lambda: loads_strict(data, max_bytes=100)) is Reason.LONE_SURROGATE


def test_a_surrogate_pair_is_a_character_not_a_lone_surrogate() -> None:
    assert loads_strict(rb'{"x":"\ud83d\ude00"}', max_bytes=100) == {"x": "\U0001f600"}
    assert loads_strict(rb'{"x":"\\ud800"}', max_bytes=100) == {"x": "\\ud800"}


# --- JSON syntax and numbers --------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        VALID + b"x",
        VALID + b"{}",
        VALID + b"\x00",
        VALID[:-1],
        VALID[: len(VALID) // 2],
        b"",
        b"   ",
        b"{",
        b"{'mlanet': 1}",
        b'{"mlanet":01}',
        b'{"mlanet":1,}',
        b'{"mlanet":+1}',
        b'{"x":"tab\there"}',
        b'{"x":"\\x41"}',
        b'["' + b'\\"' * 100 + b"]",
        VALID.replace(b'"header"', b"header", 1),
    ],
    ids=[
        "trailing-garbage",
        "trailing-object",
        "trailing-nul",
        "truncated-by-one",
        "truncated-half",
        "empty",
        "whitespace",
        "open-brace",
        "single-quotes",
        "leading-zero",
        "trailing-comma",
        "plus-sign",
        "raw-control-character",
        "bad-escape",
        "unterminated-string",
        "unquoted-key",
    ],
)
def test_malformed_json_is_invalid_json(data: bytes) -> None:
    assert _open(data) is Reason.INVALID_JSON


@pytest.mark.timeout(10)
def test_hostile_strings_are_refused_in_linear_time() -> None:
    """An unterminated string of escaped quotes once made the depth scan quadratic."""
    for data in (b'"' + b'\\"' * 120_000, b'["' + b"\\\\" * 120_000, b'"' * 250_000):
        assert _open(data) is Reason.INVALID_JSON


@pytest.mark.parametrize(
    "data",
    [
        _raw_frame(mlanet="1", header=_H, payload=_P, signature=_S, hops=_HOPS, v="2").replace(
            b'"v"', b'"mlanet"'
        ),
        _raw_frame(mlanet="1", header=_H, payload=_P, signature=_S, hops=_HOPS, v="1").replace(
            b'"v"', b'"mlanet"'
        ),
        _raw_frame(mlanet="1", header=_H, payload=_P, signature=_S, hops="[]", header2=_H).replace(
            b'"header2"', b'"header"'
        ),
        _raw_frame(
            mlanet="1",
            header=_H,
            payload=_P,
            signature=_S,
            hops='[{"record":"a","record":"a","signature":"b"}]',
        ),
        b'{"a":{"b":[{"c":1,"c":1}]}}',
    ],
    ids=["top-level-version", "top-level-same-value", "top-level-header", "in-hop", "nested"],
)
def test_duplicate_keys_are_refused(data: bytes) -> None:
    assert _open(data) is Reason.DUPLICATE_KEY


def test_duplicate_key_in_the_signed_header_is_refused() -> None:
    text = wire_bytes(header_dict())
    duplicated = text.replace(b'"kind":"facilitation_request"', b'"kind":"notice","kind":"receipt"')
    assert duplicated != text
    assert _open(_signed_header(duplicated)) is Reason.DUPLICATE_KEY


def test_duplicate_key_in_a_signed_hop_record_is_refused() -> None:
    record = VALID_WIRE["hops"][0]["record"]
    raw = signed(hops=1).hops[0].record.model_dump(mode="json")
    text = wire_bytes(raw).replace(b'"to":"wacap"', b'"to":"wacap","to":"ejn"')
    hop = sign_hop(text)
    assert hop["record"] != record
    assert _open(_with(hops=[hop])) is Reason.DUPLICATE_KEY


def test_duplicate_key_in_the_payload_is_refused() -> None:
    payload = b'{"case_ref":"KH-MLA-2020-0042","case_ref":"KH-MLA-2020-0043"}'
    assert _payload_refusal(payload) is Reason.DUPLICATE_KEY


def test_too_deep_nesting_is_refused() -> None:
    assert _open(_with(hops=[[[[[]]]]])) is Reason.TOO_DEEP
    assert _open(b"[" * 100_000 + b"]" * 100_000) is Reason.TOO_DEEP
    header = header_dict(destination={"network": {"a": {"b": {"c": 1}}}})
    assert _open(_signed_header(wire_bytes(header))) is Reason.TOO_DEEP
    deep = b'{"summary":' + b"[" * 16 + b"]" * 16 + b"}"
    assert _payload_refusal(deep) is Reason.TOO_DEEP
    # Brackets inside strings do not count.
    assert loads_strict(b'["' + b"[" * 50 + b'"]', max_bytes=100) == ["[" * 50]


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1E400"])
def test_non_finite_numbers_are_refused(literal: bytes) -> None:
    assert _open(b'{"mlanet":' + literal + b"}") is Reason.NON_FINITE_NUMBER
    assert _open(VALID.replace(b'"mlanet":1', b'"mlanet":' + literal)) is Reason.NON_FINITE_NUMBER
    header = wire_bytes(header_dict()).replace(b'"hop_limit":6', b'"hop_limit":' + literal)
    assert _open(_signed_header(header)) is Reason.NON_FINITE_NUMBER
    assert _payload_refusal(b'{"deadline":' + literal + b"}") is Reason.NON_FINITE_NUMBER


@pytest.mark.parametrize(
    "literal", [b"1" * 33, b"-" + b"9" * 32, b"0." + b"0" * 31 + b"1", b"1e" + b"0" * 31 + b"1"]
)
def test_over_long_number_literals_are_refused(literal: bytes) -> None:
    assert _open(VALID.replace(b'"mlanet":1', b'"mlanet":' + literal)) is Reason.NUMBER_TOO_LONG
    assert _payload_refusal(b'{"summary":' + literal + b"}") is Reason.NUMBER_TOO_LONG


def test_numbers_up_to_the_limit_parse() -> None:
    assert loads_strict(b"[" + b"1" * 32 + b"]", max_bytes=100) == [int("1" * 32)]


# --- envelope structure -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        _with(hops=None),
        _with(signature=None),
        _with(mlanet=None),
        _with(extra="x"),
        _with(Header="x"),
        b"[]",
        b'"text"',
        b"1",
        b"null",
        b"{}",
        _with(header=1),
        _with(payload=[]),
        _with(signature={"sig": "x"}),
        _with(header=True),
        _with(hops={}),
        _with(hops="[]"),
        _with(hops=["x"]),
        _with(hops=[{"record": VALID_WIRE["hops"][0]["record"]}]),
        _with(hops=[{**VALID_WIRE["hops"][0], "at": "x"}]),
        _with(hops=[{**VALID_WIRE["hops"][0], "record": 5}]),
        _with(hops=[{**VALID_WIRE["hops"][0], "signature": None}]),
        _with(hops=VALID_WIRE["hops"] * 17),
        _signed_header(b"[]"),
        _signed_header(b'"header"'),
    ],
    ids=[
        "missing-hops",
        "missing-signature",
        "missing-version",
        "extra-member",
        "key-case",
        "array",
        "string",
        "number",
        "null",
        "empty-object",
        "header-number",
        "payload-array",
        "signature-object",
        "header-bool",
        "hops-object",
        "hops-string",
        "hop-string",
        "hop-missing-signature",
        "hop-extra-member",
        "hop-record-number",
        "hop-signature-null",
        "seventeen-hops",
        "header-array",
        "header-string",
    ],
)
def test_malformed_envelopes_are_bad_envelope(data: bytes) -> None:
    assert _open(data) is Reason.BAD_ENVELOPE


@pytest.mark.parametrize("version", [0, 2, -1, "1", True, 1.0, None, [1]])
def test_other_format_versions_are_unsupported(version: object) -> None:
    data = _raw_frame(mlanet=json.dumps(version), header=_H, payload=_P, signature=_S, hops=_HOPS)
    assert _open(data) is Reason.UNSUPPORTED_VERSION


def _flip_last_bits(b64: str) -> str:
    """Non-zero padding bits in the last character: decodes to the same bytes, non-canonically."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    assert len(b64) % 4 in (2, 3), "needs a member whose last character carries padding bits"
    return b64[:-1] + alphabet[alphabet.index(b64[-1]) + 1]


@pytest.mark.parametrize("member", ["header", "payload", "signature"])
@pytest.mark.parametrize(
    "change",
    [
        lambda s: s + "=" * (-len(s) % 4 or 4),
        lambda s: s.replace("-", "+").replace("_", "/") if ("-" in s or "_" in s) else "+" + s[1:],
        lambda s: "/" + s[1:],
        lambda s: s[:10] + " " + s[11:],
        lambda s: s[:10] + "\n" + s[11:],
        lambda s: s + "\n",
        lambda s: s[:-1] + "\u00e9",
        lambda s: s + "A" * (5 - len(s) % 4),
        _flip_last_bits,
        lambda s: s[:10] + "." + s[11:],
    ],
    ids=[
        "padding",
        "standard-alphabet",
        "slash",
        "space",
        "newline",
        "trailing-newline",
        "non-ascii",
        "length-1-mod-4",
        "non-canonical-trailing-bits",
        "dot",
    ],
)
def test_bad_base64url_is_refused(member: str, change: Callable[[str], str]) -> None:
    value = VALID_WIRE[member]
    changed = change(value)
    assert changed != value
    assert _open(_with(**{member: changed})) is Reason.BAD_BASE64


def test_bad_base64url_in_hop_members_is_refused() -> None:
    hop = VALID_WIRE["hops"][0]
    for member in ("record", "signature"):
        for bad in (hop[member] + "=", "*" + hop[member][1:], _flip_last_bits(hop[member])):
            assert _open(_with(hops=[{**hop, member: bad}])) is Reason.BAD_BASE64


@pytest.mark.parametrize(
    "serialise",
    [
        lambda h: json.dumps(h, sort_keys=True).encode(),
        lambda h: json.dumps(h, separators=(",", ":")).encode(),
        lambda h: json.dumps(dict(reversed(list(h.items()))), separators=(",", ":")).encode(),
        lambda h: json.dumps(h, sort_keys=True, indent=1).encode(),
        lambda h: wire_bytes(h) + b" ",
        lambda h: b" " + wire_bytes(h),
        lambda h: wire_bytes(h).replace(b'"kind"', b'"\\u006bind"'),
        lambda h: wire_bytes(h).replace(b"ed25519:1", b"ed25519:\\u0031"),
        lambda h: wire_bytes({**h, "hop_limit": 6.0}).replace(b"6.0", b"6e0"),
    ],
    ids=[
        "spaces",
        "unsorted",
        "reversed",
        "indented",
        "trailing-space",
        "leading-space",
        "escaped-key-letter",
        "escaped-value-digit",
        "exponent",
    ],
)
def test_non_canonical_header_is_refused_even_when_validly_signed(
    serialise: Callable[[dict[str, Any]], bytes],
) -> None:
    """The header re-serialised another way and re-signed: only canonicality is at fault."""
    header = header_dict()
    raw = serialise(header)
    assert raw != wire_bytes(header)
    assert json.loads(raw) == {**header, "hop_limit": 6} or json.loads(raw) == header
    assert _open(_signed_header(raw)) is Reason.NON_CANONICAL_HEADER


def test_non_ascii_header_is_not_canonical() -> None:
    header = header_dict(destination={"network": "casc", "country": "UZ"})
    raw = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    raw = raw.replace('"UZ"', '"\u00dcZ"')
    assert _open(_signed_header(raw.encode())) is Reason.NON_CANONICAL_HEADER


def test_non_canonical_hop_record_is_refused_even_when_validly_signed() -> None:
    record = signed(hops=1).hops[0].record.model_dump(mode="json")
    hop = sign_hop(json.dumps(record, sort_keys=True).encode())
    assert _open(_with(hops=[hop])) is Reason.NON_CANONICAL_HEADER


# --- schema -------------------------------------------------------------------------------------


_LONG_CP = "uz-" + "a" * 40


@pytest.mark.parametrize(
    "changes",
    [
        {"extra": 1},
        {"destination": {"network": "casc", "priority": "high"}},
        {"destination": {"network": "casc", "country": "UZ", "contact_point": _LONG_CP}},
        {"message_id": "5B0C2F1E-8D3A-4C6B-9E7F-0A1B2C3D4E5F"},
        {"message_id": "not-a-uuid"},
        {"destination": {"network": "CASC"}},
        {"destination": {"country": "uz"}},
        {"destination": {}},
        {"origin": {"network": "seajust", "contact_point": "kh-ago-1"}},
        {"origin": {"network": "seajust", "country": "KH", "contact_point": "uz-gpo-1"}},
        {"created_at": "2026-03-02T09:30:00.125"},
        {"created_at": "2026-03-02T09:30:00.125+00:00"},
        {"created_at": "2026-03-02T10:30:00.125+01:00"},
        {"created_at": "2026-03-02T09:30:00Z"},
        {"created_at": "2026-03-02 09:30:00.125Z"},
        {"created_at": "2026-02-30T09:30:00.125Z"},
        {"created_at": 1772443800},
        {"hop_limit": "6"},
        {"hop_limit": 0},
        {"hop_limit": 17},
        {"hop_limit": True},
        {"format": 2},
        {"format": True},
        {"kind": "gossip"},
        {"content": "sealed"},
        {"urgency": "URGENT"},
        {"in_reply_to": 5},
    ],
    ids=lambda changes: ",".join(changes),
)
def test_invalid_headers_are_schema_invalid(changes: dict[str, Any]) -> None:
    header = header_dict(**changes)
    assert _open(_signed_header(wire_bytes(header))) is Reason.SCHEMA_INVALID


def test_a_malformed_key_id_is_an_unknown_key() -> None:
    """The signer is looked up before the header schema is applied: no such key is trusted."""
    for key_id in ("ed25519:01", "ED25519:1", "rsa:1"):
        header = header_dict(key_id=key_id)
        assert _open(_signed_header(wire_bytes(header))) is Reason.UNKNOWN_KEY


def test_a_header_that_does_not_name_its_signer_is_schema_invalid() -> None:
    for changes in ({"key_id": 1}, {"origin": "seajust"}, {"origin": {"network": None}}):
        header = header_dict(**changes)
        assert _open(_signed_header(wire_bytes(header))) is Reason.SCHEMA_INVALID
    header = header_dict()
    del header["key_id"]
    assert _open(_signed_header(wire_bytes(header))) is Reason.SCHEMA_INVALID


def test_schema_invalid_detail_names_fields_not_values() -> None:
    header = header_dict(message_id="secret-case-name")
    with pytest.raises(RefusedMessage) as refused:
        open_envelope(_signed_header(wire_bytes(header)), _TRUST)
    assert "message_id" in refused.value.detail
    assert "secret" not in str(refused.value)


def test_invalid_hop_records_are_schema_invalid() -> None:
    good = signed(hops=1).hops[0].record.model_dump(mode="json")
    for changes in (
        {"to": "WACAP"},
        {"at": "2026-03-02T09:30:01.500"},
        {"prev": "short"},
        {"extra": True},
        {"at": "2026-03-02T09:30:01.500+00:00"},
    ):
        hop = sign_hop(wire_bytes({**good, **changes}))
        assert _open(_with(hops=[hop])) is Reason.SCHEMA_INVALID, changes


_GOOD_REQUEST: dict[str, Any] = {
    "case_ref": "KH-MLA-2020-0042",
    "requesting_country": "KH",
    "requested_country": "UZ",
    "offence_categories": ["corruption"],
    "measures_sought": ["evidence"],
    "languages": ["en"],
    "summary": "Short.",
}


@pytest.mark.parametrize(
    "changes",
    [
        {"extra": 1},
        {"summary": "x" * 4001},
        {"summary": ""},
        {"summary": "bell\u0007"},
        {"case_ref": "kh-mla-2020-0042"},
        {"requested_country": "UZB"},
        {"languages": "en"},
        {"languages": []},
        {"offence_categories": ["jaywalking"]},
        {"measures_sought": ["evidence"] * 9},
        {"deadline": "30/06/2026"},
        {"deadline": "2026-06-30T00:00:00.000Z"},
        {"urgency": 1},
        {"summary": 5},
        {"summary": None},
    ],
    ids=lambda changes: ",".join(changes),
)
def test_invalid_payloads_are_schema_invalid(changes: dict[str, Any]) -> None:
    payload = wire_bytes({**_GOOD_REQUEST, **changes})
    assert _payload_refusal(payload) is Reason.SCHEMA_INVALID


@pytest.mark.parametrize(
    "received_at",
    ["2026-03-02T09:30:01.500", "2026-03-02T09:30:01.500+00:00", "2026-03-02T09:30:01.5Z", 0],
)
def test_payload_timestamps_must_be_utc_with_milliseconds(received_at: object) -> None:
    payload = {"receipt_for": make_header().message_id, "content_sha256": DIGEST}
    good = wire_bytes({**payload, "received_at": "2026-03-02T09:30:01.500Z"})
    message = sign_message(make_header("receipt"), good, SEAJUST)
    decode_payload(open_envelope(message.to_bytes(), _TRUST))
    bad = wire_bytes({**payload, "received_at": received_at})
    assert _payload_refusal(bad, "receipt") is Reason.SCHEMA_INVALID


def test_a_payload_that_is_not_an_object_is_schema_invalid() -> None:
    for payload in (b"[]", b'"x"', b"1", b"null"):
        assert _payload_refusal(payload) is Reason.SCHEMA_INVALID


def test_a_valid_payload_in_any_json_layout_decodes() -> None:
    payload = json.dumps(_GOOD_REQUEST, indent=2).encode()
    message = sign_message(make_header(), payload, SEAJUST)
    decoded = decode_payload(open_envelope(message.to_bytes(), _TRUST))
    assert decoded.model_dump(mode="json", exclude_defaults=True) == _GOOD_REQUEST


def test_the_payload_of_another_kind_is_schema_invalid() -> None:
    message = signed("notice")
    wrong = sign_message(make_header("facilitation_request"), message.payload_bytes, SEAJUST)
    assert _payload_refusal(wrong.payload_bytes) is Reason.SCHEMA_INVALID
    assert b64u_encode(wrong.payload_bytes) == message.payload_b64
