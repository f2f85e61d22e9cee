"""Edwards25519 point checks for public keys, run once when a key enters the trust store.

OpenSSL accepts any 32 bytes as an Ed25519 public key and only fails later, at verification.
A trust store must refuse keys that are not canonical encodings of points of the prime-order
subgroup: such keys (small-order or mixed-order points, the identity, non-canonical ``y``)
allow signatures that verify for many messages or that different libraries judge differently.
Arithmetic follows RFC 8032 section 5.1; speed does not matter here.
"""

from __future__ import annotations

__all__ = ["PointCheck", "check_public_point"]

from enum import Enum

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)

_Point = tuple[int, int, int, int]
_IDENTITY: _Point = (0, 1, 1, 0)


class PointCheck(Enum):
    OK = "ok"
    NON_CANONICAL = "non_canonical"  # y >= p, or x = 0 with the sign bit set
    NOT_ON_CURVE = "not_on_curve"
    SMALL_ORDER = "small_order"  # the identity or a point of order 2, 4 or 8
    MIXED_ORDER = "mixed_order"  # has a torsion component: not in the prime-order subgroup


def _add(p1: _Point, p2: _Point) -> _Point:
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = 2 * t1 * t2 * D % P
    d = 2 * z1 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(scalar: int, point: _Point) -> _Point:
    result = _IDENTITY
    while scalar:
        if scalar & 1:
            result = _add(result, point)
        point = _add(point, point)
        scalar >>= 1
    return result


def _is_identity(point: _Point) -> bool:
    x, y, z, _ = point
    return x % P == 0 and (y - z) % P == 0


def _decode(raw: bytes) -> _Point | PointCheck:
    y = int.from_bytes(raw, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= P:
        return PointCheck.NON_CANONICAL
    u = (y * y - 1) % P
    v = (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if (v * x * x - u) % P != 0:
        if (v * x * x + u) % P != 0:
            return PointCheck.NOT_ON_CURVE
        x = x * SQRT_M1 % P
    if x == 0 and sign:
        return PointCheck.NON_CANONICAL
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


def check_public_point(raw: bytes) -> PointCheck:
    """Classify a 32-byte Ed25519 public key encoding."""
    if len(raw) != 32:
        return PointCheck.NOT_ON_CURVE
    point = _decode(raw)
    if isinstance(point, PointCheck):
        return point
    if _is_identity(_mul(8, point)):
        return PointCheck.SMALL_ORDER
    if not _is_identity(_mul(L, point)):
        return PointCheck.MIXED_ORDER
    return PointCheck.OK
