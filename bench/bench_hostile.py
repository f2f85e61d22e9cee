"""What a refused message costs the receiving node, against accepting a valid one (same run).

Two measurements over the hostile corpus (``tests/hostile/corpus.py``):

(a) pipeline: every corpus entry the receiving pipeline judges, through
    ``mlanet.nodes.runtime.pipeline.receive`` in this process (no broker), with the receiving
    node's real config, trust store and a SQLite store; process CPU per call
    (``time.process_time_ns``),
    beside the CPU of accepting a valid facilitation request (verify, authorise, dedupe,
    route, payload validation), and the ratio; and the CPU of accepting the same request
    sealed for the receiver (opening it included).
(b) node: a real ``mlanet node run`` process for CASC on the local RabbitMQ (127.0.0.1:5672,
    management API on :15672, guest/guest); for each class, N messages are published into its
    inbox as SEAJust, and the node process's CPU (user + system, from ``/proc/<pid>/stat``) is
    read before and after it quarantined (or delivered) all N. The baseline is N valid
    requests delivered (each with its receipt sent back), in the same run. The node's idle CPU
    over the same time is shown so it can be discounted.

Run from the repository root: ``.venv/bin/python bench/bench_hostile.py`` (about two minutes;
``--messages N`` per class in (b), ``--skip-node`` for (a) only). Compare ratios, not absolute
figures: other load on the machine moves them by 10-25%.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import aio_pika

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests package

from mlanet.broker.management import Management, ManagementEndpoint
from mlanet.broker.transport import CONTENT_TYPE, QUARANTINE, inbox_exchange
from mlanet.nodes.local.federation import Federation, NodeProcesses, build, provision, teardown
from tests.hostile.corpus import (
    CORPUS,
    HOSTILE,
    RECEIVER,
    Quarantined,
    Refused,
    Scene,
    restrict_kinds,
)
from tests.hostile.forge import facilitation_payload, header, seal_and_sign, sealed, sign, wire
from tests.hostile.harness import Harness, rotate
from tests.hostile.peer import Publication
from tests.integration.quarantine_kit import stored, take_entries

ADMIN = ManagementEndpoint("http://127.0.0.1:15672", "guest", "guest")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _per_call_us(call: Callable[[], object], budget: float = 0.15) -> float:
    """Median CPU microseconds per call over a few timed loops sized to ``budget`` seconds."""
    call()  # warm up
    started, calls = time.process_time_ns(), 0
    while time.process_time_ns() - started < budget * 1e9 / 5:
        call()
        calls += 1
    samples = []
    for _ in range(5):
        begin = time.process_time_ns()
        for _ in range(calls):
            call()
        samples.append((time.process_time_ns() - begin) / calls / 1000)
    return statistics.median(samples)


def pipeline_phase(root: Path) -> None:
    harness = Harness.create(root / "pipeline")
    scene = harness.scene
    key = scene.keys[HOSTILE]

    # Signing is part of making the valid message, not of receiving it: sign once, judge many.
    one_valid = Publication(wire(sign(header(key, scene.now), facilitation_payload(), key)))
    baseline = _per_call_us(lambda: harness.judge(one_valid))
    listed = scene.encryption[RECEIVER]
    one_sealed = Publication(
        wire(
            seal_and_sign(
                header(key, scene.now, sealed=sealed(RECEIVER, listed.key_id)),
                facilitation_payload(),
                key,
                listed.public_key,
            )
        )
    )
    opening = _per_call_us(lambda: harness.judge(one_sealed))
    print(
        "(a) pipeline: CPU per message through mlanet.nodes.runtime.pipeline.receive, this process"
    )
    print(f"    accepting a valid request (baseline): {baseline:8.1f} us")
    ratio = opening / baseline
    print(f"    accepting it sealed for the receiver: {opening:8.1f} us (ratio {ratio:.2f})")
    print(f"    {'entry':52s} {'outcome':22s} {'bytes':>9s} {'us':>9s} {'ratio':>7s}")
    rows = []
    for entry in CORPUS:
        if entry.big or isinstance(entry.expect, Refused):
            continue
        attack = entry.build(scene)
        for setup in attack.setup:
            harness.deliver(setup)
        cost = _per_call_us(lambda p=attack.hostile: harness.judge(p))  # type: ignore[misc]
        outcome = entry.expect.reason.value if isinstance(entry.expect, Quarantined) else "accepted"
        if entry.node_only:
            outcome += " (in the node)"
        rows.append(cost / baseline)
        print(
            f"    {entry.name:52s} {outcome:22s} {len(attack.hostile.body):9d} {cost:9.1f}"
            f" {cost / baseline:7.2f}"
        )
    print(
        f"    refused or accepted, median ratio {statistics.median(rows):.2f}, "
        f"max {max(rows):.2f} (of {len(rows)} entries)"
    )
    harness.close()


# --- (b) a real node process --------------------------------------------------------------------

NODE_CLASSES = (
    "bad_signature",
    "unknown_key_id",
    "truncated",
    "invalid_utf8",
    "deep_nesting",
    "content_type_json",
    "headers_claim_another_sender",
    "control_character_in_summary",
    "hop_chain_broken",
    "seal_of_random_bytes",  # the whole HPKE open is spent before it fails
    "deep_nesting_inside_a_seal",  # opened, then refused by the strict parser
    "one_byte_over_the_cap",
)


def _times(us: float, base: float) -> str:
    """``us`` as a multiple of ``base``; with few messages the node's CPU can stay under one
    clock tick (``/proc`` counts whole ticks) and read 0: no ratio then."""
    return f"{us / base:5.2f}x" if base > 0 else "  n/a"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def _url(fed: Federation, vhost_of: str, user: str, password: str, door: str = "") -> str:
    """``vhost_of``'s vhost, or the door of its peer ``door`` there."""
    vhost = fed.door(vhost_of, door) if door else fed.vhost(vhost_of)
    return f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:5672/" + quote(
        vhost, safe=""
    )


