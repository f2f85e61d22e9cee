"""``mlanet quarantine show --payload`` opens a payload sealed for its own network and shows
anything else as it came: whatever a peer put in the body, it never fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlanet.nodes.cli.quarantine import _opened
from mlanet.nodes.config import load_config
from mlanet.nodes.local.federation import build


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'"text"',
        b'{"header": 1, "payload": 5}',
        b'{"header": "!!", "payload": "x"}',
        b'{"header": "e30", "payload": "AAAA"}',
        b"not json",
    ],
)
def test_a_body_that_is_not_a_sealed_envelope_is_shown_as_it_came(
    tmp_path: Path, body: bytes
) -> None:
    fed = build(tmp_path / "federation", prefix="unit")
    assert _opened(body, load_config(fed.config_path("casc"))) is None
