"""The signed header: everything that drives routing and authorisation.

Relays read the header and never need the payload. The origin network's signature covers the
header's exact bytes together with the payload's exact bytes (see ``docs/PROTOCOL.md``).
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from mlanet.schemas.base import (
    ContactPointId,
    CountryCode,
    KeyId,
    MessageId,
    NetworkId,
    Timestamp,
    WireModel,
)
from mlanet.schemas.sealing import SEALED_KINDS, Sealed

__all__ = [
    "FORMAT_VERSION",
    "KINDS",
    "MAX_RETENTION_DAYS",
    "MIN_RETENTION_DAYS",
    "Destination",
    "Header",
    "HopRecord",
    "Kind",
    "Origin",
    "Urgency",
    "true_or_absent",
]

FORMAT_VERSION: Literal[1] = 1
# A retention period is whole days, from one day to a hundred years.
MIN_RETENTION_DAYS = 1
MAX_RETENTION_DAYS = 36500

Kind = Literal[
    "facilitation_request",
    "receipt",
    "status_update",
    "information_request",
    "information_response",
    "meeting_request",
    "directory_update",
    "notice",
]
KINDS: tuple[Kind, ...] = (
    "facilitation_request",
    "receipt",
    "status_update",
    "information_request",
    "information_response",
    "meeting_request",
    "directory_update",
    "notice",
)
Urgency = Literal["normal", "urgent"]


class Origin(WireModel):
    """Who sends: always a network; a member country and contact point when one is behind it."""

    network: NetworkId
    country: CountryCode | None = None
    contact_point: ContactPointId | None = None

    @model_validator(mode="after")
    def _contact_point_in_country(self) -> Self:
        _check_contact_point(self.country, self.contact_point)
        return self


class Destination(WireModel):
    """Where to: a country (its network is looked up), a network, or a contact point."""

    network: NetworkId | None = None
    country: CountryCode | None = None
    contact_point: ContactPointId | None = None

    @model_validator(mode="after")
    def _names_somewhere(self) -> Self:
        if self.network is None and self.country is None:
            raise ValueError("destination needs a network or a country")
        _check_contact_point(self.country, self.contact_point)
        return self


def _check_contact_point(country: str | None, contact_point: str | None) -> None:
    if contact_point is None:
        return
    if country is None:
        raise ValueError("a contact point needs its country")
    if contact_point[:2] != country.lower():
        raise ValueError("a contact point id starts with its country code")


class Header(WireModel):
    """The origin-signed header of every message."""

    format: Literal[1] = FORMAT_VERSION
    kind: Kind
    message_id: MessageId
    origin: Origin
    destination: Destination
    created_at: Timestamp
    hop_limit: int = Field(default=6, ge=1, le=16)
    key_id: KeyId
    urgency: Urgency = "normal"
    in_reply_to: MessageId | None = None
    content: Literal["json"] = "json"
    # true: never delivered to, or routed through, an observer country or network.
    members_only: Literal[True] | None = None
    # present: the payload is sealed for this network (section 16); only a sealed kind has it
    sealed: Sealed | None = None
    # Handling rules (docs/PROTOCOL.md, "Handling rules"), all enforced at every hop:
    # true: never relayed through a third network, origin to destination over their own link.
    direct_only: Literal[True] | None = None
    # days after created_at when the destination purges the content (it keeps the metadata).
    retention_days: int | None = Field(default=None, ge=MIN_RETENTION_DAYS, le=MAX_RETENTION_DAYS)

    @field_validator("format", mode="before")
    @classmethod
    def _format_is_the_integer_1(cls, value: object) -> object:
        # Literal[1] alone also takes true and 1.0, which JSON Schema's "const": 1 would not.
        if type(value) is not int:
            raise ValueError("format must be the integer 1")
        return value

    @model_validator(mode="after")
    def _only_a_sealed_kind_is_sealed(self) -> Self:
        if self.sealed is not None and self.kind not in SEALED_KINDS:
            raise ValueError(f"a {self.kind} is never sealed")
        return self

    @field_validator("members_only", "direct_only", mode="before")
    @classmethod
    def _rule_is_the_boolean_true(cls, value: object) -> object:
        return true_or_absent(value)


def true_or_absent(value: object) -> object:
    """A rule that is ``true`` or absent: Literal[True] alone also takes 1 and 1.0, which
    JSON Schema's ``"const": true`` would not."""
    if value is not None and type(value) is not bool:
        raise ValueError("must be true, or absent")
    return value


class HopRecord(WireModel):
    """A relay's signed statement: "I, ``network``, received this at ``at`` and sent it to ``to``".

    ``prev`` is the b64url SHA-256 link digest of the previous signature in the chain (the
    origin's for the first hop), so a hop record cannot be moved to another message or reordered.
    """

    network: NetworkId
    key_id: KeyId
    at: Timestamp
    to: NetworkId
    prev: str = Field(pattern=r"^[A-Za-z0-9_-]{43}$", min_length=43, max_length=43)
