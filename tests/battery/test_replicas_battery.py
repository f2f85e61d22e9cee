"""The fault battery with replicas: one network's node runs as two processes on the same quorum
queues with its state in PostgreSQL (a server of the battery's own, ``postgres.py``), under a
steady load, while a replica is SIGKILLed, PostgreSQL restarts, the replicas' connections to it
are cut, or a replica is paused past the broker's consumer timeout. The checker's verdict:
nothing lost, duplicated, forged or wrongly refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.battery.postgres import ScratchPostgres
from tests.battery.proxy import FaultProxy
from tests.battery.rabbit import ScratchBroker
from tests.battery.scenario import Battery, Plan
from tests.battery.test_battery import LANES
from tests.battery.workload import Load

pytestmark = pytest.mark.integration

TWO_CASC = {"casc": 2}  # CASC relays between SEAJust and EJN and is a destination too


@pytest.fixture
async def postgres() -> AsyncIterator[ScratchPostgres]:
    async with ScratchPostgres() as server:
        yield server


def _judged(battery: Battery, verdict: object) -> None:
    from tests.battery.checker import Verdict

    assert isinstance(verdict, Verdict)
    assert verdict.passed, verdict.table()
    assert verdict.unreceipted == 0, verdict.table()
    assert not battery.supervisor.unexpected, battery.supervisor.unexpected


@pytest.mark.timeout(400)
async def test_one_of_two_replicas_sigkilled_under_load(
    tmp_path: Path, battery_broker: ScratchBroker, postgres: ScratchPostgres
) -> None:
    """CASC-1 dies with no cleanup at all while requests flow through CASC; CASC-2 goes on
    (the broker hands it CASC-1's unacked deliveries), and CASC-1 is back 2 s later."""
    plan = Plan(database_url=postgres.url, replicas=TWO_CASC)
    async with Battery(
        "one of two replicas SIGKILLed", tmp_path, broker=battery_broker, plan=plan
    ) as battery:
        await battery.start(LANES)

        async def faults(battery: Battery) -> None:
            await battery.at(4)
            await battery.supervisor.kill("casc/casc-1", restart_after=2)

        verdict = await battery.run(Load(LANES, rate=10, duration=10), faults)
    assert verdict.delivered == 100
    _judged(battery, verdict)


@pytest.mark.battery_long
@pytest.mark.timeout(400)
async def test_postgresql_restarted_under_load(
    tmp_path: Path, battery_broker: ScratchBroker, postgres: ScratchPostgres
) -> None:
    """PostgreSQL stops (every session ended, open transactions rolled back) and starts again
    while requests flow: the replicas wait for it, then do what was not committed again."""
    plan = Plan(database_url=postgres.url, replicas=TWO_CASC)
    async with Battery(
        "PostgreSQL restarted", tmp_path, broker=battery_broker, plan=plan
    ) as battery:
        await battery.start(LANES)

        async def faults(battery: Battery) -> None:
            await battery.at(4)
            battery.fault("PostgreSQL stopped")
            await postgres.stop()
            await asyncio.sleep(2)  # PostgreSQL stays down this long: the fault
            await postgres.start()
            battery.fault("PostgreSQL back")

        verdict = await battery.run(Load(LANES, rate=10, duration=10), faults)
    assert verdict.delivered == 100
    _judged(battery, verdict)


@pytest.mark.battery_long
@pytest.mark.timeout(400)
async def test_the_replicas_cut_off_from_postgresql_for_seconds(
    tmp_path: Path, battery_broker: ScratchBroker, postgres: ScratchPostgres
) -> None:
    """Every node's connections to PostgreSQL are reset, and new ones refused, for 5 s."""
    proxy = FaultProxy("127.0.0.1", postgres.port, name="postgres").start()
    plan = Plan(
        database_url=f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres", replicas=TWO_CASC
    )
    async with Battery(
        "PostgreSQL cut off for 5 s", tmp_path, broker=battery_broker, plan=plan
    ) as battery:
        battery.proxies.append(proxy)  # closed with the run
        await battery.start(LANES)

        async def faults(battery: Battery) -> None:
            await battery.at(4)
            battery.fault("PostgreSQL connections cut")
            proxy.cut()
            await asyncio.sleep(5)  # cut off this long: the fault
            proxy.heal()
            battery.fault("PostgreSQL reachable again")

        verdict = await battery.run(Load(LANES, rate=10, duration=12), faults)
    assert verdict.delivered == 120
    _judged(battery, verdict)


@pytest.mark.battery_long
@pytest.mark.timeout(600)
async def test_a_replica_paused_past_the_consumer_timeout_and_resumed(
    tmp_path: Path, postgres: ScratchPostgres
) -> None:
    """CASC-1 is SIGSTOPped for 25 s: longer than its lease (4 s here), after which CASC-2
    fences it (its claims and uncommitted work end with its database sessions), and than the
    broker's consumer timeout (12 s here, checked every second; its AMQP heartbeat, 5 s, may
    end its connection first), after which the broker hands its unacked deliveries to CASC-2.
    CASC-1 resumes, finds its sessions gone, and joins again. The lease is shorter than the
    consumer timeout, as in production (15 s against RabbitMQ's 30 min): a replica never waits
    for a claim so long that the broker takes the delivery back from it too. On a broker of the
    test's own: the short timeout must not reach other runs."""
    async with ScratchBroker(tmp_path / "rabbit") as broker:
        await broker.ctl("eval", "application:set_env(rabbit, consumer_timeout, 12000).")
        await broker.ctl("eval", "application:set_env(rabbit, channel_tick_interval, 1000).")
        plan = Plan(database_url=postgres.url, replicas=TWO_CASC, lease=4.0)
        async with Battery(
            "a replica paused past the consumer timeout", tmp_path, broker=broker, plan=plan
        ) as battery:
            await battery.start(LANES)

            async def faults(battery: Battery) -> None:
                await battery.at(4)
                await battery.supervisor.pause("casc/casc-1", 25)

            verdict = await battery.run(Load(LANES, rate=10, duration=30), faults)
    assert verdict.delivered == 300
    _judged(battery, verdict)
