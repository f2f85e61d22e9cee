"""The fault battery with one network on a RabbitMQ cluster: SEAJust and EJN on the battery's
broker, CASC (the relay between them, and a destination) on a three-node cluster of the test's
own (``rabbit_cluster``), as two replicas with their state in a PostgreSQL of the battery's own,
under a steady load, while one RabbitMQ node of the three is SIGKILLed and later restarted.

The node killed is node 1: the one CASC's replicas connect to first (``[broker]`` names it,
``cluster`` names nodes 2 and 3), where CASC's queues were declared. Not node 3, the one the
directory lists: peers' links into CASC are plaintext shovels, whose URI names one node
(``nodes/local/sites.py``), so they depend on node 3 and never see this fault. What a run
shows: every queue of CASC (its vhost and its doors) has a member on each node before the
fault; the replicas' connections move to nodes 2 and 3 without a restart; CASC's own links
(dynamic shovels, each run by one RabbitMQ node) run on surviving nodes; and the checker finds
nothing lost, duplicated, forged or wrongly refused, every receipt back at its origin.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from mlanet.broker.topology import SUBMIT, out_queue, peer_inbox
from mlanet.nodes.local.brokers import LocalBroker, process_alive
from mlanet.nodes.local.cluster import LocalCluster
from mlanet.nodes.local.federation import Federation
from tests.battery.postgres import ScratchPostgres
from tests.battery.rabbit import ScratchBroker
from tests.battery.scenario import Battery, Plan
from tests.battery.test_battery import LANES
from tests.battery.workload import Load, until

# Long tier only: the cluster takes ~35 s to start and ~15 s to stop; a run takes minutes.
pytestmark = [pytest.mark.integration, pytest.mark.battery_long]

CASC = "casc"
DOWN_FOR = 6.0  # seconds node 1 stays down at least (longer while the replicas move)


@pytest.fixture
async def postgres() -> AsyncIterator[ScratchPostgres]:
    async with ScratchPostgres() as server:
        yield server


async def _get(node: LocalBroker, path: str) -> Any:
    """A management API listing from ``node``, as the cluster's administrator."""
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(
            f"{node.admin.url}/api{path}", auth=(node.admin.user, node.admin.password)
        )
    response.raise_for_status()
    return response.json()


def _casc_vhosts(fed: Federation) -> list[str]:
    """CASC's vhost and its peers' doors: where its queues are."""
    return [fed.vhost(CASC), *(fed.door(CASC, peer) for peer in fed.peers(CASC))]


async def _queues(node: LocalBroker, fed: Federation) -> dict[str, dict[str, Any]]:
    """CASC's queues as ``node`` sees them, by ``<vhost>/<name>``."""
    found = {}
    for vhost in _casc_vhosts(fed):
        for queue in await _get(node, f"/queues/{quote(vhost, safe='')}"):
            found[f"{vhost}/{queue['name']}"] = queue
    return found


async def _connections(node: LocalBroker, fed: Federation) -> Counter[tuple[str, str, str]]:
    """(user, vhost, RabbitMQ node) of each connection to CASC's vhost and doors, as ``node``
    lists them (a connection shows there some seconds after it opened: the broker's statistics
    interval)."""
    vhosts = set(_casc_vhosts(fed))
    listed = await _get(node, "/connections?columns=user,vhost,node")
    return Counter((c["user"], c["vhost"], c["node"]) for c in listed if c["vhost"] in vhosts)


def _replicas_in_doors(fed: Federation, found: Counter[tuple[str, str, str]]) -> Counter[str]:
    """How many connections CASC's user has in each door: its replicas' only (the test's
    clients and readers use CASC's own vhost)."""
    doors = set(_casc_vhosts(fed)[1:])
    by_door: Counter[str] = Counter({door: 0 for door in doors})
    for (user, vhost, _), n in found.items():
        if user == fed.user(CASC) and vhost in doors:
            by_door[vhost] += n
    return by_door


async def _kill(node: LocalBroker) -> None:
    """SIGKILL the RabbitMQ node (no flush, no goodbye to its clients) and wait until it is
    gone."""
    pid = node.pid
    assert pid is not None, f"{node.nodename} has no pid file"
    assert process_alive(pid), f"{node.nodename} is not running"
    os.kill(pid, signal.SIGKILL)
    gone = await until(lambda: not process_alive(pid), within=30, every=0.05)
    assert gone, f"{node.nodename} (pid {pid}) still runs 30 s after SIGKILL"


