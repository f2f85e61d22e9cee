"""Sealed payloads: HPKE (RFC 9180, base mode) for the destination network, and its keys.

Suite (``schemas/sealing.py``, ``SEAL_SUITE``): KEM ML-KEM-768 + X25519 (the post-quantum
hybrid of ``cryptography``'s ``hazmat.primitives.hpke``), KDF HKDF-SHA256, AEAD
ChaCha20-Poly1305. ``docs/PROTOCOL.md`` section 16 is the normative text.

- The sealed payload is ``enc || ciphertext`` (1120 + plaintext + 16 bytes), sent base64url as
  the envelope's ``payload``: the origin signs it exactly as sent.
- ``info`` is ``b"mlanet-v1:seal:" + header_b64``: the header's canonical bytes as signed, which
  name the origin, destination, message id, kind, creation time and the ``sealed`` statement.
  A payload moved into another message (any header byte different) does not open.
- A public encryption key is the ML-KEM-768 encapsulation key (1184 bytes) followed by the
  X25519 public key (32 bytes); a private key file holds the ML-KEM-768 seed (64 bytes) and the
  X25519 private key (32 bytes).

Key files (JSON, owner-only, like signing keys): ``<network>.seal.<n>.key`` and
``<network>.seal.<n>.pub`` beside the network's signing key.
"""

from __future__ import annotations

import functools
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from mlanet.broker.errors import KeyRefused, Reason, RefusedMessage
from mlanet.broker.keys import b64u_decode, b64u_encode
from mlanet.broker.routing import target_network
from mlanet.schemas.base import NETWORK_ID
from mlanet.schemas.directory import Directory
from mlanet.schemas.header import Header
from mlanet.schemas.sealing import (
    ENCRYPTION_KEY_ID,
    ENCRYPTION_PUBLIC_KEY_BYTES,
    SEAL_SUITE,
    SEALED_KINDS,
    EncryptionKey,
    Sealed,
)
from mlanet.schemas.validity import KeyState

__all__ = [
    "ENC_BYTES",
    "SEAL_CONTEXT",
    "SEAL_OVERHEAD",
    "PrivateSealKey",
    "SealKeyring",
    "generate_seal_key_files",
    "load_seal_key",
    "parse_encryption_key",
    "seal_info",
    "seal_key_files",
    "seal_payload",
    "sealing_for",
]

SEAL_CONTEXT = b"mlanet-v1:seal:"
_SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
ENC_BYTES = hpke.KEM.MLKEM768_X25519.enc_length()  # 1120: ML-KEM-768 ciphertext + X25519 share
SEAL_OVERHEAD = ENC_BYTES + 16  # and the AEAD tag
_MLKEM_PUBLIC = 1184


def seal_info(header_b64: str) -> bytes:
    """HPKE ``info``: binds the seal to every byte of the signed header."""
    return SEAL_CONTEXT + header_b64.encode("ascii")


@functools.lru_cache(maxsize=256)
def parse_encryption_key(encoded: str) -> hpke.MLKEM768X25519PublicKey:
    """Decode a directory's public encryption key; refuse a malformed one. Decoded once per key
    (the check of 1216 bytes would otherwise cost every sealed message as much as a seal)."""
    try:
        raw = b64u_decode(encoded)
    except RefusedMessage:
        raise KeyRefused(Reason.MALFORMED_KEY, "encryption key is not base64url") from None
    if len(raw) != ENCRYPTION_PUBLIC_KEY_BYTES:
        raise KeyRefused(
            Reason.MALFORMED_KEY,
            f"encryption key has {len(raw)} bytes, not {ENCRYPTION_PUBLIC_KEY_BYTES}",
        )
    try:
        kem = mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM_PUBLIC])
        dh = x25519.X25519PublicKey.from_public_bytes(raw[_MLKEM_PUBLIC:])
    except ValueError:
        raise KeyRefused(Reason.MALFORMED_KEY, "encryption key does not decode") from None
    if raw[_MLKEM_PUBLIC:] == bytes(32):
        raise KeyRefused(Reason.WEAK_KEY, "encryption key's X25519 part is zero")
    return hpke.MLKEM768X25519PublicKey(kem, dh)