async def _depth(channel: aio_pika.abc.AbstractChannel, queue: str) -> int:
    declared = await channel.declare_queue(queue, passive=True)
    return int(declared.declaration_result.message_count or 0)


async def _purge(channel: aio_pika.abc.AbstractChannel, *queues: str) -> None:
    for queue in queues:
        declared = await channel.declare_queue(queue, passive=True)
        await declared.purge()


async def _measure(
    fed: Federation,
    pid: int,
    watcher: aio_pika.abc.AbstractChannel,
    publications: list[Publication],
    target: str,
) -> tuple[float, float]:
    """(node CPU seconds, wall seconds) to take ``publications`` into ``target``."""
    sender = _url(fed, RECEIVER, fed.link_user(HOSTILE), fed.link_password(HOSTILE), HOSTILE)
    connection = await aio_pika.connect(sender)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(inbox_exchange(HOSTILE), ensure=False)
        cpu, wall = _cpu_seconds(pid), time.monotonic()
        for start in range(0, len(publications), 200):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            p.body,
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            **{"content_type": CONTENT_TYPE, **p.properties},
                        ),
                        routing_key="",
                    )
                    for p in publications[start : start + 200]
                )
            )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        # refused messages are in the node's quarantine store, not in the queue
        done = stored(fed, RECEIVER) if target == QUARANTINE else await _depth(watcher, target)
        if done >= len(publications):
            return _cpu_seconds(pid) - cpu, time.monotonic() - wall
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{target} did not get {len(publications)} messages in time")


async def node_phase(root: Path, messages: int) -> None:
    fed = build(root / "federation", prefix="bh" + uuid.uuid4().hex[:8])
    restrict_kinds(fed.config_path(RECEIVER))
    with fed.config_path(RECEIVER).open("a", encoding="utf-8") as out:  # measure, not throttle
        out.write("\n[limits.peer]\nrate = 1000000\nburst = 1000000\n")
    processes = NodeProcesses(fed, ADMIN)
    try:
        await provision(fed, ADMIN)  # inside: a half-done provisioning is removed too
        now = datetime.now(UTC)
        rotate(fed, now)
        scene = Scene.of(fed, now)
        process = processes.start(RECEIVER)
        await processes.wait_ready([RECEIVER])
        async with Management(ADMIN) as management:  # receipts stay in mlanet.out.<peer>
            for name in await management.shovel_names(fed.vhost(RECEIVER)):
                await management.delete_shovel(fed.vhost(RECEIVER), name)
        admin = await aio_pika.connect(_url(fed, RECEIVER, ADMIN.user, ADMIN.password))
        async with admin:
            watcher = await admin.channel()
            await asyncio.sleep(2)
            idle_cpu, idle_wall = _cpu_seconds(process.pid), time.monotonic()
            await asyncio.sleep(3)
            idle = (_cpu_seconds(process.pid) - idle_cpu) / (time.monotonic() - idle_wall)
            seajust = scene.keys[HOSTILE]
            valid = [
                Publication(wire(sign(header(seajust, now), facilitation_payload(), seajust)))
                for _ in range(messages)
            ]
            cpu, wall = await _measure(fed, process.pid, watcher, valid, "mlanet.deliver.uz-cp-1")
            base = cpu / messages * 1e6
            print(f"(b) node process: CPU per message, {messages} per class, same run")
            print(f"    node idle: {idle * 1000:.1f} ms CPU per second of wall time")
            print(
                f"    accepted (deliver + receipt), baseline: {base:8.1f} us "
                f"({messages / wall:.0f} msgs/s)"
            )
            await _purge(watcher, "mlanet.deliver.uz-cp-1", f"mlanet.out.{HOSTILE}")
            cpu, wall = await _measure(fed, process.pid, watcher, valid, "mlanet.out." + HOSTILE)
            us = cpu / messages * 1e6
            name = "replay of a delivered message"
            print(f"    {name:42s} {'duplicate':18s} {us:8.1f} us  {_times(us, base)}")
            await _purge(watcher, f"mlanet.out.{HOSTILE}")
            by_name = {entry.name: entry for entry in CORPUS}
            for name in NODE_CLASSES:
                entry = by_name[name]
                count = messages if name != "one_byte_over_the_cap" else max(messages // 10, 20)
                bodies = [entry.build(scene).hostile for _ in range(count)]
                cpu, wall = await _measure(fed, process.pid, watcher, bodies, QUARANTINE)
                assert isinstance(entry.expect, Quarantined)
                us = cpu / count * 1e6
                print(
                    f"    {name:42s} {entry.expect.reason.value:18s} {us:8.1f} us  "
                    f"{_times(us, base)}  ({count / wall:.0f} msgs/s)"
                )
                take_entries(fed, RECEIVER)  # empty the quarantine store for the next class
    finally:
        processes.stop_all()
        await teardown(fed, ADMIN)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000, help="messages per class in (b)")
    parser.add_argument("--skip-node", action="store_true", help="only (a), no broker needed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        pipeline_phase(root)
        if not args.skip_node:
            asyncio.run(node_phase(root, args.messages))


if __name__ == "__main__":
    main()
