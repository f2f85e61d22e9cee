"""The demo provisions under a prefix of its own for each run, recorded in its folder, so that
two runs (or two people) on one broker never provision or remove each other's vhosts."""

from __future__ import annotations

from pathlib import Path

from mlanet.nodes.local.demo import demo_prefix
from mlanet.nodes.local.federation import Federation, build


def test_each_demo_run_has_its_own_prefix_recorded_in_its_folder(tmp_path: Path) -> None:
    first, second = demo_prefix(), demo_prefix()
    assert first != second
    fed = build(tmp_path / "demo", prefix=first)
    assert fed.vhost("seajust") == f"{first}-seajust"
    assert Federation.load(tmp_path / "demo").prefix == first  # what `federation down` reads
