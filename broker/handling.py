"""The handling rules of the signed header (``docs/PROTOCOL.md``, section 17), as pure functions:
what a network's policy makes of the rules a sender asked for, and until when the destination
keeps a message's content.

Routing enforces ``members_only`` and ``direct_only`` at every hop (``broker/routing.py``); the
retention period is kept where the content rests at the destination (a contact point's archive,
``nodes/cli/contact.py``), which purges the content once it has passed and keeps the metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol

from mlanet.schemas import Header
from mlanet.schemas.submission import Submission

__all__ = ["Handling", "HandlingPolicy", "handling_of", "kept_days", "kept_until", "with_policy"]


@dataclass(frozen=True, slots=True)
class Handling:
    """The handling rules of one message, as its header carries them (None: not asked for)."""

    members_only: Literal[True] | None = None
    direct_only: Literal[True] | None = None
    retention_days: int | None = None


class HandlingPolicy(Protocol):
    """A network's mandatory handling rules (the node's ``[policy]``, ``nodes/config.py``)."""

    @property
    def members_only(self) -> bool: ...

    @property
    def direct_only(self) -> bool: ...

    @property
    def max_retention_days(self) -> int | None: ...


def kept_days(retention_days: int | None, max_retention_days: int | None) -> int | None:
    """The days a message is kept: its own retention period, at most ``max_retention_days``
    (a message without one is kept that long); None: kept without a limit."""
    if max_retention_days is None:
        return retention_days
    return min(retention_days or max_retention_days, max_retention_days)


def with_policy(
    asked: Handling,
    *,
    members_only: bool = False,
    direct_only: bool = False,
    max_retention_days: int | None = None,
) -> Handling:
    """The rules a message of this network carries: what its sender asked for, and whatever
    the network's policy makes mandatory on top (a policy only ever adds or shortens)."""
    return Handling(
        members_only=True if asked.members_only or members_only else None,
        direct_only=True if asked.direct_only or direct_only else None,
        retention_days=kept_days(asked.retention_days, max_retention_days),
    )


def handling_of(submission: Submission, policy: HandlingPolicy) -> Handling:
    """The rules the origin signs into a contact point's message: the submission's, with the
    network's ``policy`` applied."""
    asked = Handling(submission.members_only, submission.direct_only, submission.retention_days)
    return with_policy(
        asked,
        members_only=policy.members_only,
        direct_only=policy.direct_only,
        max_retention_days=policy.max_retention_days,
    )


def kept_until(header: Header, max_retention_days: int | None = None) -> datetime | None:
    """When the destination purges this message's content (None: never): ``created_at`` plus
    its retention period, capped by the destination's ``max_retention_days``."""
    days = kept_days(header.retention_days, max_retention_days)
    return None if days is None else header.created_at + timedelta(days=days)
