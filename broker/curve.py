"""Edwards25519 point checks for public keys, run once when a key enters the trust store.

A trust store must refuse keys that are not canonical encodings of points of the prime-order
subgroup: such keys (small-order or mixed-order points, the identity, non-canonical ``y``)
allow signatures that verify for many messages or that different libraries judge differently.

libsodium decides (``crypto_core_ed25519_is_valid_point``: canonical, on the curve, not of small
order, in the prime-order subgroup). Only a key it refuses is classified further, to tell a
malformed key from a weak one, with libsodium's point addition alone:

- ``y >= p`` (the one check libsodium makes on the bytes, ``ge25519_is_canonical``, which it
  does not expose): non-canonical;
- a point libsodium cannot add: not on the curve;
- a point that adding the identity re-encodes differently (``x = 0`` with the sign bit set):
  non-canonical;
- a point that three doublings take to the identity: of order 1, 2, 4 or 8 (small order);
- anything else libsodium refuses: a point with a torsion component (mixed order).
"""

from __future__ import annotations

from enum import Enum

from nacl import bindings, exceptions

__all__ = ["PointCheck", "check_public_point"]

_P = 2**255 - 19  # the field's prime: a y at or above it is not canonical
_IDENTITY = (1).to_bytes(32, "little")  # the neutral point (0, 1)


class PointCheck(Enum):
    OK = "ok"
    NON_CANONICAL = "non_canonical"  # y >= p, or x = 0 with the sign bit set
    NOT_ON_CURVE = "not_on_curve"
    SMALL_ORDER = "small_order"  # the identity or a point of order 2, 4 or 8
    MIXED_ORDER = "mixed_order"  # has a torsion component: not in the prime-order subgroup


def _add(p: bytes, q: bytes) -> bytes | None:
    """p + q, or None when libsodium cannot decode either as a point of the curve."""
    try:
        return bytes(bindings.crypto_core_ed25519_add(p, q))
    except exceptions.RuntimeError:
        return None


def check_public_point(raw: bytes) -> PointCheck:
    """Classify a 32-byte Ed25519 public key encoding."""
    if len(raw) != 32:
        return PointCheck.NOT_ON_CURVE
    if bindings.crypto_core_ed25519_is_valid_point(raw):
        return PointCheck.OK
    if int.from_bytes(raw, "little") & ~(1 << 255) >= _P:
        return PointCheck.NON_CANONICAL
    same = _add(raw, _IDENTITY)
    if same is None:
        return PointCheck.NOT_ON_CURVE
    if same != raw:
        return PointCheck.NON_CANONICAL
    point = raw
    for _ in range(3):
        doubled = _add(point, point)
        if doubled is None:  # cannot happen: a point of the curve doubles to one
            return PointCheck.NOT_ON_CURVE
        point = doubled
    return PointCheck.SMALL_ORDER if point == _IDENTITY else PointCheck.MIXED_ORDER
