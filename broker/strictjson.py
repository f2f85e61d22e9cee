"""Strict JSON: one parse that refuses everything ambiguous, each with its own reason code.

Refused: input over the size cap, invalid UTF-8, a byte-order mark, nesting deeper than the cap,
duplicate object keys, NaN/Infinity (and numbers that overflow to infinity), over-long number
literals, and lone surrogates (escaped ``\\ud800`` with no partner). Anything else that is not
JSON is ``invalid_json``. Nothing but :class:`RefusedMessage` leaves this module.
"""

from __future__ import annotations

import json
import math
import re
from array import array
from itertools import accumulate
from typing import Any

from mlanet.broker.errors import Reason, RefusedMessage

__all__ = ["MAX_DEPTH", "canonical_bytes", "loads_strict"]

MAX_DEPTH = 16
MAX_NUMBER_CHARS = 32

# A JSON string literal (escapes included), so that brackets inside strings are not counted.
# Possessive, and an unterminated string runs to the end: the scan stays linear on hostile input.
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
# The brackets as signed steps (+1 opens, -1 closes), everything else deleted: the deepest
# nesting is then the largest running sum, computed in C. (A Python loop over regex matches
# took about 0.25 us a bracket: 50-70 ms of CPU for a 256 KB body of brackets, a peer's cheap
# way to burn the receiver's CPU at hundreds of times the cost of a valid message.)
_STEPS = bytes(1 if b in b"[{" else 255 if b in b"]}" else 0 for b in range(256))
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


# The parser's hooks refuse directly: json passes their exceptions on unchanged.
def _non_finite() -> RefusedMessage:
    return RefusedMessage(Reason.NON_FINITE_NUMBER, "NaN or Infinity")


def _long_number() -> RefusedMessage:
    return RefusedMessage(Reason.NUMBER_TOO_LONG, "number literal too long")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)  # in C: this hook runs once for every object in the input
    if len(obj) != len(pairs):
        raise RefusedMessage(Reason.DUPLICATE_KEY, "an object repeats a key")
    return obj


def _refuse_constant(_: str) -> Any:
    raise _non_finite()


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _long_number()
    value = float(text)
    if not math.isfinite(value):
        raise _non_finite()
    return value


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _long_number()
    return int(text)


_DECODER = json.JSONDecoder(
    object_pairs_hook=_pairs,
    parse_constant=_refuse_constant,
    parse_float=_parse_float,
    parse_int=_parse_int,
    strict=True,
)


def _depth(data: bytes, cap: int | None = None) -> int:
    """The deepest nesting outside strings; with ``cap``, any value above it once it is sure
    (cap + 1 opening brackets in a row, not preceded by more closing than opening ones)."""
    steps = _STRING.sub(b'""', data).translate(_STEPS, _NOT_BRACKETS)
    if cap is not None:
        run = steps.find(b"\x01" * (cap + 1))
        if run >= 0 and (before := sum(array("b", steps[:run]))) >= 0:
            return before + cap + 1
    return max(0, max(accumulate(array("b", steps)), default=0))


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def loads_strict(data: bytes, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``data`` or raise :class:`RefusedMessage` with the specific reason."""
    if len(data) > max_bytes:
        raise RefusedMessage(Reason.OVERSIZED, f"{len(data)} bytes > {max_bytes}")
    if data.startswith(b"\xef\xbb\xbf") or data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise RefusedMessage(Reason.BYTE_ORDER_MARK, "input starts with a byte-order mark")
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise RefusedMessage(Reason.NOT_UTF8, f"invalid UTF-8 at byte {exc.start}") from None
    # No more opening brackets in all than the cap (strings included): no need to scan.
    if data.count(b"[") + data.count(b"{") > max_depth and _depth(data, max_depth) > max_depth:
        raise RefusedMessage(Reason.TOO_DEEP, f"nesting deeper than {max_depth}")
    try:
        start = len(text) - len(text.lstrip(" \t\r\n"))
        value, end = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        raise RefusedMessage(Reason.INVALID_JSON, f"{exc.msg} at char {exc.pos}") from None
    except (RecursionError, ValueError):
        raise RefusedMessage(Reason.INVALID_JSON, "unparseable JSON") from None
    if text[end:].strip(" \t\r\n"):
        raise RefusedMessage(Reason.INVALID_JSON, f"trailing data at char {end}")
    if _SURROGATE_ESCAPE.search(data) and _has_lone_surrogate(value):
        raise RefusedMessage(Reason.LONE_SURROGATE, "a string holds a lone surrogate")
    return value


def canonical_bytes(value: Any) -> bytes:
    """mlanet's canonical JSON: sorted keys, no whitespace, ASCII with \\u escapes."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")
