"""A node whose directory is behind: the directory a ``directory_update`` carries is read before
the envelope can be verified (only a well-formed update yields one; hostile bytes yield nothing
and never raise), and a message naming a newer key than the directory lists gets one more try."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from mlanet.broker import Reason, RefusedMessage, SigningKey, sign_message
from mlanet.nodes.config import load_config
from mlanet.nodes.directory.keeper import DirectoryKeeper, _carried_directory, _claimed_keys
from mlanet.nodes.local.federation import build
from mlanet.schemas import DirectoryUpdate
from tests.unit.wirekit import SEAJUST, make_header, sample_directory, sample_payloads, signed


def _update() -> bytes:
    header = make_header("directory_update")
    payload = DirectoryUpdate(directory=sample_directory().signed)
    return sign_message(header, payload, SEAJUST).to_bytes()


def test_the_carried_directory_is_read_from_a_directory_update() -> None:
    assert _carried_directory(_update(), 256 * 1024) == sample_directory().signed


def test_other_kinds_and_broken_updates_carry_nothing() -> None:
    assert _carried_directory(signed("facilitation_request").to_bytes(), 256 * 1024) is None
    body = _update()
    assert _carried_directory(body[:-10], 256 * 1024) is None
    assert _carried_directory(body, 100) is None  # over the size cap


@given(st.binary(max_size=512))
def test_any_bytes_carry_nothing_and_never_raise(data: bytes) -> None:
    assert _carried_directory(data, 256 * 1024) is None


def test_the_keys_a_message_names_are_read_from_its_header_and_hops() -> None:
    relayed = signed("facilitation_request", hops=2).to_bytes()
    assert _claimed_keys(relayed, 256 * 1024) == [
        ("seajust", "ed25519:1"),
        ("casc", "ed25519:1"),
        ("wacap", "ed25519:2"),
    ]
    assert _claimed_keys(b"not json", 256 * 1024) == []


def test_only_a_first_sight_of_a_newer_key_of_a_listed_network_gets_another_try(
    tmp_path: Path,
) -> None:
    build(tmp_path / "federation", prefix="unit")
    keeper = DirectoryKeeper(
        load_config(tmp_path / "federation" / "casc" / "node.toml"), lambda: datetime.now(UTC)
    )
    unknown = RefusedMessage(Reason.UNKNOWN_KEY, "no trusted key")
    known = signed("facilitation_request").to_bytes()  # seajust ed25519:1 is listed
    rotated = sign_message(
        make_header(key_id="ed25519:2"),
        sample_payloads()["facilitation_request"],
        SigningKey.from_seed("seajust", "ed25519:2", bytes(range(32))),
    ).to_bytes()
    assert not keeper.may_be_behind(known, unknown, redelivered=False)
    assert keeper.may_be_behind(rotated, unknown, redelivered=False)
    assert not keeper.may_be_behind(rotated, unknown, redelivered=True)
    assert not keeper.may_be_behind(rotated, RefusedMessage(Reason.BAD_SIGNATURE), False)
