"""PROTOCOL.md section 14.3's key window, exercised by the independent verifier: a key is valid
from its ``not_before`` (inclusive) to its ``not_after`` (exclusive). The worked example opens at
a receiving time inside the window of the keys that signed it and is refused as ``expired`` at
exactly a key's ``not_after``, by the document's steps alone and by the reference alike (the
reference once let a key sign at its ``not_after``)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from mlanet import broker
from tests.unit.test_protocol_refusal_doc import DOC, EXAMPLES, Refused, _keys, verify_as_documented

RECEIVED = datetime(2026, 3, 2, 9, 30, 2, tzinfo=UTC)  # after the example's hop record
MS = timedelta(milliseconds=1)
Window = tuple[datetime | None, datetime | None]


def _within(at: datetime, not_before: datetime | None, not_after: datetime | None) -> bool:
    """Section 14.3, as written: from not_before inclusive to not_after exclusive."""
    return (not_before is None or not_before <= at) and (not_after is None or at < not_after)


def verify_with_windows(wire: bytes, windows: dict[tuple[str, str], Window], at: datetime) -> None:
    """The independent verifier, then section 14.3: every signing key inside its window."""
    learned = verify_as_documented(wire, _keys())
    header = json.loads(learned["header_bytes"])
    signers = [(header["origin"]["network"], header["key_id"])]
    signers += [(r["network"], r["key_id"]) for r in map(json.loads, learned["records"])]
    for signer in signers:  # the origin's key, then each relay's
        if not _within(at, *windows.get(signer, (None, None))):
            raise Refused("expired")


def _reference(windows: dict[tuple[str, str], Window], at: datetime) -> str | None:
    trust = broker.TrustStore()
    for (network, key_id), public in _keys().items():
        not_before, not_after = windows.get((network, key_id), (None, None))
        trust.add(network, key_id, public, not_before=not_before, not_after=not_after)
    try:
        broker.open_envelope(EXAMPLES["wire"].encode("ascii"), trust, now=at)
    except broker.RefusedMessage as refused:
        return refused.reason.value
    return None


def _independent(windows: dict[tuple[str, str], Window], at: datetime) -> str | None:
    try:
        verify_with_windows(EXAMPLES["wire"].encode("ascii"), windows, at)
    except Refused as refused:
        return str(refused.args[0])
    return None


def test_the_document_states_the_window_with_its_ends() -> None:
    section = DOC[DOC.index("### 14.3") :]
    text = " ".join(section[: section.index("A contact point")].split())
    assert re.search(r"from `not_before` inclusive to `not_after` exclusive", text)
    assert "at `not_after` exactly it is no longer valid" in text


@pytest.mark.parametrize(
    ("signer", "window", "expected"),
    [
        (("seajust", "ed25519:1"), (None, RECEIVED + MS), None),
        (("seajust", "ed25519:1"), (None, RECEIVED), "expired"),  # at not_after: no longer
        (("seajust", "ed25519:1"), (RECEIVED, None), None),  # at not_before: already
        (("seajust", "ed25519:1"), (RECEIVED + MS, None), "expired"),
        (("casc", "ed25519:1"), (None, RECEIVED), "expired"),  # the relay's key, the same rule
        (("casc", "ed25519:1"), (None, RECEIVED + MS), None),
    ],
    ids=["before-end", "at-end", "at-start", "before-start", "hop-at-end", "hop-before-end"],
)
def test_the_independent_verifier_and_the_reference_agree_on_the_keys_window(
    signer: tuple[str, str], window: Window, expected: str | None
) -> None:
    windows = {signer: window}
    assert _independent(windows, RECEIVED) == expected
    assert _reference(windows, RECEIVED) == expected
