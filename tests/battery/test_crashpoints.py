"""Crash points and the clock offset: off by default, exact on the armed pass, refused when
misspelt (a typo must not silently disarm a fault test)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta

import pytest

from mlanet.broker.errors import ConfigError
from mlanet.nodes.runtime import crashpoints
from mlanet.nodes.runtime.crashpoints import CRASH_EXIT_CODE, POINTS, CrashPlan, parse_crash_at


def test_parse_reads_points_and_pass_numbers() -> None:
    assert parse_crash_at("") == {}
    assert parse_crash_at("after_confirm_before_ack:3") == {"after_confirm_before_ack": 3}
    assert parse_crash_at(" after_receive_before_forward:1 , after_delivery_before_ack:5 ") == {
        "after_receive_before_forward": 1,
        "after_delivery_before_ack": 5,
    }


@pytest.mark.parametrize(
    "spec",
    [
        "after_confirm_before_akc:3",  # misspelt point
        "after_confirm_before_ack",  # no pass number
        "after_confirm_before_ack:0",
        "after_confirm_before_ack:-1",
        "after_confirm_before_ack:x",
    ],
)
def test_parse_refuses_what_it_cannot_honour(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_crash_at(spec)


def test_a_plan_fires_once_on_the_armed_pass_only() -> None:
    plan = CrashPlan({"after_confirm_before_ack": 3})
    fired = [plan.due("after_confirm_before_ack") for _ in range(5)]
    assert fired == [False, False, True, False, False]
    assert not plan.due("after_receive_before_forward")


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


_PASSES = """
    import asyncio
    from mlanet.nodes.runtime import crashpoints

    async def publish() -> str:
        return "confirmed"

    async def main() -> None:
        for n in range(1, 6):
            print("before", n, flush=True)
            crashpoints.reached("after_confirm_before_ack")
            print(await crashpoints.in_flight("after_forward_before_confirm", publish()), n,
                  flush=True)

    asyncio.run(main())
"""


def test_a_process_dies_abruptly_on_the_armed_pass() -> None:
    """The 3rd pass through the point ends the process with the crash exit code; nothing after
    it runs (no flush, no cleanup)."""
    result = _run(_PASSES, {crashpoints.CRASH_AT: "after_confirm_before_ack:3"})
    assert result.returncode == CRASH_EXIT_CODE, result.stderr
    assert result.stdout.split("\n")[:-1] == [
        "before 1",
        "confirmed 1",
        "before 2",
        "confirmed 2",
        "before 3",
    ]
    assert "crash point after_confirm_before_ack reached (pass 3)" in result.stderr


def test_a_publish_in_flight_is_started_and_never_confirmed() -> None:
    result = _run(_PASSES, {crashpoints.CRASH_AT: "after_forward_before_confirm:2"})
    assert result.returncode == CRASH_EXIT_CODE, result.stderr
    assert result.stdout.split("\n")[:-1] == ["before 1", "confirmed 1", "before 2"]


def test_without_the_variable_nothing_happens() -> None:
    result = _run(_PASSES, {})
    assert result.returncode == 0, result.stderr
    assert "confirmed 5" in result.stdout


def test_every_point_is_called_by_the_node() -> None:
    """Each documented point is wired into the node or one of its parts (a point nobody calls
    would arm nothing)."""
    from pathlib import Path

    folder = Path(crashpoints.__file__).parent
    parts = ("node.py", "actions.py", "outbox.py", "receipts.py", "links.py")
    source = "".join((folder / part).read_text(encoding="utf-8") for part in parts)
    for point in POINTS:
        assert f'"{point}"' in source, point


def test_the_clock_offset_shifts_the_node_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(crashpoints.CLOCK_OFFSET, raising=False)
    plain = crashpoints.clock()()
    assert abs(plain - datetime.now(UTC)) < timedelta(seconds=5)
    monkeypatch.setenv(crashpoints.CLOCK_OFFSET, "-600")
    behind = crashpoints.clock()()
    assert timedelta(seconds=595) < datetime.now(UTC) - behind < timedelta(seconds=605)


@pytest.mark.parametrize("value", ["soon", "nan", "inf", "1e12"])
def test_a_bad_clock_offset_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(crashpoints.CLOCK_OFFSET, value)
    with pytest.raises(ConfigError):
        crashpoints.clock()


def test_a_node_with_a_misspelt_crash_point_does_not_start(tmp_path: object) -> None:
    """``mlanet node run`` refuses a crash point it does not know before it touches the broker
    (a fault test must not run with its fault silently disarmed)."""
    from pathlib import Path

    from mlanet.nodes.local.federation import build

    assert isinstance(tmp_path, Path)
    fed = build(tmp_path / "federation", prefix="crash")
    result = subprocess.run(
        [sys.executable, "-m", "mlanet", "node", "run", "--config", str(fed.config_path("casc"))],
        env={"PATH": "/usr/bin:/bin", crashpoints.CRASH_AT: "after_confirm_before_akc:1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "unknown crash point 'after_confirm_before_akc'" in result.stderr
