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
from typing import Any

from broker.errors import Reason, RefusedMessage

__all__ = ["MAX_DEPTH", "canonical_bytes", "loads_strict"]

MAX_DEPTH = 16
MAX_NUMBER_CHARS = 32

# A JSON string literal (escapes included), so that brackets inside strings are not counted.
# Possessive, and an unterminated string runs to the end: the scan stays linear on hostile input.
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class _Duplicate(Exception):
    pass


class _NonFinite(Exception):
    pass


class _LongNumber(Exception):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _Duplicate
        obj[key] = value
    return obj


def _refuse_constant(_: str) -> Any:
    raise _NonFinite


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _LongNumber
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite
    return value


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _LongNumber
    return int(text)


_DECODER = json.JSONDecoder(
    object_pairs_hook=_pairs,
    parse_constant=_refuse_constant,
    parse_float=_parse_float,
    parse_int=_parse_int,
    strict=True,
)


def _depth(data: bytes) -> int:
    depth = deepest = 0
    for match in _BRACKETS.finditer(_STRING.sub(b'""', data)):
        if match.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


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
    if _depth(data) > max_depth:
        raise RefusedMessage(Reason.TOO_DEEP, f"nesting deeper than {max_depth}")
    try:
        start = len(text) - len(text.lstrip(" \t\r\n"))
        value, end = _DECODER.raw_decode(text, start)
    except _Duplicate:
        raise RefusedMessage(Reason.DUPLICATE_KEY, "an object repeats a key") from None
    except _NonFinite:
        raise RefusedMessage(Reason.NON_FINITE_NUMBER, "NaN or Infinity") from None
    except _LongNumber:
        raise RefusedMessage(Reason.NUMBER_TOO_LONG, "number literal too long") from None
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
