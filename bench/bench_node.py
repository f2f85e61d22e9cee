"""Benchmark: a node's forwarding rate against the raw aio-pika ceiling, and journey latencies.

Three measurements, all in one run on the local RabbitMQ (127.0.0.1:5672, management API on
:15672, guest/guest), so that the ratios compare like with like:

(a) raw ceiling: on a fresh vhost, a Python store-and-forward hop with aio-pika alone: consume
    queue A (manual ack, prefetch 500), publish each message to queue B with a publisher confirm
    (handlers run concurrently, as aio-pika runs consumer callbacks), ack A after the confirm.
    Durable quorum queues, persistent messages of the size of a signed envelope (~1.3 KB).
(a') cryptographic floor: the same hop, also doing per message what the protocol requires of
    every relay and nothing else: open the envelope (strict parse, origin signature checked) and
    sign a hop record. What is left between (a') and (b) is the node's own work: authorisation,
    dedupe and routing, the durable record and audit trail, logs and metrics.
(b) node forwarding rate: a 3-network federation (seajust - casc - ejn) under a unique prefix;
    N messages signed by seajust for France are pre-loaded into casc's inbox (published into
    ``mlanet.inbox.from.seajust`` as the seajust user, with confirms) while casc is down. The
    casc node then starts in-process, without its links, so its forwards pile up in
    ``mlanet.out.ejn``; the clock runs from the node being ready until that queue holds N: per
    message, receive, verify, validate, route, sign a hop, publish with confirm, record, ack.
(c) end-to-end latency at a fixed offered rate, all three nodes in-process with their links:
    submissions signed by kh-cp-1 are published into seajust's ``mlanet.submit`` exchange as
    kh-cp-1's broker user (as ``mlanet send`` does) and timed until they appear in the
    destination's ``mlanet.deliver.<cp>`` queue: KH -> UZ (seajust -> casc) and KH -> FR
    (seajust -> casc -> ejn). The raw one-hop latency at the same rate is printed beside them.
(d) idle: casc as its own process with its links, no traffic: the CPU its periodic work uses
    (topology and link checks, resends, the operator's polls), in ms of CPU per second.

The federation and the raw vhost are always removed at the end. Usage: ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import itertools
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from mlanet.broker import (
    SignedMessage,
    SigningKey,
    TrustStore,
    add_hop,
    load_signing_key,
    open_envelope,
    sign_message,
)
from mlanet.broker.contact_point_keys import ContactPointKey
from mlanet.broker.management import Management, ManagementEndpoint
from mlanet.broker.submission_signing import sign_submission
from mlanet.broker.transport import (
    CONTENT_TYPE,
    SUBMIT_EXCHANGE,
    Topology,
    Transport,
    deliver_queue,
    inbox_exchange,
    out_queue,
    peer_inbox,
)
from mlanet.nodes.cli.contact import facilitation_request
from mlanet.nodes.config import load_config
from mlanet.nodes.directory.contact_points import Credentials
from mlanet.nodes.local import federation
from mlanet.nodes.logs import configure_logging
from mlanet.nodes.runtime.node import Node
from mlanet.nodes.state.store import Store
from mlanet.schemas import Destination, FacilitationRequest, Header, Origin
from mlanet.schemas.sealing import SEAL_SUITE, Sealed

ADMIN = ManagementEndpoint("http://127.0.0.1:15672", "guest", "guest")
HOST, PORT = "127.0.0.1", 5672
QUORUM = {"x-queue-type": "quorum"}
NETWORKS = {name: federation.EXAMPLE_NETWORKS[name] for name in ("seajust", "casc", "ejn")}
LINKS = [("seajust", "casc"), ("casc", "ejn")]
# About 330 bytes of summary make a signed facilitation request of ~1.3 KB on the wire.
SUMMARY = "Benchmark request: no real case content. " * 8


def amqp_url(vhost: str, user: str = ADMIN.user, password: str = ADMIN.password) -> str:
    return (
        f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@{HOST}:{PORT}/"
        f"{quote(vhost, safe='')}"
    )


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


@dataclass(frozen=True)
class Throughput:
    rate: float  # messages per second
    cpu: float  # process CPU seconds per message


@dataclass
class Latency:
    name: str
    sent: int
    received: list[float]  # seconds
    rate: float = 0.0  # offered, msg/s
    note: str = ""  # what else was measured meanwhile (the machine's load, the nodes' CPU)

    def p99(self) -> float:
        return percentile(self.received, 0.99) if self.received else float("inf")

    def line(self) -> str:
        if not self.received:
            return f"  {self.name:<34} sent {self.sent}, received 0"
        ms = [value * 1000 for value in self.received]
        return (
            f"  {self.name:<34} p50 {percentile(ms, 0.50):7.2f} ms   p99 "
            f"{percentile(ms, 0.99):7.2f} ms   max {max(ms):7.2f} ms   "
            f"({len(ms)}/{self.sent} received)" + (f"\n      {self.note}" if self.note else "")
        )


# --- helpers -----------------------------------------------------------------------------------


async def publish_confirmed(
    channel: AbstractChannel,
    routing_key: str,
    bodies: list[bytes],
    *,
    exchange: str = "",
    outstanding: int = 500,
) -> None:
    """Publish persistently with confirms, ``outstanding`` at a time (not one by one)."""
    target = (
        channel.default_exchange
        if not exchange
        else await channel.get_exchange(exchange, ensure=False)
    )
    for start in range(0, len(bodies), outstanding):
        await asyncio.gather(
            *(
                target.publish(
                    aio_pika.Message(
                        body,
                        content_type=CONTENT_TYPE,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        message_id=str(uuid.uuid4()),
                    ),
                    routing_key=routing_key,
                )
                for body in bodies[start : start + outstanding]
            )
        )


async def queue_depth(channel: AbstractChannel, queue: str) -> int:
    declared = await channel.declare_queue(queue, passive=True)
    return int(declared.declaration_result.message_count or 0)


async def wait_depth(
    channel: AbstractChannel, queue: str, count: int, *, within: float, every: float = 0.01
) -> float:
    """Poll until ``queue`` holds ``count`` messages; the time it was first seen there."""
    deadline = time.perf_counter() + within
    while (depth := await queue_depth(channel, queue)) < count:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{queue} holds {depth} of {count} after {within:.0f} s")
        await asyncio.sleep(every)
    return time.perf_counter()


async def wait_depth_zero(channel: AbstractChannel, queue: str, within: float = 30) -> None:
    """Wait until a purged quorum queue reports no messages."""
    deadline = time.perf_counter() + within
    while depth := await queue_depth(channel, queue):
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{queue} still holds {depth} messages after its purge")
        await asyncio.sleep(0.05)


def _cpu(seconds: float, elapsed: float, messages: int) -> str:
    return (
        f"process CPU {seconds / messages * 1e6:,.0f} us/msg, "
        f"{seconds / elapsed:.0%} of one core over the phase"
    )


class Hop:
    """The raw Python hop: consume ``source``, publish to ``dest`` with confirm, then ack."""

    def __init__(self, expected: int = 0, transform: Callable[[bytes], bytes] | None = None):
        self.done = 0
        self.expected = expected
        self.transform = transform
        self.finished = asyncio.Event()
        self._queue: AbstractQueue | None = None
        self._tag = ""

    async def start(
        self, connection: AbstractRobustConnection, source: str, dest: str, prefetch: int
    ) -> None:
        publish = await connection.channel(publisher_confirms=True)
        consume = await connection.channel()
        await consume.set_qos(prefetch_count=prefetch)
        self._queue = await consume.get_queue(source, ensure=False)

        async def on_message(message: AbstractIncomingMessage) -> None:
            body = message.body if self.transform is None else self.transform(message.body)
            await publish.default_exchange.publish(
                aio_pika.Message(
                    body,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=message.message_id,
                ),
                routing_key=dest,
            )
            await message.ack()
            self.done += 1
            if self.done == self.expected:
                self.finished.set()

        self._tag = await self._queue.consume(on_message, no_ack=False)

    async def stop(self) -> None:
        if self._queue is not None:
            await self._queue.cancel(self._tag)


async def paced(rate: float, duration: float, send: Callable[[int], Awaitable[None]]) -> int:
    """Call ``send(i)`` at ``rate`` per second for ``duration`` seconds; the number sent."""
    total = round(rate * duration)
    start = time.perf_counter()
    for index in range(total):
        delay = start + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(index)
    return total


class Arrivals:
    """Consumes delivery queues and records arrival times by AMQP message id."""

    def __init__(self) -> None:
        self.sent: dict[str, float] = {}
        self.latencies: list[float] = []
        self.arrived = asyncio.Event()
        self.expected = 0

    def reset(self, expected: int) -> None:
        self.sent.clear()
        self.latencies = []
        self.expected = expected
        self.arrived.clear()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        now = time.perf_counter()
        sent = self.sent.pop(message.message_id or "", None)
        if sent is not None:
            self.latencies.append(now - sent)
            if len(self.latencies) >= self.expected:
                self.arrived.set()

    async def wait(self, within: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.arrived.wait(), within)


# --- (a) raw ceiling ---------------------------------------------------------------------------


def crypto_step(relay: SigningKey, trust: TrustStore) -> Callable[[bytes], bytes]:
    """What the protocol requires of every relay, and nothing else: open the envelope (strict
    parse of the frame and header, the origin's signature checked) and sign a hop record."""

    def step(body: bytes) -> bytes:
        now = datetime.now(UTC)
        return add_hop(open_envelope(body, trust, now=now), relay, to="ejn", at=now).to_bytes()

    return step


async def hop_through(
    connection: AbstractRobustConnection,
    control: AbstractChannel,
    body: bytes,
    messages: int,
    prefetch: int,
    transform: Callable[[bytes], bytes] | None = None,
) -> tuple[float, float, float]:
    """Pre-load raw.a with ``messages`` copies of ``body`` and time one hop to raw.b: (elapsed
    seconds, process CPU seconds, msg/s)."""
    await publish_confirmed(control, "raw.a", [body] * messages)
    hop = Hop(expected=messages, transform=transform)
    start, cpu = time.perf_counter(), time.process_time()
    await hop.start(connection, "raw.a", "raw.b", prefetch)
    await hop.finished.wait()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    await hop.stop()
    await (await control.get_queue("raw.b", ensure=False)).purge()
    return elapsed, cpu, messages / elapsed


CHAIN = [f"chain.{index}" for index in range(6)]  # the journey's six quorum queues


@contextlib.asynccontextmanager
async def raw_vhost() -> AsyncIterator[tuple[AbstractRobustConnection, AbstractChannel]]:
    """A fresh vhost for the raw hops, removed at the end: (connection, confirming channel)."""
    vhost = f"bench-raw-{uuid.uuid4().hex[:10]}"
    async with Management(ADMIN) as management:
        await management.put_vhost(vhost)
        await management.put_permissions(vhost, ADMIN.user, configure=".*", write=".*", read=".*")
    try:
        connection = await aio_pika.connect_robust(amqp_url(vhost))
        async with connection:
            control = await connection.channel(publisher_confirms=True)
            for name in ("raw.a", "raw.b", "lat.a", "lat.b", *CHAIN):
                await control.declare_queue(name, durable=True, arguments=QUORUM)
            yield connection, control
    finally:
        async with Management(ADMIN) as management:
            await management.delete_vhost(vhost)


async def raw_phase(
    connection: AbstractRobustConnection,
    control: AbstractChannel,
    args: argparse.Namespace,
    body: bytes,
    floor_step: Callable[[bytes], bytes],
    report: TextIO,
) -> tuple[Throughput, Throughput]:
    elapsed, cpu, rate = await hop_through(
        connection, control, body, args.messages, args.raw_prefetch
    )
    print(
        f"(a) raw ceiling: {args.messages} msgs of {len(body)} B through one Python hop "
        f"(prefetch {args.raw_prefetch}) in {elapsed:.2f} s = {rate:,.0f} msg/s",
        file=report,
    )
    print(f"    {_cpu(cpu, elapsed, args.messages)}", file=report)
    raw = Throughput(rate, cpu / args.messages)
    elapsed, cpu, floor_rate = await hop_through(
        connection, control, body, args.messages, args.raw_prefetch, floor_step
    )
    floor = Throughput(floor_rate, cpu / args.messages)
    print(
        f"(a') cryptographic floor: the same hop, also opening each envelope (strict"
        f" parse, origin signature) and signing a hop record: {floor_rate:,.0f} msg/s"
        f" = {floor_rate / rate:.2f} of raw",
        file=report,
    )
    print(f"    {_cpu(cpu, elapsed, args.messages)}", file=report)
    return raw, floor


class RawLatency:
    """Raw aio-pika hops for latency, in this process: one hop (lat.a -> lat.b), and a chain
    of five hops through six quorum queues, as many as a three-network journey writes
    (mlanet.submit, out.casc, casc's inbox, out.ejn, ejn's inbox, the delivery queue)."""

    def __init__(
        self, connection: AbstractRobustConnection, control: AbstractChannel, body: bytes
    ) -> None:
        self.connection = connection
        self.control = control
        self.body = body
        self.arrivals = Arrivals()

    async def start(self, prefetch: int) -> None:
        await Hop().start(self.connection, "lat.a", "lat.b", prefetch)
        for source, dest in itertools.pairwise(CHAIN):
            await Hop().start(self.connection, source, dest, prefetch)
        reader = await self.connection.channel()
        for last in ("lat.b", CHAIN[-1]):
            queue = await reader.get_queue(last, ensure=False)
            await queue.consume(self.arrivals.on_message, no_ack=True)

    async def measure(self, rate: float, duration: float, *, chain: bool) -> Latency:
        first = CHAIN[0] if chain else "lat.a"

        async def send(_: int) -> None:
            message_id = str(uuid.uuid4())
            self.arrivals.sent[message_id] = time.perf_counter()
            await self.control.default_exchange.publish(
                aio_pika.Message(
                    self.body,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=message_id,
                ),
                routing_key=first,
            )

        self.arrivals.reset(round(rate * duration))
        sent = await paced(rate, duration, send)
        await self.arrivals.wait(10.0)
        name = "raw 5 hops, 6 queues (aio-pika)" if chain else "raw one hop (aio-pika)"
        note = f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
        return Latency(name, sent, list(self.arrivals.latencies), rate, note)


# --- the federation ----------------------------------------------------------------------------


class _Unlinked(Node):
    """The node under test, minus its links: nothing drains ``mlanet.out.<peer>``."""

    async def ensure_links(self) -> None:
        return None


@contextlib.asynccontextmanager
async def running(nodes: list[Node]) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(node.run()) for node in nodes]
    try:
        ready = asyncio.ensure_future(asyncio.gather(*(node.ready.wait() for node in nodes)))
        waiting: set[asyncio.Future[Any]] = {ready, *tasks}
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ready
        for task in tasks:
            if task in done:
                task.result()  # a node that stopped before it was ready: raise its error
        yield
    finally:
        for node in nodes:
            node.stop()
        await asyncio.gather(*tasks, return_exceptions=True)


