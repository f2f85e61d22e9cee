"""The directory a node trusts, and what follows from it: trust store, peers, signing key, expiry.

A node holds one signed directory at a time (:class:`DirectoryBook`). At start it takes the newest
valid one among its state (``<state_dir>/directory.json``), the one it held before that
(``directory.previous.json``) and the file its configuration names (``directory``); a file it cannot
use is named with its reason (:class:`RefusedFile`) and passed over, so the node starts on the last
good directory it has. A refused state file is moved aside (``directory.refused.json``), never
overwritten. Afterwards only a directory update can replace the held one, and only with a newer
version signed by the coordinator (:meth:`DirectoryBook.consider`), checked in full before anything
is written:

- unsigned -> ``unsigned_directory``; signed by a key that is not the coordinator's ->
  ``unknown_key``; forged or altered -> ``bad_signature``; a coordinator key revoked or out of its
  window -> ``key_revoked`` / ``expired``; a network or coordinator key that no trust store
  would take -> ``malformed_key`` / ``weak_key``;
- an older version, or one already past its ``valid_until`` -> ``stale_directory``;
- the same version with other content -> ``equivocation`` (the same content is a no-op).

The coordinator keys a node accepts are the ones pinned in ``[coordinator]`` and those the held
directory lists (so the coordinator can rotate its own key through the directory). A held
directory past its expiry (``valid_until``, else ``issued_at`` + ``max_directory_age_seconds``)
makes the node fail closed: :meth:`DirectoryBook.closed` gives the ``directory_expired`` refusal
for every new message until a newer directory arrives.

Nothing here touches AMQP; ``nodes/directory/keeper.py`` applies a directory to the running node.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import structlog

from mlanet.broker.directory_signing import VerifiedDirectory, coordinator_trust, open_directory
from mlanet.broker.errors import ConfigError, KeyRefused, Reason, RefusedMessage
from mlanet.broker.keys import (
    SigningKey,
    TrustStore,
    b64u_decode,
    load_signing_key,
    parse_public_key,
)
from mlanet.broker.seal import SealKeyring
from mlanet.broker.strictjson import loads_strict
from mlanet.nodes.config import NodeConfig, PeerConfig
from mlanet.nodes.directory.config import directory_expiry
from mlanet.schemas.base import format_timestamp
from mlanet.schemas.directory import Directory, NetworkKey
from mlanet.schemas.sealing import EncryptionKey
from mlanet.schemas.validity import ended

__all__ = [
    "PREVIOUS_FILE",
    "REFUSED_FILE",
    "STATE_FILE",
    "DirectoryBook",
    "ExpiryWarning",
    "OlderDirectory",
    "Outcome",
    "RefusedFile",
    "effective_config",
    "load_directory",
    "message_trust",
]

log = structlog.get_logger("mlanet.directory")

STATE_FILE = "directory.json"
PREVIOUS_FILE = "directory.previous.json"  # the one held before: a fallback if the state is bad
REFUSED_FILE = "directory.refused.json"  # a state file found unusable at start, kept aside


def _now() -> datetime:
    return datetime.now(UTC)


class OlderDirectory(RefusedMessage):
    """A valid directory, but older than the one held (``stale_directory``)."""


@dataclass(frozen=True)
class Outcome:
    """What considering a directory did: ``applied`` (newer, now held) or ``same``."""

    state: Literal["applied", "same"]
    verified: VerifiedDirectory


@dataclass(frozen=True)
class RefusedFile:
    """A directory file found at start that the node cannot use, and why (metadata only)."""

    file: str  # the file's name
    source: Literal["state", "previous", "config"]
    reason: Reason
    detail: str

    def text(self) -> str:
        return f"{self.file} ({self.source}) refused: {self.reason.value}: {self.detail}"


@dataclass(frozen=True)
class ExpiryWarning:
    subject: str
    at: datetime

    def text(self) -> str:
        return f"{self.subject} expires at {format_timestamp(self.at)}"


def message_trust(directory: Directory) -> TrustStore:
    """The networks' keys, with their windows and revocations, as the directory lists them."""
    trust = TrustStore()
    for network in directory.networks:
        for key in network.keys:
            trust.add_listed(network.id, key)
    return trust


