"""Benchmark: one replica of a node against two on the same queues, and a SQLite node (same run).

The node under test is casc relaying facilitation requests seajust -> ejn, as in
``bench_node.py`` (b), but as processes of its own (``mlanet node run``, with its links), in
three configurations, on the same queues of one federation (a fresh prefix, removed at the end
with its PostgreSQL schemas):

(a) one replica: ``mlanet node run --replica casc-1``, its state in PostgreSQL (``[database]``);
(b) two replicas: ``casc-1`` and ``casc-2``, competing consumers on the same quorum queues, each
    message claimed by a PostgreSQL advisory lock until committed (``nodes/runtime/replicas.py``);
(c) one node with its state in SQLite files (no ``[database]``): the baseline the other node
    benchmarks measure.

Per run, the configuration's processes start and report ready (consuming, links up); then N
messages that seajust signed beforehand are published into casc's inbox from seajust (as
seajust's link user, with confirms), and the clock runs from the first publication until every
one of them has reached ejn (``mlanet.inbox.from.casc`` in ejn's door, where casc's shovel puts
its forwards; no ejn node runs there). Messages are published after the processes are ready,
not preloaded, so that two replicas that start a moment apart both work the whole batch. CPU
is read from ``/proc`` (Linux only) before and after: the node processes', the PostgreSQL
backends' of the replicas (the pids each replica records in its schema's ``replicas`` table,
checked against ``pg_stat_activity``), the RabbitMQ node's Erlang VM (its ``os_pid`` from the
management API; counted above its rate in the ``--settle`` seconds before the clock, when no
message moves), and the whole machine's (``/proc/stat``). The federation is on a RabbitMQ node
of the bench's own (``tests/battery/rabbit.py``: its own name, ports and data, started for the
run and stopped after), so that the broker's CPU is this bench's alone and other traffic on
the shared broker does not queue with it; ``--shared-broker`` uses the one on :5672 instead
(quicker to start; its CPU then includes whatever else it serves, and the figure swings with
that).

The configurations are interleaved (the order rotates each round) and each is run ``--rounds``
times; the report gives each one's median and range, and the ratios two replicas / one replica
and PostgreSQL one replica / SQLite as the median (and range) of the rounds' ratios.

On a machine of a few cores that also runs the broker and PostgreSQL, two replicas cannot
exceed the machine: the figures show what the coordination costs (claims, a shared database),
not how far a second machine would scale the node out. Usage: ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import aio_pika
import bench_node
import httpx
import psycopg
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from bench_node import LINKS, NETWORKS, process_cpu, queue_depth

from mlanet.broker import SignedMessage, load_signing_key
from mlanet.broker.errors import MlanetError
from mlanet.broker.management import Management, ManagementEndpoint
from mlanet.broker.transport import Transport, inbox_exchange, peer_inbox
from mlanet.nodes.local import federation

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests package
from tests.battery.rabbit import ScratchBroker

POSTGRES_URL = os.environ.get(
    "MLANET_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
NODE = "casc"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TIME_LIMIT = 10  # seconds for each connection and each management or database request


@dataclass(frozen=True)
class Broker:
    """The RabbitMQ node the federation is on: its AMQP port and its management API."""

    port: int
    admin: ManagementEndpoint
    shared: bool

    def url(self, vhost: str, user: str | None = None, password: str | None = None) -> str:
        user, password = user or self.admin.user, password or self.admin.password
        return (
            f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{self.port}/"
            f"{quote(vhost, safe='')}"
        )


SHARED = Broker(5672, bench_node.ADMIN, shared=True)


@dataclass(frozen=True)
class Setup:
    """One configuration of the node under test: its process keys and where its state is."""

    name: str
    keys: tuple[str, ...]  # NodeProcesses keys: "casc", or "casc/<replica>"
    store: str  # "postgresql" or "sqlite"


ONE = Setup("one replica (PostgreSQL)", (federation.replica_key(NODE, "casc-1"),), "postgresql")
TWO = Setup(
    "two replicas (PostgreSQL)",
    (federation.replica_key(NODE, "casc-1"), federation.replica_key(NODE, "casc-2")),
    "postgresql",
)
SQLITE = Setup("one node (SQLite)", (NODE,), "sqlite")
SETUPS = (ONE, TWO, SQLITE)


@dataclass(frozen=True)
class Run:
    """What one run of one configuration measured: seconds, and CPU seconds of each part."""

    setup: Setup
    messages: int
    seconds: float
    node_cpu: float  # the node processes (user + system)
    database_cpu: float | None  # the replicas' PostgreSQL backends; None for SQLite
    broker_cpu: float  # the RabbitMQ node's Erlang VM
    broker_idle: float  # its CPU seconds per second in the settle time before the clock
    machine_busy: float  # CPU seconds the whole machine was busy
    load: float  # one-minute load average at the end

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    def per_message(self, seconds: float | None) -> float:
        """Microseconds of CPU per message."""
        return float("nan") if seconds is None else seconds / self.messages * 1e6

    @property
    def node_us(self) -> float:
        return self.per_message(self.node_cpu)

    @property
    def with_database_us(self) -> float:
        """The node's CPU and its database's (the backends' for PostgreSQL; SQLite runs in the
        node's process)."""
        return self.per_message(self.node_cpu + (self.database_cpu or 0.0))

    @property
    def broker_us(self) -> float:
        """The broker's CPU per message above its rate before the run (what it does with no
        messages: its own timers, the nodes' periodic checks; on the shared broker also
        whatever else it serves, taken to stay as it was)."""
        return self.per_message(self.broker_cpu - self.broker_idle * self.seconds)

    def line(self) -> str:
        database = (
            "PostgreSQL  --   "
            if self.database_cpu is None
            else f"PostgreSQL {self.per_message(self.database_cpu):5,.0f}"
        )
        return (
            f"    {self.setup.name:<26} {self.rate:6,.0f} msg/s  CPU per message (us): node"
            f" {self.node_us:5,.0f}  {database}  RabbitMQ {self.broker_us:5,.0f}"
            f" (idle {self.broker_idle:.0%} of a core)  | machine busy"
            f" {self.machine_busy / self.seconds:.2f} of {os.cpu_count()} cores,"
            f" load {self.load:.1f}"
        )


# --- CPU counters ------------------------------------------------------------------------------


def machine_busy() -> float:
    """CPU seconds the machine has been busy (all cores; ``/proc/stat``: not idle, not iowait)."""
    fields = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def cpu_of(pids: list[int]) -> dict[int, float]:
    """CPU seconds so far of each of ``pids`` that still runs."""
    found = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            found[pid] = process_cpu(pid)
    return found


def used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two readings (a process that started in between: all of its)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


async def broker_pid(admin: ManagementEndpoint, within: float = 30.0) -> int:
    """The pid of the RabbitMQ node behind the management API (its Erlang VM; a node that has
    just started lists it with its first statistics, within a few seconds)."""
    deadline = time.perf_counter() + within
    async with httpx.AsyncClient(
        base_url=admin.url, auth=(admin.user, admin.password), timeout=TIME_LIMIT
    ) as client:
        while True:
            overview = (await client.get("/api/overview")).raise_for_status().json()
            nodes = (await client.get("/api/nodes")).raise_for_status().json()
            pid = next(
                (n.get("os_pid") for n in nodes if n.get("name") == overview.get("node")), None
            )
            if pid is not None or time.perf_counter() > deadline:
                break
            await asyncio.sleep(0.5)
    if pid is None or not cpu_of([int(pid)]):
        raise RuntimeError("the RabbitMQ node's Erlang VM is not a process of this machine")
    return int(pid)


def replica_backends(fed: federation.Federation) -> list[int]:
    """The PostgreSQL backends of casc's running replicas: the pids each records in its schema's
    ``replicas`` table, that are still mlanet's sessions."""
    assert fed.database_url is not None
    with psycopg.connect(fed.database_url, autocommit=True, connect_timeout=TIME_LIMIT) as db:
        rows = db.execute(
            f'SELECT backends FROM "{fed.schema(NODE)}".replicas WHERE state = %s',  # noqa: S608
            ("running",),
        ).fetchall()
        pids = [int(pid) for (backends,) in rows for pid in str(backends).split(",") if pid]
        live = db.execute(
            "SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)"
            " AND application_name LIKE 'mlanet %%'",
            (pids,),
        ).fetchall()
    return sorted(int(pid) for (pid,) in live)


# --- the federation ----------------------------------------------------------------------------


class Sink:
    """ejn's side (no node there): counts the messages of the current batch that casc's shovel
    delivered into ejn's door."""

    def __init__(self) -> None:
        self.expected: set[str] = set()
        self.arrived = asyncio.Event()

    def expect(self, message_ids: set[str]) -> None:
        self.expected = set(message_ids)
        self.arrived.clear()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        if message.message_id in self.expected:
            self.expected.discard(message.message_id)
            if not self.expected:
                self.arrived.set()


@dataclass
class Bench:
    fed: federation.Federation
    broker: Broker
    configs: dict[str, str]  # store -> the text of casc's node.toml for it
    publish: AbstractChannel  # seajust's link user's confirming channel on casc's door
    watch: AbstractChannel  # an administrator's channel on casc's door for seajust
    sink: Sink
    beam: int


def node_configs(fed: federation.Federation, prefetch: int) -> dict[str, str]:
    """casc's config with its state in PostgreSQL (as ``build`` wrote it) and in SQLite (the
    same without its ``[database]`` table), each with the per-peer rate cap lifted: the bench
    measures what the node can relay, not the share one peer is allowed by default."""
    written = fed.config_path(NODE).read_text(encoding="utf-8")
    base, found, database = written.partition("\n[database]\n")
    if not found or "\n[" in database:
        raise RuntimeError("casc's config does not end with the [database] table build writes")
    limits = f"\n[limits]\nprefetch = {prefetch}\n" if prefetch else "\n"
    limits += "[limits.peer]\nrate = 1000000.0\nburst = 1000000\n"
    return {"postgresql": written + limits, "sqlite": base + limits}


async def declare_doors(fed: federation.Federation, broker: Broker) -> None:
    """The doors casc's links use, as the nodes declare them when they start: casc's inbox for
    seajust (watched before casc first runs), and casc's inboxes at seajust and ejn, where its
    shovels put what it sends them (no node runs there)."""
    for network, sender in (("casc", "seajust"), ("seajust", "casc"), ("ejn", "casc")):
        async with Transport(broker.url(fed.door(network, sender))) as door:
            await door.declare_inbox(sender)


@contextlib.asynccontextmanager
async def bench_federation(
    folder: Path, prefix: str, prefetch: int, database_url: str, broker: Broker
) -> AsyncIterator[Bench]:
    """seajust - casc - ejn under ``prefix`` on ``broker``, each node's state in a PostgreSQL
    schema of its own; everything it provisions (vhosts, users, schemas) is removed at the
    end, also on failure or Ctrl-C."""
    fed = federation.build(
        folder,
        prefix=prefix,
        networks=NETWORKS,
        links=LINKS,
        port=broker.port,
        management_url=broker.admin.url,
        database_url=database_url,
    )
    configs = node_configs(fed, prefetch)
    try:
        await federation.provision(fed, broker.admin)
        await declare_doors(fed, broker)
        as_seajust = broker.url(
            fed.door(NODE, "seajust"), fed.link_user("seajust"), fed.link_password("seajust")
        )
        async with (
            await aio_pika.connect(as_seajust, timeout=TIME_LIMIT) as seajust,
            await aio_pika.connect(
                broker.url(fed.door(NODE, "seajust")), timeout=TIME_LIMIT
            ) as watcher,
            await aio_pika.connect(broker.url(fed.door("ejn", NODE)), timeout=TIME_LIMIT) as ejn,
        ):
            publish = await seajust.channel(publisher_confirms=True)
            sink = Sink()
            drain = await ejn.channel()
            await drain.set_qos(prefetch_count=1000)
            queue = await drain.get_queue(peer_inbox(NODE), ensure=False)
            await queue.consume(sink.on_message, no_ack=True)
            watch = await watcher.channel()
            beam = await broker_pid(broker.admin)
            yield Bench(fed, broker, configs, publish, watch, sink, beam)
    finally:
        await federation.teardown(fed, broker.admin)  # drops the schemas too


async def consumers(channel: AbstractChannel, queue: str) -> int:
    declared = await channel.declare_queue(queue, passive=True)
    return int(declared.declaration_result.consumer_count or 0)


async def until(
    check: Callable[[], Awaitable[bool]],
    what: str,
    within: float,
    processes: federation.NodeProcesses,
) -> None:
    """Poll ``check`` until it is true, the node processes still running; RuntimeError naming
    ``what`` after ``within`` seconds."""
    deadline = time.perf_counter() + within
    while not await check():
        processes.check_running()
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{what}: not within {within:g} s")
        await asyncio.sleep(0.02)


async def run_once(bench: Bench, setup: Setup, batch: list[SignedMessage], settle: float) -> Run:
    """Start ``setup``'s processes, wait until they are ready and consuming, then time them
    relaying ``batch``, published into casc's inbox from seajust, until all of it reached ejn."""
    fed = bench.fed
    fed.config_path(NODE).write_text(bench.configs[setup.store], encoding="utf-8")
    inbox = peer_inbox("seajust")
    if depth := await queue_depth(bench.watch, inbox):
        raise RuntimeError(f"casc's inbox holds {depth} messages before the run")
    bodies = [message.to_bytes() for message in batch]
    processes = federation.NodeProcesses(fed, bench.broker.admin)
    try:
        for key in setup.keys:
            processes.start(key)
        await processes.wait_ready(within=120.0)

        async def consuming() -> bool:
            return await consumers(bench.watch, inbox) >= len(setup.keys)

        async def relayed() -> bool:
            return bench.sink.arrived.is_set()

        await until(consuming, "every process consuming casc's inbox", 30.0, processes)
        idle = process_cpu(bench.beam), time.perf_counter()
        await asyncio.sleep(settle)  # what a node does as it starts is not what is measured
        broker_idle = (process_cpu(bench.beam) - idle[0]) / (time.perf_counter() - idle[1])
        bench.sink.expect({message.header.message_id for message in batch})
        pids = [process.pid for process in processes.processes.values()]
        backends = replica_backends(fed) if setup.store == "postgresql" else []
        before = (cpu_of(pids), cpu_of(backends), process_cpu(bench.beam), machine_busy())
        start = time.perf_counter()
        await bench_node.publish_confirmed(
            bench.publish, "", bodies, exchange=inbox_exchange("seajust")
        )
        await until(relayed, "every message relayed to ejn", 60 + len(bodies) / 20, processes)
        seconds = time.perf_counter() - start
        after = (cpu_of(pids), cpu_of(backends), process_cpu(bench.beam), machine_busy())
        processes.check_running()
    finally:
        processes.stop_all()
    return Run(
        setup,
        len(bodies),
        seconds,
        used(before[0], after[0]),
        used(before[1], after[1]) if setup.store == "postgresql" else None,
        after[2] - before[2],
        broker_idle if settle else 0.0,
        after[3] - before[3],
        os.getloadavg()[0],
    )


# --- the report --------------------------------------------------------------------------------


def spread(values: list[float], form: str) -> str:
    """The median and the range of ``values``."""
    shown = [format(value, form) for value in (statistics.median(values), min(values), max(values))]
    return f"{shown[0]} ({shown[1]}-{shown[2]})"


def report(runs: dict[Setup, list[Run]]) -> None:
    print("medians (range) over the rounds:")
    for setup, done in runs.items():
        database = (
            "--"
            if setup.store == "sqlite"
            else spread([run.per_message(run.database_cpu) for run in done], ",.0f")
        )
        print(
            f"    {setup.name:<26} {spread([run.rate for run in done], ',.0f')} msg/s;"
            f" CPU per message (us): node {spread([run.node_us for run in done], ',.0f')},"
            f" PostgreSQL {database},"
            f" RabbitMQ {spread([run.broker_us for run in done], ',.0f')}"
        )

    def ratios(name: str, over: Setup, under: Setup) -> None:
        pairs = list(zip(runs[over], runs[under], strict=True))  # the same round's runs
        rate = [a.rate / b.rate for a, b in pairs]
        node = [a.node_us / b.node_us for a, b in pairs]
        whole = [a.with_database_us / b.with_database_us for a, b in pairs]
        broker = [a.broker_us / b.broker_us for a, b in pairs]
        print(
            f"ratio {name} (median of the rounds' ratios, range): rate {spread(rate, '.2f')},"
            f" node CPU per message {spread(node, '.2f')}, node + database CPU per message"
            f" {spread(whole, '.2f')}, RabbitMQ CPU per message {spread(broker, '.2f')}"
        )

    ratios("two replicas / one replica", TWO, ONE)
    ratios("PostgreSQL one replica / SQLite", ONE, SQLITE)


CAVEAT = (
    "On this machine ({cores} cores) the broker, PostgreSQL and the node processes share the"
    " cores: two replicas cannot exceed the machine. The ratio two replicas / one replica shows"
    " what coordinating two consumers costs here (claims, a shared database, more processes for"
    " the cores), not the scale-out that replicas on machines of their own would give."
)


async def main(args: argparse.Namespace) -> None:
    prefix = args.prefix or f"brep-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.database, autocommit=True, connect_timeout=TIME_LIMIT) as db:
        row = db.execute("SHOW server_version").fetchone()
    postgres = "?" if row is None else str(row[0]).split()[0]
    async with contextlib.AsyncExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mlanet-bench-")))
        broker = SHARED
        if not args.shared_broker:
            own = await stack.enter_async_context(ScratchBroker(folder / "rabbit"))
            broker = Broker(own.amqp_port, own.admin, shared=False)
        async with Management(broker.admin) as management:
            rabbitmq = str((await management.overview()).get("rabbitmq_version", "?"))
        runs = await measure(args, folder / "federation", prefix, broker, postgres, rabbitmq)
    report(runs)


async def measure(
    args: argparse.Namespace,
    folder: Path,
    prefix: str,
    broker: Broker,
    postgres: str,
    rabbitmq: str,
) -> dict[Setup, list[Run]]:
    print(
        f"mlanet replicas benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: casc relaying"
        f" {args.messages:,} facilitation requests seajust -> ejn per run, {args.rounds} rounds"
        f" of each configuration (interleaved); {os.cpu_count()} cores, load average"
        f" {os.getloadavg()[0]:.1f}; Python {platform.python_version()}, PostgreSQL {postgres},"
        f" RabbitMQ {rabbitmq} ({'the shared node' if broker.shared else 'a node of its own'})"
    )
    print(CAVEAT.format(cores=os.cpu_count()))
    runs: dict[Setup, list[Run]] = {setup: [] for setup in SETUPS}
    async with bench_federation(folder, prefix, args.prefetch, args.database, broker) as bench:
        key = load_signing_key(bench.fed.root / "seajust" / "seajust.1.key")
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}:")
            for setup in SETUPS[round_ % 3 :] + SETUPS[: round_ % 3]:  # drift hits each alike
                batch = bench_node.signed_requests(key, args.messages, "FR")
                run = await run_once(bench, setup, batch, args.settle)
                runs[setup].append(run)
                print(run.line(), flush=True)
    return runs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=2000, help="messages per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each configuration")
    parser.add_argument(
        "--prefetch", type=int, default=0, help="casc's limits.prefetch (0: the node's own, 64)"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=3.0,
        help="seconds the processes run, ready, before the clock starts",
    )
    parser.add_argument(
        "--database",
        default=POSTGRES_URL,
        help="PostgreSQL URL, no password (default: MLANET_BENCH_POSTGRES or the local server)",
    )
    parser.add_argument("--prefix", help="the federation's prefix (default: a unique one)")
    parser.add_argument(
        "--shared-broker",
        action="store_true",
        help="use the RabbitMQ on :5672 (default: start one of the bench's own for the run)",
    )
    return parser.parse_args(argv)


def entry() -> int:
    args = parse_args()
    try:
        asyncio.run(main(args))
    except KeyboardInterrupt:
        print("bench_replicas: interrupted (the federation and its schemas were removed)")
        return 130
    except (
        MlanetError,
        RuntimeError,
        OSError,
        psycopg.Error,
        httpx.HTTPError,
        aio_pika.exceptions.AMQPException,
    ) as exc:
        print(f"bench_replicas: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(entry())
