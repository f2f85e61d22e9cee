"""The processes of a battery run that are not nodes: clients that submit at a steady rate,
readers that archive what reaches the contact points, and the collector that reads the
quarantines. Each appends to the run's :class:`History`.

- A :class:`Client` submits for one network as its contact points would (``submit_on``: each
  submission signed by its sender's own key, broker confirmed; one connection for all of them).
  An attempt that is not confirmed is retried with the same message id until it is (the node
  dedupes submissions by id), so a lost confirm is resent, never forgotten.
- A :class:`Reader` does what ``mlanet inbox`` does for its network's contact points
  (``take_delivered``: verify, archive in the reader's archive, ack) in a loop, and records each
  message as ``delivered`` (new in the archive) or ``repeat`` (already archived).
- The :class:`Collector` takes what lands in each node's quarantine (its quarantine store, and
  what still waits in ``mlanet.quarantine`` for the node) and records the message id and the
  reason code (``x-mlanet-reason``; ``delivery_limit`` for a message the
  queue dead-lettered; ``unroutable`` for one an exchange could not route).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import random
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika
import aiormq

from mlanet.broker import MlanetError, TrustStore
from mlanet.broker.contact_point_keys import ContactPointKey
from mlanet.broker.management import ManagementEndpoint
from mlanet.broker.transport import QUARANTINE, Transport
from mlanet.nodes.cli.contact import ARCHIVE_FILE, Taken, submit_on, take_delivered
from mlanet.nodes.directory.book import load_directory, message_trust
from mlanet.nodes.local.federation import Federation
from mlanet.nodes.state.store import Store
from mlanet.schemas.submission import Submission
from tests.battery.history import History
from tests.integration.kit import config, credentials
from tests.integration.quarantine_kit import take_entries

__all__ = [
    "Client",
    "Collector",
    "Lane",
    "Load",
    "Reader",
    "admin_url",
    "admin_urls",
    "node_url",
    "reconcile",
    "request",
]

# What a failed broker operation may raise at the test's edge (the node translates the same).
BROKER_ERRORS = (
    MlanetError,
    OSError,
    TimeoutError,
    RuntimeError,
    aio_pika.exceptions.AMQPError,
    aiormq.exceptions.AMQPError,
)


@dataclass(frozen=True)
class Lane:
    """One flow of requests: from a contact point of ``origin`` to the contact point of
    ``country`` in ``network``."""

    origin: str
    sender: str
    network: str
    country: str

    @property
    def contact_point(self) -> str:
        return f"{self.country.lower()}-cp-1"  # the federation's naming (one per country)


def node_url(fed: Federation, network: str, *, port: int | None = None) -> str:
    """The AMQP URL the network's own node uses (its user), optionally through another port;
    for a network on a cluster, its node's URL (node 1, failing over to the others)."""
    cfg = config(fed, network)
    password = cfg.broker.password_file.read_text(encoding="utf-8").strip()
    if fed.cluster(network) is not None and port is None:
        return cfg.broker.url(cfg.broker.user, password)
    return (
        f"amqp://{quote(cfg.broker.user, safe='')}:{quote(password, safe='')}@"
        f"{fed.host}:{port or fed.port}/{quote(fed.vhost(network), safe='')}"
        f"?heartbeat={cfg.broker.heartbeat}"
    )


def admin_url(
    fed: Federation, network: str, admin: ManagementEndpoint, *, door: str | None = None
) -> str:
    """The administrator's URL of ``network``'s vhost, or of its peer ``door``'s door there."""
    return admin_urls(fed, network, admin, door=door)[0]


def admin_urls(
    fed: Federation, network: str, admin: ManagementEndpoint, *, door: str | None = None
) -> list[str]:
    """:func:`admin_url` at each node of ``network``'s broker: the shared broker's one, or each
    node of the cluster it is on (as the cluster's administrator, not ``admin``)."""
    vhost = fed.vhost(network) if door is None else fed.door(network, door)
    site = fed.cluster(network)
    nodes = [f"{fed.host}:{fed.port}"] if site is None else list(site.nodes)
    if site is not None:
        admin = site.admin()
    return [
        f"amqp://{quote(admin.user, safe='')}:{quote(admin.password, safe='')}@"
        f"{node}/{quote(vhost, safe='')}"
        for node in nodes
    ]


