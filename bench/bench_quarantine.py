"""The quarantine at 100,000 entries: how long every operator command takes.

Two phases, on the local RabbitMQ (127.0.0.1:5672, management API on :15672, guest/guest):

(a) node intake: a real CASC node process takes ``--flood`` junk messages that SEAJust
    publishes into its inbox (with confirms, back to back) into its quarantine store; the
    wall time from the first publish until the last entry is committed, in entries/s.
(b) operator commands: CASC's quarantine store is filled to ``--entries`` entries through the
    node's own code (``QuarantineStore.add`` and ``commit`` in batches, as the node's group
    commit writes them): 90 % from SEAJust and 10 % from EJN, four reason codes, spread over a
    day, bodies of about 1 KB kept up to each peer's bound (``[limits.peer]
    quarantine_messages``, 10,000 by default) and metadata only beyond. Then each command runs
    as an operator runs it, ``mlanet quarantine ...`` in a process of its own (Python's start
    included, about half a second here), and the same operation in this process on the
    store alone (the query itself): list (the first page of 1,000), list filtered by reason,
    by peer and by time, a page from the middle (``--after``), every entry at once (JSON),
    show, show --payload, release (republished with a confirm into CASC's inbox exchange for
    SEAJust), drop, and a bulk drop of every EJN entry of one reason.

Run from the repository root: ``.venv/bin/python bench/bench_quarantine.py`` (two to four
minutes; ``--entries``, ``--flood``; ``--skip-node`` for (b) only). The federation is removed
at the end, also on failure. Timings vary with other load on the machine; nothing here is
asserted (``tests/integration/test_quarantine_flood.py`` checks the behaviour at 5,000).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests package

from mlanet.broker.management import ManagementEndpoint
from mlanet.broker.transport import Topology, Transport
from mlanet.nodes.config import NodeConfig, load_config
from mlanet.nodes.local.federation import Federation, NodeProcesses, build, provision, teardown
from mlanet.nodes.state.quarantine import Claim, Entry, Where
from mlanet.nodes.state.quarantine_store import QUARANTINE_FILE, Bound, QuarantineStore
from tests.hostile.peer import amqp_url, publish_all

ADMIN = ManagementEndpoint("http://127.0.0.1:15672", "guest", "guest")
RECEIVER = "casc"
REASONS = ("invalid_json", "bad_signature", "unknown_key", "schema_invalid")
DAY = 86400.0


def _body(n: int) -> bytes:
    return b'{"header":"junk %d","payload":"%s"}' % (n, b"x" * 1000)


def _entry(n: int, peer: str, at: float) -> tuple[Entry, bytes]:
    body = _body(n)
    return (
        Entry(
            id=str(uuid.uuid4()),
            reason=REASONS[n % len(REASONS)],
            detail="line 1, column 1",
            via=f"mlanet.inbox.from.{peer}",
            at=at,
            size=len(body),
            body_sha256=hashlib.sha256(body).hexdigest(),
            returns=0,
            claim=Claim(),
        ),
        body,
    )


def fill(config: NodeConfig, entries: int) -> float:
    """Fill the store as the node writes it; return the seconds it took."""
    bound = config.limits.peer
    limits = Bound(bound.quarantine_messages, bound.quarantine_bytes)
    now = time.time()
    randomness = random.Random(7)
    started = time.perf_counter()
    with QuarantineStore(config.state_dir / QUARANTINE_FILE) as store:
        for n in range(entries):
            peer = "ejn" if n % 10 == 0 else "seajust"
            at = now - DAY + DAY * n / entries + randomness.random()
            entry, body = _entry(n, peer, at)
            store.add(entry, body, limits, now=now)
            if n % 1000 == 999:
                store.commit()
        store.commit()
    return time.perf_counter() - started


def cli(fed: Federation, *args: str) -> tuple[float, str]:
    """Run ``mlanet quarantine ...`` as an operator would; (wall seconds, stdout)."""
    command = [sys.executable, "-m", "mlanet", "quarantine", *args]
    started = time.perf_counter()
    done = subprocess.run(
        [*command, "--config", str(fed.config_path(RECEIVER))],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"mlanet quarantine {' '.join(args)}: {done.stderr.strip()}")
    return wall, done.stdout


def in_process(call: Callable[[], object], repeat: int = 3) -> float:
    """Best of ``repeat`` wall times of ``call``, in milliseconds."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best * 1000


