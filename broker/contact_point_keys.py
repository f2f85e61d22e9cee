"""A contact point's Ed25519 key: its files, and the keys a node vouches for.

A contact point signs what it hands its own network's node (``broker/submission_signing.py``)
with a key of its own. The key files are JSON like a network's (``broker/keys.py``), with
``contact_point`` where a network's key names its ``network``, so that neither kind of key can
be loaded as the other (a contact point's key is never a node's signing key)::

    private, mode 0600: {"contact_point": "kh-cp-1", "key_id": "ed25519:1", "seed": B64U(32 bytes)}
    public:             {"contact_point": "kh-cp-1", "key_id": "ed25519:1", "public_key": B64U(32)}

The node's operator vouches for the network's contact points locally: a folder of public key
files ``<contact point>.pub`` named in the node's config. Submissions never leave the network,
so these keys are not part of the protocol between networks and the directory does not list
them. The node reads a contact point's file when it changes (:class:`KeyFolder`): a key added or
removed takes effect with the next submission, without a restart.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import nacl.exceptions
import nacl.signing
from pydantic import TypeAdapter, ValidationError

from mlanet.broker.errors import KeyRefused, Reason, RefusedMessage
from mlanet.broker.keys import SigningKey, b64u_decode, b64u_encode, parse_public_key
from mlanet.schemas.base import ContactPointId, KeyId

__all__ = [
    "ContactPointKey",
    "ContactPointKeyring",
    "KeyFolder",
    "VouchedKey",
    "check_contact_point",
    "generate_contact_point_key",
    "load_contact_point_key",
    "load_vouched_key",
]

_CONTACT_POINT: TypeAdapter[str] = TypeAdapter(ContactPointId)
_KEY_ID: TypeAdapter[str] = TypeAdapter(KeyId)


def _check(adapter: TypeAdapter[str], value: object, what: str) -> str:
    try:
        return adapter.validate_python(value, strict=True)
    except ValidationError:
        raise KeyRefused(Reason.MALFORMED_KEY, f"not a {what}") from None


def check_contact_point(value: object) -> str:
    """``value`` if it is a well-formed contact point id; else KeyRefused (malformed_key)."""
    return _check(_CONTACT_POINT, value, "contact point id")


@dataclass(frozen=True)
class ContactPointKey:
    """A contact point's private signing key."""

    contact_point: str
    key_id: str
    _key: SigningKey = field(repr=False)

    @classmethod
    def from_seed(cls, contact_point: str, key_id: str, seed: bytes) -> ContactPointKey:
        contact_point = _check(_CONTACT_POINT, contact_point, "contact point id")
        key_id = _check(_KEY_ID, key_id, "key id (ed25519:<n>)")
        # the SigningKey's network label is not used: only its signatures are
        return cls(contact_point, key_id, SigningKey.from_seed("contact-point", key_id, seed))

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def public_b64(self) -> str:
        return self._key.public_b64()


@dataclass(frozen=True)
class VouchedKey:
    """A contact point's public key as its node's operator vouched for it."""

    contact_point: str
    key_id: str
    public_key: str
    # libsodium, as for network keys: it also refuses non-canonical signatures and small-order R
    _sodium: nacl.signing.VerifyKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # weak keys refused
        object.__setattr__(self, "_sodium", parse_public_key(self.public_key))

    def check(self, signature: bytes, data: bytes) -> bool:
        try:
            self._sodium.verify(data, signature)
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
            return False
        return True


class ContactPointKeyring(Protocol):
    """Where a node finds the key it vouches for, for one contact point."""

    def key(self, contact_point: str) -> VouchedKey | None:
        """The contact point's key; None when it has none. Raises KeyRefused for an unusable
        key file."""
        ...


def generate_contact_point_key(
    private_path: Path, public_path: Path, contact_point: str, key_id: str = "ed25519:1"
) -> ContactPointKey:
    """Write a new key pair: the private key file (0600) and the public key file. Neither may
    exist already (a vouched key is never replaced by accident)."""
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(path.name)
    seed = os.urandom(32)
    key = ContactPointKey.from_seed(contact_point, key_id, seed)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    secret = {"contact_point": key.contact_point, "key_id": key.key_id, "seed": b64u_encode(seed)}
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        json.dump(secret, out)
    public = {"contact_point": key.contact_point, "key_id": key.key_id}
    with open(public_path, "x", encoding="ascii") as out:
        out.write(json.dumps({**public, "public_key": key.public_b64()}, indent=2) + "\n")
    return key


def load_contact_point_key(path: Path) -> ContactPointKey:
    """Load a contact point's private key file, refusing one that group or others may read."""
    try:
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyRefused(Reason.MALFORMED_KEY, f"{path.name} is readable by others; chmod 600")
        data = json.loads(path.read_text(encoding="ascii"))
        seed = b64u_decode(data["seed"])
        if len(seed) != 32:
            raise KeyRefused(Reason.MALFORMED_KEY, "seed must be 32 bytes")
        return ContactPointKey.from_seed(data["contact_point"], data["key_id"], seed)
    except KeyRefused:
        raise
    except (OSError, ValueError, KeyError, TypeError, RefusedMessage) as exc:
        raise KeyRefused(Reason.MALFORMED_KEY, f"cannot load {path.name}") from exc


def load_vouched_key(path: Path) -> VouchedKey:
    """Load a contact point's public key file (malformed and weak keys refused)."""
    try:
        data = json.loads(path.read_text(encoding="ascii"))
        contact_point = _check(_CONTACT_POINT, data["contact_point"], "contact point id")
        key_id = _check(_KEY_ID, data["key_id"], "key id (ed25519:<n>)")
        public_key = data["public_key"]
        if not isinstance(public_key, str):
            raise KeyRefused(Reason.MALFORMED_KEY, "public_key is not a string")
    except KeyRefused:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyRefused(Reason.MALFORMED_KEY, f"cannot load {path.name}") from exc
    return VouchedKey(contact_point, key_id, public_key)


class KeyFolder:
    """The keys a node vouches for: ``<folder>/<contact point>.pub``, each read again when its
    file changes (size, modification time or inode), so that adding or removing a contact
    point's key needs no restart. Implements :class:`ContactPointKeyring`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._cache: dict[str, tuple[tuple[int, int, int], VouchedKey]] = {}

    def key(self, contact_point: str) -> VouchedKey | None:
        contact_point = _check(_CONTACT_POINT, contact_point, "contact point id")
        path = self.folder / f"{contact_point}.pub"
        try:
            found = path.stat()
        except FileNotFoundError:
            self._cache.pop(contact_point, None)
            return None
        except OSError as exc:
            raise KeyRefused(Reason.MALFORMED_KEY, f"cannot read {path.name}") from exc
        version = (found.st_mtime_ns, found.st_size, found.st_ino)
        cached = self._cache.get(contact_point)
        if cached is not None and cached[0] == version:
            return cached[1]
        key = load_vouched_key(path)
        if key.contact_point != contact_point:
            raise KeyRefused(Reason.MALFORMED_KEY, f"{path.name} holds another contact point's key")
        self._cache[contact_point] = (version, key)
        return key
