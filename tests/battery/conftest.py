"""The fault battery's tiers, its broker and its report.

The fast tier runs with the default test command. The long tier (every scenario at full scale,
minutes each) is marked ``battery_long`` and deselected unless the marker expression names it
(``tests/conftest.py``; a few slow integration tests are in it too): ``./scripts/battery``
runs ``pytest -m battery_long tests/battery tests/integration``. Every scenario runs on a
RabbitMQ node of the battery's own (``rabbit.py``): one for the session, or a fresh one for a
scenario that kills its broker or raises its alarms; the shared broker on :5672 is never loaded
or faulted by the battery. A scenario with one network on a RabbitMQ cluster takes the
``rabbit_cluster`` fixture: three nodes of the test's own (``nodes/local/cluster.py``). At the
end of a run that judged any scenario, the checker's tables are printed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mlanet.nodes.local.cluster import LocalCluster
from tests.battery.rabbit import ScratchBroker
from tests.battery.scenario import REPORT


@pytest.fixture(scope="session")
def battery_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScratchBroker]:
    """One RabbitMQ node of the battery's own for the scenarios that do not kill or alarm their
    broker: the battery's load and faults never touch the shared broker other tests use."""
    broker = ScratchBroker(tmp_path_factory.mktemp("battery-rabbit"))
    asyncio.run(broker.start())
    try:
        yield broker
    finally:
        asyncio.run(broker.stop())


@pytest.fixture
async def rabbit_cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """A started, joined three-node RabbitMQ cluster in the test's folder (own names, ports,
    cookie and data), stopped and removed after the test (~30 s to start on 2 cores)."""
    async with LocalCluster.prepare(tmp_path / "cluster") as cluster:
        yield cluster


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORT:
        return
    terminalreporter.section("fault battery: checker verdicts")
    for verdict in REPORT:
        terminalreporter.write_line(verdict.table())
        terminalreporter.write_line("")
