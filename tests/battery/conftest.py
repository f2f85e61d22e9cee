"""The fault battery's tiers and report.

The fast tier runs with the default test command. The long tier (every scenario at full scale,
several minutes each) is marked ``battery_long`` and deselected unless the marker expression
names it: ``./scripts/battery`` runs ``pytest -m battery_long tests/battery``. At the end of a
run that judged any scenario, the checker's tables are printed.
"""

from __future__ import annotations

import pytest

from tests.battery.scenario import REPORT


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "battery_long" in (config.getoption("markexpr") or ""):
        return
    long_tier = [item for item in items if item.get_closest_marker("battery_long")]
    if long_tier:
        config.hook.pytest_deselected(items=long_tier)
        items[:] = [item for item in items if not item.get_closest_marker("battery_long")]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORT:
        return
    terminalreporter.section("fault battery: checker verdicts")
    for verdict in REPORT:
        terminalreporter.write_line(verdict.table())
        terminalreporter.write_line("")
