"""A network's contact points as its node knows them: each acts only with its own credentials.

``mlanet contact-point add`` (:func:`add_contact_point`) writes two things:

- the contact point's **credentials folder** (``--out``, mode 0700), which only it (or an
  operator acting for it) holds: ``contact-point.key`` (its Ed25519 key, 0600) and
  ``broker.password`` (its broker user's password, 0600). ``mlanet send`` and ``mlanet inbox``
  take it as ``--credentials``: they sign with the key and log in as the contact point's user,
  never as the node. The contact point's archive of delivered messages (``inbox.sqlite3``)
  is kept there too, so that it holds that contact point's messages and nobody else's;
- in the node's folder ``[contact_points] keys``: ``<contact point>.pub`` (the public key the
  node checks its submissions against) and ``<contact point>.user`` (its broker user's name
  and a salted hash of its password, from which ``mlanet directory provision`` creates the
  user; the password itself never enters the node's folder).

The node vouches for a contact point by holding its public key: a submission is accepted only
when signed by the key of the contact point it names as sender. See "Contact points" and
"Security model" in docs/OPERATIONS.md.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from mlanet.broker.contact_point_access import ContactPointUser
from mlanet.broker.contact_point_keys import (
    ContactPointKey,
    check_contact_point,
    generate_contact_point_key,
    load_contact_point_key,
)
from mlanet.broker.errors import ConfigError, KeyRefused
from mlanet.broker.peer_access import rabbit_password_hash
from mlanet.nodes.config import NodeConfig, _amqp_url, _read_secret

__all__ = [
    "KEY_FILE",
    "PASSWORD_FILE",
    "Added",
    "Credentials",
    "add_contact_point",
    "broker_user",
    "vouched_users",
    "write_contact_point",
]

KEY_FILE = "contact-point.key"
PASSWORD_FILE = "broker.password"  # noqa: S105 - a file name, not a password


def broker_user(node_user: str, contact_point: str) -> str:
    """The broker user a contact point logs in as: named after its node's user."""
    return f"{node_user}-cp-{contact_point}"


@dataclass(frozen=True)
class Credentials:
    """What a contact point acts with: its key and its broker password (from its folder)."""

    folder: Path
    key: ContactPointKey
    password: str = field(repr=False)

    @property
    def contact_point(self) -> str:
        return self.key.contact_point

    @classmethod
    def load(cls, folder: Path) -> Credentials:
        """Read a credentials folder (ConfigError when something in it is unusable)."""
        try:
            key = load_contact_point_key(folder / KEY_FILE)
        except KeyRefused as exc:
            raise ConfigError(f"credentials {folder.name}: {exc.detail}") from exc
        return cls(folder, key, _read_secret(folder / PASSWORD_FILE))

    def user(self, config: NodeConfig) -> str:
        return broker_user(config.broker.user, self.contact_point)

    def amqp_url(self, config: NodeConfig) -> str:
        """The node's broker and vhost, as this contact point's user."""
        broker = config.broker
        return _amqp_url(
            broker.host,
            broker.port,
            broker.vhost,
            self.user(config),
            self.password,
            broker.heartbeat,
        )


@dataclass(frozen=True)
class Added:
    credentials: Path
    public_key: Path
    user_file: Path
    user: str


def _write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(value + "\n")


def write_contact_point(
    keys: Path, node_user: str, vhost: str, contact_point: str, out: Path
) -> Added:
    """Write a contact point's credentials into ``out`` and what its node needs into ``keys``
    (see the module docstring). Refuses to replace anything (FileExistsError) and a malformed
    contact point id (ConfigError)."""
    try:
        contact_point = check_contact_point(contact_point)
    except KeyRefused:
        raise ConfigError("a contact point id looks like kh-cp-1") from None
    public, user_file = keys / f"{contact_point}.pub", keys / f"{contact_point}.user"
    for path in (public, user_file, out / KEY_FILE, out / PASSWORD_FILE):
        if path.exists():
            raise FileExistsError(path.name)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    keys.mkdir(parents=True, exist_ok=True)
    generate_contact_point_key(out / KEY_FILE, public, contact_point)
    password = secrets.token_urlsafe(24)
    _write_secret(out / PASSWORD_FILE, password)
    name = broker_user(node_user, contact_point)
    record = {
        "contact_point": contact_point,
        "vhost": vhost,
        "name": name,
        "password_hash": rabbit_password_hash(password),
    }
    user_file.write_text(json.dumps(record, indent=2) + "\n", encoding="ascii")
    return Added(out, public, user_file, name)


def add_contact_point(config: NodeConfig, contact_point: str, out: Path) -> Added:
    """``mlanet contact-point add``: credentials for one of this node's contact points."""
    broker = config.broker
    return write_contact_point(
        config.contact_points.keys, broker.user, broker.vhost, contact_point, out
    )


def vouched_users(keys: Path) -> list[ContactPointUser]:
    """The broker users of the contact points whose ``.user`` files are in ``keys``."""
    users = []
    for path in sorted(keys.glob("*.user")) if keys.is_dir() else []:
        try:
            record = json.loads(path.read_text(encoding="ascii"))
            user = ContactPointUser(
                vhost=str(record["vhost"]),
                contact_point=str(record["contact_point"]),
                name=str(record["name"]),
                password_hash=str(record["password_hash"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path.name} cannot be read") from exc
        if f"{user.contact_point}.user" != path.name:
            raise ConfigError(f"{path.name} names another contact point")
        users.append(user)
    return users
