"""Ed25519 signing keys, their files, and the trust store of peer networks' public keys.

A network signs with one private key at a time; its key id is ``ed25519:<n>``. Private key files
are JSON, written owner-only (0600) and refused when group or others can read them. Public keys
enter the trust store only after :func:`mlanet.broker.curve.check_public_point` accepts them.

Every key is held by one library, libsodium (PyNaCl): it generates, signs and verifies (faster
than OpenSSL here, and its verification also refuses non-canonical signatures, S >= L, and
small-order R).
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import nacl.exceptions
import nacl.signing

from mlanet.broker.curve import PointCheck, check_public_point
from mlanet.broker.errors import KeyRefused, Reason, RefusedMessage
from mlanet.schemas.base import KEY_ID, NETWORK_ID
from mlanet.schemas.directory import NetworkKey
from mlanet.schemas.validity import KeyState, key_state

__all__ = [
    "PublicKeyInfo",
    "SigningKey",
    "TrustStore",
    "TrustedKey",
    "b64u_check",
    "b64u_decode",
    "b64u_encode",
    "generate_key_files",
    "load_public_key_file",
    "load_signing_key",
    "parse_public_key",
]

_B64U = re.compile(r"^[A-Za-z0-9_-]*$")


def b64u_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


# The last character of a canonical encoding leaves its unused low bits zero: 4 of them after
# 2 characters of a last group, 2 after 3 (RFC 4648, section 3.5).
_CANONICAL_LAST = {2: frozenset("AQgw"), 3: frozenset("AEIMQUYcgkosw048")}


def b64u_check(text: str, *, reason: Reason = Reason.BAD_BASE64) -> None:
    """Raise unless ``text`` is strict unpadded base64url: alphabet, length, canonical
    trailing bits (what :func:`b64u_decode` checks, without decoding)."""
    # fullmatch: "$" alone would also match before a trailing newline.
    if not _B64U.fullmatch(text) or len(text) % 4 == 1:
        raise RefusedMessage(reason, "not unpadded base64url")
    last = _CANONICAL_LAST.get(len(text) % 4)
    if last is not None and text[-1] not in last:
        raise RefusedMessage(reason, "non-canonical base64url")


def b64u_decode(text: str | bytes, *, reason: Reason = Reason.BAD_BASE64) -> bytes:
    """Strict unpadded base64url: alphabet, length and canonical trailing bits all checked."""
    as_text = text if isinstance(text, str) else text.decode("ascii", errors="replace")
    b64u_check(as_text, reason=reason)
    return base64.urlsafe_b64decode(as_text + "=" * (-len(as_text) % 4))


def _check_key_id(key_id: str) -> str:
    if not KEY_ID.fullmatch(key_id):
        raise KeyRefused(Reason.MALFORMED_KEY, "key id must look like ed25519:<n>")
    return key_id


def parse_public_key(encoded: str) -> nacl.signing.VerifyKey:
    """Decode a b64url public key and refuse malformed or weak ones."""
    try:
        raw = b64u_decode(encoded)
    except RefusedMessage:
        raise KeyRefused(Reason.MALFORMED_KEY, "public key is not base64url") from None
    if len(raw) != 32:
        raise KeyRefused(Reason.MALFORMED_KEY, f"public key has {len(raw)} bytes, not 32")
    verdict = check_public_point(raw)
    if verdict in (PointCheck.NON_CANONICAL, PointCheck.NOT_ON_CURVE):
        raise KeyRefused(Reason.MALFORMED_KEY, f"public key is {verdict.value}")
    if verdict is not PointCheck.OK:
        raise KeyRefused(Reason.WEAK_KEY, f"public key is {verdict.value}")
    return nacl.signing.VerifyKey(raw)


@dataclass(frozen=True)
class SigningKey:
    """A network's private signing key."""

    network: str
    key_id: str
    private: nacl.signing.SigningKey = field(repr=False)

    @classmethod
    def from_seed(cls, network: str, key_id: str, seed: bytes) -> SigningKey:
        return cls(network, _check_key_id(key_id), nacl.signing.SigningKey(seed))

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data).signature

    def public_raw(self) -> bytes:
        return bytes(self.private.verify_key)

    def public_b64(self) -> str:
        return b64u_encode(self.public_raw())


@dataclass(frozen=True)
class PublicKeyInfo:
    network: str
    key_id: str
    public_key: str


