"""One battery run: a federation of node processes on a broker, clients submitting at a steady
rate, readers archiving deliveries, a collector reading quarantines, a fault script, a drain
period, and the checker's verdict.

    async with Battery("relay crashes", tmp_path, broker=battery_broker) as battery:
        await battery.start(lanes, crash_at={"casc": "after_confirm_before_ack:20"})
        verdict = await battery.run(Load(lanes, rate=15, duration=8), faults=None)
    assert verdict.passed, verdict.table()

``broker`` is a RabbitMQ node of the battery's own (``rabbit.ScratchBroker``). With
``Plan(on_cluster=network)`` and ``cluster=`` a started three-node cluster (the ``rabbit_cluster``
fixture, ``nodes/local/cluster.py``), that network is on the cluster instead: its node (each
replica) connects to node 1 first and fails over to nodes 2 and 3, the directory lists node 3
for peers' links (``nodes/local/sites.py``), and its clients, reader and collector use the
cluster too.

Every verdict is also kept in :data:`REPORT`, which the battery's ``conftest.py`` prints at the
end of the pytest run (the tables, the load figures).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlanet.broker.topology import INBOX, SUBMIT, deliver_queue, out_queue, peer_inbox
from mlanet.broker.transport import Transport
from mlanet.nodes.local.cluster import LocalCluster
from mlanet.nodes.local.federation import (
    EXAMPLE_NETWORKS,
    Federation,
    build,
    provision,
    replica_key,
    teardown,
)
from mlanet.nodes.local.sites import ClusterSite
from mlanet.nodes.state.store import open_node_store
from tests.battery.checker import Verdict, check
from tests.battery.faults import BrokerControl, Supervisor, tune
from tests.battery.history import History, OpType
from tests.battery.proxy import FaultProxy
from tests.battery.workload import (
    BROKER_ERRORS,
    Client,
    Collector,
    Lane,
    Load,
    Reader,
    node_url,
    reconcile,
    until,
)
from tests.integration.kit import config

__all__ = ["REPORT", "Battery", "Plan"]

REPORT: list[Verdict] = []


@dataclass(frozen=True)
class Plan:
    """The federation of a run. Defaults: SEAJust - CASC - EJN in a line (CASC relays between
    the other two), receipts retried after 5 s, a 5 s AMQP heartbeat (so a dead link is
    noticed within seconds; the node's default is 15 s)."""

    networks: tuple[str, ...] = ("seajust", "casc", "ejn")
    links: tuple[tuple[str, str], ...] = (("seajust", "casc"), ("casc", "ejn"))
    receipts: Mapping[str, float] = field(
        default_factory=lambda: {"retry_after_seconds": 5.0, "check_every_seconds": 0.5}
    )
    heartbeat: int | None = 5
    limits: Mapping[str, int] = field(default_factory=dict)
    # With a database (a PostgreSQL URL): every node's state there, and these networks' nodes
    # run as this many replicas each (``<network>/<network>-<n>``).
    database_url: str | None = None
    replicas: Mapping[str, int] = field(default_factory=dict)
    lease: float | None = None  # the replicas' lease (default: the node's)
    # This network's broker is the run's RabbitMQ cluster (Battery's ``cluster``).
    on_cluster: str | None = None

    def processes(self, network: str) -> list[str]:
        """The node process keys of ``network``: its name, or one per replica."""
        count = self.replicas.get(network, 1) if self.database_url else 1
        if count <= 1:
            return [network]
        return [replica_key(network, f"{network}-{n}") for n in range(1, count + 1)]


FaultScript = Callable[["Battery"], Awaitable[None]]


class Battery:
    """A run; an async context manager that removes everything it started."""

    def __init__(
        self,
        name: str,
        root: Path,
        *,
        broker: BrokerControl,
        plan: Plan | None = None,
        cluster: LocalCluster | None = None,
    ) -> None:
        self.name = name
        self.root = root
        self.broker = broker
        self.admin = broker.admin
        self.plan = plan or Plan()
        if (self.plan.on_cluster is None) != (cluster is None):
            raise ValueError("Plan.on_cluster names the network that the cluster given is for")
        self.cluster = cluster
        self.history = History(root / "history.jsonl")
        self.proxies: list[FaultProxy] = []
        self.clients: dict[str, Client] = {}
        self._stop = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self._t0 = 0.0
        self.fed: Federation
        self.supervisor: Supervisor
        self.collector: Collector
        self.readers: list[Reader] = []

    # --- set-up and tear-down ------------------------------------------------------------------
    async def __aenter__(self) -> Battery:
        clusters: tuple[ClusterSite, ...] = ()
        if self.plan.on_cluster is not None and self.cluster is not None:
            clusters = (ClusterSite.of(self.plan.on_cluster, self.cluster),)
        self.fed = build(
            self.root / "federation",
            prefix="b" + uuid.uuid4().hex[:10],
            networks={network: EXAMPLE_NETWORKS[network] for network in self.plan.networks},
            links=list(self.plan.links),
            port=self.broker.amqp_port,
            management_url=self.admin.url,
            receipts=dict(self.plan.receipts),
            database_url=self.plan.database_url,
            clusters=clusters,
        )
        for network in self.plan.networks:
            tune(
                self.fed,
                network,
                heartbeat=self.plan.heartbeat,
                limits=self.plan.limits,
                lease=self.plan.lease if self.plan.database_url else None,
            )
        await provision(self.fed, self.admin)
        self.supervisor = Supervisor(self.fed, self.admin, self.history)
        self.collector = Collector(self.fed, list(self.plan.networks), self.admin, self.history)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        for task in self._background:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 30)
        for client in self.clients.values():
            await client.__aexit__()
        await self.supervisor.aclose()
        for proxy in self.proxies:
            proxy.close()
        with contextlib.suppress(Exception):  # a killed scratch broker goes away with its data
            await teardown(self.fed, self.admin)

    def proxy(self, port: int | None = None, name: str = "proxy") -> FaultProxy:
        """A started fault proxy to the run's broker (closed at the end of the run)."""
        proxy = FaultProxy(self.fed.host, port or self.broker.amqp_port, name=name).start()
        self.proxies.append(proxy)
        return proxy

    async def start(
        self,
        lanes: Sequence[Lane],
        *,
        crash_at: Mapping[str, str] | None = None,
        client_ports: Mapping[str, int] | None = None,
    ) -> None:
        """Start every node (a crash point armed where asked), wait until they consume, then the
        readers of the destination networks, the collector and one client per origin."""
        for network in self.plan.networks:
            for key in self.plan.processes(network):
                self.supervisor.start(key, crash_at=(crash_at or {}).get(key))
        await self.supervisor.wait_ready()
        self.supervisor.supervise()
        destinations: dict[str, set[str]] = {}
        for lane in lanes:
            destinations.setdefault(lane.network, set()).add(lane.contact_point)
        for network, contact_points in sorted(destinations.items()):
            reader = Reader(self.fed, network, sorted(contact_points), self.history)
            self.readers.append(reader)
            self._background.append(asyncio.create_task(reader.run(self._stop)))
        self._background.append(asyncio.create_task(self.collector.run(self._stop)))
        for origin in sorted({lane.origin for lane in lanes}):
            port = (client_ports or {}).get(origin)
            client = Client(
                self.fed, origin, self.history, url=node_url(self.fed, origin, port=port)
            )
            self.clients[origin] = await client.__aenter__()

    # --- the run -------------------------------------------------------------------------------
    def fault(self, what: str) -> None:
        """Note a fault (or its healing) in the history."""
        self.history.add("fault", "faults", reason=what)

    async def at(self, seconds: float) -> None:
        """Sleep until ``seconds`` after the load started."""
        delay = self._t0 + seconds - asyncio.get_running_loop().time()
        if delay > 0:  # a fault script's schedule: when each fault starts is part of the test
            await asyncio.sleep(delay)

    async def run(
        self,
        load: Load,
        faults: FaultScript | None = None,
        *,
        drain: float = 120.0,
        receipts_within: float = 30.0,
    ) -> Verdict:
        """Run the load and the fault script together; when both are done (every fault healed),
        drain until every accepted message is delivered or quarantined as expected (at most
        ``drain`` seconds), wait for the receipts (at most ``receipts_within``), then judge."""
        self._t0 = asyncio.get_running_loop().time()
        jobs: list[Awaitable[object]] = [load.run(self.clients)]
        if faults is not None:
            jobs.append(faults(self))
        await asyncio.gather(*jobs)
        drained = await until(self._settled, within=drain, every=0.5)
        receipted = await until(self._receipted, within=receipts_within, every=0.5)
        # late repeats, if any, show up once nothing waits in any node's queues any more (the
        # readers then sweep their delivery queues once more when they stop)
        quiet = await until(self._quiet, within=30, every=0.5)
        self._stop.set()
        for task in self._background:
            await asyncio.wait_for(task, 60)
        self._background.clear()
        missed = sum(reconcile(self.fed, reader, self.history) for reader in self.readers)
        verdict = check(self.name, self.history.ops)
        verdict.notes.extend(self._notes(drained, receipted))
        if not quiet:
            verdict.notes.append("messages still waited in a node's queues when the run ended")
        if missed:
            verdict.notes.append(f"archived but not recorded by a reader (reconciled): {missed}")
        verdict.unreceipted = sum(
            n for state, n in self.outbox_states().items() if state != "delivered"
        )
        REPORT.append(verdict)
        print("\n" + verdict.table())
        return verdict

    def _settled(self) -> bool:
        """Every accepted message delivered, or quarantined when that is what is expected."""

        def keys(op_type: OpType) -> set[tuple[str | None, str | None]]:
            return {(op.origin, op.message_id) for op in self.history.of(op_type)}

        expected = {(op.origin, op.message_id): op.expect for op in self.history.of("submitted")}
        arrived, refused = keys("delivered"), keys("quarantined")
        for key in keys("accepted"):
            wanted = arrived if expected.get(key) == "deliver" else refused
            if key not in wanted:
                return False
        return True

    async def _quiet(self) -> bool:
        """No message waits in any node's queues (submissions, inboxes, links, deliveries)."""
        try:
            for network in self.plan.networks:
                queues = [INBOX, SUBMIT]
                for peer in self.fed.peers(network):
                    queues += [peer_inbox(peer), out_queue(peer)]
                for reader in self.readers:
                    if reader.network == network:
                        queues += [deliver_queue(cp) for cp in reader.contact_points]
                async with Transport(node_url(self.fed, network)) as transport:
                    for queue in queues:
                        if await transport.queue_depth(queue):
                            return False
        except BROKER_ERRORS:
            return False
        return True

    def outbox_states(self) -> dict[str, int]:
        """States of the submitted messages in their origins' outboxes."""
        states: dict[str, int] = {}
        by_origin: dict[str, list[str]] = {}
        for op in self.history.of("submitted"):
            if op.expect == "deliver" and op.origin and op.message_id:
                by_origin.setdefault(op.origin, []).append(op.message_id)
        for origin, ids in by_origin.items():
            store = open_node_store(config(self.fed, origin))
            try:
                for message_id in ids:
                    entry = store.outbox_get(message_id)
                    state = entry.state if entry else "missing"
                    states[state] = states.get(state, 0) + 1
            finally:
                store.close()
        return states

    def _receipted(self) -> bool:
        states = self.outbox_states()
        return set(states) <= {"delivered"}

    def _notes(self, drained: bool, receipted: bool) -> list[str]:
        notes = []
        if not drained:
            notes.append("drain period ended before every accepted message arrived")
        states = ", ".join(f"{n} {state}" for state, n in sorted(self.outbox_states().items()))
        notes.append(f"origin outbox states: {states or 'none'}" + ("" if receipted else " (!)"))
        if self.supervisor.crashed:
            notes.append("crash points reached: " + "; ".join(self.supervisor.crashed))
        if self.supervisor.unexpected:
            notes.append("UNEXPECTED node exits: " + "; ".join(self.supervisor.unexpected))
        slowest = max((reader.slowest for reader in self.readers), default=0.0)
        notes.append(f"slowest archiving pass of a reader: {slowest:.2f} s")
        errors = sum(reader.errors for reader in self.readers) + self.collector.errors
        if errors:
            notes.append(f"reader/collector reconnections: {errors}")
        return notes