def signed_requests(
    key: SigningKey,
    count: int,
    country: str,
    *,
    seal_for: tuple[str, str, str] | None = None,
    summary: str = SUMMARY,
) -> list[SignedMessage]:
    """``count`` facilitation requests signed by ``key`` for ``country``; with ``seal_for``
    (network, encryption key id, its public key as the directory lists it), each sealed for
    that network as the origin's node seals it (``broker/seal.py``)."""
    payload = FacilitationRequest(
        case_ref="KH-MLA-2020-0042",
        requesting_country="KH",
        requested_country=country,
        offence_categories=["drug_trafficking", "money_laundering"],
        measures_sought=["evidence", "asset_freezing"],
        languages=["en", "fr"],
        summary=summary,
    )
    sealed = (
        None
        if seal_for is None
        else Sealed(suite=SEAL_SUITE, network=seal_for[0], key_id=seal_for[1])
    )
    now = datetime.now(UTC)
    return [
        sign_message(
            Header(
                kind="facilitation_request",
                message_id=str(uuid.uuid4()),
                origin=Origin(network=key.network, country="KH", contact_point="kh-cp-1"),
                destination=Destination(country=country),
                created_at=now,
                key_id=key.key_id,
                sealed=sealed,
            ),
            payload,
            key,
            seal_with=None if seal_for is None else seal_for[2],
        )
        for _ in range(count)
    ]


