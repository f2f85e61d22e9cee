"""Benchmark: what the audit trail costs, against baselines measured in the same run.

(a) per record: a journal row appended alone (``AuditLog.append``, an operator's command:
    canonical JSON, SHA-256, one signed checkpoint and one SQLite transaction per row) and in
    group commits, beside the node's dedupe write (``Store.remember``) done the same two ways,
    the node's whole per-message write (``Store.remember`` and its journal row, grouped: one
    transaction and one checkpoint per batch) and a bare Ed25519 signature, on the same disk;
(b) per message: the casc node relaying N signed messages seajust -> ejn (phase (b) of
    ``bench_node.py``) with its audit trail, and with the audit trail replaced by an observer
    that does nothing, alternating runs; medians and the ratio with / without.

Needs the local RabbitMQ like ``bench_node.py``. Usage: ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import bench_node

from mlanet.broker import SigningKey, load_signing_key
from mlanet.nodes.logs import configure_logging
from mlanet.nodes.runtime.observe import Observer
from mlanet.nodes.state.audit import AuditLog
from mlanet.nodes.state.store import Store

META = {
    "message_id": "5b0c2f1e-8d3a-4c6b-9e7f-0a1b2c3d4e5f",
    "origin": "seajust",
    "destination": "FR",
    "kind": "facilitation_request",
    "to": "ejn",
}


def _per_call(action: Callable[[int], object], number: int, repeat: int) -> float:
    """Median microseconds per call over ``repeat`` loops of ``number`` calls (after a warm-up)."""
    for n in range(min(number, 200)):
        action(n)
    timings = []
    for _ in range(repeat):
        start = time.perf_counter()
        for n in range(number):
            action(n)
        timings.append((time.perf_counter() - start) / number * 1e6)
    return statistics.median(timings)


def records_phase(folder: Path, number: int, repeat: int, batch: int) -> None:
    """Per record: alone (an operator's command: its own commit and signed head), and in group
    commits of ``batch`` (the node's way), beside the node's own state write in the same two
    ways; and a bare Ed25519 signature."""
    key = SigningKey.from_seed("casc", "ed25519:1", bytes(range(32)))
    alone, grouped = AuditLog(folder / "a.sqlite3", key), AuditLog(folder / "g.sqlite3", key)
    grouped.group_commits()
    store, store_grouped = Store(folder / "s.sqlite3"), Store(folder / "sg.sqlite3")
    store_grouped.group_commits()

    def remember(into: Store) -> Callable[[int], object]:
        def write(n: int) -> None:
            into.remember("seajust", str(uuid.uuid4()), "0" * 43, "forwarded")
            if into is store_grouped and n % batch == batch - 1:
                into.commit()

        return write

    node_state = Store(folder / "n.sqlite3", key=key)
    node_state.group_commits()

    def per_message(n: int) -> None:  # what the node writes for one relayed message
        message_id = str(uuid.uuid4())
        node_state.remember("seajust", message_id, "0" * 43, "forwarded")
        node_state.journal.append("forwarded", {**META, "message_id": message_id})
        if n % batch == batch - 1:
            node_state.commit()

    def append(n: int) -> None:
        grouped.append("forwarded", META)
        if n % batch == batch - 1:
            grouped.commit()

    try:
        sign = _per_call(lambda n: key.sign(b"x" * 300), number, repeat)
        state = _per_call(remember(store), number, repeat)
        state_grouped = _per_call(remember(store_grouped), number, repeat)
        record = _per_call(lambda n: alone.append("forwarded", META), number, repeat)
        record_grouped = _per_call(append, number, repeat)
        message = _per_call(per_message, number, repeat)
    finally:
        for closing in (alone, grouped, store, store_grouped, node_state):
            closing.close()
    print(f"(a) per record (median of {repeat} x {number}), same run:")
    print(f"    audit record alone       {record:7.1f} us   Store.remember alone   {state:7.1f} us")
    print(
        f"    audit record, groups of {batch:<3} {record_grouped:6.1f} us   "
        f"Store.remember grouped {state_grouped:7.1f} us"
    )
    print(
        f"    per message: dedupe row and journal row in one group commit {message:7.1f} us"
        f" (before the journal: Store.remember grouped + audit record grouped, two commits)"
    )
    print(f"    Ed25519 signature        {sign:7.1f} us")
    print(
        f"    ratio audit / state: alone {record / state:.2f}, "
        f"grouped {record_grouped / state_grouped:.2f}"
    )


class NoAudit(Observer):
    """Stands in for the audit trail when the node runs without one."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit


async def node_phase(messages: int, rounds: int) -> None:
    measured: dict[str, list[tuple[float, float]]] = {"with": [], "without": []}
    async with bench_node.relay_federation() as bench:
        key = load_signing_key(bench.fed.root / "seajust" / "seajust.1.key")
        for round_ in range(rounds):  # ABBA: drift over the run hits both alike
            order = ("with", "without") if round_ % 2 == 0 else ("without", "with")
            for variant in order:
                patch = (
                    mock.patch("mlanet.nodes.runtime.node.AuditTrail", NoAudit)
                    if variant == "without"
                    else contextlib.nullcontext()
                )
                bodies = [m.to_bytes() for m in bench_node.signed_requests(key, messages, "FR")]
                with patch:
                    result = await bench_node.relay(bench, bodies)
                measured[variant].append((result.rate, result.cpu))
    rate = {k: statistics.median(r for r, _ in v) for k, v in measured.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in measured.items()}
    print(f"(b) casc relaying {messages} messages, {rounds} alternating runs each (median):")
    for variant, runs in measured.items():
        shown = ", ".join(f"{r:,.0f} ({c * 1e6:,.0f} us)" for r, c in runs)
        print(f"    runs {variant}: {shown} msg/s (CPU per message)")
    for variant in ("with", "without"):
        label = "with the audit trail" if variant == "with" else "without it (same run)"
        print(
            f"    {label:<24} {rate[variant]:8,.0f} msg/s   CPU {cpu[variant] * 1e6:6,.0f} us/msg"
        )
    pairs = list(zip(measured["with"], measured["without"], strict=True))
    by_rate = statistics.median(w[0] / wo[0] for w, wo in pairs)
    by_cpu = statistics.median(wo[1] / w[1] for w, wo in pairs)
    print(
        f"    ratio with / without (median of the rounds' ratios) = {by_rate:.2f} by rate, "
        f"{by_cpu:.2f} by CPU per message"
    )


async def main(args: argparse.Namespace) -> None:
    with open(os.devnull, "w", encoding="utf-8") as quiet, contextlib.redirect_stderr(quiet):  # noqa: ASYNC230
        configure_logging("warning")  # as in (b): the node's info lines are not what is timed
    with tempfile.TemporaryDirectory(prefix="mlanet-bench-") as folder:
        records_phase(Path(folder), args.number, args.repeat, args.batch)
    if not args.skip_node:
        await node_phase(args.messages, args.rounds)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--number", type=int, default=2000, help="calls per timed loop in (a)")
    parser.add_argument("--repeat", type=int, default=5, help="timed loops in (a)")
    parser.add_argument("--batch", type=int, default=16, help="records per group commit in (a)")
    parser.add_argument("--messages", type=int, default=3000, help="messages per run in (b)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each variant in (b)")
    parser.add_argument("--skip-node", action="store_true", help="run (a) only")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
