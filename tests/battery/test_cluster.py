"""A network's broker that is a three-node RabbitMQ cluster on this machine (``mlanet cluster``,
``nodes/local/cluster.py``), with one node SIGKILLed: the queues mlanet declares are quorum
queues with a member on each node, and go on accepting (publisher confirms) and delivering with
two members online; a node whose ``[broker] cluster`` names the other nodes fails over to one of
them and goes on delivering. Long tier (a cluster takes ~30 s to start): ``./scripts/battery -k
cluster``. Never the shared broker: the cluster has its own names, ports, folders and cookie,
and ``mlanet cluster down`` (or the test's own stop) removes it all."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from mlanet.broker.errors import TransportError
from mlanet.broker.management import Management
from mlanet.broker.topology import SUBMIT, Topology
from mlanet.broker.transport import Transport
from mlanet.nodes.cli.contact import facilitation_request, read_inbox, submit
from mlanet.nodes.config import NodeConfig, load_config
from mlanet.nodes.local.brokers import LocalBroker, process_alive
from mlanet.nodes.local.cluster import LocalCluster
from mlanet.nodes.local.federation import build, provision
from mlanet.nodes.runtime.node import Node
from tests.integration.kit import credentials
from tests.polling import eventually

pytestmark = [pytest.mark.integration, pytest.mark.battery_long]


async def _mlanet(*args: str, within: float = 400.0) -> tuple[int, str, str]:
    """``mlanet <args>`` as a process: (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mlanet",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), within)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def _queue(node: LocalBroker, vhost: str, name: str) -> dict[str, object]:
    """The management API's view of a queue (members, online, leader)."""
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(
            f"{node.admin.url}/api/queues/{quote(vhost, safe='')}/{quote(name, safe='')}",
            auth=(node.admin.user, node.admin.password),
        )
    response.raise_for_status()
    found = response.json()
    assert isinstance(found, dict)
    return found


def _kill(node: LocalBroker) -> int:
    """SIGKILL the node: no flush, no goodbye to its clients, as in a power cut."""
    pid = node.pid
    assert pid is not None, f"{node.nodename} has no pid file"
    assert process_alive(pid), f"{node.nodename} is not running"
    os.kill(pid, signal.SIGKILL)
    return pid


@pytest.mark.timeout(900)
async def test_cluster_up_replicates_quorum_queues_to_three_nodes_that_survive_a_killed_node(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cluster"
    code, out, err = await _mlanet("cluster", "up", "--root", str(root))
    try:
        assert code == 0, err
        cluster = LocalCluster.attach(root)
        pids = [node.pid for node in cluster.nodes]
        for node, address in zip(cluster.nodes, cluster.amqp_addresses(), strict=True):
            assert f"{node.nodename}  AMQP {address}  management {node.admin.url}/" in out
        assert f"password in {root / 'admin.password'}" in out
        assert out.splitlines()[-1].startswith("cluster of 3 nodes running; stop and remove it")
        code, out, err = await _mlanet("cluster", "status", "--root", str(root), within=120)
        assert code == 0, err
        assert out.splitlines()[-1].endswith(
            "3 of 3 nodes running (" + ", ".join(sorted(n.nodename for n in cluster.nodes)) + ")"
        )

        # the queues a node declares, in a vhost of the test's own, as mlanet declares them
        first = cluster.nodes[0]
        vhost = "cluster-" + uuid.uuid4().hex[:8]
        async with first.management() as api:
            await api.put_vhost(vhost)
            await api.put_permissions(
                vhost, first.admin.user, configure=".*", write=".*", read=".*"
            )
        password = quote(first.admin.password, safe="")
        addresses = cluster.amqp_addresses()
        url = (
            f"amqp://{first.admin.user}:{password}@{addresses[0]}/{vhost}"
            f"?cluster={','.join(addresses[1:])}"
        )
        topology = Topology(peers=("casc",), contact_points=("kh-cp-1",))
        async with Transport(url) as transport:
            assert await transport.declare(topology) == []
            names = {node.nodename for node in cluster.nodes}
            for queue in topology.queues():
                found = await _queue(first, vhost, queue)
                assert found["type"] == "quorum", queue
                assert set(found["members"]) == names, queue

            # the node holding the submit queue's leader is killed
            leader = str((await _queue(first, vhost, SUBMIT))["leader"])
            victim = next(node for node in cluster.nodes if node.nodename == leader)
            survivor = next(node for node in cluster.nodes if node is not victim)
            _kill(victim)

            async def accepted() -> bool:
                try:
                    await transport.publish(SUBMIT, b"{}", message_id="after-kill", kind="receipt")
                except TransportError:
                    return False  # the transport was on the killed node: it fails over
                return True

            await eventually(accepted, within=90, every=1, what="a confirmed publish")

            async def delivered() -> bool:
                while (got := await transport.get(SUBMIT)) is not None:
                    await got.ack()
                    if got.message_id == "after-kill":
                        return True
                return False

            await eventually(delivered, within=60, every=0.5, what="the message delivered")
            found = await _queue(survivor, vhost, SUBMIT)
            assert set(found["members"]) == names
            assert set(found["online"]) == names - {leader}
            assert found["leader"] != leader

        code, out, err = await _mlanet("cluster", "status", "--root", str(root), within=120)
        assert code == 1
        assert f"{victim.nodename}: not running" in out
        assert "2 of 3 nodes running" in err.splitlines()[-1]
    finally:
        code, out, err = await _mlanet("cluster", "down", "--root", str(root), within=300)
    assert code == 0, err
    assert out.splitlines()[-1] == f"stopped the cluster's 3 nodes and removed {root}"
    assert not root.exists()
    assert not any(pid is not None and process_alive(pid) for pid in pids)


def _on_cluster(path: Path, cluster: LocalCluster) -> NodeConfig:
    """The node's config with ``[broker] cluster`` and ``cluster_management_urls`` naming the
    cluster's other nodes (its host and port are node 1's), loaded as the node loads it."""
    others = ", ".join(f'"{address}"' for address in cluster.amqp_addresses()[1:])
    apis = ", ".join(f'"{url}"' for url in cluster.management_urls()[1:])
    text = path.read_text(encoding="utf-8").replace(
        "[broker]\n",
        f"[broker]\ncluster = [{others}]\ncluster_management_urls = [{apis}]\n",
        1,
    )
    path.write_text(text, encoding="utf-8")
    return load_config(path)


@pytest.mark.timeout(600)
async def test_a_node_on_the_cluster_fails_over_when_its_rabbitmq_node_is_killed(
    tmp_path: Path,
) -> None:
    async with LocalCluster.prepare(tmp_path / "cluster") as cluster:
        first, second, _ = cluster.nodes
        fed = build(
            tmp_path / "federation",
            prefix="k" + uuid.uuid4().hex[:8],
            port=first.amqp_port,
            management_url=first.admin.url,
        )
        await provision(fed, first.admin)
        config = _on_cluster(fed.config_path("casc"), cluster)
        # the contact points hand in and read on a node that stays up
        on_second = config.model_copy(
            update={"broker": config.broker.model_copy(update={"port": second.amqp_port})}
        )

        async def delivered(message_id: str) -> bool:
            items = await read_inbox(on_second, credentials(fed, "uz-cp-1"))
            return message_id in {item.message.header.message_id for item in items}

        node = Node(config)
        task = asyncio.create_task(node.run(), name="node-casc")
        try:
            await asyncio.wait_for(node.ready.wait(), 60)
            assert node.transport.node == cluster.amqp_addresses()[0]
            before = facilitation_request("kz-cp-1", "UZ")
            await submit(on_second, credentials(fed, "kz-cp-1"), before)
            await eventually(lambda: delivered(before.message_id), within=60, what="delivered")

            _kill(first)
            after = facilitation_request("kz-cp-1", "UZ")

            async def handed_in() -> bool:
                try:
                    await submit(on_second, credentials(fed, "kz-cp-1"), after)
                except TransportError:
                    return False  # refused (nack) while the queue elects a new leader: again
                return True

            await eventually(handed_in, within=90, every=1, what="the submission confirmed")
            await eventually(
                lambda: delivered(after.message_id), within=120, what="delivered after the kill"
            )
            assert node.transport.node in cluster.amqp_addresses()[1:]
            assert not task.done()  # the node went on running
            async with Management(config.management_endpoint()) as api:
                assert (await api.overview()).get("rabbitmq_version")  # a surviving node's API
                assert api.address != f"127.0.0.1:{first.ports.management}"
        finally:
            node.stop()
            await asyncio.wait_for(task, 60)