# --- a relay alone: shared with bench_audit.py and bench_seal.py -------------------------------


@dataclass(frozen=True)
class RelayBench:
    """A federation for timing casc as a relay (``relay_federation``)."""

    fed: federation.Federation
    # what casc sends ejn each time it starts with nothing to relay (its directory announcement)
    start_sends: int


@contextlib.asynccontextmanager
async def relay_federation(
    prefix: str | None = None, prefetch: int = 0
) -> AsyncIterator[RelayBench]:
    """seajust - casc - ejn under a unique prefix, for timing casc as a relay without links
    (``relay``): casc's per-peer rate cap lifted (the peer's token bucket must not be what is
    measured), its ``limits.prefetch`` set when ``prefetch`` is given, the nodes' logs quiet,
    casc's topology declared by a first start that is not measured. Everything it provisions
    on the broker is removed at the end, also on failure."""
    with contextlib.ExitStack() as stack:
        quiet = stack.enter_context(open(os.devnull, "w", encoding="utf-8"))  # noqa: ASYNC230
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mlanet-bench-")))
        fed = federation.build(
            folder,
            prefix=prefix or f"bench-{uuid.uuid4().hex[:8]}",
            networks=NETWORKS,
            links=LINKS,
        )
        with fed.config_path("casc").open("a", encoding="utf-8") as config:
            limits = f"\n[limits]\nprefetch = {prefetch}\n" if prefetch else "\n"
            config.write(limits + "[limits.peer]\nrate = 1000000.0\nburst = 1000000\n")
        with contextlib.redirect_stderr(quiet):
            configure_logging("warning")
        try:
            await federation.provision(fed, ADMIN)
            async with running([_Unlinked(load_config(fed.config_path("casc")))]):
                pass
            # each start announces casc's directory to its peers: counted here, then dropped
            async with await aio_pika.connect(amqp_url(fed.vhost("casc"))) as connection:
                channel = await connection.channel()
                purged = await (await channel.get_queue(out_queue("ejn"), ensure=False)).purge()
            yield RelayBench(fed, purged.message_count or 0)
        finally:
            await federation.teardown(fed, ADMIN)


