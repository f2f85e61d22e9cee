"""Test kit for integration tests: a federation on the real RabbitMQ under a unique prefix,
nodes run in-process or as processes, and a misbehaving peer that publishes straight into a
node's inbox. Nothing here mocks the broker."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aio_pika

from mlanet.broker import SignedMessage, SigningKey, load_signing_key, sign_message
from mlanet.broker.management import ManagementEndpoint
from mlanet.broker.seal import sealing_for
from mlanet.broker.topology import peer_of_peer_inbox
from mlanet.broker.transport import CONTENT_TYPE, QUARANTINE
from mlanet.nodes.config import NodeConfig, load_config
from mlanet.nodes.directory.book import load_directory
from mlanet.nodes.directory.contact_points import Credentials, add_contact_point
from mlanet.nodes.directory.joining import provision_broker
from mlanet.nodes.local.federation import Federation
from mlanet.nodes.runtime.node import Node
from mlanet.nodes.runtime.replicas import replica_config
from mlanet.nodes.state.store import open_node_store
from mlanet.schemas import Destination, FacilitationRequest, Header, Origin
from tests.polling import eventually

ADMIN = ManagementEndpoint("http://127.0.0.1:15672", "guest", "guest")


def amqp(
    fed: Federation,
    network: str,
    *,
    user: str = "guest",
    password: str = "guest",
    door: str | None = None,
) -> str:
    """The URL of ``network``'s vhost, or of the door of its peer ``door`` there."""
    vhost = fed.vhost(network) if door is None else fed.door(network, door)
    return f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:5672/" + quote(
        vhost, safe=""
    )


def config(fed: Federation, network: str) -> NodeConfig:
    return load_config(fed.config_path(network))


def credentials(fed: Federation, contact_point: str) -> Credentials:
    """A contact point's own credentials (its key and broker password), as build wrote them."""
    return Credentials.load(fed.credentials(contact_point))


async def enrol(fed: Federation, network: str, contact_point: str) -> Credentials:
    """What a network's operator does for a contact point the directory added: ``mlanet
    contact-point add`` (its credentials, and its key in the node's folder), then ``mlanet
    directory provision`` (its broker user)."""
    cfg = config(fed, network)
    add_contact_point(cfg, contact_point, fed.root / network / "credentials" / contact_point)
    await provision_broker(cfg, ADMIN)
    return credentials(fed, contact_point)


def key(fed: Federation, network: str) -> SigningKey:
    return load_signing_key(fed.root / network / f"{network}.1.key")


def facilitation(
    fed: Federation,
    origin: str,
    sender: str,
    to_country: str,
    *,
    message_id: str | None = None,
    summary: str = "Test request: no real case content.",
    created_at: datetime | None = None,
    signer: SigningKey | None = None,
    hop_limit: int = 6,
    seal: bool = True,
) -> SignedMessage:
    """A facilitation request signed by ``origin`` as its node would sign it: sealed for the
    network that serves ``to_country`` with its encryption key (unless ``seal`` is false)."""
    signing = signer or key(fed, origin)
    header = Header(
        kind="facilitation_request",
        message_id=message_id or str(uuid.uuid4()),
        origin=Origin(network=origin, country=sender[:2].upper(), contact_point=sender),
        destination=Destination(country=to_country),
        created_at=created_at or datetime.now(UTC),
        key_id=signing.key_id,
        hop_limit=hop_limit,
    )
    seal_with = None
    sealing = sealing_for(header, load_directory(config(fed, origin)), origin) if seal else None
    if sealing is not None:
        statement, seal_with = sealing
        header = header.model_copy(update={"sealed": statement})
    payload = FacilitationRequest(
        case_ref="KH-MLA-2020-0042",
        requesting_country=sender[:2].upper(),
        requested_country=to_country,
        offence_categories=["drug_trafficking"],
        measures_sought=["evidence"],
        languages=["en"],
        summary=summary,
    )
    return sign_message(header, payload, signing, seal_with=seal_with)


async def inject(fed: Federation, receiver: str, sender: str, body: bytes, **props: Any) -> None:
    """Publish ``body`` into ``receiver``'s inbox as peer ``sender`` would (its own user)."""
    connection = await aio_pika.connect(
        amqp(
            fed,
            receiver,
            user=fed.link_user(sender),
            password=fed.link_password(sender),
            door=sender,
        )
    )
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(f"mlanet.inbox.from.{sender}", ensure=False)
        props.setdefault("content_type", CONTENT_TYPE)
        props.setdefault("delivery_mode", aio_pika.DeliveryMode.PERSISTENT)
        await exchange.publish(aio_pika.Message(body, **props), routing_key="")


@dataclass
class Drained:
    body: bytes
    headers: dict[str, Any]
    message_id: str | None


async def drain(
    fed: Federation, network: str, queue: str, *, door: str | None = None
) -> list[Drained]:
    """Take every message out of a queue of ``network`` (in the door of its peer ``door``), as
    the broker administrator; for ``mlanet.quarantine``, every entry of the node's quarantine
    store first."""
    out: list[Drained] = []
    if queue == QUARANTINE:
        from tests.integration.quarantine_kit import take_entries

        out = take_entries(fed, network)
    door = door or peer_of_peer_inbox(queue)  # a peer's inbox queue is in its door
    connection = await aio_pika.connect(amqp(fed, network, door=door))
    async with connection:
        channel = await connection.channel()
        declared = await channel.get_queue(queue, ensure=False)
        while (message := await declared.get(no_ack=False, fail=False)) is not None:
            out.append(Drained(message.body, dict(message.headers or {}), message.message_id))
            await message.ack()
    return out