@pytest.mark.timeout(900)
async def test_one_rabbitmq_node_of_three_sigkilled_under_load(
    tmp_path: Path,
    battery_broker: ScratchBroker,
    rabbit_cluster: LocalCluster,
    postgres: ScratchPostgres,
) -> None:
    """10 requests a second for 20 s; node 1 is SIGKILLed at t=4 s and started again 6 s
    later (it serves again some 8 s after that)."""
    load = Load(LANES, rate=10, duration=20)
    cluster = rabbit_cluster
    first, second, third = cluster.nodes
    names = {node.nodename for node in cluster.nodes}
    plan = Plan(database_url=postgres.url, replicas={CASC: 2}, on_cluster=CASC)
    async with Battery(
        "one RabbitMQ node of CASC's three SIGKILLed",
        tmp_path,
        broker=battery_broker,
        plan=plan,
        cluster=cluster,
    ) as battery:
        fed = battery.fed
        await battery.start(LANES)
        replicas = plan.processes(CASC)
        pids = {key: battery.supervisor.processes.processes[key].pid for key in replicas}

        # before the fault: three members for each of CASC's queues; the replicas on node 1
        queues = await _queues(first, fed)
        door = fed.door(CASC, "seajust")
        for name in (SUBMIT, out_queue("seajust"), out_queue("ejn")):
            assert f"{fed.vhost(CASC)}/{name}" in queues, name
        assert f"{door}/{peer_inbox('seajust')}" in queues
        for name, queue in queues.items():
            assert queue["type"] == "quorum", name
            assert set(queue["members"]) == names, name
        listed: list[Counter[tuple[str, str, str]]] = [Counter()]

        async def replicas_listed(node: LocalBroker) -> bool:
            """The replicas in every door, and the peers' links connected (their shovels may
            start after the nodes are ready)."""
            listed[0] = found = await _connections(node, fed)
            links = [user for user, _, _ in found if user not in (fed.user(CASC), "none")]
            return bool(links) and min(_replicas_in_doors(fed, found).values()) >= len(replicas)

        assert await until(lambda: replicas_listed(first), within=30, every=0.5), listed[0]
        before = listed[0]
        where = {(user, at) for user, _, at in before}
        assert {at for user, at in where if user == fed.user(CASC)} == {first.nodename}, before
        links = {at for user, at in where if user != fed.user(CASC) and user != "none"}
        assert links == {third.nodename}, before  # peers' links: the node the directory lists
        in_doors = _replicas_in_doors(fed, before)
        led = sum(queue.get("leader") == first.nodename for queue in queues.values())
        shovels = await _get(first, f"/shovels/{quote(fed.vhost(CASC), safe='')}")
        on_first = sum(shovel.get("node") == first.nodename for shovel in shovels)
        moved: dict[str, bool] = {}

        async def replicas_moved() -> bool:
            if not await replicas_listed(second):
                return False
            found = listed[0]
            return first.nodename not in {at for _, _, at in found} and (
                _replicas_in_doors(fed, found) == in_doors  # as many as before, in each door
            )

        async def shovels_moved() -> bool:
            found = await _get(second, f"/shovels/{quote(fed.vhost(CASC), safe='')}")
            running = {shovel["name"] for shovel in found if shovel.get("state") == "running"}
            elsewhere = all(shovel.get("node") != first.nodename for shovel in found)
            return elsewhere and running == {shovel["name"] for shovel in shovels}

        async def faults(battery: Battery) -> None:
            await battery.at(4)
            battery.fault(
                f"RabbitMQ node 1 of 3 SIGKILLed (leader of {led} of CASC's {len(queues)} "
                f"queues, {on_first} of its {len(shovels)} links' shovels; CASC's replicas "
                "connected to it)"
            )
            await _kill(first)
            killed_at = asyncio.get_running_loop().time()
            moved["replicas"] = await until(replicas_moved, within=60, every=0.5)
            moved["shovels"] = await until(shovels_moved, within=60, every=0.5)
            battery.fault(
                f"CASC's replicas {'on nodes 2 and 3' if moved['replicas'] else 'NOT moved'}, "
                f"its shovels {'running there' if moved['shovels'] else 'NOT running'}"
            )
            rest = killed_at + DOWN_FOR - asyncio.get_running_loop().time()
            if rest > 0:  # node 1 stays down at least this long: the fault
                await asyncio.sleep(rest)
            await first.start()
            await cluster.wait_whole(60)
            battery.fault("RabbitMQ node 1 back in the cluster")

        verdict = await battery.run(load, faults)

        async def three_online() -> bool:
            found = await _queues(second, fed)
            return all(set(queue.get("online", [])) == names for queue in found.values())

        rejoined = await until(three_online, within=60, every=1)
        after = {key: battery.supervisor.processes.processes[key].pid for key in replicas}
    assert verdict.passed, verdict.table()
    assert verdict.delivered == load.count, verdict.table()
    assert verdict.unreceipted == 0, verdict.table()
    assert moved == {"replicas": True, "shovels": True}, verdict.table()
    assert not battery.supervisor.unexpected, battery.supervisor.unexpected
    assert battery.supervisor.restarts == 0  # the replicas went on: no process was restarted
    assert after == pids
    assert rejoined, "node 1 is not an online member of every CASC queue again"
