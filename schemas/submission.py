"""A local submission: what a contact point hands its own network's node to sign and send.

Submissions travel only inside one network's broker (``mlanet send`` -> the node); the node
builds the header, signs and routes. The payload is validated against the kind's model both by
``mlanet send`` (for a clear error at the keyboard) and by the node.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from schemas.base import ContactPointId, MessageId, WireModel
from schemas.header import Destination, Kind, Urgency

__all__ = ["Submission"]


class Submission(WireModel):
    message_id: MessageId
    kind: Kind
    sender: ContactPointId
    destination: Destination
    urgency: Urgency = "normal"
    in_reply_to: MessageId | None = None
    hop_limit: int = Field(default=6, ge=1, le=16)
    members_only: Literal[True] | None = None
    payload: dict[str, Any]
