"""Directories signed with the coordinator's key that list a public key no trust store may take:
the attacks of the security review ("a signed directory carrying a weak key"), shared by the unit
and the integration tests.

:func:`sign_anyway` signs exactly as ``mlanet.broker.directory_signing.sign_directory`` does,
without its refusal of such keys: what a coordinator key that signs anything (stolen, or a
coordinator tool with a bug) produces. A node must refuse the result however it arrives.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from mlanet.broker import Reason, SigningKey
from mlanet.broker.directory_signing import DIRECTORY_CONTEXT
from mlanet.broker.keys import b64u_encode
from mlanet.broker.strictjson import canonical_bytes
from mlanet.schemas.directory import Directory

P = 2**255 - 19


@dataclass(frozen=True)
class Attack:
    """A public key encoding and the reason code a node must refuse it with."""

    name: str
    raw: bytes
    reason: Reason

    @property
    def public_key(self) -> str:
        return b64u_encode(self.raw)


IDENTITY = Attack("identity", bytes([1]) + bytes(31), Reason.WEAK_KEY)
# A point of order 8 (libsodium's small-order blocklist).
ORDER_8 = Attack(
    "order_8",
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    Reason.WEAK_KEY,
)
# y = p + 1: the identity's y (1), written non-canonically (y >= p).
NON_CANONICAL = Attack("non_canonical", (P + 1).to_bytes(32, "little"), Reason.MALFORMED_KEY)
ATTACKS = (IDENTITY, ORDER_8, NON_CANONICAL)


def mixed_order(valid: bytes) -> bytes:
    """A valid key plus the point of order 2, (0, -1): (x, y) -> (-x, -y). On the curve, not in
    the prime-order subgroup."""
    y = int.from_bytes(valid, "little") & ((1 << 255) - 1)
    sign = valid[31] >> 7
    return ((P - y) | ((1 - sign) << 255)).to_bytes(32, "little")


def with_network_key(
    directory: Directory, network: str, attack: Attack, version: int, now: datetime
) -> Directory:
    """The next version, in which ``network``'s keys are ``attack``'s key under their ids."""
    networks = [
        entry.model_copy(
            update={
                "keys": [k.model_copy(update={"public_key": attack.public_key}) for k in entry.keys]
            }
        )
        if entry.id == network
        else entry
        for entry in directory.networks
    ]
    return directory.model_copy(update={"version": version, "issued_at": now, "networks": networks})


def with_coordinator_key(
    directory: Directory, attack: Attack, version: int, now: datetime
) -> Directory:
    """The next version, in which the coordinator key that signs it is listed as ``attack``'s."""
    keys = [
        k.model_copy(update={"public_key": attack.public_key}) for k in directory.coordinator_keys
    ]
    return directory.model_copy(
        update={"version": version, "issued_at": now, "coordinator_keys": keys}
    )


def sign_anyway(directory: Directory, key: SigningKey) -> bytes:
    """The signed directory's bytes, as ``sign_directory`` writes them, whatever it lists."""
    document = b64u_encode(canonical_bytes(directory.model_dump(mode="json", exclude_none=True)))
    signature = b64u_encode(key.sign(DIRECTORY_CONTEXT + document.encode("ascii")))
    return canonical_bytes(
        {
            "mlanet_directory": 1,
            "signer": key.network,
            "key_id": key.key_id,
            "document": document,
            "signature": signature,
        }
    )