async def depth(fed: Federation, network: str, queue: str, *, door: str | None = None) -> int:
    """Messages ready in ``queue`` of ``network`` (in the door of its peer ``door``; a peer's
    inbox queue is always in that peer's door)."""
    connection = await aio_pika.connect(amqp(fed, network, door=door or peer_of_peer_inbox(queue)))
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        count = int(declared.declaration_result.message_count or 0)
    if queue == QUARANTINE:  # and the entries the node took into its quarantine store
        from tests.integration.quarantine_kit import stored

        count += stored(fed, network)
    return count


async def drained(fed: Federation, network: str, *queues: str, within: float = 60.0) -> None:
    """Wait until none of ``network``'s ``queues`` holds a message: nothing more is on its way
    through them (what a test checks for absence after this)."""

    async def empty() -> bool:
        return all([await depth(fed, network, queue) == 0 for queue in queues])

    await eventually(empty, within=within, what=f"{', '.join(queues)} empty at {network}")


def outbox_state(fed: Federation, network: str, message_id: str) -> str | None:
    store = open_node_store(config(fed, network))
    try:
        entry = store.outbox_get(message_id)
        return entry.state if entry else None
    finally:
        store.close()


@dataclass
class InProcessNodes:
    """Nodes running as tasks of the test's event loop."""

    fed: Federation
    nodes: dict[str, Node] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    async def start(self, *networks: str) -> None:
        for network in networks:
            node = Node(config(self.fed, network))
            self.nodes[network] = node
            self.tasks[network] = asyncio.create_task(node.run(), name=f"node-{network}")
        for network in networks:
            ready = asyncio.create_task(self.nodes[network].ready.wait())
            done, _ = await asyncio.wait(
                {ready, self.tasks[network]}, timeout=30, return_when=asyncio.FIRST_COMPLETED
            )
            if ready not in done:
                ready.cancel()
                if self.tasks[network].done():
                    self.tasks[network].result()  # raises the node's error
                raise AssertionError(f"node {network} not ready")

    async def start_replica(self, network: str, name: str) -> Node:
        """One more replica of ``network``'s node (its state in PostgreSQL), known as
        ``<network>/<name>``."""
        node = Node(replica_config(config(self.fed, network), name), replica=name)
        self.nodes[f"{network}/{name}"] = node
        task = asyncio.create_task(node.run(), name=f"node-{network}-{name}")
        self.tasks[f"{network}/{name}"] = task
        ready = asyncio.create_task(node.ready.wait())
        done, _ = await asyncio.wait({ready, task}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            if task.done():
                task.result()
            raise AssertionError(f"replica {name} of {network} not ready")
        return node

    async def stop(self, *networks: str) -> None:
        for network in networks or tuple(self.nodes):
            node, task = self.nodes.pop(network), self.tasks.pop(network)
            node.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=20)


@contextlib.asynccontextmanager
async def running(fed: Federation, *networks: str) -> AsyncIterator[InProcessNodes]:
    nodes = InProcessNodes(fed)
    try:
        await nodes.start(*networks)
        yield nodes
    finally:
        await nodes.stop()


async def close_connections(fed: Federation, network: str) -> None:
    """Force-close every connection of a network's vhost and its doors (nodes and shovels
    alike)."""
    for vhost in (fed.vhost(network), *(fed.door(network, peer) for peer in fed.peers(network))):
        process = await asyncio.create_subprocess_exec(
            "rabbitmqctl",
            "-q",
            "close_all_connections",
            "--vhost",
            vhost,
            "mlanet fault test",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await process.communicate()
        assert process.returncode == 0, err.decode(errors="replace")


async def mlanet_send(
    fed: Federation, *flags: str, summary: str = "Test request: no real case content."
) -> tuple[int, str]:
    """``mlanet send`` as kh-cp-1 types it, against SEAJust's config: its exit code and what it
    said (stdout and stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mlanet",
        "send",
        "--config",
        str(fed.config_path("seajust")),
        "--credentials",
        str(fed.credentials("kh-cp-1")),
        "--case-ref",
        "KH-MLA-2020-0042",
        "--summary",
        summary,
        *flags,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode() + err.decode()


def collect_own_garbage(who: str) -> None:
    """Collect now what refused connections left for the garbage collector (an aiormq
    connection refused during its TLS handshake or at connection.open leaves its socket and a
    close() never awaited), so that it surfaces here and not as a ResourceWarning in whichever
    later test runs when the collector happens to run. What is found is printed: the leak stays
    visible."""
    found: list[str] = []
    previous = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: found.append(repr(unraisable.exc_value))
    try:
        gc.collect()
    finally:
        sys.unraisablehook = previous
    for leaked in found:
        print(f"{who}: left for the garbage collector: {leaked}", file=sys.__stderr__)
