"""Property tests: whatever arrives, opening and decoding either succeed or raise RefusedMessage.

No input may escape as another exception (a KeyError, a ValueError from a library, a
RecursionError): a node must be able to quarantine every message with a reason code.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlanet.broker import (
    Reason,
    RefusedMessage,
    decode_payload,
    loads_strict,
    open_envelope,
    sign_message,
)
from mlanet.schemas import KINDS, Kind
from tests.unit.wirekit import (
    SEAJUST,
    header_dict,
    make_header,
    sample_payloads,
    sign_parts,
    signed,
    trust_store,
)

_TRUST = trust_store()
_SETTINGS = settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
_WIRES = [
    signed(kind, hops).to_bytes() for kind in ("facilitation_request", "receipt") for hops in (0, 2)
]


def _open_and_decode(data: bytes) -> None:
    """Succeed, or raise RefusedMessage: anything else propagates and fails the test."""
    with contextlib.suppress(RefusedMessage):
        message = open_envelope(data, _TRUST)
        decode_payload(message)


# Arbitrary JSON, with the awkward corners: big and non-finite numbers, surrogates, deep nesting.
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["", "ed25519:1", "seajust", "2026-03-02T09:30:00.125Z", "\ud800", "AAAA"]),
)
_JSON = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=20,
)


def _dumps(value: Any, *, ascii_only: bool = False) -> bytes:
    # allow_nan: let NaN and Infinity through to the parser under test; surrogatepass for "\ud800".
    text = json.dumps(value, allow_nan=True, ensure_ascii=ascii_only)
    return text.encode("utf-8", "surrogatepass")


@_SETTINGS
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_are_refused_cleanly(data: bytes) -> None:
    _open_and_decode(data)


@_SETTINGS
@given(st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from('{}[]":,\\'), max_size=300))
def test_arbitrary_text_is_refused_cleanly(text: str) -> None:
    _open_and_decode(text.encode("utf-8"))


@_SETTINGS
@given(_JSON)
def test_arbitrary_json_values_are_refused_cleanly(value: Any) -> None:
    _open_and_decode(_dumps(value))
    _open_and_decode(_dumps(value, ascii_only=True))


@_SETTINGS
@given(
    st.sampled_from(_WIRES),
    st.lists(
        st.tuples(
            st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
            st.integers(min_value=0, max_value=10**6),
            st.integers(min_value=0, max_value=255),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_byte_level_mutations_of_a_valid_envelope_are_refused_cleanly(
    wire: bytes, edits: list[tuple[str, int, int]]
) -> None:
    data = bytearray(wire)
    for op, where, value in edits:
        at = where % (len(data) + 1)
        if op == "flip" and at < len(data):
            data[at] ^= value or 1
        elif op == "set" and at < len(data):
            data[at] = value
        elif op == "insert":
            data[at:at] = bytes([value])
        elif op == "delete":
            del data[at : at + 1 + value % 8]
        elif op == "truncate":
            del data[at:]
    if bytes(data) != wire:
        try:
            open_envelope(bytes(data), _TRUST)
        except RefusedMessage:
            return
        # Accepted only if it is the same message (the frame itself is not canonical).
        assert open_envelope(bytes(data), _TRUST) == open_envelope(wire, _TRUST)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            out += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            out += _paths(child, (*prefix, index))
    return out


@_SETTINGS
@given(st.sampled_from(_WIRES), st.data())
def test_json_level_mutations_of_a_valid_envelope_are_refused_cleanly(
    wire: bytes, data: st.DataObject
) -> None:
    """Replace, delete or add members anywhere in the frame, including inside the hops."""
    holder: list[Any] = [json.loads(wire)]
    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="edits")):
        path = data.draw(st.sampled_from(_paths(holder[0])), label="path")
        parent: Any = holder
        for step in (0, *path)[:-1]:
            parent = parent[step]
        last = (0, *path)[-1]
        op = data.draw(st.sampled_from(["replace", "delete", "add"]), label="op")
        target = parent[last]
        if op == "replace" or (op == "delete" and parent is holder):
            parent[last] = data.draw(_JSON, label="value")
        elif op == "delete":
            del parent[last]
        elif isinstance(target, dict):
            target[data.draw(st.text(max_size=8), label="key")] = data.draw(_JSON, label="value")
        elif isinstance(target, list):
            target.append(data.draw(_JSON, label="value"))
    _open_and_decode(_dumps(holder[0]))


_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_B64ISH = st.text(alphabet=_B64_ALPHABET + "=+/ \t\n\r.\u00e9\x00", max_size=12)


@_SETTINGS
@given(
    st.sampled_from(_WIRES),
    st.sampled_from(["header", "payload", "signature", "record", "hop-signature"]),
    st.one_of(
        _B64ISH,
        st.tuples(st.integers(min_value=0, max_value=200), _B64ISH),
    ),
)
def test_hostile_base64url_members_are_refused_cleanly(
    wire: bytes, member: str, change: str | tuple[int, str]
) -> None:
    """Replace a base64url member, or splice text into it, with near-base64 characters."""
    frame = json.loads(wire)
    if member in ("record", "hop-signature"):
        if not frame["hops"]:
            frame["hops"] = [{"record": "", "signature": ""}]
        holder, key = frame["hops"][0], "record" if member == "record" else "signature"
    else:
        holder, key = frame, member
    if isinstance(change, tuple):
        at, text = change
        original = holder[key]
        holder[key] = (
            original[: at % (len(original) + 1)] + text + original[at % (len(original) + 1) :]
        )
    else:
        holder[key] = change
    _open_and_decode(_dumps(frame))


@_SETTINGS
@given(st.sampled_from(KINDS), st.binary(max_size=512))
def test_validly_signed_arbitrary_payload_bytes_decode_or_are_refused(
    kind: Kind, payload: bytes
) -> None:
    """The signature holds, so the envelope opens; the payload parser must refuse cleanly."""
    message = open_envelope(sign_message(make_header(kind), payload, SEAJUST).to_bytes(), _TRUST)
    with contextlib.suppress(RefusedMessage):
        decode_payload(message)


@_SETTINGS
@given(st.sampled_from(KINDS), st.data())
def test_validly_signed_mutated_payloads_decode_or_are_refused(
    kind: Kind, data: st.DataObject
) -> None:
    """Start from a valid payload of the kind and replace or add fields with arbitrary JSON."""
    value = sample_payloads()[kind].model_dump(mode="json", exclude_none=True)
    keys = [*sorted(value), "extra"]
    for key in data.draw(st.lists(st.sampled_from(keys), min_size=1, max_size=3), label="keys"):
        value[key] = data.draw(_JSON, label=key)
    message = open_envelope(
        sign_message(make_header(kind), _dumps(value), SEAJUST).to_bytes(), _TRUST
    )
    with contextlib.suppress(RefusedMessage):
        decode_payload(message)


@_SETTINGS
@given(st.data())
def test_validly_signed_mutated_headers_open_or_are_refused(data: st.DataObject) -> None:
    """Headers with arbitrary field values, signed by a trusted key, in canonical form or not."""
    header = header_dict()
    keys = [*sorted(header), "extra"]
    for key in data.draw(st.lists(st.sampled_from(keys), min_size=1, max_size=3), label="keys"):
        header[key] = data.draw(_JSON, label=key)
    raw = _dumps(header) if data.draw(st.booleans(), label="raw") else None
    if raw is None:
        try:
            raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        except ValueError:
            raw = _dumps(header)
    _open_and_decode(json.dumps(sign_parts(raw, b"{}")).encode())


@_SETTINGS
@given(st.binary(max_size=512))
def test_loads_strict_agrees_with_json_whenever_it_accepts(data: bytes) -> None:
    """Strict parsing only ever narrows the standard parser: same value when it accepts."""
    try:
        value = loads_strict(data, max_bytes=1024)
    except RefusedMessage:
        return
    assert value == json.loads(data)


@_SETTINGS
@given(_JSON)
def test_loads_strict_accepts_finite_json_it_is_given_back(value: Any) -> None:
    """Every finite, surrogate-free, shallow value round-trips through its JSON text."""
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=True).encode()
        text.decode("ascii")
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        return  # NaN/Infinity or a lone surrogate: refusal is tested elsewhere
    try:
        parsed = loads_strict(text, max_bytes=1 << 20)
    except RefusedMessage as refused:
        reason: Reason | None = refused.reason
    else:
        reason = None
        assert parsed == value
    # The only rules that may refuse a finite value this strategy produces: length and depth.
    assert reason in (None, Reason.NUMBER_TOO_LONG, Reason.TOO_DEEP)