def generate_key_files(
    directory: Path, network: str, key_id: str = "ed25519:1"
) -> tuple[Path, Path]:
    """Write a new key pair: ``<network>.<n>.key`` (0600) and ``<network>.<n>.pub``."""
    if not NETWORK_ID.fullmatch(network):
        raise KeyRefused(Reason.MALFORMED_KEY, "network id must look like 'seajust'")
    _check_key_id(key_id)
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{network}.{key_id.split(':')[1]}"
    key_path, pub_path = directory / f"{stem}.key", directory / f"{stem}.pub"
    private = nacl.signing.SigningKey.generate()
    secret = {"network": network, "key_id": key_id, "seed": b64u_encode(bytes(private))}
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        json.dump(secret, out)
    public = {
        "network": network,
        "key_id": key_id,
        "public_key": b64u_encode(bytes(private.verify_key)),
    }
    pub_path.write_text(json.dumps(public, indent=2) + "\n", encoding="ascii")
    return key_path, pub_path


def load_signing_key(path: Path) -> SigningKey:
    """Load a private key file, refusing one that group or others may read."""
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyRefused(Reason.MALFORMED_KEY, f"{path.name} is readable by others; chmod 600")
        data = json.loads(path.read_text(encoding="ascii"))
        seed = b64u_decode(data["seed"])
        if len(seed) != 32:
            raise KeyRefused(Reason.MALFORMED_KEY, "seed must be 32 bytes")
        return SigningKey.from_seed(data["network"], data["key_id"], seed)
    except (OSError, ValueError, KeyError, TypeError, RefusedMessage) as exc:
        raise KeyRefused(Reason.MALFORMED_KEY, f"cannot load {path.name}") from exc


def load_public_key_file(path: Path) -> PublicKeyInfo:
    try:
        data = json.loads(path.read_text(encoding="ascii"))
        info = PublicKeyInfo(data["network"], _check_key_id(data["key_id"]), data["public_key"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyRefused(Reason.MALFORMED_KEY, f"cannot load {path.name}") from exc
    parse_public_key(info.public_key)
    return info


@dataclass(frozen=True)
class TrustedKey:
    network: str
    key_id: str
    public: nacl.signing.VerifyKey = field(repr=False)
    not_before: datetime | None = None
    not_after: datetime | None = None
    revoked: bool = False

    def state(self, at: datetime) -> KeyState:
        """This key at ``at`` (``schemas/validity.py``)."""
        return key_state(
            at, not_before=self.not_before, not_after=self.not_after, revoked=self.revoked
        )

    def check(self, signature: bytes, data: bytes) -> bool:
        try:
            self.public.verify(data, signature)
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
            return False
        return True


class TrustStore:
    """Public keys of the networks this node trusts, by (network, key id)."""

    def __init__(self) -> None:
        self._keys: dict[tuple[str, str], TrustedKey] = {}

    def add(
        self,
        network: str,
        key_id: str,
        public_key: str,
        *,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        revoked: bool = False,
    ) -> None:
        """Add a key after checking it is well formed and not weak (raises KeyRefused).

        A revoked key stays known (what it signed earlier can still be read from an archive)
        but every check made with a time refuses it as ``key_revoked``."""
        if not NETWORK_ID.fullmatch(network):
            raise KeyRefused(Reason.MALFORMED_KEY, "network id must look like 'seajust'")
        public = parse_public_key(public_key)
        self._keys[(network, _check_key_id(key_id))] = TrustedKey(
            network, key_id, public, not_before, not_after, revoked
        )

    def add_listed(self, network: str, key: NetworkKey) -> None:
        """Add a key as a directory lists it: with its validity window and revocation."""
        self.add(
            network,
            key.key_id,
            key.public_key,
            not_before=key.not_before,
            not_after=key.not_after,
            revoked=key.revoked_at is not None,
        )

    def add_signing_key(self, key: SigningKey) -> None:
        self.add(key.network, key.key_id, key.public_b64())

    def networks(self) -> set[str]:
        return {network for network, _ in self._keys}

    def verify(
        self,
        network: str,
        key_id: str,
        signature: bytes,
        data: bytes,
        *,
        reason: Reason,
        at: datetime | None = None,
    ) -> None:
        """Raise RefusedMessage(UNKNOWN_KEY or ``reason``) unless the signature verifies."""
        trusted = self._keys.get((network, key_id))
        if trusted is None:
            # Unverified text from the sender: repeated only when it is a well-formed id.
            shown_key = key_id if KEY_ID.fullmatch(key_id) else "(malformed key id)"
            shown_network = network if NETWORK_ID.fullmatch(network) else "(malformed network id)"
            raise RefusedMessage(
                Reason.UNKNOWN_KEY, f"no trusted key {shown_key} for {shown_network}"
            )
        state = KeyState.VALID if at is None else trusted.state(at)
        if state is KeyState.REVOKED:
            raise RefusedMessage(Reason.KEY_REVOKED, f"key {key_id} of {network} was revoked")
        if state is not KeyState.VALID:
            raise RefusedMessage(Reason.EXPIRED, f"key {key_id} of {network} not valid then")
        if not trusted.check(signature, data):
            raise RefusedMessage(reason, f"signature by {network} {key_id} does not verify")
