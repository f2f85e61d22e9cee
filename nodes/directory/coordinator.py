"""The coordinator's side of the directory: approve joins and key rotations, revoke keys, hand
contact points over, renew; sign each new version and publish it through the coordinator's node.

A network's encryption keys (the keys origins seal its payloads for, ``schemas/sealing.py``) have
the lifecycle of its signing keys and go through the same requests: a join request may carry
the first one, a rotation request a new one (:func:`approve_rotation` lists it with the same
activation delay and overlap), and :func:`revoke_key` revokes an ``hpke:<n>`` key as it revokes
an ``ed25519:<n>`` one.

Every change is a pure function from one :class:`~mlanet.schemas.directory.Directory` to the next
(version + 1, ``issued_at`` now, ``valid_until`` now + the validity); :meth:`Coordinator.issue`
signs it with the directory key named in ``[coordinator] signing_key`` and hands it to the
coordinator's own node on ``mlanet.directory``. The node applies it and passes it on to its
peers, and they to theirs.

A version number is used only once the hand-over was confirmed (docs/PROTOCOL.md 14.6):

- the signed version is first written as *pending* (``<state_dir>/pending-directory.json``):
  from then on no other document is ever signed with its number;
- the hand-over (connect, declare, publish, broker confirm) has a deadline, so a broker that
  stalls or cannot be reached never makes a command hang;
- confirmed: the version becomes the last issued one (``<state_dir>/issued-directory.json``),
  the base of the next change;
- failed before anything was sent (the broker could not be reached): the pending file is
  removed and the number is free again: the next change is signed with the same number;
- failed after the publish was sent (no confirm in time, or a nack): the version may still reach
  the node, so it stays pending, and the next issuing command hands the same bytes over again
  (a node that has it already does nothing) before it signs anything new.

So the versions nodes see are consecutive, and no number is ever signed twice with different
content (which nodes would refuse as ``equivocation``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from mlanet.broker.directory_signing import (
    VerifiedDirectory,
    open_directory,
    request_signed_by,
    sign_directory,
)
from mlanet.broker.errors import (
    ConfigError,
    KeyRefused,
    MlanetError,
    Reason,
    RefusedMessage,
    TransportError,
)
from mlanet.broker.keys import SigningKey, load_signing_key
from mlanet.broker.seal import parse_encryption_key
from mlanet.broker.transport import Transport
from mlanet.nodes.config import NodeConfig
from mlanet.nodes.directory import certificates
from mlanet.nodes.directory.book import DirectoryBook
from mlanet.nodes.directory.keeper import DIRECTORY_QUEUE
from mlanet.nodes.state import state_dir
from mlanet.schemas.directory import (
    ContactPointEntry,
    Directory,
    JoinRequest,
    KeyRotationRequest,
    NetworkEntry,
    NetworkKey,
    SignedRequest,
)
from mlanet.schemas.sealing import ENCRYPTION_KEY_ID, EncryptionKey
from mlanet.schemas.validity import ended

__all__ = [
    "HAND_OVER_SECONDS",
    "ISSUED_FILE",
    "PENDING_FILE",
    "Coordinator",
    "Progress",
    "approve_join",
    "approve_rotation",
    "change_membership",
    "hand_over",
    "next_version",
    "revoke_key",
]

ISSUED_FILE = "issued-directory.json"
PENDING_FILE = "pending-directory.json"
# How long a hand-over to the coordinator's node may take before the command gives up.
HAND_OVER_SECONDS = 30.0
# Revoked keys and CA certificates stay listed this long (nodes that hold them learn they are
# revoked), then go.
KEEP_REVOKED = timedelta(days=90)
MAX_ENCRYPTION_KEYS = 4  # NetworkEntry.encryption_keys: old and new side by side, and revoked

# A signing key or an encryption key: the same lifecycle (window, overlap, revocation).
_Key = TypeVar("_Key", NetworkKey, EncryptionKey)


def _refuse(detail: str) -> RefusedMessage:
    return RefusedMessage(Reason.UNAUTHORISED, detail)


def _replace_network(directory: Directory, entry: NetworkEntry) -> list[NetworkEntry]:
    return [entry if n.id == entry.id else n for n in directory.networks]


def _kept(keys: list[_Key], now: datetime) -> list[_Key]:
    """The keys still listed in the next version: not ended, and not revoked long ago."""
    return [
        key
        for key in keys
        if not ended(now, key.not_after)
        and (key.revoked_at is None or key.revoked_at > now - KEEP_REVOKED)
    ]


def _rotated(
    keys: list[_Key],
    current: Callable[[_Key], bool],
    new: _Key,
    now: datetime,
    *,
    activate_in: timedelta,
    overlap: timedelta,
    emergency: bool,
) -> list[_Key]:
    """``keys`` with ``new`` listed from ``now + activate_in``: each ``current`` key stays valid
    ``overlap`` longer; in an emergency the current keys are revoked and ``new`` is valid now."""
    out: list[_Key] = []
    ends = now + activate_in + overlap
    for key in keys:
        if current(key) and emergency:
            key = key.model_copy(update={"revoked_at": now})
        elif current(key) and (key.not_after is None or key.not_after > ends):
            key = key.model_copy(update={"not_after": ends})
        out.append(key)
    starts = now if emergency else now + activate_in
    out.append(new.model_copy(update={"not_before": starts, "not_after": None, "revoked_at": None}))
    return out


def _usable_encryption_key(network: str, key: EncryptionKey) -> None:
    try:
        parse_encryption_key(key.public_key)
    except KeyRefused as exc:
        raise RefusedMessage(
            exc.reason, f"{network}'s encryption key {key.key_id}: {exc}"
        ) from None


def next_version(
    directory: Directory,
    now: datetime,
    valid_for: timedelta,
    *,
    networks: list[NetworkEntry] | None = None,
    links: list[tuple[str, str]] | None = None,
) -> Directory:
    """The next version: counters and times moved on, keys and CA certificates long expired or
    revoked pruned (``nodes/directory/certificates.py``)."""
    kept = []
    for network in networks if networks is not None else directory.networks:
        keys = _kept(network.keys, now)
        sealing = _kept(network.encryption_keys, now)
        network = certificates.prune(network, now, KEEP_REVOKED)
        kept.append(
            network.model_copy(update={"keys": keys or network.keys, "encryption_keys": sealing})
        )
    value: dict[str, Any] = directory.model_dump(mode="json", exclude_none=True)
    value.update(
        version=directory.version + 1,
        issued_at=now,
        valid_until=now + valid_for,
        networks=[n.model_dump(mode="json", exclude_none=True) for n in kept],
        links=[list(link) for link in (links if links is not None else directory.links)],
    )
    value.pop("link_cas", None)
    link_cas = certificates.prune_link_cas(directory, now, KEEP_REVOKED)
    if link_cas is not None:
        value["link_cas"] = [ca.model_dump(mode="json", exclude_none=True) for ca in link_cas]
    return Directory.model_validate(value, strict=False)


def approve_join(
    directory: Directory,
    request: JoinRequest,
    signed: SignedRequest,
    links: list[str],
    now: datetime,
) -> tuple[list[NetworkEntry], list[tuple[str, str]]]:
    """The networks and links with the new network added (its request must be signed by the key
    it asks to be listed with: proof that it holds the private key), with its encryption key
    when it sent one (origins seal for it from the start)."""
    entry = request.network
    if directory.network(entry.id) is not None:
        raise _refuse(f"{entry.id} is already in the directory")
    key = entry.keys[0]
    request_signed_by(signed, key.key_id, key.public_key)
    for sealing in entry.encryption_keys:
        _usable_encryption_key(entry.id, sealing)
    for peer in links:
        if directory.network(peer) is None:
            raise _refuse(f"cannot link {entry.id} to {peer}: not in the directory")
    listed = entry.model_copy(
        update={
            "keys": [key.model_copy(update={"not_before": key.not_before or now})],
            "encryption_keys": [
                sealing.model_copy(update={"not_before": sealing.not_before or now})
                for sealing in entry.encryption_keys
            ],
        }
    )
    return (
        [*directory.networks, listed],
        [*directory.links, *((peer, entry.id) for peer in links)],
    )


def approve_rotation(
    directory: Directory,
    request: KeyRotationRequest,
    signed: SignedRequest,
    now: datetime,
    *,
    activate_in: timedelta,
    overlap: timedelta,
    emergency: bool = False,
) -> list[NetworkEntry]:
    """The networks with the new signing key, the new encryption key, or both listed.

    Normally the request is signed by the network's current key and by the new one; the new key
    becomes valid after ``activate_in`` (time for the update to reach every node) and the current
    key stays valid ``overlap`` longer, so no message is refused during the change. In an
    emergency (the current key is compromised or lost; the coordinator has checked the request
    by other means) the current key is revoked at once and the new key is valid at once.

    A new encryption key follows the same rule: the encryption keys in use now (valid, or
    about to be) stay valid ``overlap`` after it becomes valid, so what was sealed with them
    before the change (in flight, or waiting in a stopped node's queue) still opens. A request
    for an encryption key only is signed by the network's current, valid key.
    """
    entry = directory.network(request.network)
    if entry is None:
        raise _refuse(f"{request.network} is not in the directory")
    current = next((k for k in entry.keys if k.key_id == request.current_key_id), None)
    new = request.new_key
    if new is not None and any(key.key_id == new.key_id for key in entry.keys):
        raise _refuse(f"{request.network} already has a key {new.key_id}")
    if new is not None:
        request_signed_by(signed, new.key_id, new.public_key)
    if current is None:
        raise _refuse(f"{request.network} has no key {request.current_key_id}")
    if new is None and not current.valid_at(now):
        raise _refuse(f"{request.network}'s key {current.key_id} is not valid now")
    if new is None or not emergency:
        request_signed_by(signed, current.key_id, current.public_key)
    timing: dict[str, Any] = {
        "activate_in": activate_in,
        "overlap": overlap,
        "emergency": emergency,
    }
    update: dict[str, Any] = {}
    if new is not None:
        listed = NetworkKey(key_id=new.key_id, public_key=new.public_key)
        current_id = current.key_id
        update["keys"] = _rotated(
            entry.keys, lambda key: key.key_id == current_id, listed, now, **timing
        )
    sealing = request.new_encryption_key
    if sealing is not None:
        if any(key.key_id == sealing.key_id for key in entry.encryption_keys):
            raise _refuse(f"{request.network} already has an encryption key {sealing.key_id}")
        _usable_encryption_key(request.network, sealing)
        still_listed = _kept(entry.encryption_keys, now)  # what the next version still lists
        if len(still_listed) >= MAX_ENCRYPTION_KEYS:
            raise _refuse(
                f"{request.network} lists {len(still_listed)} encryption keys, the most it"
                " may: wait until one has ended (a revoked one stays listed for"
                f" {KEEP_REVOKED.days} days)"
            )

        def in_use(key: EncryptionKey) -> bool:
            return key.revoked_at is None and not ended(now, key.not_after)

        update["encryption_keys"] = _rotated(still_listed, in_use, sealing, now, **timing)
    return _replace_network(directory, entry.model_copy(update=update))


def revoke_key(
    directory: Directory, network: str, key_id: str, now: datetime
) -> list[NetworkEntry]:
    """Emergency revocation: from the moment a node holds this version, nothing signed with the
    key is accepted any more, also what already waits in a queue. An encryption key
    (``hpke:<n>``) likewise: nothing sealed with it opens any more, and origins stop sealing
    with it."""
    entry = directory.network(network)
    if entry is None:
        raise _refuse(f"{network} is not in the directory")
    field = "encryption_keys" if ENCRYPTION_KEY_ID.fullmatch(key_id) else "keys"
    keys: list[NetworkKey] | list[EncryptionKey] = getattr(entry, field)
    if not any(key.key_id == key_id for key in keys):
        kind = "encryption key" if field == "encryption_keys" else "key"
        raise _refuse(f"{network} has no {kind} {key_id}")
    revoked = [
        key.model_copy(update={"revoked_at": now}) if key.key_id == key_id else key for key in keys
    ]
    return _replace_network(directory, entry.model_copy(update={field: revoked}))


def hand_over(
    directory: Directory,
    network: str,
    previous: str,
    successor: str,
    at: datetime,
    role: str | None = None,
) -> list[NetworkEntry]:
    """``successor`` replaces ``previous`` from ``at``: what is addressed to the previous one
    (and what already waits for it) goes to the successor. The successor is appointed when it is
    not listed yet (same country, ``role`` or the previous one's role)."""
    entry = directory.network(network)
    if entry is None:
        raise _refuse(f"{network} is not in the directory")
    old = entry.contact_point(previous)
    if old is None:
        raise _refuse(f"{network} has no contact point {previous}")
    points = list(entry.contact_points)
    if entry.contact_point(successor) is None:
        if successor[:2] != previous[:2]:
            raise _refuse("a successor serves the same country")
        points.append(
            ContactPointEntry(
                id=successor, country=old.country, role=role or old.role, not_before=None
            )
        )
    points = [
        cp.model_copy(update={"successor": successor, "not_after": at}) if cp.id == previous else cp
        for cp in points
    ]
    return _replace_network(directory, entry.model_copy(update={"contact_points": points}))


def change_membership(
    directory: Directory,
    network: str,
    *,
    add_members: Sequence[str] = (),
    remove_members: Sequence[str] = (),
    add_observers: Sequence[str] = (),
    remove_observers: Sequence[str] = (),
    contact_points: Sequence[tuple[str, str]] = (),
) -> list[NetworkEntry]:
    """Countries join or leave a network as members or observers; ``contact_points`` (id,
    role) are appointed for them. A country that leaves takes its contact points with it."""
    entry = directory.network(network)
    if entry is None:
        raise _refuse(f"{network} is not in the directory")
    members = [c for c in entry.members if c not in remove_members]
    members += [c for c in add_members if c not in members]
    observers = [c for c in entry.observers if c not in remove_observers and c not in members]
    observers += [c for c in add_observers if c not in observers and c not in members]
    serving = set(members) | set(observers)
    points = [cp for cp in entry.contact_points if cp.country in serving]
    for cp_id, role in contact_points:
        if entry.contact_point(cp_id) is None:
            points.append(ContactPointEntry(id=cp_id, country=cp_id[:2].upper(), role=role))
    value = entry.model_dump(mode="json", exclude_none=True)
    value.update(
        members=members,
        observers=observers,
        contact_points=[cp.model_dump(mode="json", exclude_none=True) for cp in points],
    )
    changed = NetworkEntry.model_validate(value, strict=False)
    return _replace_network(directory, changed)


Change = Callable[[Directory, datetime], Directory]


def _not_published(version: int, sent: bool, why: str) -> TransportError:
    """Why a hand-over failed, and what it means for the version number (module docstring)."""
    if sent:
        return TransportError(
            f"version {version} was handed over but not confirmed ({why}): it may still reach"
            " the node, so it stays pending and the next directory command hands it over again,"
            " unchanged, before it signs anything new"
        )
    return TransportError(
        f"version {version} was not published ({why}): nothing was used up, the next directory"
        f" command signs version {version} again"
    )


@dataclass
class Coordinator:
    """The coordinator's node config and its directory signing key."""

    config: NodeConfig
    key: SigningKey

    @classmethod
    def open(cls, config: NodeConfig) -> Coordinator:
        trust = config.coordinator
        if trust is None or trust.signing_key is None:
            raise ConfigError(
                "this is not the coordinator's node: [coordinator] signing_key is not set"
            )
        key = load_signing_key(trust.signing_key)
        if key.network != trust.network:
            raise ConfigError("the directory signing key belongs to another network")
        return cls(config, key)

    def _book(self) -> DirectoryBook:
        return DirectoryBook.load(self.config, persist=False)

    def _read(self, name: str, book: DirectoryBook) -> VerifiedDirectory | None:
        try:
            data = (self.config.state_dir / name).read_bytes()
        except OSError:
            return None
        return open_directory(data, book.coordinator_trust(), now=book.clock())

    def base(self) -> VerifiedDirectory:
        """The newest published directory: what the node holds, or what was confirmed last
        if newer (the node has not applied it yet)."""
        book = self._book()
        issued = self._read(ISSUED_FILE, book)
        return issued if issued is not None and issued.version > book.held.version else book.held

    def pending(self) -> VerifiedDirectory | None:
        """A version signed and handed over without a confirm, if any."""
        return self._read(PENDING_FILE, self._book())

    def sign(self, directory: Directory) -> VerifiedDirectory:
        """Sign ``directory`` (nothing is recorded: see :meth:`publish`)."""
        if directory.coordinator != self.key.network:
            raise _refuse("the directory names another coordinator")
        if not any(k.key_id == self.key.key_id for k in directory.coordinator_keys):
            raise _refuse("the directory does not list the coordinator key that signs it")
        return sign_directory(directory, self.key)

    def _write(self, name: str, data: bytes) -> None:
        path = state_dir.secure(self.config.state_dir) / name
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.chmod(0o600)  # owner-only like the rest of the state
        tmp.replace(path)

    async def publish(
        self, verified: VerifiedDirectory, *, within: float = HAND_OVER_SECONDS, again: bool = False
    ) -> None:
        """Hand ``verified`` to the coordinator's node and record it as issued once the broker
        confirmed it; raise TransportError otherwise, saying whether the version number is used
        (see the module docstring).
        ``again``: it is the pending version, handed over once before: it stays pending
        whatever happens now."""
        pending = self.config.state_dir / PENDING_FILE
        if not again:
            self._write(PENDING_FILE, verified.to_bytes())
        progress = Progress()
        try:
            await asyncio.wait_for(
                publish_directory(self.config, verified.to_bytes(), progress=progress), within
            )
        except (TimeoutError, MlanetError) as exc:
            if not progress.confirmed:  # (a close that failed after the confirm is no failure)
                why = f"nothing within {within:g} s" if isinstance(exc, TimeoutError) else str(exc)
                if not (progress.sent or again):
                    pending.unlink(missing_ok=True)  # it never left: its number is free
                raise _not_published(verified.version, progress.sent or again, why) from exc
        pending.replace(pending.with_name(ISSUED_FILE))

    async def complete_pending(
        self, *, within: float = HAND_OVER_SECONDS
    ) -> VerifiedDirectory | None:
        """Hand over again a version an earlier command left pending (None when none was).
        One the node already holds is only recorded as issued."""
        pending = self.pending()
        if pending is None:
            return None
        if self._book().held.version >= pending.version:
            path = self.config.state_dir / PENDING_FILE
            path.replace(path.with_name(ISSUED_FILE))
        else:
            await self.publish(pending, within=within, again=True)
        return pending

    async def issue(
        self, change: Change, *, within: float = HAND_OVER_SECONDS
    ) -> VerifiedDirectory:
        """Complete a pending version, then build the next one from the newest published
        directory with ``change(base, now)``, sign it and publish it."""
        await self.complete_pending(within=within)
        directory = change(self.base().directory, datetime.now(UTC))
        verified = self.sign(directory)
        await self.publish(verified, within=within)
        return verified


@dataclass
class Progress:
    """How far a hand-over got: the publish went out (``sent``), the broker confirmed it."""

    sent: bool = False
    confirmed: bool = False


async def publish_directory(
    config: NodeConfig, data: bytes, *, progress: Progress | None = None
) -> None:
    """Put a signed directory on a node's local directory queue (the node checks it), broker
    confirmed; ``progress`` follows how far it got."""
    progress = progress or Progress()
    async with Transport(config.amqp_url()) as transport:
        await transport.declare_queue(DIRECTORY_QUEUE, delivery_limit=config.limits.delivery_limit)
        progress.sent = True
        await transport.publish(
            DIRECTORY_QUEUE, data, message_id=str(uuid.uuid4()), kind="directory"
        )
        progress.confirmed = True