def sealing_for(header: Header, directory: Directory, here: str) -> tuple[Sealed, str] | None:
    """What an origin (``here``) seals ``header``'s payload with: the ``sealed`` statement for
    the target network's newest encryption key valid at ``created_at``, and that public key;
    None for a kind that is never sealed, or a target that lists no valid key (section 16.1)."""
    if header.kind not in SEALED_KINDS:
        return None
    target = target_network(header, directory, here)
    entry = directory.network(target) if target is not None else None
    listed = entry.encryption_key(header.created_at) if entry is not None else None
    if entry is None or listed is None:
        return None
    return Sealed(suite=listed.suite, network=entry.id, key_id=listed.key_id), listed.public_key


def seal_payload(plaintext: bytes, header_b64: str, public_key: str) -> bytes:
    """The sealed payload (``enc || ciphertext``) of ``plaintext`` under ``header_b64``."""
    return _SUITE.encrypt(plaintext, parse_encryption_key(public_key), info=seal_info(header_b64))


@dataclass(frozen=True)
class PrivateSealKey:
    """One of a network's private encryption keys."""

    network: str
    key_id: str
    mlkem_seed: bytes = field(repr=False)
    x25519_private: bytes = field(repr=False)
    _private: hpke.MLKEM768X25519PrivateKey = field(repr=False, compare=False, init=False)
    _public: bytes = field(repr=False, compare=False, init=False)

    def __post_init__(self) -> None:
        kem = mlkem.MLKEM768PrivateKey.from_seed_bytes(self.mlkem_seed)
        dh = x25519.X25519PrivateKey.from_private_bytes(self.x25519_private)
        # frozen: derived once, here
        object.__setattr__(self, "_private", hpke.MLKEM768X25519PrivateKey(kem, dh))
        public = kem.public_key().public_bytes_raw() + dh.public_key().public_bytes_raw()
        object.__setattr__(self, "_public", public)

    @classmethod
    def generate(cls, network: str, key_id: str) -> PrivateSealKey:
        return cls(
            network,
            _check_key_id(key_id),
            os.urandom(64),
            x25519.X25519PrivateKey.generate().private_bytes_raw(),
        )

    def public_raw(self) -> bytes:
        return self._public

    def public_b64(self) -> str:
        return b64u_encode(self.public_raw())

    def open(self, sealed: bytes, header_b64: str) -> bytes:
        """The plaintext, or RefusedMessage(seal_does_not_open)."""
        if len(sealed) < SEAL_OVERHEAD:
            raise RefusedMessage(Reason.SEAL_DOES_NOT_OPEN, "sealed payload too short")
        try:
            return _SUITE.decrypt(sealed, self._private, info=seal_info(header_b64))
        except (InvalidTag, ValueError):
            raise RefusedMessage(
                Reason.SEAL_DOES_NOT_OPEN, f"payload does not open with {self.key_id}"
            ) from None


def _check_key_id(key_id: str) -> str:
    if not ENCRYPTION_KEY_ID.fullmatch(key_id):
        raise KeyRefused(Reason.MALFORMED_KEY, "encryption key id must look like hpke:<n>")
    return key_id


def seal_key_files(directory: Path, network: str, key_id: str) -> tuple[Path, Path]:
    """Where ``key_id``'s private and public files of ``network`` live in ``directory``."""
    stem = f"{network}.seal.{_check_key_id(key_id).split(':')[1]}"
    return directory / f"{stem}.key", directory / f"{stem}.pub"


def generate_seal_key_files(
    directory: Path, network: str, key_id: str = "hpke:1"
) -> tuple[Path, Path]:
    """Write a new encryption key pair: ``<network>.seal.<n>.key`` (0600) and ``.pub``."""
    if not NETWORK_ID.fullmatch(network):
        raise KeyRefused(Reason.MALFORMED_KEY, "network id must look like 'seajust'")
    key_path, pub_path = seal_key_files(directory, network, key_id)
    directory.mkdir(parents=True, exist_ok=True)
    key = PrivateSealKey.generate(network, key_id)
    secret = {
        "network": network,
        "key_id": key_id,
        "suite": SEAL_SUITE,
        "mlkem768_seed": b64u_encode(key.mlkem_seed),
        "x25519": b64u_encode(key.x25519_private),
    }
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        json.dump(secret, out)
    public = {"network": network, "key_id": key_id, "suite": SEAL_SUITE}
    public["public_key"] = key.public_b64()
    pub_path.write_text(json.dumps(public, indent=2) + "\n", encoding="ascii")
    return key_path, pub_path


