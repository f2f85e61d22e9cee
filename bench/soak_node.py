"""Soak: one node relays many messages (default 1,000,000); does its memory, its disk and its
operator commands stay in bounds?

A seajust - casc - ejn federation under a unique prefix on the local RabbitMQ (127.0.0.1:5672,
management API on :15672, guest/guest). The casc node runs as its own process (``mlanet node
run``, as in production) with its links; its per-peer rate cap is lifted. This script is
seajust (it signs each message as seajust's node does and publishes it into
``mlanet.inbox.from.seajust`` at casc as seajust's link user, keeping about ``--backlog``
messages ahead of the node) and ejn (it drains ``mlanet.inbox.from.casc`` at ejn, where
casc's shovel puts what casc forwarded). Every few seconds it samples the node process's
resident memory (``VmRSS``) and CPU (``/proc/<pid>``, so Linux only) and the size of its
state folder.

It reports RSS growth after warm-up (the first ``--warmup`` share of the messages), the bytes
per message and the disk growth of each database, the node's CPU per message, and, at the end,
how long ``mlanet track <id>`` (a message from the start of the run and the last one) and
``mlanet status`` take, each as an operator runs it (a process of its own, Python's start
included). Not part of CI. Usage: ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from mlanet.broker import SigningKey, load_signing_key, sign_message
from mlanet.broker.management import ManagementEndpoint
from mlanet.broker.transport import CONTENT_TYPE, Topology, Transport, inbox_exchange, peer_inbox
from mlanet.nodes.local import federation
from mlanet.schemas import Destination, FacilitationRequest, Header, Origin

ADMIN = ManagementEndpoint("http://127.0.0.1:15672", "guest", "guest")
NETWORKS = {name: federation.EXAMPLE_NETWORKS[name] for name in ("seajust", "casc", "ejn")}
LINKS = [("seajust", "casc"), ("casc", "ejn")]
SUMMARY = "Soak request: no real case content. " * 9  # a signed envelope of ~1.3 KB
PAGE = 4096


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the start
    relayed: int  # messages that reached ejn
    rss: int  # bytes
    cpu: float  # the node process's CPU seconds (user + system)
    disk: dict[str, int]  # bytes per database (with its -wal and -shm files)


def amqp_url(vhost: str, user: str, password: str) -> str:
    return (
        f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:5672/"
        f"{quote(vhost, safe='')}"
    )


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def disk_of(state: Path) -> dict[str, int]:
    """Bytes on disk per database of the state folder (``x.sqlite3`` with ``-wal``/``-shm``)."""
    sizes: dict[str, int] = {}
    for path in state.iterdir():
        if path.is_file():
            name = path.name.split(".sqlite3")[0] if ".sqlite3" in path.name else "other files"
            sizes[name] = sizes.get(name, 0) + path.stat().st_size
    return sizes


def request(key: SigningKey, at: datetime) -> tuple[str, bytes]:
    payload = FacilitationRequest(
        case_ref="KH-MLA-2020-0042",
        requesting_country="KH",
        requested_country="FR",
        offence_categories=["drug_trafficking"],
        measures_sought=["evidence"],
        languages=["en"],
        summary=SUMMARY,
    )
    message_id = str(uuid.uuid4())
    header = Header(
        kind="facilitation_request",
        message_id=message_id,
        origin=Origin(network=key.network, country="KH", contact_point="kh-cp-1"),
        destination=Destination(country="FR"),
        created_at=at,
        key_id=key.key_id,
    )
    return message_id, sign_message(header, payload, key).to_bytes()


class Sink:
    """ejn's side: counts what casc's shovel delivered (no node there: nothing is routed on)."""

    def __init__(self) -> None:
        self.count = 0

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        if message.type == "facilitation_request":  # not the directory casc passes on
            self.count += 1


def timed_command(args: list[str]) -> tuple[float, int, str]:
    """Run ``mlanet <args>`` as an operator does: (seconds, exit status, first output line)."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "mlanet", *args], capture_output=True, check=False, timeout=60
    )
    elapsed = time.perf_counter() - start
    out = (done.stdout or done.stderr).decode("utf-8", "replace").strip().splitlines()
    return elapsed, done.returncode, out[0] if out else ""


async def soak(args: argparse.Namespace, folder: Path) -> None:
    prefix = f"soak-{uuid.uuid4().hex[:8]}"
    fed = federation.build(folder, prefix=prefix, networks=NETWORKS, links=LINKS)
    with fed.config_path("casc").open("a", encoding="utf-8") as config:
        config.write("\n[limits.peer]\nrate = 1000000\nburst = 1000000\n")
    processes = federation.NodeProcesses(fed, ADMIN)
    try:
        await federation.provision(fed, ADMIN)
        ejn_admin = amqp_url(fed.vhost("ejn"), ADMIN.user, ADMIN.password)
        async with Transport(ejn_admin) as transport:  # the shovel's destination, no node
            await transport.declare(
                Topology(peers=tuple(fed.peers("ejn")), contact_points=("fr-cp-1",))
            )
            # casc's link lands in its door at ejn: its inbox there is what the soak drains
            await (await transport.door(fed.door("ejn", "casc"))).declare_inbox("casc")
        node = processes.start("casc")
        await processes.wait_ready(["casc"], within=120.0)
        state = folder / "casc" / "state"
        await run_load(args, fed, node.pid, state, processes)
    finally:
        processes.stop_all()
        await federation.teardown(fed, ADMIN)


