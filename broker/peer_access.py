"""Peer access on a network's own broker, from the directory: who may write which inbox.

Every network names, in the directory, the broker user its links log in as at its peers' brokers,
with a salted hash of that user's password (``mlanet.schemas.directory.LinkUser``). Each peer gets a
door on the network's broker (:func:`open_door`): a vhost of its own, ``<vhost>:door:<peer>``, where
the node's user (and the administrator) have every right and the peer's user has write permission on
exactly one resource, ``mlanet.inbox.from.<peer>``, and nothing else anywhere on the broker: not
even a passive ``queue.declare`` (which RabbitMQ checks no permission for) can show it the network's
other queues. The user is created from the published hash when it does not exist (tagged
``mlanet-peer``), so the password never leaves the peer. A user that exists and was not created this
way (a local account, an operator, the node's own user) is never changed: it only gets the write
permission when it has no permission in this vhost yet. Needs an administrator account on the broker
(creating users and permissions is reserved to administrators); see ``docs/JOINING.md``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Iterable
from typing import Any

from mlanet.broker.management import Management
from mlanet.broker.topology import door_sender, door_vhost, inbox_exchange
from mlanet.schemas.directory import LinkUser

__all__ = [
    "PEER_TAG",
    "close_door",
    "door_vhosts",
    "grant_peer",
    "inbox_write_pattern",
    "open_door",
    "rabbit_password_hash",
    "revoke_peer",
]

PEER_TAG = "mlanet-peer"
NONE = "^$"


def rabbit_password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + SHA-256(salt + password))."""
    salt = os.urandom(4) if salt is None else salt
    if len(salt) != 4:
        raise ValueError("the salt is 4 bytes")
    digest = hashlib.sha256(salt + password.encode("utf-8")).digest()
    return base64.b64encode(salt + digest).decode("ascii")


def inbox_write_pattern(peer: str) -> str:
    return f"^{re.escape(inbox_exchange(peer))}$"


def _tags(user: dict[str, Any]) -> set[str]:
    tags = user.get("tags", [])
    if isinstance(tags, str):
        return {tag.strip() for tag in tags.split(",") if tag.strip()}
    return {str(tag) for tag in tags}


async def grant_peer(
    management: Management,
    vhost: str,
    peer: str,
    link_user: LinkUser,
    *,
    protected: Iterable[str] = (),
) -> str:
    """Let ``peer``'s link user write its inbox exchange in ``vhost``; returns what was done:
    ``granted``, ``unchanged`` or ``kept`` (a local user with other rights, left alone)."""
    if link_user.name in set(protected):
        return "kept"
    existing = await management.user(link_user.name)
    ours = existing is None or PEER_TAG in _tags(existing)
    if existing is None or (ours and existing.get("password_hash") != link_user.password_hash):
        await management.put_user_hash(
            link_user.name, link_user.password_hash, link_user.hashing_algorithm, PEER_TAG
        )
    write = inbox_write_pattern(peer)
    current = await management.permissions(vhost, link_user.name)
    if current is not None and (
        current.get("configure"),
        current.get("write"),
        current.get("read"),
    ) == (NONE, write, NONE):
        return "unchanged"
    if current is not None and not ours:
        return "kept"
    await management.put_permissions(vhost, link_user.name, configure=NONE, write=write, read=NONE)
    return "granted"


async def revoke_peer(management: Management, vhost: str, peer: str, user: str) -> bool:
    """Take back a former peer's write permission (only the one :func:`grant_peer` gives)."""
    current = await management.permissions(vhost, user)
    if current is None or current.get("write") != inbox_write_pattern(peer):
        return False
    await management.delete_permissions(vhost, user)
    return True


async def open_door(
    management: Management,
    vhost: str,
    peer: str,
    link_user: LinkUser,
    *,
    owners: Iterable[str],
    protected: Iterable[str] = (),
) -> str:
    """Make ``peer``'s door on the network whose vhost is ``vhost`` (idempotent): the vhost
    ``<vhost>:door:<peer>``, every right there for ``owners`` (the node's user, the
    administrator), and the peer's link user's write permission on its inbox exchange there
    (:func:`grant_peer`'s answer is returned). The node declares the exchange and queue."""
    door = door_vhost(vhost, peer)
    await management.put_vhost(door, "mlanet door")
    for owner in owners:
        await management.put_permissions(door, owner, configure=".*", write=".*", read=".*")
    return await grant_peer(management, door, peer, link_user, protected=protected)


async def door_vhosts(management: Management, vhost: str) -> dict[str, str]:
    """The doors of the network whose vhost is ``vhost`` on this broker, by sender."""
    found = {}
    for name in await management.vhost_names():
        sender = door_sender(vhost, name)
        if sender is not None:
            found[sender] = name
    return found


async def close_door(management: Management, door: str) -> bool:
    """Delete a former peer's door, with its link user's permission there, unless a message
    still waits in it (the node consumes it first); True when it was deleted."""
    for figures in await management.queue_figures(door):
        if figures.messages is None or figures.messages > 0:
            return False
    await management.delete_vhost(door)
    return True