def load_seal_key(path: Path) -> PrivateSealKey:
    """Load a private encryption key file, refusing one that group or others may read."""
    try:
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyRefused(Reason.MALFORMED_KEY, f"{path.name} is readable by others; chmod 600")
        data = json.loads(path.read_text(encoding="ascii"))
        seed, dh = b64u_decode(data["mlkem768_seed"]), b64u_decode(data["x25519"])
        if len(seed) != 64 or len(dh) != 32 or data.get("suite") != SEAL_SUITE:
            raise KeyRefused(Reason.MALFORMED_KEY, f"{path.name} is not an encryption key")
        return PrivateSealKey(data["network"], _check_key_id(data["key_id"]), seed, dh)
    except KeyRefused:
        raise
    except (OSError, ValueError, KeyError, TypeError, RefusedMessage) as exc:
        raise KeyRefused(Reason.MALFORMED_KEY, f"cannot load {path.name}") from exc


class SealKeyring:
    """A network's private encryption keys, by key id, with the directory's word on each."""

    def __init__(
        self,
        network: str,
        keys: dict[str, PrivateSealKey],
        refused: tuple[KeyRefused, ...] = (),
    ) -> None:
        self.network = network
        self._keys = dict(keys)
        self.refused = refused  # key files passed over, each with its reason

    @classmethod
    def load(cls, folder: Path, network: str) -> SealKeyring:
        """Every usable ``<network>.seal.<n>.key`` in ``folder`` (none: an empty keyring)."""
        keys: dict[str, PrivateSealKey] = {}
        refused: list[KeyRefused] = []
        for path in sorted(folder.glob(f"{network}.seal.*.key")):
            found = re.fullmatch(
                rf"{re.escape(network)}\.seal\.(0|[1-9][0-9]{{0,8}})\.key", path.name
            )
            if found is None:
                continue
            try:
                key = load_seal_key(path)
            except KeyRefused as exc:
                refused.append(exc)
                continue
            if key.network == network and key.key_id == f"hpke:{found[1]}":
                keys[key.key_id] = key
            else:
                refused.append(KeyRefused(Reason.MALFORMED_KEY, f"{path.name} names another key"))
        return cls(network, keys, tuple(refused))

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._keys))

    def public_key(self, key_id: str) -> str | None:
        """The public key (base64url) of the private key ``key_id`` held here, if any."""
        private = self._keys.get(key_id)
        return private.public_b64() if private is not None else None

    def open(
        self,
        header: Header,
        header_b64: str,
        sealed: bytes,
        listed: list[EncryptionKey],
    ) -> bytes:
        """Open a payload sealed for this network, or raise RefusedMessage with the reason:
        ``sealed_for_other_network``, ``unknown_encryption_key`` (not listed, or no private
        key here), ``encryption_key_revoked``, ``seal_does_not_open``.

        A key that expired after the message was created still opens it (a message in flight
        during a rotation); a revoked key opens nothing, whenever it sealed."""
        statement: Sealed | None = header.sealed
        if statement is None:
            raise RefusedMessage(Reason.NOT_SEALED, f"a {header.kind} must be sealed")
        if statement.network != self.network:
            raise RefusedMessage(Reason.SEALED_FOR_OTHER_NETWORK, f"sealed for {statement.network}")
        entry = next((key for key in listed if key.key_id == statement.key_id), None)
        private = self._keys.get(statement.key_id)
        if entry is None or private is None:
            raise RefusedMessage(
                Reason.UNKNOWN_ENCRYPTION_KEY, f"no encryption key {statement.key_id} here"
            )
        if entry.revoked_at is not None:
            raise RefusedMessage(
                Reason.ENCRYPTION_KEY_REVOKED, f"encryption key {statement.key_id} was revoked"
            )
        if entry.state(header.created_at) is not KeyState.VALID:
            raise RefusedMessage(
                Reason.UNKNOWN_ENCRYPTION_KEY,
                f"encryption key {statement.key_id} was not valid when the message was made",
            )
        if private.public_b64() != entry.public_key:
            raise RefusedMessage(
                Reason.UNKNOWN_ENCRYPTION_KEY,
                f"the key file {statement.key_id} is not the one the directory lists",
            )
        return private.open(sealed, header_b64)
