"""Weak or malformed public keys never enter the trust store; private key files stay private."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl import bindings
from typer.testing import CliRunner

from mlanet.broker import KeyRefused, Reason, TrustStore, generate_key_files, load_signing_key
from mlanet.broker.curve import PointCheck
from mlanet.broker.curve import check_public_point as classify
from mlanet.broker.keys import b64u_encode, load_public_key_file, parse_public_key
from mlanet.nodes.cli.app import app
from tests.unit.wirekit import SEAJUST

P = 2**255 - 19
IDENTITY = bytes([1]) + bytes(31)


def _add(p: bytes, q: bytes) -> bytes:
    """Point addition (libsodium's, on canonical encodings of points of the curve)."""
    return bytes(bindings.crypto_core_ed25519_add(p, q))


def _times(n: int, point: bytes) -> bytes:
    result = IDENTITY
    for _ in range(n):
        result = _add(result, point)
    return result


def _order(point: bytes) -> int:
    """The order of a small-order point (1, 2, 4 or 8), else 0."""
    for order in (1, 2, 4, 8):
        if _times(order, point) == IDENTITY:
            return order
    return 0


# The canonical encodings of the eight points of order 1, 2, 4 and 8, as listed (without the sign
# bit) in libsodium's small-order blocklist (ed25519_ref10.c, ge25519_has_small_order).
_ORDER_8_Y = (
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
)


def _with_sign(hex_y: str) -> bytes:
    raw = bytearray.fromhex(hex_y)
    raw[31] |= 0x80
    return bytes(raw)


SMALL_ORDER = [
    bytes(32),  # y = 0, order 4
    _with_sign("00" * 32),  # y = 0, the other x, order 4
    bytes([1]) + bytes(31),  # the identity, order 1
    bytes.fromhex("ec" + "ff" * 30 + "7f"),  # y = p - 1, order 2
    bytes.fromhex(_ORDER_8_Y[0]),
    _with_sign(_ORDER_8_Y[0]),
    bytes.fromhex(_ORDER_8_Y[1]),
    _with_sign(_ORDER_8_Y[1]),
]


def _b64(raw: bytes) -> str:
    return b64u_encode(raw)


def _refused(public_key: str) -> Reason:
    with pytest.raises(KeyRefused) as refused:
        TrustStore().add("casc", "ed25519:1", public_key)
    with pytest.raises(KeyRefused) as parsed:
        parse_public_key(public_key)
    assert parsed.value.reason is refused.value.reason
    return refused.value.reason


def test_the_listed_small_order_points_are_exactly_the_eight_torsion_points() -> None:
    """The hard-coded list agrees with the curve: 8 distinct points, the multiples of a point of
    order 8 (so every point of order 1, 2, 4 or 8)."""
    assert len(set(SMALL_ORDER)) == 8
    generator = bytes.fromhex(_ORDER_8_Y[0])
    assert {_times(n, generator) for n in range(8)} == set(SMALL_ORDER)
    orders = sorted(_order(raw) for raw in SMALL_ORDER)
    assert orders == [1, 2, 4, 4, 8, 8, 8, 8]


@pytest.mark.parametrize("raw", SMALL_ORDER, ids=lambda raw: raw.hex()[:8] + raw.hex()[-2:])
def test_small_order_public_keys_are_weak(raw: bytes) -> None:
    assert classify(raw) is PointCheck.SMALL_ORDER
    assert _refused(_b64(raw)) is Reason.WEAK_KEY


@pytest.mark.parametrize("torsion_order", [2, 4, 8])
def test_mixed_order_public_keys_are_weak(torsion_order: int) -> None:
    """A valid key plus a torsion point: on the curve, but not in the prime-order subgroup."""
    torsion = _times(8 // torsion_order, bytes.fromhex(_ORDER_8_Y[0]))
    assert _order(torsion) == torsion_order
    mixed = _add(SEAJUST.public_raw(), torsion)
    assert classify(mixed) is PointCheck.MIXED_ORDER
    assert _refused(_b64(mixed)) is Reason.WEAK_KEY


def _y(value: int, sign: int = 0) -> bytes:
    return (value | sign << 255).to_bytes(32, "little")


@pytest.mark.parametrize(
    "raw",
    [
        _y(P),  # non-canonical 0
        _y(P, 1),
        _y(P + 1),  # non-canonical identity
        _y(P + 1, 1),
        _y(P + 18),
        _y(2**255 - 1, 1),
        _y(1, 1),  # the identity with the sign bit set: x = 0 cannot be negative
        _y(P - 1, 1),
    ],
    ids=["p", "p-signed", "p+1", "p+1-signed", "p+18", "all-ones", "identity-signed", "-1-signed"],
)
def test_non_canonical_encodings_are_malformed(raw: bytes) -> None:
    assert classify(raw) is PointCheck.NON_CANONICAL
    assert _refused(_b64(raw)) is Reason.MALFORMED_KEY


def _not_on_curve(count: int) -> list[bytes]:
    """y values for which (y^2 - 1) / (d y^2 + 1) has no square root: no point has them."""
    d = -121665 * pow(121666, P - 2, P) % P
    found = []
    for y in range(2, 10_000):
        ratio = (y * y - 1) * pow(d * y * y + 1, P - 2, P) % P
        if pow(ratio, (P - 1) // 2, P) == P - 1:
            found.append(_y(y))
            if len(found) == count:
                return found
    raise AssertionError("not enough non-points")


@pytest.mark.parametrize("raw", _not_on_curve(4), ids=lambda raw: f"y={raw[0]}")
def test_encodings_off_the_curve_are_malformed(raw: bytes) -> None:
    assert classify(raw) is PointCheck.NOT_ON_CURVE
    assert _refused(_b64(raw)) is Reason.MALFORMED_KEY


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_wrong_length_public_keys_are_malformed(length: int) -> None:
    assert _refused(_b64(bytes([9]) * length)) is Reason.MALFORMED_KEY


def test_bad_base64url_public_keys_are_malformed() -> None:
    good = SEAJUST.public_b64()
    assert len(good) == 43
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    bumped = good[:-1] + alphabet[alphabet.index(good[-1]) + 1]  # non-zero padding bits
    for bad in (good + "=", "+" + good[1:], "/" + good[1:], good[:20] + " " + good[21:], bumped):
        assert _refused(bad) is Reason.MALFORMED_KEY


def test_a_fresh_key_is_accepted_and_verifies() -> None:
    private = Ed25519PrivateKey.generate()  # another library's key: OpenSSL's
    raw = private.public_key().public_bytes_raw()
    public = _b64(raw)
    assert classify(raw) is PointCheck.OK
    trust = TrustStore()
    trust.add("casc", "ed25519:1", public)
    assert trust.networks() == {"casc"}
    trust.verify("casc", "ed25519:1", private.sign(b"data"), b"data", reason=Reason.BAD_SIGNATURE)


def test_many_generated_keys_are_classified_ok() -> None:
    for _ in range(20):
        raw = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
        assert classify(raw) is PointCheck.OK


@pytest.mark.parametrize(
    ("network", "key_id"),
    [
        ("CASC", "ed25519:1"),
        ("c", "ed25519:1"),
        ("casc", "ed25519:01"),
        ("casc", "rsa:1"),
        ("casc\n", "ed25519:1"),
        ("casc", "ed25519:1\n"),
    ],
)
def test_bad_network_or_key_id_is_malformed(network: str, key_id: str) -> None:
    with pytest.raises(KeyRefused) as refused:
        TrustStore().add(network, key_id, SEAJUST.public_b64())
    assert refused.value.reason is Reason.MALFORMED_KEY


# --- key files ----------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generated_private_key_file_is_owner_only_and_loads(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        key_path, pub_path = generate_key_files(tmp_path / "keys", "seajust", "ed25519:3")
    finally:
        os.umask(old_umask)
    assert key_path.name == "seajust.3.key"
    assert pub_path.name == "seajust.3.pub"
    assert _mode(key_path) == 0o600
    key = load_signing_key(key_path)
    assert (key.network, key.key_id) == ("seajust", "ed25519:3")
    info = load_public_key_file(pub_path)
    assert info.public_key == key.public_b64()
    assert "seed" not in json.loads(pub_path.read_text())
    trust = TrustStore()
    trust.add(info.network, info.key_id, info.public_key)
    trust.verify("seajust", "ed25519:3", key.sign(b"x"), b"x", reason=Reason.BAD_SIGNATURE)


def test_generating_over_an_existing_key_file_is_refused(tmp_path: Path) -> None:
    key_path, _ = generate_key_files(tmp_path, "seajust")
    before = key_path.read_bytes()
    with pytest.raises(FileExistsError):
        generate_key_files(tmp_path, "seajust")
    assert key_path.read_bytes() == before


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o601])
def test_a_private_key_file_others_can_access_is_refused(tmp_path: Path, mode: int) -> None:
    key_path, _ = generate_key_files(tmp_path, "casc")
    key_path.chmod(mode)
    with pytest.raises(KeyRefused) as refused:
        load_signing_key(key_path)
    assert refused.value.reason is Reason.MALFORMED_KEY
    assert "chmod 600" in str(refused.value)
    key_path.chmod(0o600)
    assert load_signing_key(key_path).network == "casc"


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"{}",
        b'{"network":"casc","key_id":"ed25519:1"}',
        b'{"network":"casc","key_id":"ed25519:1","seed":"AAAA"}',
        b'{"network":"casc","key_id":"ed25519:1","seed":"!!"}',
        b'{"network":"casc","key_id":"bad","seed":"' + b64u_encode(bytes(32)).encode() + b'"}',
        b"[]",
    ],
)
def test_a_corrupt_private_key_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "casc.1.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyRefused) as refused:
        load_signing_key(path)
    assert refused.value.reason is Reason.MALFORMED_KEY


