"""The nesting depth scan of strict JSON (computed in C since the Python loop let 256 KB of
brackets cost 50-70 ms of CPU) agrees with the plain definition on any input: the largest
running count of opening minus closing brackets outside strings."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlanet.broker import Reason, RefusedMessage
from mlanet.broker.strictjson import MAX_DEPTH, _depth, loads_strict


def _reference(data: bytes) -> int:
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        char = chr(byte)
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


_SOUP = st.lists(st.sampled_from(["[", "]", "{", "}", '"', "\\", "a", ",", ":", " "]), max_size=300)


@settings(max_examples=500, deadline=None, database=None)
@given(_SOUP)
def test_the_depth_scan_agrees_with_the_definition(parts: list[str]) -> None:
    data = "".join(parts).encode("ascii")
    assert _depth(data) == _reference(data)
    for cap in range(6):  # with a cap, only "deeper than the cap or not" must agree
        assert (_depth(data, cap) > cap) == (_reference(data) > cap)


@settings(max_examples=200, deadline=None, database=None)
@given(
    st.recursive(
        st.none() | st.text(max_size=5),
        lambda c: st.lists(c) | st.dictionaries(st.text(max_size=3), c),
        max_leaves=30,
    )
)
def test_the_depth_of_real_json_is_its_nesting(value: object) -> None:
    data = json.dumps(value).encode()
    assert _depth(data) == _reference(data)


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"[" * 262_000, Reason.TOO_DEEP), (b"[]" * 131_000, Reason.INVALID_JSON)],
    ids=["brackets", "pairs"],
)
def test_a_body_of_brackets_is_too_deep_and_one_of_pairs_is_not(
    data: bytes, reason: Reason
) -> None:
    with pytest.raises(RefusedMessage) as refused:
        loads_strict(data, max_bytes=len(data))
    assert refused.value.reason is reason
    assert _depth(b"[" * (MAX_DEPTH + 1)) == MAX_DEPTH + 1
