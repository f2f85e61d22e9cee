"""The directory-related tables of a node's configuration: ``[coordinator]`` and ``[link]``
(see ``nodes/examples/node.toml`` and ``docs/JOINING.md``).

- ``[coordinator]`` pins the coordinator's directory key(s): a node accepts a directory only when
  one of them (or a coordinator key listed in the directory it already holds) signed it.
- ``[link]`` is the broker user this node's links log in as at every peer's broker; its
  password's salted hash is published in the directory, so no peer needs it in a config.

A node never holds an administrator account of its broker: when a directory update links a new
peer, the operator gives the peer's link user its write access with ``mlanet directory
provision`` (the node says so in its log and its alerts).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CoordinatorConfig", "LinkConfig", "PinnedKey"]

DAY = 86400


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PinnedKey(_Config):
    key_id: str = Field(pattern=r"^ed25519:(?:0|[1-9][0-9]{0,8})$")
    public_key: str = Field(pattern=r"^[A-Za-z0-9_-]{43}$")


class CoordinatorConfig(_Config):
    """Who signs the directory, and how long a directory is trusted."""

    network: str = Field(default="unodc", pattern=r"^[a-z][a-z0-9-]{1,31}$")
    keys: tuple[PinnedKey, ...] = Field(min_length=1, max_length=8)
    # Only at the coordinator's own node: the directory signing key (mlanet directory approve).
    signing_key: Path | None = None
    # A directory without valid_until is trusted this long after it was issued.
    max_directory_age_seconds: int = Field(default=90 * DAY, ge=60)
    # Warn this long before a key or the directory expires.
    warn_before_seconds: int = Field(default=14 * DAY, ge=0)
    # How often the node re-checks time-dependent parts (handovers, key activation, expiry).
    check_every_seconds: float = Field(default=2.0, gt=0, le=3600)


class LinkConfig(_Config):
    """Our user at every peer's broker (the directory publishes its password's hash)."""

    user: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    password_file: Path