def test_a_missing_private_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyRefused):
        load_signing_key(tmp_path / "absent.key")


def test_a_public_key_file_with_a_weak_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "casc.1.pub"
    weak = {"network": "casc", "key_id": "ed25519:1", "public_key": _b64(SMALL_ORDER[0])}
    path.write_text(json.dumps(weak))
    with pytest.raises(KeyRefused) as refused:
        load_public_key_file(path)
    assert refused.value.reason is Reason.WEAK_KEY


def test_generate_refuses_a_bad_network_or_key_id(tmp_path: Path) -> None:
    for network, key_id in (("Bad Network", "ed25519:1"), ("casc\n", "ed25519:1")):
        with pytest.raises(KeyRefused):
            generate_key_files(tmp_path, network, key_id)
    with pytest.raises(KeyRefused):
        generate_key_files(tmp_path, "casc", "ed25519:1\n")
    assert list(tmp_path.iterdir()) == []


# --- the CLI ------------------------------------------------------------------------------------


def test_cli_keys_generate_writes_an_owner_only_key(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "keys"
    result = runner.invoke(app, ["keys", "generate", "--network", "wacap", "--out", str(out)])
    assert result.exit_code == 0, result.output
    key_path = out / "wacap.1.key"
    assert _mode(key_path) == 0o600
    assert str(key_path) in result.output
    assert load_signing_key(key_path).network == "wacap"
    assert (
        load_public_key_file(out / "wacap.1.pub").public_key
        == load_signing_key(key_path).public_b64()
    )

    again = runner.invoke(app, ["keys", "generate", "--network", "wacap", "--out", str(out)])
    assert again.exit_code == 2
    other = ["keys", "generate", "--network", "wacap", "--out", str(out), "--key-id", "ed25519:2"]
    assert runner.invoke(app, other).exit_code == 0
    assert (out / "wacap.2.key").exists()


def test_cli_keys_generate_refuses_bad_ids(tmp_path: Path) -> None:
    runner = CliRunner()
    for args in (["--network", "Bad"], ["--network", "wacap", "--key-id", "ed25519:x"]):
        result = runner.invoke(app, ["keys", "generate", *args, "--out", str(tmp_path)])
        assert result.exit_code == 2
        assert "refused" in result.output
    assert list(tmp_path.iterdir()) == []
