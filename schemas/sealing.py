"""What a sealed payload declares in the signed header, and the public encryption keys the
directory publishes (``docs/PROTOCOL.md`` section 16).

A message of a *sealed kind* carries its payload encrypted for the destination network with HPKE
(RFC 9180, base mode): KEM ML-KEM-768 + X25519 (post-quantum hybrid), KDF HKDF-SHA256, AEAD
ChaCha20-Poly1305. The header's ``sealed`` names the suite, the network the payload is sealed
for and that network's encryption key; relays route on the header and never hold a key that
opens the payload. Directory updates and notices stay readable by every node (they are what
every node must act on), so they are never sealed.
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal

from pydantic import Field, StringConstraints

from mlanet.schemas.base import NetworkId, WireModel
from mlanet.schemas.validity import ListedKey

__all__ = [
    "ENCRYPTION_KEY_ID",
    "ENCRYPTION_KEY_ID_PATTERN",
    "ENCRYPTION_PUBLIC_KEY_BYTES",
    "OPEN_KINDS",
    "SEALED_KINDS",
    "SEAL_SUITE",
    "EncryptionKey",
    "EncryptionKeyId",
    "Sealed",
]

# The suite's name on the wire: KEM, KDF and AEAD of RFC 9180 (and its hybrid KEM draft).
SEAL_SUITE: Final = "hpke-mlkem768x25519-hkdfsha256-chacha20poly1305"

# Kinds whose payload is case content or about a case: sealed for the destination network.
SEALED_KINDS: Final = frozenset(
    {
        "facilitation_request",
        "receipt",
        "status_update",
        "information_request",
        "information_response",
        "meeting_request",
    }
)
# Kinds every node must read (and may forward to all its peers): never sealed.
OPEN_KINDS: Final = frozenset({"directory_update", "notice"})

ENCRYPTION_KEY_ID_PATTERN = r"^hpke:(?:0|[1-9][0-9]{0,8})$"
ENCRYPTION_KEY_ID = re.compile(ENCRYPTION_KEY_ID_PATTERN)
EncryptionKeyId = Annotated[
    str, StringConstraints(pattern=ENCRYPTION_KEY_ID_PATTERN, max_length=14)
]

# An ML-KEM-768 encapsulation key (1184 bytes) followed by an X25519 public key (32 bytes).
ENCRYPTION_PUBLIC_KEY_BYTES: Final = 1184 + 32
_PUBLIC_KEY_CHARS = (ENCRYPTION_PUBLIC_KEY_BYTES * 8 + 5) // 6  # unpadded base64url: 1622


class Sealed(WireModel):
    """The header's statement of a sealed payload: for ``network``, with its key ``key_id``."""

    suite: Literal["hpke-mlkem768x25519-hkdfsha256-chacha20poly1305"]
    network: NetworkId
    key_id: EncryptionKeyId


class EncryptionKey(ListedKey):
    """A network's public encryption key, with the lifecycle of a signing key: a validity
    window (old and new overlap during a rotation) and a revocation, refused from then on."""

    key_id: EncryptionKeyId
    suite: Literal["hpke-mlkem768x25519-hkdfsha256-chacha20poly1305"] = SEAL_SUITE
    public_key: str = Field(
        pattern=r"^[A-Za-z0-9_-]+$", min_length=_PUBLIC_KEY_CHARS, max_length=_PUBLIC_KEY_CHARS
    )
