"""``bench/bench_seal.py`` runs end to end at a tiny size, so that it cannot rot: both phases
print their figures (never asserted: timings are not what a test checks), the bytes a seal
adds are the suite's, and the federation it provisions is gone from the broker afterwards."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import uuid
from pathlib import Path

import pytest

from mlanet.broker.management import Management
from tests.integration.kit import ADMIN

ROOT = Path(__file__).resolve().parents[2]


async def _leftovers(prefix: str) -> list[str]:
    async with Management(ADMIN) as management:
        vhosts = [name for name in await management.vhost_names() if name.startswith(prefix)]
        users = [user["name"] for user in await management.users()]
    return vhosts + [name for name in users if name.startswith(prefix)]


async def _remove(prefix: str) -> None:
    """What a failed run left behind (so that a failing test leaks nothing either)."""
    async with Management(ADMIN) as management:
        for vhost in await management.vhost_names():
            if vhost.startswith(prefix):
                await management.delete_vhost(vhost)
        users = [str(user["name"]) for user in await management.users()]
        await management.delete_users([name for name in users if name.startswith(prefix)])


@pytest.mark.timeout(240)
async def test_bench_seal_runs_at_a_tiny_size_and_removes_its_federation() -> None:
    prefix = f"bseal{uuid.uuid4().hex[:8]}"
    command = [sys.executable, str(ROOT / "bench" / "bench_seal.py")]
    command += ["--number", "4", "--repeat", "1", "--messages", "200", "--rounds", "1"]
    process = await asyncio.create_subprocess_exec(
        *command,
        "--prefix",
        prefix,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        try:
            out, err = await asyncio.wait_for(process.communicate(), 200)
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
        assert "hybrid 1,136 (1,120 + 16), X25519 alone 48 (32 + 16)" in report
        for operation in ("seal: mlanet seal_payload", "open: HPKE X25519 alone", "Ed25519 sign"):
            assert report.count(operation) == 2, operation  # the request and the large one
        sizes = re.search(r"envelope ([\d,]+) B unsealed, ([\d,]+) B sealed for ejn", report)
        assert sizes is not None, report
        unsealed, sealed = (int(size.replace(",", "")) for size in sizes.groups())
        assert sealed - unsealed >= 1515  # the seal's 1,136 bytes, base64url
        assert re.search(r"ratio sealed / unsealed .*: rate [\d.]+, CPU per message [\d.]+", report)
        assert await _leftovers(prefix) == []
    finally:
        await _remove(prefix)