async def preload(fed: federation.Federation, bodies: list[bytes]) -> None:
    """Publish ``bodies`` into casc's inbox exchange for seajust as seajust's link would (as
    its link user, persistent, with confirms)."""
    url = amqp_url(
        fed.door("casc", "seajust"), fed.link_user("seajust"), fed.link_password("seajust")
    )
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        await publish_confirmed(channel, "", bodies, exchange=inbox_exchange("seajust"))


async def relay(bench: RelayBench, bodies: list[bytes]) -> Throughput:
    """Time the casc node (without links) relaying ``bodies``, preloaded into its inbox from
    seajust, until ``mlanet.out.ejn`` holds them all (then emptied): msg/s and process CPU
    seconds per message. The node consumes while it starts, before it reports ready, so the
    clock (and the CPU count) starts at its first forward, watched from before the node starts,
    and counts the forwards after it (and the node's announcement as it starts)."""
    fed, total = bench.fed, len(bodies) + bench.start_sends
    await preload(fed, bodies)
    async with await aio_pika.connect(amqp_url(fed.vhost("casc"))) as watcher:
        channel = await watcher.channel()
        if depth := await queue_depth(channel, out_queue("ejn")):
            raise RuntimeError(f"{out_queue('ejn')} holds {depth} messages before the node runs")

        async def first_forward() -> tuple[float, float, int]:
            deadline = time.perf_counter() + 120
            while not (depth := await queue_depth(channel, out_queue("ejn"))):
                if time.perf_counter() > deadline:
                    raise RuntimeError("the node forwarded nothing in 120 s")
                await asyncio.sleep(0.001)
            return time.perf_counter(), time.process_time(), depth

        node = _Unlinked(load_config(fed.config_path("casc")))
        watch = asyncio.create_task(first_forward())
        try:
            async with running([node]):
                start, cpu, first = await watch
                end = await wait_depth(channel, out_queue("ejn"), total, within=600)
                cpu = time.process_time() - cpu
        finally:
            watch.cancel()
        if (sent := await queue_depth(channel, out_queue("ejn"))) != total:
            raise RuntimeError(f"casc sent ejn {sent} messages, not {total}")
        await (await channel.get_queue(out_queue("ejn"), ensure=False)).purge()
        await wait_depth_zero(channel, out_queue("ejn"))
    timed = total - first
    if timed < 1:
        raise RuntimeError("the node relayed every message before the first look: send more")
    return Throughput(timed / (end - start), cpu / timed)


