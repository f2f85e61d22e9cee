"""A node's broker that is a cluster, on the shared RabbitMQ standing in for the cluster's one
node that answers: the transport goes past a node that refuses (and, on its next socket, past
one that takes the socket and never answers) to the next node of ``[broker] cluster``, and
the management client past an API that refuses to the next of ``cluster_management_urls``.
The three-node cluster with a node SIGKILLed is tests/battery/test_cluster.py (long tier)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from mlanet.broker.errors import TransportError
from mlanet.broker.management import Management, ManagementEndpoint
from mlanet.broker.transport import Transport
from tests.integration.kit import ADMIN


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens there once the block ends


@pytest.fixture
def silent() -> Iterator[int]:
    """A port that takes sockets (the kernel's backlog) and never says a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture
async def vhost() -> AsyncIterator[str]:
    name = "cluster-" + uuid.uuid4().hex[:10]
    async with Management(ADMIN) as management:
        await management.put_vhost(name)
        await management.put_permissions(name, "guest", configure=".*", write=".*", read=".*")
        await management.put_queue(name, "q", {"x-queue-type": "quorum"})
        try:
            yield name
        finally:
            await management.delete_vhost(name)


async def _round_trip(transport: Transport) -> None:
    """A publish the broker confirms, read back from the queue."""
    await transport.publish("q", b"{}", message_id="m-1", kind="receipt")
    got = await transport.get("q")
    assert got is not None
    assert got.message_id == "m-1"
    await got.ack()


async def test_a_transport_whose_node_refuses_connects_to_the_clusters_next_node(
    vhost: str,
) -> None:
    down = _closed_port()
    url = f"amqp://guest:guest@127.0.0.1:{down}/{vhost}?cluster=127.0.0.1:5672"
    async with Transport(url, timeout=5) as transport:
        assert transport.node == "127.0.0.1:5672"
        await _round_trip(transport)
        # its short-lived connections (the topology's declarations) go there as well
        assert await transport.declare_queue("q2")


async def test_a_node_that_never_answers_is_tried_last_on_the_next_connection(
    vhost: str, silent: int
) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{silent}/{vhost}?cluster=127.0.0.1:5672"
    transport = Transport(url, timeout=0.5)
    with pytest.raises(TransportError) as failed:
        await transport.connect()  # the socket is taken, the handshake never answered
    assert str(failed.value).startswith(
        f"cannot reach the broker at 127.0.0.1:{silent} or 127.0.0.1:5672: no answer within"
    )
    await transport.connect()  # the node's retry: the next node first
    try:
        assert transport.node == "127.0.0.1:5672"
        await _round_trip(transport)
    finally:
        await transport.aclose()


async def test_the_management_client_asks_the_clusters_next_api_when_one_refuses() -> None:
    down = _closed_port()
    endpoint = ManagementEndpoint(
        f"http://127.0.0.1:{down}",
        "guest",
        "guest",
        fallback_urls=("http://127.0.0.1:15672",),
    )
    async with Management(endpoint, timeout=5) as management:
        overview = await management.overview()
        assert overview.get("rabbitmq_version")
        assert management.address == "127.0.0.1:15672"  # asked first from then on
    other = _closed_port()
    nowhere = ManagementEndpoint(
        f"http://127.0.0.1:{down}", "guest", "guest", fallback_urls=(f"http://127.0.0.1:{other}",)
    )
    async with Management(nowhere, timeout=5) as management:
        with pytest.raises(
            TransportError,
            match=f"cannot reach the management API at 127.0.0.1:{down} or 127.0.0.1:{other} "
            r"\(connection refused\)",
        ):
            await management.overview()
