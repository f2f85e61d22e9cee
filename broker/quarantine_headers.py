"""The ``x-mlanet-*`` headers of a refusal published into ``mlanet.quarantine``
(``docs/PROTOCOL.md``, the quarantine headers of section 10): written and read here only.

A contact point's reader that refuses a delivery publishes it into ``mlanet.quarantine`` with
these headers; the node reads them when it takes the message into its quarantine store
(``nodes/state/quarantine.py``). Reading is total: every value a publisher sends is untrusted, a
header of the wrong type reads as absent, a reason that is not a reason code's shape reads as
``unknown``, the detail is kept to its first :data:`DETAIL_KEPT` characters, and a body size or
SHA-256 counts only together with ``x-mlanet-truncated: true``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mlanet.broker.errors import RefusedMessage
from mlanet.broker.keys import b64u_decode, b64u_encode

__all__ = [
    "AT",
    "DETAIL",
    "DETAIL_KEPT",
    "REASON",
    "RELEASED_FROM",
    "SHA256",
    "SIZE",
    "TRUNCATED",
    "VIA",
    "QuarantineHeaders",
    "header_text",
    "read_quarantine_headers",
]

REASON = "x-mlanet-reason"  # MUST: the reason code
DETAIL = "x-mlanet-detail"  # MUST: short text built from metadata only
VIA = "x-mlanet-via"  # MUST: the queue it was taken from, or the exchange it arrived on
AT = "x-mlanet-at"  # MUST: when (ISO 8601 with Z or an offset)
SIZE = "x-mlanet-size"  # MAY: the whole body's size in bytes, for a body kept in part
TRUNCATED = "x-mlanet-truncated"  # MAY: "true" for a body kept in part
SHA256 = "x-mlanet-sha256"  # MAY: B64U SHA-256 of the whole body, for a body kept in part
RELEASED_FROM = "x-mlanet-released-from"  # set by the node on what an operator released

DETAIL_KEPT = 500
UNKNOWN_REASON = "unknown"
_REASON = re.compile(r"[a-z][a-z0-9_]{1,39}")  # bad_base64, not_utf8: digits too
_SHA256_B64U = re.compile(r"[A-Za-z0-9_-]{43}")


def header_text(value: object) -> str:
    """A header value as text: bytes decoded leniently, a timestamp in ISO form, else ``""``."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, datetime):
        return value.isoformat()
    return value if isinstance(value, str) else ""


@dataclass(frozen=True, slots=True)
class QuarantineHeaders:
    """What the headers say. ``reason`` is ``""`` when the message is no published refusal
    (RabbitMQ dead-lettered it, or no queue took it)."""

    reason: str = ""
    detail: str = ""
    via: str = ""
    at: str = ""  # as sent (an AMQP timestamp in ISO form); the reader parses it
    whole_size: int | None = None  # a body kept in part: its whole size
    whole_sha256: str | None = None  # ... and its whole SHA-256 (hex), when given

    def headers(self) -> dict[str, Any]:
        """These headers as a publisher sends them."""
        found: dict[str, Any] = {REASON: self.reason, DETAIL: self.detail, VIA: self.via}
        if self.at:
            found[AT] = self.at
        if self.whole_size is not None:
            found[TRUNCATED] = "true"
            found[SIZE] = str(self.whole_size)
            if self.whole_sha256 is not None:
                found[SHA256] = b64u_encode(bytes.fromhex(self.whole_sha256))
        return found


def _sha256_hex(value: object) -> str | None:
    text = header_text(value)
    if not _SHA256_B64U.fullmatch(text):
        return None
    try:
        return b64u_decode(text).hex()
    except RefusedMessage:
        return None


def read_quarantine_headers(headers: Mapping[str, Any]) -> QuarantineHeaders:
    """Read the headers of a message found in ``mlanet.quarantine`` (total: never raises)."""
    size = header_text(headers.get(SIZE))
    truncated = header_text(headers.get(TRUNCATED)) == "true" and size.isascii() and size.isdigit()
    whole_size = int(size) if truncated else None
    whole_sha256 = _sha256_hex(headers.get(SHA256)) if truncated else None
    reason = header_text(headers.get(REASON))
    if not reason:
        return QuarantineHeaders(whole_size=whole_size, whole_sha256=whole_sha256)
    return QuarantineHeaders(
        reason=reason if _REASON.fullmatch(reason) else UNKNOWN_REASON,
        detail=header_text(headers.get(DETAIL))[:DETAIL_KEPT],
        via=header_text(headers.get(VIA)),
        at=header_text(headers.get(AT)),
        whole_size=whole_size,
        whole_sha256=whole_sha256,
    )
