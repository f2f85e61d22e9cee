"""The shared base of every wire model, and the identifier grammars.

Every model that crosses a network boundary derives from :class:`WireModel`: strict, frozen,
unknown fields refused, NaN and Infinity refused. Identifiers are tight ASCII grammars so that
they can be logged, used in queue names and compared byte for byte without normalisation.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    WithJsonSchema,
)

__all__ = [
    "CONTACT_POINT_ID",
    "CONTACT_POINT_ID_PATTERN",
    "COUNTRY_CODE",
    "COUNTRY_CODE_PATTERN",
    "KEY_ID",
    "KEY_ID_PATTERN",
    "MESSAGE_ID",
    "MESSAGE_ID_PATTERN",
    "NETWORK_ID",
    "NETWORK_ID_PATTERN",
    "CaseReference",
    "ContactPointId",
    "CountryCode",
    "Date",
    "KeyId",
    "LanguageCode",
    "LongText",
    "MessageId",
    "NetworkId",
    "ShortText",
    "Timestamp",
    "WireModel",
    "format_timestamp",
    "parse_timestamp",
]


class WireModel(BaseModel):
    """Strict, frozen base for everything on the wire."""

    model_config = ConfigDict(
        strict=True,
        frozen=True,
        extra="forbid",
        allow_inf_nan=False,
        str_strip_whitespace=False,
        validate_default=True,
    )


# The identifier grammars, once: the annotated types below, the names of queues and exchanges
# (broker/topology.py) and every check of an identifier outside a model use these patterns.
# A network id: lowercase ASCII, starts with a letter ("seajust", "casc", "ejn").
NETWORK_ID_PATTERN = r"^[a-z][a-z0-9-]{1,31}$"
# ISO 3166-1 alpha-2, upper case.
COUNTRY_CODE_PATTERN = r"^[A-Z]{2}$"
# A contact point: the member country in lower case, a dash, then a short local name.
CONTACT_POINT_ID_PATTERN = r"^[a-z]{2}-[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$"
# A signing key of a network: "ed25519:<n>", n without leading zeros.
KEY_ID_PATTERN = r"^ed25519:(?:0|[1-9][0-9]{0,8})$"
# A message id: a lower-case canonical UUID.
MESSAGE_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

# Compiled, for checks outside a model; always use ``fullmatch`` ("$" alone would also match
# before a trailing newline).
NETWORK_ID = re.compile(NETWORK_ID_PATTERN)
COUNTRY_CODE = re.compile(COUNTRY_CODE_PATTERN)
CONTACT_POINT_ID = re.compile(CONTACT_POINT_ID_PATTERN)
KEY_ID = re.compile(KEY_ID_PATTERN)
MESSAGE_ID = re.compile(MESSAGE_ID_PATTERN)

NetworkId = Annotated[str, StringConstraints(pattern=NETWORK_ID_PATTERN, max_length=32)]
CountryCode = Annotated[str, StringConstraints(pattern=COUNTRY_CODE_PATTERN, max_length=2)]
ContactPointId = Annotated[str, StringConstraints(pattern=CONTACT_POINT_ID_PATTERN, max_length=35)]
KeyId = Annotated[str, StringConstraints(pattern=KEY_ID_PATTERN, max_length=17)]
MessageId = Annotated[str, StringConstraints(pattern=MESSAGE_ID_PATTERN, max_length=36)]
# A case reference as the requesting authority writes it: "KH-MLA-2020-0042".
CaseReference = Annotated[
    str, StringConstraints(pattern=r"^[A-Z0-9][A-Z0-9/._-]{2,63}$", max_length=64)
]
# ISO 639-1 language code, lower case.
LanguageCode = Annotated[str, StringConstraints(pattern=r"^[a-z]{2}$", max_length=2)]

# Human text: no control characters but newline and tab, bounded.
_TEXT = r"^[^\x00-\x08\x0b-\x1f\x7f]*$"
ShortText = Annotated[str, StringConstraints(pattern=_TEXT, min_length=1, max_length=200)]
LongText = Annotated[str, StringConstraints(pattern=_TEXT, min_length=1, max_length=4000)]

TIMESTAMP_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$"
_TIMESTAMP_RE = re.compile(TIMESTAMP_PATTERN)


def format_timestamp(value: datetime) -> str:
    """The one text form of a timestamp: UTC, milliseconds, a literal ``Z``."""
    if value.tzinfo is None or value.utcoffset() != UTC.utcoffset(None):
        raise ValueError("timestamp must be timezone-aware UTC")
    # Not strftime: it does not zero-pad years below 1000 on every platform, and it is slow.
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:"
        f"{value.minute:02d}:{value.second:02d}.{value.microsecond // 1000:03d}Z"
    )


def parse_timestamp(value: object) -> datetime:
    """Accept the one text form (or an aware UTC datetime) and nothing else."""
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() != UTC.utcoffset(None):
            raise ValueError("timestamp must be timezone-aware UTC")
        return value.replace(microsecond=value.microsecond // 1000 * 1000)
    if not isinstance(value, str) or not _TIMESTAMP_RE.fullmatch(value):
        raise ValueError("timestamp must look like 2026-01-31T12:00:00.000Z")
    # The regex fixed every position; datetime() checks the ranges (month 13 -> ValueError).
    return datetime(
        int(value[0:4]),
        int(value[5:7]),
        int(value[8:10]),
        int(value[11:13]),
        int(value[14:16]),
        int(value[17:19]),
        int(value[20:23]) * 1000,
        tzinfo=UTC,
    )


Timestamp = Annotated[
    datetime,
    BeforeValidator(parse_timestamp),
    PlainSerializer(format_timestamp, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": TIMESTAMP_PATTERN, "maxLength": 24}),
]


def parse_date(value: object) -> date:
    """A calendar date as ``YYYY-MM-DD`` and nothing else."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
        raise ValueError("date must look like 2026-01-31")
    return date.fromisoformat(value)


Date = Annotated[
    date,
    BeforeValidator(parse_date),
    PlainSerializer(date.isoformat, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", "maxLength": 10}),
]


# Lists on the wire are bounded too; this helper keeps the bounds next to the field.
def bounded(max_items: int, min_items: int = 0) -> Any:
    return Field(min_length=min_items, max_length=max_items)
