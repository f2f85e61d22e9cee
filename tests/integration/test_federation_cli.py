"""`mlanet federation init` and `down` on the real broker: every node of the federation,
the coordinator's included, is provisioned and named with its start command; down removes it."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
from typer.testing import CliRunner

from nodes.cli import app
from nodes.federation import COORDINATOR, EXAMPLE_NETWORKS


def _vhosts(prefix: str) -> set[str]:
    found = httpx.get("http://127.0.0.1:15672/api/vhosts", auth=("guest", "guest"), timeout=60)
    return {v["name"] for v in found.json() if v["name"].startswith(prefix + "-")}


def test_init_names_every_node_and_down_removes_them(tmp_path: Path) -> None:
    prefix = "c" + uuid.uuid4().hex[:10]
    folder = tmp_path / "federation"
    runner = CliRunner()
    try:
        result = runner.invoke(
            app,
            [
                "federation",
                "init",
                "--dir",
                str(folder),
                "--prefix",
                prefix,
                "--operator-port",
                "0",
            ],
        )
        assert result.exit_code == 0, result.output
        started = {line.split(":")[0] for line in result.output.splitlines() if "node run" in line}
        assert started == {*EXAMPLE_NETWORKS, COORDINATOR}
        assert _vhosts(prefix) == {f"{prefix}-{n}" for n in started}
    finally:
        result = runner.invoke(
            app, ["federation", "down", "--dir", str(folder), "--prefix", prefix]
        )
    assert result.exit_code == 0, result.output
    assert _vhosts(prefix) == set()
