"""The coordinator's side of the directory: approve joins and key rotations, revoke keys, hand
contact points over, renew; sign each new version and publish it through the coordinator's node.

Every change is a pure function from one :class:`~schemas.directory.Directory` to the next
(version + 1, ``issued_at`` now, ``valid_until`` now + the validity); :class:`Coordinator` signs
it with the directory key named in ``[coordinator] signing_key``, records it as the last issued
version (``<state_dir>/issued-directory.json``, so that two changes in a row never reuse a
version number) and hands it to the coordinator's own node on ``mlanet.directory``. The node
applies it and passes it on to its peers, and they to theirs.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from broker.directory_signing import (
    VerifiedDirectory,
    open_directory,
    request_signed_by,
    sign_directory,
)
from broker.errors import ConfigError, Reason, RefusedMessage
from broker.keys import SigningKey, load_signing_key
from broker.transport import Transport
from nodes import state_dir
from nodes.config import NodeConfig
from nodes.directory import DirectoryBook
from nodes.directory_runtime import DIRECTORY_QUEUE
from schemas.directory import (
    ContactPointEntry,
    Directory,
    JoinRequest,
    KeyRotationRequest,
    NetworkEntry,
    NetworkKey,
    SignedRequest,
)

__all__ = [
    "ISSUED_FILE",
    "Coordinator",
    "approve_join",
    "approve_rotation",
    "change_membership",
    "hand_over",
    "next_version",
    "revoke_key",
]

ISSUED_FILE = "issued-directory.json"
# Revoked keys stay listed this long (nodes that hold them learn they are revoked), then go.
KEEP_REVOKED = timedelta(days=90)


def _refuse(detail: str) -> RefusedMessage:
    return RefusedMessage(Reason.UNAUTHORISED, detail)


def _replace_network(directory: Directory, entry: NetworkEntry) -> list[NetworkEntry]:
    return [entry if n.id == entry.id else n for n in directory.networks]


def next_version(
    directory: Directory,
    now: datetime,
    valid_for: timedelta,
    *,
    networks: list[NetworkEntry] | None = None,
    links: list[tuple[str, str]] | None = None,
) -> Directory:
    """The next version: counters and times moved on, keys long expired or revoked pruned."""
    kept = []
    for network in networks if networks is not None else directory.networks:
        keys = [
            key
            for key in network.keys
            if (key.not_after is None or key.not_after > now)
            and (key.revoked_at is None or key.revoked_at > now - KEEP_REVOKED)
        ]
        kept.append(network.model_copy(update={"keys": keys or network.keys}))
    value: dict[str, Any] = directory.model_dump(mode="json", exclude_none=True)
    value.update(
        version=directory.version + 1,
        issued_at=now,
        valid_until=now + valid_for,
        networks=[n.model_dump(mode="json", exclude_none=True) for n in kept],
        links=[list(link) for link in (links if links is not None else directory.links)],
    )
    return Directory.model_validate(value, strict=False)


def approve_join(
    directory: Directory,
    request: JoinRequest,
    signed: SignedRequest,
    links: list[str],
    now: datetime,
) -> tuple[list[NetworkEntry], list[tuple[str, str]]]:
    """The networks and links with the new network added (its request must be signed by the key
    it asks to be listed with: proof that it holds the private key)."""
    entry = request.network
    if directory.network(entry.id) is not None:
        raise _refuse(f"{entry.id} is already in the directory")
    key = entry.keys[0]
    request_signed_by(signed, key.key_id, key.public_key)
    for peer in links:
        if directory.network(peer) is None:
            raise _refuse(f"cannot link {entry.id} to {peer}: not in the directory")
    listed = entry.model_copy(
        update={"keys": [key.model_copy(update={"not_before": key.not_before or now})]}
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
    """The networks with the new key listed.

    Normally the request is signed by the network's current key and by the new one; the new key
    becomes valid after ``activate_in`` (time for the update to reach every node) and the current
    key stays valid ``overlap`` longer, so no message is refused during the change. In an
    emergency (the current key is compromised or lost; the coordinator has checked the request
    by other means) the current key is revoked at once and the new key is valid at once.
    """
    entry = directory.network(request.network)
    if entry is None:
        raise _refuse(f"{request.network} is not in the directory")
    new = request.new_key
    if any(key.key_id == new.key_id for key in entry.keys):
        raise _refuse(f"{request.network} already has a key {new.key_id}")
    request_signed_by(signed, new.key_id, new.public_key)
    current = next((k for k in entry.keys if k.key_id == request.current_key_id), None)
    if current is None:
        raise _refuse(f"{request.network} has no key {request.current_key_id}")
    keys: list[NetworkKey] = []
    for key in entry.keys:
        if key.key_id == current.key_id and emergency:
            keys.append(key.model_copy(update={"revoked_at": now}))
        elif key.key_id == current.key_id:
            request_signed_by(signed, current.key_id, current.public_key)
            ends = now + activate_in + overlap
            if key.not_after is None or key.not_after > ends:
                key = key.model_copy(update={"not_after": ends})
            keys.append(key)
        else:
            keys.append(key)
    starts = now if emergency else now + activate_in
    keys.append(
        NetworkKey(key_id=new.key_id, public_key=new.public_key, not_before=starts, not_after=None)
    )
    return _replace_network(directory, entry.model_copy(update={"keys": keys}))


def revoke_key(
    directory: Directory, network: str, key_id: str, now: datetime
) -> list[NetworkEntry]:
    """Emergency revocation: from the moment a node holds this version, nothing signed with the
    key is accepted any more, also what already waits in a queue."""
    entry = directory.network(network)
    if entry is None:
        raise _refuse(f"{network} is not in the directory")
    if not any(key.key_id == key_id for key in entry.keys):
        raise _refuse(f"{network} has no key {key_id}")
    keys = [
        key.model_copy(update={"revoked_at": now}) if key.key_id == key_id else key
        for key in entry.keys
    ]
    return _replace_network(directory, entry.model_copy(update={"keys": keys}))


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

    def base(self) -> VerifiedDirectory:
        """The newest directory: what the node holds, or what was issued last if newer."""
        book = DirectoryBook.load(self.config, persist=False)
        held = book.held
        try:
            data = (self.config.state_dir / ISSUED_FILE).read_bytes()
        except OSError:
            return held
        issued = open_directory(data, book.coordinator_trust(), now=book.clock())
        return issued if issued.version > held.version else held

    def issue(self, directory: Directory) -> VerifiedDirectory:
        """Sign ``directory`` and record it as the last issued version."""
        if directory.coordinator != self.key.network:
            raise _refuse("the directory names another coordinator")
        if not any(k.key_id == self.key.key_id for k in directory.coordinator_keys):
            raise _refuse("the directory does not list the coordinator key that signs it")
        verified = sign_directory(directory, self.key)
        path = state_dir.secure(self.config.state_dir) / ISSUED_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(verified.to_bytes())
        tmp.chmod(0o600)  # owner-only like the rest of the state
        tmp.replace(path)
        return verified

    async def publish(self, verified: VerifiedDirectory) -> None:
        """Hand the signed directory to the coordinator's node (broker-confirmed)."""
        await publish_directory(self.config, verified.to_bytes())


async def publish_directory(config: NodeConfig, data: bytes) -> None:
    """Put a signed directory on a node's local directory queue (the node checks it)."""
    async with Transport(config.amqp_url()) as transport:
        await transport.declare_queue(DIRECTORY_QUEUE, delivery_limit=config.limits.delivery_limit)
        await transport.publish(
            DIRECTORY_QUEUE, data, message_id=str(uuid.uuid4()), kind="directory"
        )
