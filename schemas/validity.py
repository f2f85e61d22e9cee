"""When a key or a contact point is valid: the one rule (``docs/PROTOCOL.md`` section 14.3).

A window runs from its ``not_before`` inclusive to its ``not_after`` exclusive: at ``not_after``
exactly it has ended. Either end may be absent (open). A revoked key is revoked whatever the
time: it may have signed anything, the times it claims included. Every check of a key at a time
(the trust store's, the directory book's, ``directory show``'s, the coordinator's pruning) and
every contact point's window use these functions; nothing compares the bounds by hand.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from mlanet.schemas.base import Timestamp, WireModel

__all__ = ["KeyState", "ListedKey", "ended", "in_window", "key_state", "not_yet"]


class KeyState(StrEnum):
    """A key at one instant, as ``mlanet directory show`` names it."""

    VALID = "valid"
    NOT_YET_VALID = "not yet valid"
    EXPIRED = "expired"
    REVOKED = "revoked"


def not_yet(at: datetime, not_before: datetime | None) -> bool:
    """Is ``at`` before the window opens (``not_before`` inclusive)?"""
    return not_before is not None and at < not_before


def ended(at: datetime, not_after: datetime | None) -> bool:
    """Has the window ended by ``at``? At ``not_after`` exactly it has."""
    return not_after is not None and at >= not_after


def in_window(at: datetime, not_before: datetime | None, not_after: datetime | None) -> bool:
    """Is ``at`` within ``[not_before, not_after)``?"""
    return not not_yet(at, not_before) and not ended(at, not_after)


def key_state(
    at: datetime,
    *,
    not_before: datetime | None,
    not_after: datetime | None,
    revoked: bool,
) -> KeyState:
    """A key's state at ``at``: revocation first, then its window."""
    if revoked:
        return KeyState.REVOKED
    if not_yet(at, not_before):
        return KeyState.NOT_YET_VALID
    if ended(at, not_after):
        return KeyState.EXPIRED
    return KeyState.VALID


class ListedKey(WireModel):
    """What every public key the directory lists has (a signing key, an encryption key): a
    validity window and a revocation, refused from then on."""

    not_before: Timestamp | None = None
    not_after: Timestamp | None = None
    revoked_at: Timestamp | None = None

    def state(self, at: datetime) -> KeyState:
        """This key at ``at``."""
        return key_state(
            at,
            not_before=self.not_before,
            not_after=self.not_after,
            revoked=self.revoked_at is not None,
        )

    def valid_at(self, at: datetime) -> bool:
        return self.state(at) is KeyState.VALID