async def run_load(
    args: argparse.Namespace,
    fed: federation.Federation,
    pid: int,
    state: Path,
    processes: federation.NodeProcesses,
) -> None:
    key = load_signing_key(fed.root / "seajust" / "seajust.1.key")
    total = args.messages
    sink = Sink()
    samples: list[Sample] = []
    first_id = last_id = ""
    started = time.perf_counter()
    as_seajust = amqp_url(
        fed.door("casc", "seajust"), fed.link_user("seajust"), fed.link_password("seajust")
    )
    ejn_admin = amqp_url(fed.door("ejn", "casc"), ADMIN.user, ADMIN.password)
    async with (
        await aio_pika.connect(as_seajust) as feeder,
        await aio_pika.connect(ejn_admin) as drainer,
    ):
        drain = await drainer.channel()
        await drain.set_qos(prefetch_count=1000)
        sink_queue = await drain.get_queue(peer_inbox("casc"), ensure=False)
        await sink_queue.consume(sink.on_message, no_ack=True)
        channel = await feeder.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(inbox_exchange("seajust"), ensure=False)
        sent = 0
        next_sample = 0.0
        print(f"soak: {total:,} messages through casc (node process {pid})", flush=True)
        while sink.count < total:
            now = time.perf_counter() - started
            if now >= next_sample:
                samples.append(Sample(now, sink.count, rss_of(pid), cpu_of(pid), disk_of(state)))
                next_sample = now + args.sample_every
                last = samples[-1]
                print(
                    f"  {now:7.0f} s  relayed {last.relayed:>9,}  RSS {last.rss / 2**20:6.1f} MiB"
                    f"  state {sum(last.disk.values()) / 2**20:8.1f} MiB",
                    flush=True,
                )
            if sent < total and sent - sink.count < args.backlog:
                at = datetime.now(UTC)
                chunk = [request(key, at) for _ in range(min(args.chunk, total - sent))]
                await asyncio.gather(
                    *(
                        exchange.publish(
                            aio_pika.Message(
                                body,
                                content_type=CONTENT_TYPE,
                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                message_id=message_id,
                            ),
                            routing_key="",
                        )
                        for message_id, body in chunk
                    )
                )
                first_id = first_id or chunk[0][0]
                last_id = chunk[-1][0]
                sent += len(chunk)
            else:
                processes.check_running(["casc"])
                await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
        samples.append(Sample(elapsed, sink.count, rss_of(pid), cpu_of(pid), disk_of(state)))
    await asyncio.sleep(1.0)  # the last commits (the group commit's loop runs every 0.2 s)
    report(args, fed, samples, elapsed, first_id, last_id)


def report(
    args: argparse.Namespace,
    fed: federation.Federation,
    samples: list[Sample],
    elapsed: float,
    first_id: str,
    last_id: str,
) -> None:
    total = args.messages
    end = samples[-1]
    warm = next((s for s in samples if s.relayed >= args.warmup * total), samples[0])
    after = max(end.relayed - warm.relayed, 1)
    print(
        f"relayed {end.relayed:,} messages in {elapsed:,.0f} s = {end.relayed / elapsed:,.0f} msg/s"
    )
    print(
        f"node process CPU {end.cpu / max(end.relayed, 1) * 1e6:,.0f} us/msg over the run"
        f" ({end.cpu / elapsed:.0%} of one core)"
    )
    peak = max(s.rss for s in samples)
    print(
        f"RSS: {samples[0].rss / 2**20:.1f} MiB at start, {warm.rss / 2**20:.1f} MiB after warm-up"
        f" ({warm.relayed:,} messages), {end.rss / 2**20:.1f} MiB at the end (peak"
        f" {peak / 2**20:.1f} MiB): growth after warm-up {(end.rss - warm.rss) / warm.rss:+.1%}"
    )
    print("disk (state folder, each database with its -wal and -shm):")
    for name in sorted(end.disk):
        grown = end.disk[name] - warm.disk.get(name, 0)
        print(
            f"  {name:<16} {end.disk[name] / 2**20:9.1f} MiB at the end,"
            f" +{grown / 2**20:8.1f} MiB after warm-up = {grown / after:7.0f} B/msg"
        )
    grown = sum(end.disk.values()) - sum(warm.disk.values())
    print(
        f"  {'all':<16} {sum(end.disk.values()) / 2**20:9.1f} MiB at the end,"
        f" +{grown / 2**20:8.1f} MiB after warm-up = {grown / after:7.0f} B/msg"
    )
    config = str(fed.config_path("casc"))
    for name, command in (
        ("track (first message)", ["track", first_id, "--config", config]),
        ("track (last message)", ["track", last_id, "--config", config]),
        ("status", ["status", "--config", config]),
    ):
        seconds, code, line = timed_command(command)
        verdict = "within a second" if seconds < 1.0 else "OVER a second"
        print(f"mlanet {name}: {seconds:.2f} s ({verdict}), exit {code}: {line[:80]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--backlog", type=int, default=2000, help="messages kept ahead of the node")
    parser.add_argument("--chunk", type=int, default=250, help="messages published at once")
    parser.add_argument(
        "--warmup", type=float, default=0.1, help="share of the messages counted as warm-up"
    )
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="mlanet-soak-") as folder,
        contextlib.suppress(KeyboardInterrupt),
    ):
        asyncio.run(soak(args, Path(folder)))


if __name__ == "__main__":
    main()