def effective_config(config: NodeConfig, directory: Directory) -> NodeConfig:
    """The configuration with its peers taken from the directory's links.

    A ``[[peers]]`` table for a linked network still applies (its own credentials, the kinds it
    may send); any other linked network is reached with the ``[link]`` user. A network that is
    not linked in the directory is no peer, whatever the file says.
    """
    static = {peer.network: peer for peer in config.peers}
    peers: list[PeerConfig] = []
    for network in directory.neighbours(config.network):
        if network in static:
            peers.append(static[network])
        elif config.link is not None:
            peers.append(
                PeerConfig(
                    network=network,
                    user=config.link.user,
                    password_file=config.link.password_file,
                )
            )
        else:
            log.warning("peer_credentials_missing", peer=network)
    return config.model_copy(update={"peers": tuple(peers)})


def _active(key: NetworkKey, at: datetime) -> bool:
    return key.valid_at(at)


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _self_listed(data: bytes) -> list[tuple[str, str]]:
    """The coordinator keys a signed directory lists about itself (read before verifying, for
    the node's own state files only: they were verified when they were written). A key no trust
    store takes is left out here; opening the file then refuses it with that key's reason."""
    try:
        frame = loads_strict(data, max_bytes=len(data) + 1, max_depth=8)
        document = Directory.model_validate_json(b64u_decode(frame["document"]))
    except (RefusedMessage, KeyError, TypeError, ValueError):
        return []
    listed = []
    for key in document.coordinator_keys:
        try:
            parse_public_key(key.public_key)
        except KeyRefused:
            continue
        listed.append((key.key_id, key.public_key))
    return listed


def _pinned_message_key(data: bytes, network: str, pinned: list[tuple[str, str]]) -> str | None:
    """When a directory does not open because ``[coordinator]`` pins the coordinator network's
    message key (its node's signing key, listed in the directory) instead of its directory key,
    what to say. Read before verifying, to explain a refusal only."""
    try:
        frame = loads_strict(data, max_bytes=len(data) + 1, max_depth=8)
        document = Directory.model_validate_json(b64u_decode(frame["document"]))
    except (RefusedMessage, KeyError, TypeError, ValueError):
        return None
    entry = document.network(network)
    listed = {key.public_key for key in entry.keys} if entry is not None else set()
    if not any(public in listed for _, public in pinned):
        return None
    return (
        f"[coordinator] pins {network}'s message key (the key its node signs messages with, "
        f"{network}.1.pub), not the key that signs the directory: pin the coordinator's "
        f"directory key (in a local federation, {network}/coordinator/{network}-directory.1.pub)"
    )


def load_directory(config: NodeConfig) -> Directory:
    """The directory a node with ``config`` trusts now: the newest valid signed one it holds
    (its state or the file named by ``directory``), as it stands now. Nothing is written."""
    return DirectoryBook.load(config, persist=False).view()


