"""A small TCP fault proxy: sits between a client (a node, a shovel, a test client) and a broker,
and can delay, cut or black-hole the traffic on command. (``tc netem`` is not available here.)

A node's shovel reaches a peer at the peer's broker address in the directory, so pointing a
network's ``broker`` entry at the proxy puts every link towards that network through it; pointing
a node's own ``[broker] port`` at it puts the node's (and its shovels') own connection through it.

Modes:

- ``heal()``: bytes flow both ways (after an optional ``delay``);
- ``delay(seconds)``: each chunk waits that long before it is passed on (order is kept);
- ``cut()``: every open connection is reset now, and new ones are reset on arrival, until
  ``heal()``;
- ``blackhole(direction)``: bytes stop moving (``up``: client to broker, ``down``: broker to
  client, ``both``); connections stay open and nothing is dropped: what was read waits, as in a
  network partition, and moves on when healed (if neither end gave up meanwhile).

The proxy runs its own event loop in a thread, so a busy test loop does not slow it down.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

__all__ = ["FaultProxy"]

Direction = Literal["up", "down", "both"]
T = TypeVar("T")
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


@dataclass(eq=False)
class _Pair:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def reset(self) -> None:
        for writer in (self.client, self.server):
            if writer is not None:
                with contextlib.suppress(OSError):
                    sock = writer.get_extra_info("socket")
                    if sock is not None:  # RST rather than FIN: the peer sees a broken link
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                writer.transport.abort()


class FaultProxy:
    """``127.0.0.1:<port>`` -> ``target_host:target_port``, with faults on command."""

    def __init__(self, target_host: str, target_port: int, *, name: str = "proxy") -> None:
        self.target = (target_host, target_port)
        self.name = name
        self.port = 0
        self.accepted = 0  # connections accepted so far
        self.resets = 0  # connections reset by cut()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._server: asyncio.Server | None = None
        self._pairs: set[_Pair] = set()
        self._up = asyncio.Event()
        self._down = asyncio.Event()
        self._delay = 0.0
        self._refusing = False

    # --- lifecycle (called from any thread) -------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._open)
        return self

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- faults --------------------------------------------------------------------------------
    def heal(self) -> None:
        def heal() -> None:
            self._refusing = False
            self._delay = 0.0
            self._up.set()
            self._down.set()

        self._call_sync(heal)

    def delay(self, seconds: float) -> None:
        def delay() -> None:
            self._delay = seconds

        self._call_sync(delay)

    def cut(self) -> int:
        """Reset every open connection and refuse new ones until healed; how many were reset."""

        def cut() -> int:
            self._refusing = True
            pairs, self._pairs = list(self._pairs), set()
            for pair in pairs:
                pair.reset()
            self.resets += len(pairs)
            return len(pairs)

        return self._call_sync(cut)

    def blackhole(self, direction: Direction = "both") -> None:
        def blackhole() -> None:
            if direction in ("up", "both"):
                self._up.clear()
            if direction in ("down", "both"):
                self._down.clear()

        self._call_sync(blackhole)

    @property
    def open_connections(self) -> int:
        return self._call_sync(lambda: len(self._pairs))

    # --- inside the proxy's loop ---------------------------------------------------------------
    async def _open(self) -> None:
        self._up.set()
        self._down.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        pairs, self._pairs = list(self._pairs), set()
        tasks = [task for pair in pairs for task in pair.tasks]
        for pair in pairs:
            pair.reset()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        pair = _Pair(writer)
        if self._refusing:
            pair.reset()
            return
        self._pairs.add(pair)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._pairs.discard(pair)
            pair.reset()
            return
        pair.server = up_writer
        if pair not in self._pairs:  # cut while connecting
            pair.reset()
            return
        pair.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, self._up, pair)),
            asyncio.create_task(self._pump(up_reader, writer, self._down, pair)),
        ]

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        gate: asyncio.Event,
        pair: _Pair,
    ) -> None:
        try:
            while True:
                await gate.wait()
                chunk = await source.read(65536)
                if not chunk:
                    break
                if self._delay:
                    await asyncio.sleep(self._delay)  # the injected latency: the fault
                await gate.wait()  # black-holed while reading: hold the bytes, drop nothing
                sink.write(chunk)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if pair in self._pairs:
                self._pairs.discard(pair)
                for writer in (pair.client, pair.server):
                    if writer is not None:
                        writer.close()

    # --- plumbing ------------------------------------------------------------------------------
    def _call(self, coroutine: Callable[[], Coroutine[Any, Any, None]]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine(), self._loop).result(timeout=10)

    def _call_sync(self, function: Callable[[], T]) -> T:
        async def run() -> T:
            return function()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)
