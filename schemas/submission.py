"""A local submission: what a contact point hands its own network's node to sign and send.

Submissions travel only inside one network's broker (``mlanet send`` -> the node); the node
builds the header, signs and routes. The payload is validated against the kind's model both by
``mlanet send`` (for a clear error at the keyboard) and by the node.

A contact point signs each submission with its own key (:class:`SignedSubmission`), and hands
back, signed the same way, a delivered message it will not take (:class:`ReturnedDelivery`);
``broker/submission_signing.py`` makes and opens both.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from mlanet.schemas.base import ContactPointId, KeyId, MessageId, WireModel
from mlanet.schemas.header import (
    MAX_RETENTION_DAYS,
    MIN_RETENTION_DAYS,
    Destination,
    Kind,
    Urgency,
    true_or_absent,
)

__all__ = ["MAX_FRAME_CHARS", "ReturnedDelivery", "SignedSubmission", "Submission"]

# B64U of the largest message a node may be configured to take (16 MiB): the opener bounds the
# frame by the node's own max_message_bytes first.
MAX_FRAME_CHARS = (16 * 1024 * 1024 * 4 + 2) // 3
_B64U = r"^[A-Za-z0-9_-]+$"
_B64U_SIGNATURE = r"^[A-Za-z0-9_-]{86}$"


class Submission(WireModel):
    message_id: MessageId
    kind: Kind
    sender: ContactPointId
    destination: Destination
    urgency: Urgency = "normal"
    in_reply_to: MessageId | None = None
    hop_limit: int = Field(default=6, ge=1, le=16)
    members_only: Literal[True] | None = None
    direct_only: Literal[True] | None = None
    retention_days: int | None = Field(default=None, ge=MIN_RETENTION_DAYS, le=MAX_RETENTION_DAYS)
    payload: dict[str, Any]

    @field_validator("members_only", "direct_only", mode="before")
    @classmethod
    def _rule_is_the_boolean_true(cls, value: object) -> object:
        return true_or_absent(value)


class SignedSubmission(WireModel):
    """A submission as its contact point signed it: ``submission`` is B64U of the submission's
    JSON bytes, ``signature`` B64U of Ed25519 over ``mlanet-v1:submission:`` + ``submission``
    with the key ``key_id`` of ``contact_point``, which must be the submission's ``sender``."""

    mlanet_submission: Literal[1]
    contact_point: ContactPointId
    key_id: KeyId
    submission: str = Field(pattern=_B64U, max_length=MAX_FRAME_CHARS)
    signature: str = Field(pattern=_B64U_SIGNATURE)


class ReturnedDelivery(WireModel):
    """A message delivered to ``contact_point`` that it would not take (it no longer verifies:
    a key was revoked since, say), handed back to its node to quarantine with ``reason``.
    ``message`` is B64U of the exact delivered bytes; ``signature`` B64U of Ed25519 over
    ``mlanet-v1:returned:`` + ``reason`` + ``.`` + ``message``."""

    mlanet_returned: Literal[1]
    contact_point: ContactPointId
    key_id: KeyId
    reason: str = Field(pattern=r"^[a-z][a-z_]{0,39}$")
    message: str = Field(pattern=_B64U, max_length=MAX_FRAME_CHARS)
    signature: str = Field(pattern=_B64U_SIGNATURE)
