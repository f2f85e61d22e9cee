"""Connections never wait without a limit: the AMQP transport and the management API client
give up on a peer that accepts TCP connections and never answers (a broker at its open-file
limit), with a TransportError naming the address (never the credentials), and leave nothing
running behind; a management API that answers something that is not JSON is refused the same
way, never with a crash. (A listening socket that never accepts stands in for the silent
broker; the real broker behind the battery's fault proxy is in
tests/integration/test_no_hang.py.)"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from mlanet.broker.errors import TransportError
from mlanet.broker.management import Management, ManagementEndpoint
from mlanet.broker.transport import Transport
from tests.polling import eventually

SECRET = "s3cret-password-9c1f"


@pytest.fixture
def silent() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never says a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


async def test_the_transport_gives_up_on_a_silent_broker_and_stops_reconnecting(
    silent: int,
) -> None:
    before = asyncio.all_tasks()
    transport = Transport(f"amqp://mlanet:{SECRET}@127.0.0.1:{silent}/v", timeout=0.5)
    with pytest.raises(TransportError) as failed:
        await transport.connect()
    assert str(failed.value).startswith(
        f"cannot reach the broker at 127.0.0.1:{silent}: no answer within 0.5 s; check that"
    )
    assert SECRET not in str(failed.value)

    def abandoned() -> set[asyncio.Task[object]]:
        return {task for task in asyncio.all_tasks() - before if not task.done()}

    # within a second: a connection that keeps reconnecting never lets this hold
    await eventually(lambda: not abandoned(), within=1, every=0.01, what="no reconnecting task")


async def test_the_transport_says_connection_refused_for_a_broker_that_is_down() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed when the block ends: nothing listens there
    with pytest.raises(TransportError, match=f"127.0.0.1:{port}: connection refused;"):
        await Transport(f"amqp://u:{SECRET}@127.0.0.1:{port}/v", timeout=2).connect()


async def test_the_management_api_gives_up_on_a_silent_server(silent: int) -> None:
    endpoint = ManagementEndpoint(f"http://127.0.0.1:{silent}", "admin", SECRET)
    async with Management(endpoint, timeout=0.5) as management:
        with pytest.raises(TransportError) as failed:
            await management.overview()
    assert str(failed.value) == (
        f"the management API at 127.0.0.1:{silent} did not answer within 0.5 s; check that "
        "RabbitMQ runs there with its management plugin"
    )


async def test_an_answer_that_is_not_json_is_refused_not_a_crash() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b"<html>a proxy's error page</html>"
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        endpoint = ManagementEndpoint(f"http://127.0.0.1:{port}", "admin", SECRET)
        async with Management(endpoint, timeout=5) as management:
            with pytest.raises(TransportError, match="answered something that is not JSON"):
                await management.overview()
    finally:
        server.close()
        await server.wait_closed()