async def node_phase(
    fed: federation.Federation, args: argparse.Namespace, report: TextIO
) -> Throughput:
    """(b): pre-load casc's inbox while casc is down, then time the node draining it."""
    casc = load_config(fed.config_path("casc"))
    admin_casc = amqp_url(fed.vhost("casc"))
    async with Transport(admin_casc) as transport:  # what the node declares when it starts
        await transport.declare(
            Topology(peers=tuple(fed.peers("casc")), contact_points=_contact_points("casc"))
        )
        await (await transport.door(fed.door("casc", "seajust"))).declare_inbox("seajust")
    key = load_signing_key(fed.root / "seajust" / "seajust.1.key")
    bodies = [m.to_bytes() for m in signed_requests(key, args.messages, "FR")]
    door = fed.door("casc", "seajust")  # where seajust's link lands at casc
    as_seajust = amqp_url(door, fed.link_user("seajust"), fed.link_password("seajust"))
    async with await aio_pika.connect(as_seajust) as connection:
        channel = await connection.channel(publisher_confirms=True)
        await publish_confirmed(
            channel, "", bodies, exchange=inbox_exchange("seajust"), outstanding=500
        )
    async with await aio_pika.connect(amqp_url(door)) as connection:
        loaded = await queue_depth(await connection.channel(), peer_inbox("seajust"))
    if loaded != args.messages:
        raise RuntimeError(f"casc's inbox holds {loaded} messages, not {args.messages}")

    async with await aio_pika.connect(admin_casc) as watcher:
        channel = await watcher.channel()
        node = _Unlinked(casc)
        profile = cProfile.Profile() if args.profile else None
        sampler: subprocess.Popen[bytes] | None = None
        async with running([node]):
            # The node starts consuming before it reports ready, so the clock starts at its
            # first forward and counts the messages after it (a small run could otherwise be
            # over before the clock started).
            start = await wait_depth(channel, out_queue("ejn"), 1, within=120, every=0.001)
            first = await queue_depth(channel, out_queue("ejn"))
            cpu = time.process_time()
            if profile is not None:
                profile.enable()
            if args.sample:
                sampler = start_sampler(args.sample)
            end = await wait_depth(channel, out_queue("ejn"), args.messages, within=300)
            if profile is not None:
                profile.disable()
            cpu = time.process_time() - cpu
            if sampler is not None:
                stop_sampler(sampler)
        timed = args.messages - first
        if timed < args.messages // 2:
            raise RuntimeError(
                f"only {timed} of {args.messages} forwards timed: the node drained the rest"
                " while starting; send more --messages"
            )
        rate = float(timed / (end - start))
        print(
            f"(b) node forwarding: casc relayed {args.messages} msgs seajust -> ejn "
            f"(prefetch {casc.limits.prefetch}, peer rate cap {casc.limits.peer.rate:g}/s);"
            f" {timed} timed in {end - start:.2f} s"
            f" = {rate:,.0f} msg/s",
            file=report,
        )
        print(f"    {_cpu(cpu, end - start, timed)}", file=report)
        commits = node.commits
        print(
            f"    group commits: {commits.commits}, {commits.waited / max(commits.commits, 1):.1f}"
            " deliveries each on average",
            file=report,
        )
        measured = Throughput(rate, cpu / timed)
        # Phase (c) starts with an empty link: drop what (b) left in casc's queue to ejn.
        await (await channel.get_queue(out_queue("ejn"), ensure=False)).purge()
    if sampler is not None:
        print(f"    py-spy samples of the node phase written to {args.sample}", file=report)
    if profile is not None:
        profile.dump_stats(args.profile)
        stats = pstats.Stats(args.profile, stream=report)
        print(f"    cProfile of the node phase written to {args.profile}; top 25 by self time:")
        stats.sort_stats("tottime").print_stats(25)
    return measured


