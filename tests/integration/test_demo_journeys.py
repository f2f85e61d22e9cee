"""What the demo prints about its three journeys, on the real broker (the demo's own journeys,
run on a federation of the test's own prefix): events in the order they happened at every
network on the way, each said once, and the hop records explained (none without a relay)."""

from __future__ import annotations

import re

import pytest

from mlanet.nodes.local.demo import journeys
from mlanet.nodes.local.federation import Federation
from tests.integration.kit import running

pytestmark = pytest.mark.timeout(300)  # five nodes and three journeys on a shared broker


def _before(lines: list[str], *fragments: str) -> None:
    """Each fragment is in a line after the line of the one before it (spacing aside)."""
    at = -1
    words = [" ".join(line.split()) for line in lines]
    for fragment in fragments:
        found = next((i for i, line in enumerate(words) if i > at and fragment in line), None)
        assert found is not None, f"{fragment!r} not after line {at}: {lines}"
        at = found


async def test_the_demo_tells_each_journey_in_order_once_and_explains_its_hop_records(
    fed: Federation,
) -> None:
    said: list[str] = []
    async with running(fed, *fed.networks):
        await journeys(fed, said.append)
    text = "\n".join(said)
    first, second, third = (part.splitlines() for part in re.split(r"\n\n?\d\. ", "\n" + text)[1:4])
    # 1: the request is delivered at CASC before its receipt reaches SEAJust (said in that order)
    _before(
        first,
        "[seajust] accepted from kh-cp-1 (via submit)",
        "[seajust] forwarded to casc",
        "[casc] delivered from seajust to uz-cp-1",
        "[seajust] receipt by casc",
        "[uz-cp-1] reads facilitation_request",
    )
    assert "no hop record (no network relayed it" in first[-2]
    assert "its payload crossed sealed for casc (hpke:1)" in first[-1]
    _before(
        second,
        "[casc] accepted from uz-cp-1 (via submit)",
        "[seajust] delivered from casc to kh-cp-1",
        "[casc] receipt by seajust",
    )
    # 3: relayed by CASC, said in the order it happened at the three networks
    _before(
        third,
        "[seajust] forwarded to casc",
        "[casc] forwarded from seajust to ejn",
        "[ejn] delivered from casc to fr-cp-1",
        "[seajust] receipt by ejn",
        "[fr-cp-1] reads facilitation_request",
    )
    read = next(i for i, line in enumerate(third) if "[fr-cp-1] reads" in line)
    assert "1 hop record (casc relayed it)" in " ".join(third[read : read + 3])
    sealed = "its payload crossed sealed for ejn (hpke:1): ejn's node opened it, no relay could"
    assert sealed in " ".join(third[read:])
    assert not re.search(r"\]\s+(\w+)\s+\1\b", text), text  # "forwarded forwarded to ..." is gone
