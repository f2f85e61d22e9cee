"""The payload of every message kind the networks exchange.

Payloads carry case content. Only the origin and the destination read them; relays route on the
header alone. Every list and string is bounded; free text refuses control characters.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mlanet.schemas.base import (
    CaseReference,
    ContactPointId,
    CountryCode,
    Date,
    LanguageCode,
    LongText,
    MessageId,
    ShortText,
    Timestamp,
    WireModel,
)
from mlanet.schemas.directory import SignedDirectory
from mlanet.schemas.header import Urgency

__all__ = [
    "DirectoryUpdate",
    "FacilitationRequest",
    "InformationRequest",
    "InformationResponse",
    "MeetingRequest",
    "Notice",
    "NoticeHop",
    "Receipt",
    "StatusUpdate",
]

Offence = Literal[
    "drug_trafficking",
    "cybercrime",
    "corruption",
    "asset_recovery",
    "terrorism",
    "trafficking_in_persons",
    "smuggling_of_migrants",
    "firearms_trafficking",
    "money_laundering",
    "organised_crime",
    "other",
]
Measure = Literal[
    "evidence",
    "asset_freezing",
    "e_evidence_preservation",
    "hearing",
    "service_of_documents",
    "search_and_seizure",
    "confiscation",
    "other",
]
CaseStatus = Literal[
    "received",
    "in_progress",
    "information_needed",
    "executed",
    "refused",
    "withdrawn",
    "closed",
]
# A b64url SHA-256 digest without padding.
Digest = Field(pattern=r"^[A-Za-z0-9_-]{43}$", min_length=43, max_length=43)
ReasonCode = Field(default=None, pattern=r"^[a-z][a-z0-9_]{1,39}$", max_length=40)


class FacilitationRequest(WireModel):
    """Ask a counterpart network to help move a pending MLA matter."""

    case_ref: CaseReference
    requesting_country: CountryCode
    requested_country: CountryCode
    offence_categories: list[Offence] = Field(min_length=1, max_length=5)
    measures_sought: list[Measure] = Field(min_length=1, max_length=8)
    urgency: Urgency = "normal"
    deadline: Date | None = None
    mla_request_sent_on: Date | None = None
    languages: list[LanguageCode] = Field(min_length=1, max_length=5)
    summary: LongText


class Receipt(WireModel):
    """Signed proof that the destination received a message (the header's ``in_reply_to``)."""

    receipt_for: MessageId
    content_sha256: str = Digest
    received_at: Timestamp
    received_by: Literal["node", "contact_point"] = "node"
    delivered_to: ContactPointId | None = None


class StatusUpdate(WireModel):
    """Where an MLA matter stands at the requested side."""

    case_ref: CaseReference
    status: CaseStatus
    regarding: MessageId | None = None
    note: LongText | None = None


class InformationRequest(WireModel):
    """Questions that clarify a matter."""

    case_ref: CaseReference
    questions: list[LongText] = Field(min_length=1, max_length=20)
    respond_by: Date | None = None


class InformationResponse(WireModel):
    """Answers to an information request (the header's ``in_reply_to``)."""

    case_ref: CaseReference
    answers: list[LongText] = Field(min_length=1, max_length=20)


class MeetingRequest(WireModel):
    """Ask for a bilateral meeting to speed up or resolve a matter."""

    case_ref: CaseReference
    purpose: LongText
    meeting_format: Literal["in_person", "video", "phone"]
    proposed_slots: list[Timestamp] = Field(min_length=1, max_length=5)
    participant_countries: list[CountryCode] = Field(min_length=2, max_length=10)


class DirectoryUpdate(WireModel):
    """A new version of the federation directory, exactly as the coordinator signed it.

    Nodes pass it on to their linked peers; each checks the coordinator's signature itself, so a
    relay cannot change it. See ``docs/PROTOCOL.md`` (the directory)."""

    directory: SignedDirectory


# Unpadded base64url text: a hop record (at most 2048 bytes decoded) and an Ed25519 signature.
_RECORD_B64 = Field(pattern=r"^[A-Za-z0-9_-]+$", min_length=2, max_length=2734)
_SIGNATURE_B64 = Field(pattern=r"^[A-Za-z0-9_-]{86}$", min_length=86, max_length=86)


class NoticeHop(WireModel):
    """One hop entry of a refused message, exactly as it was received (``record`` and
    ``signature`` are the envelope's own strings): the proof that the refusing network held it.
    Network ids and times only: no case content."""

    record: str = _RECORD_B64
    signature: str = _SIGNATURE_B64


class Notice(WireModel):
    """Plenaries, trainings and working groups; also a node's notice about a message it refused.

    A *refusal notice* (``docs/PROTOCOL.md`` section 10.1) names the refused message
    (``regarding``), the reason code, the refused message's content hash and the hop entries of
    the copy that was refused, so that its origin can check that the refusing network held it.
    """

    topic: Literal["plenary", "training", "working_group", "delivery", "general"]
    title: ShortText
    body: LongText | None = None
    event_date: Date | None = None
    regarding: MessageId | None = None
    reason: str | None = ReasonCode
    content_sha256: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{43}$")
    hops: list[NoticeHop] | None = Field(default=None, max_length=16)