def start_sampler(path: str) -> subprocess.Popen[bytes]:
    """py-spy sampling this process (the node phase only) into ``path`` (raw collapsed
    stacks, or speedscope JSON when ``path`` ends in ``.json``)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    form = "speedscope" if path.endswith(".json") else "raw"
    command = [spy, "record", "--rate", "250", "--format", form, "-o", path]
    return subprocess.Popen(
        [*command, "--pid", str(os.getpid())], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def stop_sampler(sampler: subprocess.Popen[bytes]) -> None:
    sampler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    sampler.wait(timeout=30)


def _contact_points(network: str) -> tuple[str, ...]:
    return tuple(f"{country.lower()}-cp-1" for country in NETWORKS[network][1])


def submission(key: ContactPointKey, country: str) -> tuple[str, bytes]:
    """A facilitation request as ``mlanet send`` hands it to the node, signed with its contact
    point's key: (message id, body)."""
    value = facilitation_request(
        key.contact_point,
        country,
        summary=SUMMARY,
        offences=("drug_trafficking", "money_laundering"),
        measures=("evidence", "asset_freezing"),
        languages=("en", "fr"),
    )
    return value.message_id, sign_submission(value, key)


async def receipts_settled(store_path: Path, within: float) -> str:
    """Wait until every message the origin sent has its signed receipt back (so that no work
    is in flight when the nodes stop), reading its store as ``mlanet track`` does; describe
    the outbox states."""
    deadline = time.perf_counter() + within
    while True:
        store = Store(store_path, readonly=True)
        try:
            states = store.outbox_states()
        finally:
            store.close()
        if not set(states) - {"delivered"} or time.perf_counter() > deadline:
            break
        await asyncio.sleep(0.1)
    return ", ".join(f"{count} {state}" for state, count in sorted(states.items()))


JOURNEYS = [
    ("seajust -> casc (KH -> UZ)", "casc", "UZ"),
    ("seajust -> casc -> ejn (KH -> FR)", "ejn", "FR"),
]