class DirectoryBook:
    """The signed directory one node holds."""

    def __init__(
        self,
        config: NodeConfig,
        held: VerifiedDirectory,
        *,
        clock: Callable[[], datetime] = _now,
        refused: tuple[RefusedFile, ...] = (),
    ) -> None:
        self.config = config
        self.clock = clock
        self.held = held
        self.refused = refused  # the files passed over when this book was loaded

    # --- loading ---------------------------------------------------------------------------------
    @classmethod
    def load(
        cls, config: NodeConfig, *, clock: Callable[[], datetime] = _now, persist: bool = True
    ) -> DirectoryBook:
        """The newest valid directory among the node's state files and its configured file.

        A file that does not open is passed over (named in :attr:`refused`); ConfigError only
        when none opens, or the newest does not list this network. With ``persist`` the held
        directory becomes the state file, a refused state file first moved to REFUSED_FILE."""
        coordinator = config.coordinator
        if coordinator is None:
            raise ConfigError(
                "no [coordinator] table: the node has no key to check a directory against"
            )
        pinned = [(key.key_id, key.public_key) for key in coordinator.keys]
        try:
            coordinator_trust(coordinator.network, pinned)
        except KeyRefused as exc:
            raise ConfigError(f"[coordinator] pins a key the node cannot use: {exc}") from None
        now = clock()
        state_path = config.state_dir / STATE_FILE
        sources: tuple[tuple[Path, Literal["state", "previous", "config"]], ...] = (
            (state_path, "state"),
            (config.state_dir / PREVIOUS_FILE, "previous"),
            (config.directory, "config"),
        )
        found: list[tuple[VerifiedDirectory, str]] = []
        refused: list[RefusedFile] = []
        unreadable = ""
        hint: str | None = None
        held: VerifiedDirectory | None = None
        for path, source in sources:
            if source == "previous" and found:
                continue  # only a fallback: the state file opened
            try:
                data = path.read_bytes()
            except OSError:
                if source == "config":
                    unreadable = f"{path.name}: not readable"
                continue
            keys = pinned + (_self_listed(data) if source != "config" else [])
            try:
                trust = coordinator_trust(
                    coordinator.network, keys, held.directory if held is not None else None
                )
                verified = open_directory(data, trust, now=now)
            except (RefusedMessage, KeyRefused) as exc:
                refused.append(RefusedFile(path.name, source, exc.reason, exc.detail))
                hint = hint or _pinned_message_key(data, coordinator.network, pinned)
                continue
            found.append((verified, source))
            held = held if held is not None and held.version >= verified.version else verified
        if held is None:
            problems = [file.text() for file in refused] + ([unreadable] if unreadable else [])
            problems += [hint] if hint else []
            raise ConfigError("no valid directory: " + "; ".join(problems))
        if held.directory.network(config.network) is None:
            raise ConfigError(f"{config.network} is not in directory version {held.version}")
        if persist:
            if any(file.source == "state" for file in refused):
                os.replace(state_path, state_path.with_name(REFUSED_FILE))  # kept, not lost
            if not any(v is held and s == "state" for v, s in found):
                _write_atomically(state_path, held.to_bytes())
        return cls(config, held, clock=clock, refused=tuple(refused))

    # --- accepting a newer one -------------------------------------------------------------------
    def coordinator_trust(self) -> TrustStore:
        assert self.config.coordinator is not None  # load() insists on it
        pinned = [(key.key_id, key.public_key) for key in self.config.coordinator.keys]
        return coordinator_trust(self.config.coordinator.network, pinned, self.held.directory)

    def check(self, data: bytes | VerifiedDirectory, now: datetime) -> Outcome | VerifiedDirectory:
        """Verify ``data`` against what this node holds, without applying it: the same
        directory (an Outcome ``same``), or the newer one to apply; raises RefusedMessage."""
        if isinstance(data, VerifiedDirectory):
            data = data.to_bytes()
        verified = open_directory(data, self.coordinator_trust(), now=now)
        directory = verified.directory
        if not any(key.key_id == verified.signed.key_id for key in directory.coordinator_keys):
            raise RefusedMessage(
                Reason.UNAUTHORISED, "the directory does not list the key that signed it"
            )
        if directory.version < self.held.version:
            raise OlderDirectory(
                Reason.STALE_DIRECTORY,
                f"version {directory.version} is older than the version {self.held.version} held",
            )
        if directory.version == self.held.version:
            if verified.digest != self.held.digest:
                raise RefusedMessage(
                    Reason.EQUIVOCATION, f"another directory with version {directory.version}"
                )
            return Outcome("same", self.held)
        if directory.valid_until is not None and directory.valid_until <= now:
            raise RefusedMessage(
                Reason.STALE_DIRECTORY,
                f"version {directory.version} expired at {format_timestamp(directory.valid_until)}",
            )
        if directory.network(self.config.network) is None:
            raise RefusedMessage(
                Reason.UNAUTHORISED, f"version {directory.version} no longer lists this network"
            )
        return verified

    def consider(self, data: bytes | VerifiedDirectory, now: datetime | None = None) -> Outcome:
        """Check ``data`` and, when it is newer, hold it (persisted before this returns; the
        one held until then is kept as PREVIOUS_FILE). Nothing is written for a refused one."""
        checked = self.check(data, now or self.clock())
        if isinstance(checked, Outcome):
            return checked
        state_dir = self.config.state_dir
        _write_atomically(state_dir / PREVIOUS_FILE, self.held.to_bytes())
        _write_atomically(state_dir / STATE_FILE, checked.to_bytes())
        self.held = checked
        return Outcome("applied", checked)

    # --- what follows from it --------------------------------------------------------------------
    @property
    def version(self) -> int:
        return self.held.version

    def view(self, now: datetime | None = None) -> Directory:
        """The directory as it stands now (handovers due, contact points' windows applied)."""
        return self.held.directory.as_of(now or self.clock())

    def message_trust(self) -> TrustStore:
        return message_trust(self.held.directory)

    def effective_config(self) -> NodeConfig:
        return effective_config(self.config, self.held.directory)

    def expires_at(self) -> datetime:
        return directory_expiry(self.held.directory, self.config.coordinator)

    def closed(self, now: datetime | None = None) -> RefusedMessage | None:
        """The refusal for new messages when the held directory is too old to trust."""
        expires = self.expires_at()
        if (now or self.clock()) < expires:
            return None
        return RefusedMessage(
            Reason.DIRECTORY_EXPIRED,
            f"directory version {self.version} expired at {format_timestamp(expires)}; new"
            " messages are refused until a newer directory arrives",
        )

    def warnings(self, now: datetime | None = None) -> list[ExpiryWarning]:
        """Keys (signing and encryption keys alike), CA certificates and the directory itself
        that expire within the warning windows (the alerts' ``key_expiry_days``, CAs too, and
        ``directory_expiry_days``)."""
        now = now or self.clock()
        windows = self.config.operator.alerts  # the same windows as the alerts
        horizon = now + timedelta(days=windows.key_expiry_days)
        found: list[ExpiryWarning] = []
        expires = self.expires_at()
        if now < expires <= now + timedelta(days=windows.directory_expiry_days):
            found.append(ExpiryWarning(f"directory version {self.version}", expires))
        directory = self.held.directory
        for key in directory.coordinator_keys:
            if _active(key, now) and key.not_after is not None and key.not_after <= horizon:
                found.append(ExpiryWarning(f"coordinator key {key.key_id}", key.not_after))
        for network in directory.networks:
            listed: list[tuple[str, NetworkKey | EncryptionKey]] = [
                *(("key", key) for key in network.keys),
                *(("encryption key", key) for key in network.encryption_keys),
            ]
            for what, one in listed:
                if one.valid_at(now) and one.not_after is not None and one.not_after <= horizon:
                    found.append(
                        ExpiryWarning(f"{what} {one.key_id} of {network.id}", one.not_after)
                    )
            for ca in network.tls.cas if network.tls is not None else []:
                if ca.valid_at(now) and ca.ends <= horizon:
                    found.append(ExpiryWarning(f"broker CA {ca.id} of {network.id}", ca.ends))
        for ca in directory.link_cas or []:
            if ca.valid_at(now) and ca.ends <= horizon:
                found.append(ExpiryWarning(f"link CA {ca.id}", ca.ends))
        return found

    def key_valid(self, key_id: str, now: datetime) -> bool:
        """Does the directory list this network's key ``key_id`` as valid at ``now``?"""
        entry = self.held.directory.network(self.config.network)
        return entry is not None and any(
            key.key_id == key_id and _active(key, now) for key in entry.keys
        )

    def encryption_keys_without_file(self, keyring: SealKeyring, now: datetime) -> list[str]:
        """This network's encryption keys in use (valid, or about to be) that no key file of
        ``keyring`` holds (missing, or another key under that id): what origins seal with
        them cannot be opened here."""
        entry = self.held.directory.network(self.config.network)
        return [
            key.key_id
            for key in (entry.encryption_keys if entry is not None else [])
            if key.revoked_at is None
            and not ended(now, key.not_after)
            and keyring.public_key(key.key_id) != key.public_key
        ]

    def seal_keys(self) -> SealKeyring:
        """This network's private encryption keys: every ``<network>.seal.<n>.key`` beside
        ``signing_key`` (a file that cannot be used is logged and passed over)."""
        keyring = SealKeyring.load(self.config.signing_key.parent, self.config.network)
        for refused in keyring.refused:
            log.error(
                "encryption_key_file_refused", reason=refused.reason.value, detail=refused.detail
            )
        return keyring

    def signing_key(self, now: datetime | None = None) -> SigningKey:
        """The key this node signs with now: the newest of its key files (``<network>.<n>.key``
        beside ``signing_key``) that the directory lists as valid now; else ``signing_key``."""
        now = now or self.clock()
        network = self.config.network
        entry = self.held.directory.network(network)
        usable = {key.key_id for key in entry.keys if _active(key, now)} if entry else set()
        best: tuple[int, SigningKey] | None = None
        folder = self.config.signing_key.parent
        for path in sorted(folder.glob(f"{network}.*.key")):
            match = re.fullmatch(rf"{re.escape(network)}\.(0|[1-9][0-9]{{0,8}})\.key", path.name)
            if match is None or f"ed25519:{match.group(1)}" not in usable:
                continue
            try:
                key = load_signing_key(path)
            except KeyRefused as refused:
                log.warning("signing_key_file_refused", file=path.name, reason=refused.reason.value)
                continue
            if key.network == network and key.key_id in usable and entry is not None:
                listed = next(k for k in entry.keys if k.key_id == key.key_id)
                if listed.public_key == key.public_b64() and (
                    best is None or int(match.group(1)) > best[0]
                ):
                    best = (int(match.group(1)), key)
        if best is not None:
            return best[1]
        return load_signing_key(self.config.signing_key)
