"""The fault proxy passes bytes, resets on cut, holds bytes in a black hole without losing them,
and delays on command (against a local echo server; no broker needed)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from tests.battery.proxy import FaultProxy


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def _roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), timeout=5)


async def _connect_and_roundtrip(
    port: int, data: bytes, opened: list[asyncio.StreamWriter]
) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    opened.append(writer)
    return await _roundtrip(reader, writer, data)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def test_bytes_pass_and_a_cut_resets_until_healed(echo_port: int) -> None:
    with FaultProxy("127.0.0.1", echo_port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await _roundtrip(reader, writer, b"hello") == b"hello"
        assert proxy.cut() == 1
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await _roundtrip(reader, writer, b"after the cut")
        refused: list[asyncio.StreamWriter] = []
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await _connect_and_roundtrip(proxy.port, b"while cut", refused)
        proxy.heal()
        healed_reader, healed_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await _roundtrip(healed_reader, healed_writer, b"healed") == b"healed"
        assert proxy.resets == 1
        for each in (writer, *refused, healed_writer):
            await _close(each)


async def test_a_black_hole_holds_bytes_and_releases_them_in_order(echo_port: int) -> None:
    with FaultProxy("127.0.0.1", echo_port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await _roundtrip(reader, writer, b"before") == b"before"
        proxy.blackhole("down")
        writer.write(b"one-")
        writer.write(b"two")
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readexactly(7), timeout=0.5)
        assert proxy.open_connections == 1  # nothing was closed
        proxy.heal()
        assert await asyncio.wait_for(reader.readexactly(7), timeout=5) == b"one-two"
        await _close(writer)


async def test_a_delay_slows_each_chunk(echo_port: int) -> None:
    with FaultProxy("127.0.0.1", echo_port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        proxy.delay(0.3)
        started = time.monotonic()
        assert await _roundtrip(reader, writer, b"slow") == b"slow"
        assert time.monotonic() - started >= 0.6  # 0.3 s each way
        await _close(writer)
