"""Reading the directory a ``directory_update`` carries before the envelope can be verified:
only a well-formed update yields a directory (checked on its own afterwards); anything else,
hostile bytes included, yields nothing and never raises."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from broker import sign_message
from nodes.directory_runtime import _carried_directory
from schemas import DirectoryUpdate
from tests.unit.wirekit import SEAJUST, make_header, sample_directory, signed


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
