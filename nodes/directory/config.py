"""The directory-related tables of a node's configuration: ``[coordinator]`` and ``[link]``
(see ``nodes/examples/node.toml`` and ``docs/JOINING.md``).

- ``[coordinator]`` pins the coordinator's directory key(s): a node accepts a directory only when
  one of them (or a coordinator key listed in the directory it already holds) signed it.
- ``[link]`` is the broker user this node's links log in as at every peer's broker; its
  password's salted hash is published in the directory, so no peer needs it in a config.
  ``[link.tls]`` is the links' TLS identity: a client certificate the coordinator's link CA
  issued for that user, which a peer's broker that the directory lists with TLS takes as the
  login (EXTERNAL), and a folder where the node writes each peer's CA certificates for its
  shovels. A link without TLS is refused unless ``allow_plaintext`` (local development only;
  see ``nodes/runtime/link_plan.py``).

A node never holds an administrator account of its broker: when a directory update links a new
peer, the operator gives the peer's link user its write access with ``mlanet directory
provision`` (the node says so in its log and its alerts).

:func:`directory_expiry` is the one rule for when a node stops trusting its directory (and fails
closed): the node, ``mlanet status``, the metrics and the alerts all use it. The warning windows
ahead of a key's or the directory's expiry are ``[operator.alerts]`` ``key_expiry_days`` and
``directory_expiry_days`` (``nodes/config.py``), for the node's log as for its alerts.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Self

from cryptography.x509.oid import NameOID
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mlanet.broker.tls import TlsError, load_certificates, not_after
from mlanet.schemas import KeyId, NetworkId
from mlanet.schemas.directory import Directory

__all__ = [
    "MAX_DIRECTORY_AGE_SECONDS",
    "CoordinatorConfig",
    "LinkConfig",
    "LinkTls",
    "PinnedKey",
    "directory_expiry",
]

DAY = 86400
MAX_DIRECTORY_AGE_SECONDS = 90 * DAY  # a directory without valid_until, trusted this long


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PinnedKey(_Config):
    key_id: KeyId
    public_key: str = Field(pattern=r"^[A-Za-z0-9_-]{43}$")


class CoordinatorConfig(_Config):
    """Who signs the directory, and how long a directory is trusted."""

    network: NetworkId = "unodc"
    keys: tuple[PinnedKey, ...] = Field(min_length=1, max_length=8)
    # Only at the coordinator's own node: the directory signing key (mlanet directory approve).
    signing_key: Path | None = None
    # A directory without valid_until is trusted this long after it was issued; then the node
    # fails closed (directory_expired). Status, metrics and alerts use the same (directory_expiry).
    max_directory_age_seconds: int = Field(default=MAX_DIRECTORY_AGE_SECONDS, ge=60)
    # Refused when present: the warning windows are [operator.alerts] key_expiry_days and
    # directory_expiry_days, for the node's expiry_warning log lines as for its alerts.
    warn_before_seconds: int | None = None
    # How often the node re-checks time-dependent parts (handovers, key activation, expiry).
    check_every_seconds: float = Field(default=2.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _one_warning_window(self) -> Self:
        if self.warn_before_seconds is not None:
            raise ValueError(
                "warn_before_seconds is no longer read: the node warns of expiry within "
                "[operator.alerts] key_expiry_days and directory_expiry_days, as its alerts "
                "do; remove it (and set those if you need other windows)"
            )
        return self


class LinkTls(_Config):
    """``[link.tls]``: how our links reach a peer's broker over AMQPS.

    The files are read by this network's own broker, which runs the links' shovels: paths as
    that broker sees them (the node and its broker share the folder). ``cert_file`` is the
    client certificate the coordinator's link CA issued, its common name the ``[link]`` user;
    ``key_file`` its private key, readable by the broker's user only; ``ca_folder`` is where the
    node writes each peer's CA certificates as the directory lists them
    (``peer-<peer>-<digest>.pem``, public)."""

    cert_file: Path
    key_file: Path
    ca_folder: Path


class LinkConfig(_Config):
    """Our user at every peer's broker (the directory publishes its password's hash).

    ``password_file`` is needed only for a link without TLS, which is refused unless
    ``allow_plaintext``: a flag for a federation on one machine, for development; the node
    logs every such link at start and ``mlanet status`` marks it."""

    user: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    password_file: Path | None = None
    allow_plaintext: bool = False
    tls: LinkTls | None = None

    @model_validator(mode="after")
    def _some_way(self) -> Self:
        if self.tls is None and self.password_file is None:
            raise ValueError("[link] needs [link.tls] (or password_file with allow_plaintext)")
        if self.allow_plaintext and self.password_file is None:
            raise ValueError("[link] allow_plaintext needs password_file (plaintext logs in by it)")
        if self.tls is not None:
            _link_certificate_checked(self.tls.cert_file, self.user)
        return self


def _link_certificate_checked(path: Path, user: str) -> None:
    """The link certificate must name the link user (EXTERNAL logs in as its common name) and
    not have expired: a peer's broker would refuse every link otherwise."""
    try:
        certificate = load_certificates(path)[0]
    except TlsError as exc:
        raise ValueError(f"[link.tls] cert_file: {exc.detail}") from None
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(names[0].value) if names else None
    if name != user:
        raise ValueError(
            f"[link.tls] cert_file names {name!r}, not the [link] user {user!r}: a peer's broker "
            "logs the link in as the certificate's common name"
        )
    if not_after(certificate) <= datetime.now(UTC):
        raise ValueError(f"[link.tls] cert_file {path.name} has expired: renew it")


def directory_expiry(directory: Directory, coordinator: CoordinatorConfig | None) -> datetime:
    """The first moment a node no longer trusts ``directory`` and refuses new messages with
    ``directory_expired``: its ``valid_until``, else ``issued_at`` plus ``[coordinator]
    max_directory_age_seconds``. A node has no other rule (``DirectoryBook.expires_at``, status,
    metrics and alerts all call this)."""
    if directory.valid_until is not None:
        return directory.valid_until
    age = MAX_DIRECTORY_AGE_SECONDS
    if coordinator is not None:
        age = coordinator.max_directory_age_seconds
    return directory.issued_at + timedelta(seconds=age)
