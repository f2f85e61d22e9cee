"""The fault battery's long tier: every scenario at full scale, each under the steady load of 50
messages per second for 60 seconds across three networks (payloads of 1-20 KB), each judged by
the checker after the faults healed and a drain period passed. Deselected by default; run with
``./scripts/battery`` (``MLANET_BATTERY_SCALE=0.2`` shortens every load and outage for a quick
pass). The tables, with throughput and latency, are printed at the end of the run.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from mlanet.broker.transport import SUBMIT, inbox_exchange, out_queue, peer_inbox
from tests.battery.checker import Verdict
from tests.battery.faults import (
    delete_binding,
    delete_queue,
    route_links_through,
    tune,
)
from tests.battery.rabbit import ScratchBroker
from tests.battery.scenario import Battery, Plan
from tests.battery.workload import Lane, Load

pytestmark = [pytest.mark.integration, pytest.mark.battery_long]

SCALE = float(os.environ.get("MLANET_BATTERY_SCALE", "1"))

# Every direction between SEAJust, CASC and EJN; SEAJust <-> EJN is relayed by CASC.
LANES = [
    Lane("seajust", "kh-cp-1", "casc", "UZ"),
    Lane("seajust", "th-cp-1", "ejn", "FR"),
    Lane("casc", "kz-cp-1", "seajust", "VN"),
    Lane("casc", "uz-cp-1", "ejn", "DE"),
    Lane("ejn", "de-cp-1", "seajust", "KH"),
    Lane("ejn", "it-cp-1", "casc", "GE"),
]


def load(rate: float = 50.0, duration: float = 60.0) -> Load:
    return Load(LANES, rate=rate, duration=max(5.0, duration * SCALE))


def seconds(value: float) -> float:
    """A moment or an outage of the fault script, scaled like the load."""
    return value * SCALE


def _passed(battery: Battery, verdict: Verdict, *, receipted: bool = True) -> None:
    """The checker's four counts are zero, no node exited on its own, and (unless the scenario
    keeps receipts from coming home) every origin holds the receipt of everything it sent."""
    table = verdict.table()
    assert not battery.supervisor.unexpected, table
    assert verdict.passed, table
    if receipted:
        assert verdict.unreceipted == 0, table


# --- load alone ---------------------------------------------------------------------------------
@pytest.mark.timeout(900)
async def test_steady_load_across_three_networks(
    tmp_path: Path, battery_broker: ScratchBroker
) -> None:
    """50 messages per second for 60 s, 1-20 KB, every direction between three networks (a
    third of them relayed): every one delivered once; throughput and latency in the table."""
    async with Battery("load alone: 50 msg/s, 60 s", tmp_path, broker=battery_broker) as battery:
        await battery.start(LANES)
        verdict = await battery.run(load())
    _passed(battery, verdict)
    assert verdict.delivered == load().count


# --- the broker ---------------------------------------------------------------------------------
@pytest.mark.timeout(1200)
async def test_broker_killed_mid_stream_and_restarted(tmp_path: Path) -> None:
    """The federation's broker (a scratch RabbitMQ node of the test's own) is SIGKILLed twice
    under load and restarted: clients retry, nodes and shovels reconnect, quorum queues keep
    what they confirmed; nothing is lost or delivered twice."""
    async with (
        ScratchBroker(tmp_path / "rabbit") as broker,
        Battery("broker killed mid-stream (twice)", tmp_path, broker=broker) as battery,
    ):
        await battery.start(LANES)

        async def faults(battery: Battery) -> None:
            for at, down in ((15, 3), (40, 0)):
                await battery.at(seconds(at))
                battery.fault("broker SIGKILLed")
                await broker.kill()
                await asyncio.sleep(down)  # the fault lasts this long: what the scenario tests
                await broker.restart()
                battery.fault("broker back")

        verdict = await battery.run(load(), faults, drain=300)
    _passed(battery, verdict)


@pytest.mark.timeout(1200)
async def test_memory_and_disk_alarms(tmp_path: Path) -> None:
    """A memory alarm, then a disk alarm, under load (each raised for 15 s; it lasts until the
    broker clears it, which can take a minute): publishers (clients, nodes, shovels) are
    blocked, publishes time out and are retried, and everything resumes; nothing is lost or
    delivered twice."""
    async with (
        ScratchBroker(tmp_path / "rabbit") as broker,
        Battery("memory and disk alarms", tmp_path, broker=broker) as battery,
    ):
        await battery.start(LANES)

        async def faults(battery: Battery) -> None:
            await battery.at(seconds(10))
            battery.fault("memory alarm")
            await broker.memory_alarm(True)
            await asyncio.sleep(seconds(15))  # the fault lasts this long: what the scenario tests
            await broker.memory_alarm(False)
            battery.fault("memory alarm cleared")
            await battery.at(seconds(35))
            battery.fault("disk alarm")
            await broker.disk_alarm(True)
            await asyncio.sleep(seconds(15))  # the fault lasts this long: what the scenario tests
            await broker.disk_alarm(False)
            battery.fault("disk alarm cleared")

        verdict = await battery.run(load(), faults, drain=300)
    _passed(battery, verdict)


# --- nodes --------------------------------------------------------------------------------------
CRASHES = [
    ("seajust", "after_sign_before_forward"),
    ("seajust", "after_forward_before_record"),
    ("casc", "after_receive_before_forward"),
    ("casc", "after_forward_before_confirm"),
    ("casc", "after_confirm_before_ack"),
    ("ejn", "after_delivery_before_ack"),
    ("casc", "after_delivery_before_ack"),
]


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("network", "point"), CRASHES)
async def test_a_node_crashing_at_each_point(
    tmp_path: Path, battery_broker: ScratchBroker, network: str, point: str
) -> None:
    """The node dies abruptly (os._exit) at a crash point on its 40th pass under load and is
    restarted: whatever was in flight comes back and is handled once."""
    async with Battery(f"{network} crashes at {point}", tmp_path, broker=battery_broker) as battery:
        await battery.start(LANES, crash_at={network: f"{point}:40"})
        verdict = await battery.run(load(rate=25, duration=20))
    assert battery.supervisor.crashed == [f"{network}: {point}:40"], verdict.table()
    _passed(battery, verdict)


@pytest.mark.timeout(900)
async def test_each_node_sigkilled_under_load(
    tmp_path: Path, battery_broker: ScratchBroker
) -> None:
    """Origin, relay and destination nodes are SIGKILLed in turn under load (the relay twice,
    once mid three-network journey with a 5 s outage) and restarted."""
    async with Battery("nodes SIGKILLed in turn", tmp_path, broker=battery_broker) as battery:
        await battery.start(LANES)

        async def faults(battery: Battery) -> None:
            for at, network, down in ((10, "casc", 5.0), (25, "seajust", 0.0), (35, "ejn", 2.0)):
                await battery.at(seconds(at))
                await battery.supervisor.kill(network, restart_after=down)
            await battery.at(seconds(45))
            await battery.supervisor.kill("casc")

        verdict = await battery.run(load(), faults)
    assert battery.supervisor.restarts == 4
    _passed(battery, verdict)


# --- connections and links ----------------------------------------------------------------------
@pytest.mark.timeout(900)
async def test_connections_closed_under_load(tmp_path: Path, battery_broker: ScratchBroker) -> None:
    """Every connection of every network (nodes, shovels, clients, readers) is closed by the
    broker four times under load."""
    async with Battery("connections closed (4 times)", tmp_path, broker=battery_broker) as battery:
        await battery.start(LANES)

        async def faults(battery: Battery) -> None:
            for at in (10, 20, 30, 40):
                await battery.at(seconds(at))
                battery.fault("all connections closed")
                fed = battery.fed
                await asyncio.gather(
                    *(
                        battery.broker.close_all_connections(vhost)
                        for network in battery.plan.networks
                        for vhost in (
                            fed.vhost(network),
                            *(fed.door(network, peer) for peer in fed.peers(network)),
                        )
                    )
                )

        verdict = await battery.run(load(), faults)
    _passed(battery, verdict)


@pytest.mark.timeout(900)
async def test_links_and_a_node_black_holed_longer_than_the_heartbeat(
    tmp_path: Path, battery_broker: ScratchBroker
) -> None:
    """The links into CASC, then SEAJust's node's own connection, go silent (no RST, no FIN) for
    20 s, four times the 5 s heartbeat: the dead connections are noticed and replaced."""
    async with Battery("black holes > heartbeat", tmp_path, broker=battery_broker) as battery:
        links = battery.proxy(name="links-into-casc")
        own = battery.proxy(name="seajust-own")
        route_links_through(battery.fed, "casc", links.port)
        tune(battery.fed, "seajust", port=own.port)
        await battery.start(LANES)

        async def faults(battery: Battery) -> None:
            for at, proxy in ((10, links), (35, own)):
                await battery.at(seconds(at))
                battery.fault(f"{proxy.name} black-holed")
                proxy.blackhole()
                await asyncio.sleep(20)  # the fault lasts this long: what the scenario tests
                proxy.heal()
                battery.fault(f"{proxy.name} healed")

        verdict = await battery.run(load(), faults)
    assert links.accepted > 2  # the dead connections were replaced
    assert own.accepted > 2
    _passed(battery, verdict)


@pytest.mark.timeout(900)
async def test_lost_publisher_confirms_are_resent_and_delivered_once(
    tmp_path: Path, battery_broker: ScratchBroker
) -> None:
    """SEAJust's clients and node reach their broker through a proxy that stops passing the
    broker's answers (confirms) for 2 s and then resets the connections: publishes the broker
    took are published again, and each message is still delivered once."""
    async with Battery("publisher confirms lost", tmp_path, broker=battery_broker) as battery:
        proxy = battery.proxy(name="seajust-own")
        tune(battery.fed, "seajust", port=proxy.port)
        await battery.start(LANES, client_ports={"seajust": proxy.port})

        async def faults(battery: Battery) -> None:
            for at in (10, 25, 40):
                await battery.at(seconds(at))
                battery.fault("confirms black-holed, then connections reset")
                proxy.blackhole("down")
                await asyncio.sleep(2)  # the fault lasts this long: what the scenario tests
                proxy.cut()
                await asyncio.sleep(0.5)  # the fault lasts this long: what the scenario tests
                proxy.heal()

        verdict = await battery.run(load(), faults)
    assert verdict.submit_failures > 0  # the clients did lose confirms
    _passed(battery, verdict)


@pytest.mark.timeout(1800)
async def test_a_peer_unreachable_for_minutes_under_load(
    tmp_path: Path, battery_broker: ScratchBroker
) -> None:
    """CASC cannot be reached by its peers' links for three minutes (connections reset and
    refused) from 10 s into the load: SEAJust and EJN keep what they cannot hand over (and
    resend what is not receipted), then everything flows once CASC is reachable again."""
    plan = Plan(receipts={"retry_after_seconds": 30.0, "check_every_seconds": 1.0})
    async with Battery(
        "peer unreachable for 3 minutes", tmp_path, broker=battery_broker, plan=plan
    ) as (battery):
        links = battery.proxy(name="links-into-casc")
        route_links_through(battery.fed, "casc", links.port)
        await battery.start(LANES)

        async def faults(battery: Battery) -> None:
            await battery.at(seconds(10))
            battery.fault("links into casc cut")
            links.cut()
            await asyncio.sleep(seconds(180))  # the fault lasts this long: what the scenario tests
            links.heal()
            battery.fault("links into casc healed")

        verdict = await battery.run(load(), faults, drain=600, receipts_within=300)
    _passed(battery, verdict)


@pytest.mark.timeout(900)
async def test_a_flapping_link(tmp_path: Path, battery_broker: ScratchBroker) -> None:
    """The links into CASC go down for 2 s and up for 3 s, over and over for 45 s, then carry
    50 ms of extra delay per chunk for 10 s."""
    async with Battery("flapping link", tmp_path, broker=battery_broker) as battery:
        links = battery.proxy(name="links-into-casc")
        route_links_through(battery.fed, "casc", links.port)
        await battery.start(LANES)

        async def faults(battery: Battery) -> None:
            await battery.at(seconds(5))
            battery.fault("links into casc flapping (2 s down, 3 s up)")
            end = asyncio.get_running_loop().time() + seconds(45)
            while asyncio.get_running_loop().time() < end:
                links.cut()
                await asyncio.sleep(2)  # the fault lasts this long: what the scenario tests
                links.heal()
                await asyncio.sleep(3)  # the fault lasts this long: what the scenario tests
            battery.fault("links into casc slow (+50 ms per chunk each way)")
            links.delay(0.05)
            await asyncio.sleep(10)  # the fault lasts this long: what the scenario tests
            links.heal()
            battery.fault("links into casc steady")

        verdict = await battery.run(load(), faults)
    assert links.resets > 0
    _passed(battery, verdict)


# --- topology -----------------------------------------------------------------------------------
@pytest.mark.timeout(900)
async def test_queues_and_a_binding_deleted_under_the_nodes(
    tmp_path: Path, battery_broker: ScratchBroker
) -> None:
    """An operator deletes, under load: CASC's queue towards EJN (with what it held), the binding
    of CASC's inbox queue for SEAJust to SEAJust's inbox exchange, that inbox queue itself (with
    what it held), and SEAJust's submission queue. The nodes put their topology back; what was
    destroyed in transit is resent by its origin (no receipt came); nothing is lost or
    delivered twice."""
    async with Battery("queues and a binding deleted", tmp_path, broker=battery_broker) as battery:
        await battery.start(LANES)
        casc, seajust = battery.fed.vhost("casc"), battery.fed.vhost("seajust")
        door = battery.fed.door("casc", "seajust")  # where seajust's link lands at casc

        async def faults(battery: Battery) -> None:
            steps = [
                (
                    10,
                    "casc out.ejn deleted",
                    lambda: delete_queue(battery.admin, casc, out_queue("ejn")),
                ),
                (
                    20,
                    "casc binding of seajust's inbox deleted",
                    lambda: delete_binding(
                        battery.admin, door, inbox_exchange("seajust"), peer_inbox("seajust")
                    ),
                ),
                (
                    30,
                    "casc inbox queue of seajust deleted",
                    lambda: delete_queue(battery.admin, door, peer_inbox("seajust")),
                ),
                (
                    40,
                    "seajust submit queue deleted",
                    lambda: delete_queue(battery.admin, seajust, SUBMIT),
                ),
            ]
            for at, what, step in steps:
                await battery.at(seconds(at))
                battery.fault(what)
                await step()

        verdict = await battery.run(load(), faults, drain=300, receipts_within=120)
    _passed(battery, verdict)


# --- routes, receipts, clocks -------------------------------------------------------------------
@pytest.mark.timeout(900)
async def test_two_routes_to_the_same_destination(
    tmp_path: Path, battery_broker: ScratchBroker
) -> None:
    """SEAJust reaches EJN through CASC or through WACAP. CASC goes down with SEAJust's requests
    in its inbox; the operator switches SEAJust to the WACAP route and restarts it; SEAJust
    resends what was not receipted through WACAP; then CASC returns and forwards its copies
    too. EJN gets every request by both routes and delivers each once."""
    plan = Plan(
        networks=("seajust", "casc", "wacap", "ejn"),
        links=(("seajust", "casc"), ("casc", "ejn"), ("seajust", "wacap"), ("wacap", "ejn")),
    )
    lanes = [Lane("seajust", "kh-cp-1", "ejn", "FR"), Lane("seajust", "th-cp-1", "ejn", "DE")]
    async with Battery(
        "two routes to one destination", tmp_path, broker=battery_broker, plan=plan
    ) as (battery):
        path = battery.fed.config_path("seajust")
        path.write_text(
            path.read_text(encoding="utf-8") + '\n[[routes]]\nvia = "casc"\n', encoding="utf-8"
        )
        await battery.start(lanes)

        async def faults(battery: Battery) -> None:
            await battery.at(seconds(10))
            battery.fault("casc stopped with requests in its inbox")
            battery.supervisor.processes.kill("casc")
            await asyncio.sleep(seconds(10))  # the fault lasts this long: what the scenario tests
            text = path.read_text(encoding="utf-8").replace('via = "casc"', 'via = "wacap"')
            path.write_text(text, encoding="utf-8")
            battery.fault("seajust switched to the wacap route")
            await battery.supervisor.kill("seajust")
            await asyncio.sleep(seconds(15))  # the fault lasts this long: what the scenario tests
            battery.supervisor.start("casc")
            await battery.supervisor.wait_ready(["casc"])
            battery.fault("casc back: its copies flow too")

        verdict = await battery.run(Load(lanes, rate=20, duration=max(5.0, 40 * SCALE)), faults)
    _passed(battery, verdict)


@pytest.mark.timeout(900)
async def test_receipts_lost_for_a_while(tmp_path: Path, battery_broker: ScratchBroker) -> None:
    """The link into SEAJust is cut for 30 s: CASC's receipts (and CASC's and EJN's requests
    for SEAJust) wait; SEAJust resends what is not receipted; CASC and EJN see the repeats,
    deliver nothing twice, and receipt again; once healed every receipt comes home."""
    async with Battery("receipts lost for 30 s", tmp_path, broker=battery_broker) as battery:
        links = battery.proxy(name="links-into-seajust")
        route_links_through(battery.fed, "seajust", links.port)
        await battery.start(LANES)

        async def faults(battery: Battery) -> None:
            await battery.at(seconds(10))
            battery.fault("links into seajust cut")
            links.cut()
            await asyncio.sleep(30)  # the fault lasts this long: what the scenario tests
            links.heal()
            battery.fault("links into seajust healed")

        verdict = await battery.run(load(), faults, receipts_within=120)
    _passed(battery, verdict)
    assert battery.outbox_states() == {"delivered": verdict.submitted}


@pytest.mark.timeout(900)
async def test_clocks_skewed_inside_and_outside_the_window(
    tmp_path: Path, battery_broker: ScratchBroker
) -> None:
    """SEAJust's clock runs 240 s ahead (inside the 300 s window): its messages are delivered.
    EJN's runs 420 s ahead (outside): what it signs is refused at the first hop with
    clock_skew, which the checker counts as a just quarantine."""
    async with Battery("clocks skewed +240 s / +420 s", tmp_path, broker=battery_broker) as battery:
        battery.supervisor.skew_clock("seajust", 240)
        battery.supervisor.skew_clock("ejn", 420)
        await battery.start(LANES)
        skewed = Load(LANES, rate=20, duration=max(5.0, 30 * SCALE))
        skewed.expect = lambda lane, n: (
            "quarantine:clock_skew" if lane.origin == "ejn" else "deliver"
        )
        verdict = await battery.run(skewed, receipts_within=5)
    _passed(battery, verdict, receipted=False)  # EJN's receipts are refused too
    assert verdict.justly_quarantined == skewed.count // 3
