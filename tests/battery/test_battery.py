"""The fault battery's fast tier: representative scenarios at small scale, each judged by the
checker (nothing lost, duplicated, forged or wrongly refused). The long tier is in
``test_battery_long.py``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.battery.rabbit import ScratchBroker
from tests.battery.scenario import Battery
from tests.battery.workload import Lane, Load

pytestmark = pytest.mark.integration

# SEAJust <-> CASC <-> EJN: two-network journeys both ways and three-network ones through CASC.
LANES = [
    Lane("seajust", "kh-cp-1", "casc", "UZ"),
    Lane("seajust", "th-cp-1", "ejn", "FR"),
    Lane("casc", "kz-cp-1", "seajust", "VN"),
    Lane("ejn", "de-cp-1", "seajust", "KH"),
    Lane("ejn", "it-cp-1", "casc", "GE"),
]


@pytest.mark.timeout(300)
async def test_a_relay_crashing_between_confirm_and_ack_loses_and_repeats_nothing(
    tmp_path: Path, battery_broker: ScratchBroker
) -> None:
    """CASC relays for SEAJust and EJN and dies (os._exit) on its 15th forward, after the
    broker confirmed the publish and before it recorded or acked anything; restarted, it gets
    the unacked deliveries again and forwards them again: every message arrives once."""
    async with Battery(
        "relay crashes after confirm, before ack", tmp_path, broker=battery_broker
    ) as battery:
        await battery.start(LANES, crash_at={"casc": "after_confirm_before_ack:15"})
        verdict = await battery.run(Load(LANES, rate=10, duration=8))
    assert battery.supervisor.crashed == ["casc: after_confirm_before_ack:15"]
    assert verdict.delivered == 80
    assert verdict.passed, verdict.table()
    assert verdict.unreceipted == 0, verdict.table()


@pytest.mark.battery_long  # the long tier runs it at full scale
@pytest.mark.timeout(400)
async def test_the_broker_killed_mid_stream_and_restarted_loses_nothing(tmp_path: Path) -> None:
    """The federation's broker (a RabbitMQ node of this test's own) is SIGKILLed while requests
    flow and restarted 2 s later: clients retry what was not confirmed, nodes and links
    reconnect, and every request arrives once."""
    async with (
        ScratchBroker(tmp_path / "rabbit") as broker,
        Battery("broker killed mid-stream", tmp_path, broker=broker) as battery,
    ):
        await battery.start(LANES)

        async def faults(battery: Battery) -> None:
            await battery.at(4)
            battery.fault("broker SIGKILLed")
            await broker.kill()
            await asyncio.sleep(2)  # the fault lasts this long: what the scenario tests
            await broker.restart()
            battery.fault("broker back")

        verdict = await battery.run(Load(LANES, rate=10, duration=10), faults)
    assert verdict.submit_failures > 0  # the clients did see the broker go
    assert not battery.supervisor.unexpected, verdict.table()
    assert verdict.passed, verdict.table()
    assert verdict.unreceipted == 0, verdict.table()


@pytest.mark.timeout(300)
async def test_an_origin_crashing_between_publish_and_record_sends_the_same_bytes_again(
    tmp_path: Path, battery_broker: ScratchBroker
) -> None:
    """SEAJust dies right after the broker confirmed its first request towards CASC, before the
    outbox says so. Restarted, it gets the submission again and must send the same signed bytes
    again: a second signature under the same id would be refused as equivocation and its
    receipt could never match (found by this battery: the outbox row was not yet committed)."""
    async with Battery(
        "origin crashes after publish, before record", tmp_path, broker=battery_broker
    ) as battery:
        await battery.start(LANES, crash_at={"seajust": "after_forward_before_record:1"})
        verdict = await battery.run(Load(LANES, rate=5, duration=4))
    assert battery.supervisor.crashed == ["seajust: after_forward_before_record:1"]
    assert verdict.passed, verdict.table()
    assert verdict.unreceipted == 0, verdict.table()
