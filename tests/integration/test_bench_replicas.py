"""``bench/bench_replicas.py`` runs end to end at a tiny size, so that it cannot rot: it starts
one replica, two replicas and a SQLite node in turn, prints a line for each run and its two
ratio lines (the figures are never asserted: timings are not what a test checks), and leaves
nothing behind, on the broker or in PostgreSQL."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from mlanet.broker.management import Management
from tests.integration.kit import ADMIN
from tests.stores import POSTGRES_URL

ROOT = Path(__file__).resolve().parents[2]
NUMBER = r"[\d.]+ \([\d.]+-[\d.]+\)"  # a median and its range


def _schemas(prefix: str) -> list[str]:
    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as db:
        rows = db.execute(
            "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE %s",
            (f"{prefix}%",),
        ).fetchall()
    return [str(name) for (name,) in rows]


async def _leftovers(prefix: str) -> list[str]:
    async with Management(ADMIN) as management:
        vhosts = [name for name in await management.vhost_names() if name.startswith(prefix)]
        users = [str(user["name"]) for user in await management.users()]
    return vhosts + [name for name in users if name.startswith(prefix)] + _schemas(prefix)


async def _remove(prefix: str) -> None:
    """What a failed run left behind (so that a failing test leaks nothing either)."""
    async with Management(ADMIN) as management:
        for vhost in await management.vhost_names():
            if vhost.startswith(prefix):
                await management.delete_vhost(vhost)
        users = [str(user["name"]) for user in await management.users()]
        await management.delete_users([name for name in users if name.startswith(prefix)])
    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as db:
        for schema in _schemas(prefix):
            db.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.mark.timeout(150)
async def test_bench_replicas_runs_at_a_tiny_size_and_removes_what_it_made() -> None:
    prefix = f"brep{uuid.uuid4().hex[:8]}"  # no '-': its schemas start with it too
    command = [sys.executable, str(ROOT / "bench" / "bench_replicas.py")]
    command += ["--messages", "40", "--rounds", "1", "--settle", "0", "--prefix", prefix]
    command += ["--database", POSTGRES_URL, "--shared-broker"]
    process = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        try:
            out, err = await asyncio.wait_for(process.communicate(), 100)
        finally:
            if process.returncode is None:  # timed out: Ctrl-C first, so that it tears down
                process.send_signal(signal.SIGINT)
                try:
                    await asyncio.wait_for(process.wait(), 30)
                except TimeoutError:
                    process.kill()
                    await process.wait()
        report = out.decode()
        assert process.returncode == 0, err.decode()[-3000:]
        assert "two replicas cannot exceed the machine" in report
        for name in ("one replica (PostgreSQL)", "two replicas (PostgreSQL)", "one node (SQLite)"):
            assert re.search(rf"^    {re.escape(name)} +[\d,]+ msg/s", report, re.M), report
        for ratio in ("two replicas / one replica", "PostgreSQL one replica / SQLite"):
            line = rf"^ratio {ratio} .*: rate {NUMBER}, node CPU per message {NUMBER},"
            assert re.search(line, report, re.M), report
        assert await _leftovers(prefix) == []
    finally:
        await _remove(prefix)