def archive_path(fed: Federation, network: str) -> Path:
    """The archive a network's reader keeps for all of its contact points (in a folder of its
    own: case content at rest is owner-only, nodes/state/state_dir.py)."""
    return fed.root / network / "reader" / ARCHIVE_FILE


_KEYS: dict[tuple[Path, str], ContactPointKey] = {}


def signing_key(fed: Federation, contact_point: str) -> ContactPointKey:
    """A contact point's own key (read from its credentials once)."""
    found = _KEYS.get((fed.root, contact_point))
    if found is None:
        found = _KEYS[(fed.root, contact_point)] = credentials(fed, contact_point).key
    return found


_TEXT = (
    "Test request: no real case content. The requesting authority asks for help with a pending "
    "matter; this sentence only fills the payload to a realistic size. "
)


def _text(length: int, salt: int) -> str:
    body = f"[{salt}] " + _TEXT * (length // len(_TEXT) + 1)
    return body[:length]


def request(lane: Lane, size: int, n: int) -> Submission:
    """A submission whose payload is about ``size`` bytes: a facilitation request up to ~4 KB,
    an information request with several questions above (each text at most 4000 characters)."""
    sender_country = lane.sender[:2].upper()
    case_ref = f"{sender_country}-MLA-2026-{n % 10000:04d}"
    if size <= 4200:
        kind = "facilitation_request"
        payload: dict[str, Any] = {
            "case_ref": case_ref,
            "requesting_country": sender_country,
            "requested_country": lane.country,
            "offence_categories": ["cybercrime"],
            "measures_sought": ["e_evidence_preservation"],
            "languages": ["en"],
            "summary": _text(max(1, size - 220), n),
        }
    else:
        kind = "information_request"
        parts = -(-size // 3900)
        payload = {
            "case_ref": case_ref,
            "questions": [_text(size // parts, n * 100 + i) for i in range(parts)],
        }
    return Submission.model_validate(
        {
            "message_id": str(uuid.uuid4()),
            "kind": kind,
            "sender": lane.sender,
            "destination": {"country": lane.country},
            "payload": payload,
        }
    )


class Client:
    """Submits for one network on one connection; retries an unconfirmed attempt."""

    def __init__(
        self,
        fed: Federation,
        network: str,
        history: History,
        *,
        url: str | None = None,
        retry_every: float = 1.0,
        give_up_after: float = 600.0,
    ) -> None:
        self.fed = fed
        self.network = network
        self.history = history
        self.process = f"client:{network}"
        self._url = url or node_url(fed, network)
        self._transport: Transport | None = None
        self._retry_every = retry_every
        self._give_up_after = give_up_after

    async def __aenter__(self) -> Client:
        self._transport = Transport(self._url)
        await self._transport.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._transport is not None:
            with contextlib.suppress(*BROKER_ERRORS):
                await self._transport.aclose()

    async def send(self, lane: Lane, submission: Submission, expect: str = "deliver") -> bool:
        """Submit until confirmed (True) or the patience runs out (False: indeterminate)."""
        assert self._transport is not None, "use the client as an async context manager"
        assert lane.origin == self.network
        self.history.add(
            "submitted",
            self.process,
            message_id=submission.message_id,
            origin=lane.origin,
            sender=lane.sender,
            contact_point=lane.contact_point,
            network=lane.network,
            kind=submission.kind,
            expect=expect,
        )
        deadline = asyncio.get_running_loop().time() + self._give_up_after
        while True:
            try:
                await submit_on(self._transport, signing_key(self.fed, lane.sender), submission)
            except BROKER_ERRORS as exc:
                self.history.add(
                    "submit_failed",
                    self.process,
                    message_id=submission.message_id,
                    origin=lane.origin,
                    reason=type(exc).__name__,
                )
                if asyncio.get_running_loop().time() > deadline:
                    return False
                await asyncio.sleep(self._retry_every)
                continue
            self.history.add(
                "accepted", self.process, message_id=submission.message_id, origin=lane.origin
            )
            return True


@dataclass
class Load:
    """A paced workload: ``rate`` submissions per second for ``duration`` seconds, spread over
    the lanes in turn, payload sizes drawn uniformly from ``sizes`` (bytes)."""

    lanes: list[Lane]
    rate: float
    duration: float
    sizes: tuple[int, int] = (1000, 20000)
    seed: int = 7
    expect: Callable[[Lane, int], str] = field(default=lambda lane, n: "deliver")

    @property
    def count(self) -> int:
        return round(self.rate * self.duration)

    async def run(self, clients: Mapping[str, Client]) -> list[bool]:
        """Start each submission on schedule (concurrently: a slow broker does not slow the
        schedule) and wait for all of them to be confirmed or given up."""
        shapes = random.Random(self.seed)
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks: list[asyncio.Task[bool]] = []
        for n in range(self.count):
            lane = self.lanes[n % len(self.lanes)]
            submission = request(lane, shapes.randint(*self.sizes), n)
            delay = start + n / self.rate - loop.time()
            if delay > 0:  # the pace of the load: its offered rate
                await asyncio.sleep(delay)
            client = clients[lane.origin]
            tasks.append(asyncio.create_task(client.send(lane, submission, self.expect(lane, n))))
        return list(await asyncio.gather(*tasks))


class Reader:
    """Archives the deliveries of a network's contact points, as ``mlanet inbox`` would."""

    def __init__(
        self,
        fed: Federation,
        network: str,
        contact_points: list[str],
        history: History,
        *,
        every: float = 0.05,
    ) -> None:
        self.fed = fed
        self.network = network
        self.contact_points = contact_points
        self.history = history
        self.process = f"reader:{network}"
        self.every = every
        self.errors = 0
        self.slowest = 0.0  # the longest one archiving pass took (seconds)

    async def run(self, stop: asyncio.Event) -> None:
        cfg = config(self.fed, self.network)
        trust: TrustStore = message_trust(load_directory(cfg))
        store = Store(archive_path(self.fed, self.network))
        try:
            while not stop.is_set():
                try:
                    async with Transport(node_url(self.fed, self.network)) as transport:
                        await self._loop(stop, cfg, transport, store, trust)
                except BROKER_ERRORS:
                    self.errors += 1  # the broker is away: reconnect, as a person would
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.5)
        finally:
            store.close()

    async def _loop(
        self, stop: asyncio.Event, cfg: Any, transport: Transport, store: Store, trust: TrustStore
    ) -> None:
        while True:
            for contact_point in self.contact_points:

                def record(taken: Taken, contact_point: str = contact_point) -> None:
                    self.history.add(
                        "delivered" if taken.new else "repeat",
                        self.process,
                        message_id=taken.message_id,
                        origin=taken.origin,
                        sender=taken.sender,
                        contact_point=contact_point,
                        network=self.network,
                        kind=taken.kind,
                    )

                started = time.monotonic()
                key = signing_key(self.fed, contact_point)
                await take_delivered(cfg, key, transport, store, trust, on_taken=record)
                self.slowest = max(self.slowest, time.monotonic() - started)
            if stop.is_set():
                return  # one last sweep after the stop was asked: nothing is left behind
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every)


def reconcile(fed: Federation, reader: Reader, history: History) -> int:
    """Record what the archive of ``reader``'s network holds and the history does not (the
    archive is the definition of delivered; each should have been recorded when it was taken).
    Returns how many were missing: the battery notes any, as a gap of its own reader."""
    recorded = {(op.origin, op.message_id) for op in history.of("delivered")}
    archive = Store(archive_path(fed, reader.network))
    missing = 0
    try:
        for contact_point in reader.contact_points:
            for origin, message_id, kind, wire, received_at in archive.inbox(contact_point):
                if (origin, message_id) in recorded:
                    continue
                missing += 1
                history.add(
                    "delivered",
                    f"archive:{reader.network}",
                    at=received_at,
                    message_id=message_id,
                    origin=origin,
                    sender=_sender(wire),
                    contact_point=contact_point,
                    network=reader.network,
                    kind=kind,
                )
    finally:
        archive.close()
    return missing


def _sender(wire: bytes) -> str | None:
    with contextlib.suppress(ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        encoded = json.loads(wire)["header"]
        header = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
        sender = header.get("origin", {}).get("contact_point")
        return sender if isinstance(sender, str) else None
    return None


def _identify(body: bytes, network: str) -> tuple[str | None, str | None, str | None]:
    """(origin network, message id, kind) of a quarantined body, as far as it can be read."""
    with contextlib.suppress(ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raw = json.loads(body)
        if isinstance(raw, dict) and isinstance(raw.get("header"), str):
            encoded = raw["header"]
            header = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
            origin = header.get("origin", {}).get("network")
            return origin, header.get("message_id"), header.get("kind")
        if isinstance(raw, dict) and "sender" in raw:  # a submission refused at its origin
            return network, raw.get("message_id"), raw.get("kind")
    return None, None, None


def _reason(headers: Mapping[str, Any]) -> str:
    if isinstance(headers.get("x-mlanet-reason"), str):
        return str(headers["x-mlanet-reason"])
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], Mapping):
        return str(deaths[0].get("reason", "dead_lettered"))  # e.g. delivery_limit
    return "unroutable"  # through the alternate exchange: no binding took it


class Collector:
    """Takes what lands in each node's quarantine and records it."""

    def __init__(
        self, fed: Federation, networks: list[str], admin: ManagementEndpoint, history: History
    ) -> None:
        self.fed = fed
        self.networks = networks
        self.admin = admin
        self.history = history
        self.errors = 0

    async def sweep(self) -> int:
        found = 0
        for network in self.networks:
            try:
                found += await self._sweep(network)
            except (*BROKER_ERRORS, sqlite3.Error):
                self.errors += 1
        return found

    def _record(self, network: str, body: bytes, headers: Mapping[str, Any]) -> None:
        origin, message_id, kind = _identify(body, network)
        self.history.add(
            "quarantined",
            "collector",
            message_id=message_id if isinstance(message_id, str) else None,
            origin=origin if isinstance(origin, str) else None,
            network=network,
            kind=kind if isinstance(kind, str) else None,
            reason=_reason(headers),
        )

    async def _sweep(self, network: str) -> int:
        # the node's quarantine store, then what waits in mlanet.quarantine for the node
        taken = take_entries(self.fed, network)
        for entry in taken:
            self._record(network, entry.body, entry.headers)
        found = len(taken)
        connection = await _connect_any(admin_urls(self.fed, network, self.admin))
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(QUARANTINE, passive=True)
            while (message := await queue.get(no_ack=False, fail=False)) is not None:
                self._record(network, message.body, dict(message.headers or {}))
                await message.ack()
                found += 1
        return found

    async def run(self, stop: asyncio.Event, every: float = 0.5) -> None:
        while not stop.is_set():
            await self.sweep()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
        await self.sweep()


async def _connect_any(urls: list[str]) -> aio_pika.abc.AbstractConnection:
    """A connection to the first of ``urls`` (a cluster's nodes) that takes one."""
    for url in urls[:-1]:
        with contextlib.suppress(*BROKER_ERRORS):
            return await aio_pika.connect(url, timeout=10)
    return await aio_pika.connect(urls[-1], timeout=10)


async def until(
    check: Callable[[], Awaitable[bool] | bool], within: float, every: float = 0.2
) -> bool:
    """Poll ``check`` until it holds (True) or ``within`` seconds passed (False)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return True
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(every)