async def latency_phase(
    fed: federation.Federation, args: argparse.Namespace, raw: RawLatency | None
) -> tuple[list[Latency], str]:
    """(c): each network's node in a process of its own (``mlanet node run``, as in
    production) with its links; submissions timed to delivery, at each offered rate."""
    processes = federation.NodeProcesses(fed, ADMIN)
    results = []
    # kh-cp-1 hands its submissions in as mlanet send does: as its own broker user, through the
    # mlanet.submit exchange, each signed with its own key
    kh_cp_1 = Credentials.load(fed.credentials("kh-cp-1"))
    seajust = load_config(fed.config_path("seajust"))
    try:
        for network in NETWORKS:
            processes.start(network)
        await processes.wait_ready(within=120.0)
        async with contextlib.AsyncExitStack() as stack:
            submit = await stack.enter_async_context(
                await aio_pika.connect(kh_cp_1.amqp_url(seajust))
            )
            channel = await submit.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(SUBMIT_EXCHANGE, ensure=False)
            arrivals = Arrivals()
            for _name, network, country in JOURNEYS:
                reader = await stack.enter_async_context(
                    await aio_pika.connect(amqp_url(fed.vhost(network)))
                )
                queue = await (await reader.channel()).get_queue(
                    deliver_queue(f"{country.lower()}-cp-1"), ensure=False
                )
                await queue.consume(arrivals.on_message, no_ack=True)

            for rate in args.rate:
                if raw is not None:  # at the same time as the journeys, on the same broker
                    results.append(await raw.measure(rate, args.duration, chain=False))
                    results.append(await raw.measure(rate, args.duration, chain=True))
                for name, _network, country in JOURNEYS:

                    async def send(_: int, country: str = country) -> None:
                        message_id, body = submission(kh_cp_1.key, country)
                        arrivals.sent[message_id] = time.perf_counter()
                        await exchange.publish(
                            aio_pika.Message(
                                body,
                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                message_id=message_id,
                            ),
                            routing_key="",
                        )

                    arrivals.reset(1)  # one warm-up message: the links must be up
                    await send(0)
                    await arrivals.wait(30.0)
                    if not arrivals.latencies:
                        processes.check_running()
                        raise RuntimeError(f"warm-up message for {name} did not arrive")
                    arrivals.reset(round(rate * args.duration))
                    pids = {n: p.pid for n, p in processes.processes.items()}
                    cpu = {network: process_cpu(pid) for network, pid in pids.items()}
                    sent = await paced(rate, args.duration, send)
                    await arrivals.wait(15.0)
                    used = {n: (process_cpu(pid) - cpu[n]) / sent for n, pid in pids.items()}
                    note = "node CPU per message: " + ", ".join(
                        f"{network} {seconds * 1e6:,.0f} us" for network, seconds in used.items()
                    )
                    note += f"; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
                    results.append(Latency(name, sent, list(arrivals.latencies), rate, note))
            outbox = await receipts_settled(seajust.state_dir / "node.sqlite3", within=30.0)
        processes.check_running()
    finally:
        processes.stop_all()
    return results, outbox


async def idle_phase(fed: federation.Federation, args: argparse.Namespace, report: TextIO) -> None:
    """(d): the CPU a node uses with no traffic (its periodic work: the topology and link
    checks, the resend loop, the operator's status polls), over ``--idle`` seconds, after
    ``IDLE_WARMUP`` seconds of running (its start is not counted)."""
    processes = federation.NodeProcesses(fed, ADMIN)
    try:
        process = processes.start("casc")
        await processes.wait_ready(within=120.0)
        await asyncio.sleep(IDLE_WARMUP)
        cpu = process_cpu(process.pid)
        await asyncio.sleep(args.idle)
        used = process_cpu(process.pid) - cpu
        processes.check_running()
    finally:
        processes.stop_all()
    print(
        f"(d) idle node: casc as its own process, with its links and operator surface, no"
        f" traffic: {used:.2f} s of CPU in {args.idle:g} s = {used / args.idle * 1000:.1f} ms"
        " of CPU per second",
        file=report,
    )