async def intake_phase(fed: Federation, flood: int) -> None:
    config = load_config(fed.config_path(RECEIVER))
    processes = NodeProcesses(fed, ADMIN)
    try:
        processes.start(RECEIVER)
        await processes.wait_ready([RECEIVER])
        url = amqp_url(
            fed.link_user("seajust"), fed.link_password("seajust"), fed.door(RECEIVER, "seajust")
        )
        bodies = [b"flood junk %d {" % n for n in range(flood)]
        started = time.perf_counter()
        for start in range(0, flood, 1000):
            await publish_all(url, "seajust", bodies[start : start + 1000])
        published = time.perf_counter() - started
        path = config.state_dir / QUARANTINE_FILE
        while True:
            if path.exists():
                with QuarantineStore(path, readonly=True) as store:
                    if store.count() >= flood:
                        break
            await asyncio.sleep(0.2)
        took = time.perf_counter() - started
        print(f"(a) node intake: {flood} junk messages from one peer")
        print(f"    published with confirms in {published:.1f} s")
        print(f"    all in the quarantine store after {took:.1f} s ({flood / took:.0f} entries/s)")
    finally:
        processes.stop_all()
    with QuarantineStore(config.state_dir / QUARANTINE_FILE) as store:  # start (b) empty
        token = uuid.uuid4().hex
        while store.take_matching(Where(), token, time.time(), 10_000):
            store.remove(token)


async def commands_phase(fed: Federation, entries: int) -> None:
    config = load_config(fed.config_path(RECEIVER))
    async with Transport(config.amqp_url()) as transport:  # release needs the inbox exchange
        await transport.declare(Topology(peers=("seajust", "ejn"), contact_points=()))
    filled = fill(config, entries)
    store = QuarantineStore(config.state_dir / QUARANTINE_FILE)
    size = (config.state_dir / QUARANTINE_FILE).stat().st_size
    kept = store.page(Where(peer="seajust"), limit=1).entries[0]
    middle = store.page(Where(), limit=entries // 2).entries[-1]
    bare = store.page(Where(peer="seajust"), limit=entries).entries[-1]  # over the bound
    print(f"(b) {entries} entries written through QuarantineStore.add/commit in {filled:.1f} s")
    counts = sorted(store.by_peer(0).items())
    print(
        f"    store: {size / 2**20:.0f} MiB; by peer: "
        + ", ".join(f"{p} {c.waiting} ({c.without_body} without body)" for p, c in counts)
    )
    hour = time.time() - 3600
    rows: list[tuple[str, float, float]] = []

    def row(name: str, args: list[str], query: Callable[[], object]) -> None:
        query_ms = in_process(query)
        wall, _ = cli(fed, *args)
        rows.append((name, wall, query_ms))

    row("list (first page of 1000)", ["list"], lambda: store.page(Where(), limit=1000))
    row(
        "list --reason bad_signature",
        ["list", "--reason", "bad_signature"],
        lambda: store.page(Where(reasons=("bad_signature",)), limit=1000),
    )
    row("list --peer ejn", ["list", "--peer", "ejn"], lambda: store.page(Where(peer="ejn")))
    row(
        "list --since 1h",
        ["list", "--since", "1h"],
        lambda: store.page(Where(since=hour), limit=1000),
    )
    row(
        "list --after <the middle entry>",
        ["list", "--after", middle.id],
        lambda: store.page(Where(), after=middle.id, limit=1000),
    )
    row(
        f"list --limit {entries} --json (all)",
        ["list", "--limit", str(entries), "--json"],
        lambda: store.page(Where(), limit=entries),
    )
    row("show ID", ["show", kept.id], lambda: store.get(kept.id))
    row("show ID --payload", ["show", kept.id, "--payload"], lambda: store.get(kept.id))
    wall, _ = cli(fed, "release", kept.id)
    rows.append(("release ID (with the broker's confirm)", wall, float("nan")))
    wall, _ = cli(fed, "drop", bare.id, "--yes")
    rows.append(("drop ID", wall, float("nan")))
    matching = store.count(Where(peer="ejn", reasons=("invalid_json",)))
    wall, out = cli(
        fed, "drop", "--all-matching", "--peer", "ejn", "--reason", "invalid_json", "--yes"
    )
    rows.append((f"drop --all-matching ({matching} entries)", wall, float("nan")))
    store.close()
    print(f"    {'command':44s} {'mlanet (s)':>10s} {'query (ms)':>11s}")
    for name, wall, query_ms in rows:
        query = "-" if query_ms != query_ms else f"{query_ms:.1f}"
        print(f"    {name:44s} {wall:10.2f} {query:>11s}")
    print(f"    ({out.strip()})")


async def main(entries: int, flood: int, skip_node: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        fed = build(Path(folder) / "federation", prefix="bq" + uuid.uuid4().hex[:8])
        with fed.config_path(RECEIVER).open("a", encoding="utf-8") as out:  # measure, not pace
            out.write("\n[limits.peer]\nrate = 1000000\nburst = 1000000\n")
        try:
            await provision(fed, ADMIN)
            if not skip_node:
                await intake_phase(fed, flood)
            await commands_phase(fed, entries)
        finally:
            await teardown(fed, ADMIN)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000, help="entries for (b)")
    parser.add_argument("--flood", type=int, default=5000, help="junk messages for (a)")
    parser.add_argument("--skip-node", action="store_true", help="only (b)")
    args = parser.parse_args()
    asyncio.run(main(args.entries, args.flood, args.skip_node))
