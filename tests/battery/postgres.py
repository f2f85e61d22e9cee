"""A PostgreSQL server of the battery's own: its own data folder and port, so that a scenario
may restart or kill it (``pg_ctl``) without touching the machine's server on :5432.

Made with the machine's PostgreSQL binaries (``/usr/lib/postgresql/<version>/bin``), trust
authentication on 127.0.0.1 only. PostgreSQL refuses to run as root: run by root, the server
runs as the ``postgres`` user (``runuser``) in a folder it owns. Every wait has a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Self

import psycopg

__all__ = ["ScratchPostgres", "postgres_binaries"]


def postgres_binaries() -> Path:
    """The newest installed PostgreSQL's ``bin`` folder (AssertionError when none is)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: p.parent)
    assert found, "PostgreSQL's binaries are not installed: run ./scripts/setup.sh"
    return found[-1].parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ScratchPostgres:
    """``async with ScratchPostgres() as server:`` a running server; ``server.url`` for
    ``[database]``; removed at the end."""

    def __init__(self) -> None:
        self.bin = postgres_binaries()
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="mlanet-battery-pg-"))
        self.data = self.root / "data"
        self._as_postgres = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self._init)
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, *args: str, within: float = 60.0) -> str:
        command = [str(self.bin / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=within, check=False, cwd="/"
        )
        if done.returncode != 0:
            raise AssertionError(f"{args[0]} failed: {(done.stderr or done.stdout)[-400:]}")
        return done.stdout

    def _init(self) -> None:
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    async def start(self, within: float = 60.0) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port}"
            f" -c unix_socket_directories={self.root} -c fsync=off -c max_connections=200"
        )
        await asyncio.to_thread(
            self._run,
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            str(int(within)),
            "start",
            within=within + 10,
        )
        await self.wait_answering(within)

    async def wait_answering(self, within: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            try:
                await asyncio.to_thread(self._ping)
                return
            except psycopg.Error:
                if loop.time() > deadline:
                    raise AssertionError(
                        f"the battery's PostgreSQL did not answer in {within:g} s"
                    ) from None
                await asyncio.sleep(0.2)

    def _ping(self) -> None:
        with psycopg.connect(self.url, connect_timeout=2, autocommit=True) as conn:
            conn.execute("SELECT 1")

    async def stop(self, mode: str = "fast") -> None:
        await asyncio.to_thread(
            self._run, "pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"
        )

    async def restart(self) -> None:
        """Stop (fast: every session ended, open transactions rolled back) and start again."""
        await self.stop()
        await self.start()

    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    async def kill(self) -> None:
        """SIGKILL the postmaster (its backends end with it): a crash; start() recovers."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