IDLE_WARMUP = 5.0  # seconds a node runs before its idle CPU is counted


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` so far (Linux: /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count_lines(folder: Path) -> int:
    """Log lines the nodes wrote: in-process ones to nodes.log, processes to <network>/."""
    paths = [folder / "nodes.log", *folder.glob("*/node.log")]
    return sum(len(path.read_bytes().splitlines()) for path in paths)


# --- entry point -------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    report = sys.stdout
    print(
        f"mlanet node benchmark: {args.messages} messages for throughput, "
        f"{', '.join(f'{rate:g}' for rate in args.rate)} msg/s for {args.duration:g} s for latency",
        file=report,
    )
    key = SigningKey.from_seed("seajust", "ed25519:1", os.urandom(32))
    relay = SigningKey.from_seed("casc", "ed25519:1", os.urandom(32))
    trust = TrustStore()
    trust.add_signing_key(key)
    body = signed_requests(key, 1, "FR")[0].to_bytes()
    async with contextlib.AsyncExitStack() as raw_stack:
        raw = floor = None
        raw_latency = None
        if not args.skip_raw:
            connection, control = await raw_stack.enter_async_context(raw_vhost())
            raw, floor = await raw_phase(
                connection, control, args, body, crypto_step(relay, trust), report
            )
            raw_latency = RawLatency(connection, control, body)
            await raw_latency.start(args.raw_prefetch)
        await federation_phases(args, report, raw, floor, raw_latency)


async def federation_phases(
    args: argparse.Namespace,
    report: TextIO,
    raw: Throughput | None,
    floor: Throughput | None,
    raw_latency: RawLatency | None,
) -> None:
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mlanet-bench-")))
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        fed = federation.build(folder, prefix=prefix, networks=NETWORKS, links=LINKS)
        # The benchmark measures what a node can forward, not the share of it that one peer is
        # allowed by default ([limits.peer] rate, 1000 msg/s): that cap is lifted here.
        # Likewise the nodes take as many deliveries at a time as the raw hop (a deeper pipeline
        # hides the broker's confirm latency: the rates compare the work, not the depth).
        limits = "\n[limits]\n"
        prefetch = args.raw_prefetch if args.node_prefetch is None else args.node_prefetch
        if prefetch:
            limits += f"prefetch = {prefetch}\n"
        limits += f"[limits.peer]\nrate = {args.peer_rate:g}\nburst = {round(args.peer_rate)}\n"
        for network in NETWORKS:
            with fed.config_path(network).open("a", encoding="utf-8") as config:
                config.write(limits)
        log_path = folder / "nodes.log"
        log = stack.enter_context(log_path.open("w", encoding="utf-8"))
        with contextlib.redirect_stderr(log):
            configure_logging("info")  # as the entry point does, into a file
        try:
            await federation.provision(fed, ADMIN)
            node = await node_phase(fed, args, report)
            if raw is not None and floor is not None:
                print(
                    f"    ratio node / raw = {node.rate / raw.rate:.2f}  (by CPU per message: "
                    f"{raw.cpu / node.cpu:.2f}); node / cryptographic floor ="
                    f" {node.rate / floor.rate:.2f}  (by CPU per message: "
                    f"{floor.cpu / node.cpu:.2f})",
                    file=report,
                )
            latencies, outbox = (
                ([], "") if args.skip_latency else await latency_phase(fed, args, raw_latency)
            )
            if args.idle > 0:
                await idle_phase(fed, args, report)
        finally:
            await federation.teardown(fed, ADMIN)
            log.flush()
            log_lines = count_lines(folder)
    if not args.skip_latency:
        print(
            f"(c) end-to-end latency, each node in its own process, {args.duration:g} s per"
            " journey and rate (submit -> mlanet.deliver.<cp>):",
            file=report,
        )
        for rate in args.rate:
            print(f"  at {rate:g} msg/s offered:", file=report)
            here = {result.name: result for result in latencies if result.rate == rate}
            for result in here.values():
                print(result.line(), file=report)
            journey = here.get(JOURNEYS[-1][0])
            one_hop = here.get("raw one hop (aio-pika)")
            chain = here.get("raw 5 hops, 6 queues (aio-pika)")
            if journey is not None and one_hop is not None and chain is not None:
                print(
                    f"    p99 three networks / raw one hop = {journey.p99() / one_hop.p99():.1f};"
                    f" / raw chain of as many queues = {journey.p99() / chain.p99():.1f}",
                    file=report,
                )
        print(f"    seajust outbox after the journeys: {outbox} (receipts back)", file=report)
    print(f"    ({log_lines} node log lines written)", file=report)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=5000, help="messages for (a) and (b)")
    parser.add_argument("--raw-prefetch", type=int, default=500)
    parser.add_argument(
        "--node-prefetch",
        type=int,
        default=None,
        help="the nodes' limits.prefetch (default: --raw-prefetch, the raw hop's; 0: the"
        " nodes' own default)",
    )
    parser.add_argument(
        "--peer-rate",
        type=float,
        default=1_000_000,
        help="the nodes' [limits.peer] rate and burst (default: no cap within reach)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        nargs="+",
        default=[50.0, 200.0],
        help="offered rates for (c), msg/s (each journey is timed at each rate)",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per journey in (c)")
    parser.add_argument("--skip-latency", action="store_true", help="run (a) and (b) only")
    parser.add_argument(
        "--idle",
        type=float,
        default=30.0,
        help="seconds of (d), a node's CPU with no traffic (0: skip it)",
    )
    parser.add_argument("--skip-raw", action="store_true", help="skip (a): no ceiling, no ratio")
    parser.add_argument(
        "--profile", metavar="FILE", help="cProfile the node phase (b) into FILE and summarise it"
    )
    parser.add_argument(
        "--sample",
        metavar="FILE",
        help="py-spy (pip install py-spy) samples phase (b) into FILE: raw stacks, or speedscope"
        " JSON when FILE ends in .json",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
