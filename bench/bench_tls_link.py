"""Benchmark: a link between two brokers of their own, over plaintext AMQP and over mutual TLS.

Two RabbitMQ nodes are started on this machine (``nodes/local/brokers.py``; the shared broker on
:5672 is not used), each with its own CA, an AMQPS listener that requires a client certificate,
and for this comparison also a plaintext listener. A RabbitMQ dynamic shovel on broker A moves a
durable quorum queue into an exchange on broker B, bound to a durable quorum queue, with
``ack-mode = on-confirm`` and prefetch 1000, the way mlanet's links do:

- **plaintext**: ``amqp://`` with the link user's password (PLAIN);
- **mutual TLS**: ``amqps://`` with ``verify=verify_peer`` against B's CA, the host name
  checked, A's link certificate presented and EXTERNAL login (``broker/tls.py``).

For each round, N persistent messages (the size of a signed envelope) are pre-loaded into A's
source queue while no shovel runs; the clock runs from declaring the shovel until B's queue
holds N (so it includes one connection set-up, a few milliseconds). Rounds alternate plaintext
and TLS; the median of each is reported in msg/s with the ratio TLS / plaintext, and the CPU
both brokers' Erlang VMs spent per message (``/proc``, so Linux only). Both brokers are stopped
and removed at the end, also on failure. Usage: ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aio_pika
from cryptography import x509
from pamqp.common import FieldTable

from mlanet.broker.management import ShovelSpec
from mlanet.broker.tls import (
    TlsFiles,
    ca_bundle,
    generate_ca,
    generate_identity,
    peer_ca_file,
    shovel_uri,
    write_identity,
)
from mlanet.nodes.local.brokers import BrokerTlsFiles, LocalBroker, LocalBrokerSpec

VHOST = "mlanet-bench"
SOURCE = "mlanet.out.b"
EXCHANGE = "mlanet.inbox.from.a"
SINK = "inbox.a"
LINK_USER = "mlanet-a-link"
QUORUM: FieldTable = {"x-queue-type": "quorum"}


@dataclass(frozen=True)
class Side:
    name: str
    ca: x509.Certificate  # the network's CA: what its peers check its broker against
    files: TlsFiles
    broker: LocalBroker

    def admin_url(self) -> str:
        port = self.broker.ports.amqp
        admin = self.broker.admin
        return f"amqp://{admin.user}:{admin.password}@127.0.0.1:{port}/{VHOST}"

    def cpu_seconds(self) -> float:
        pid = self.broker.pid
        if pid is None:
            return float("nan")
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _prepare(a: Side, b: Side, link_password: str) -> None:
    for side in (a, b):
        async with side.broker.management() as api:
            await api.put_vhost(VHOST)
            await api.put_permissions(
                VHOST, side.broker.admin.user, configure=".*", write=".*", read=".*"
            )
    async with b.broker.management() as api:
        await api.put_user(LINK_USER, link_password)  # PLAIN for plaintext, EXTERNAL for TLS
        await api.put_permissions(
            VHOST, LINK_USER, configure="^$", write="^" + re.escape(EXCHANGE) + "$", read="^$"
        )
    connection = await aio_pika.connect(b.admin_url())
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
        )
        queue = await channel.declare_queue(SINK, durable=True, arguments=QUORUM)
        await queue.bind(exchange)
    connection = await aio_pika.connect(a.admin_url())
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(SOURCE, durable=True, arguments=QUORUM)


async def _preload(a: Side, count: int, size: int) -> None:
    body = os.urandom(size // 2).hex().encode()[:size]
    connection = await aio_pika.connect(a.admin_url())
    async with connection:
        channel = await connection.channel()
        window = 500
        for start in range(0, count, window):
            await asyncio.gather(
                *(
                    channel.default_exchange.publish(
                        aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                        routing_key=SOURCE,
                    )
                    for _ in range(min(window, count - start))
                )
            )


async def _depth(channel: aio_pika.abc.AbstractChannel, queue: str) -> int:
    declared = await channel.declare_queue(queue, passive=True)
    return declared.declaration_result.message_count or 0


async def _round(
    a: Side, b: Side, spec: ShovelSpec, count: int, size: int, within: float
) -> tuple[float, float]:
    """(msg/s, broker CPU seconds per 1000 messages) for one shovel run of ``count``."""
    await _preload(a, count, size)
    connection = await aio_pika.connect(b.admin_url())
    async with connection:
        channel = await connection.channel()
        cpu_before = a.cpu_seconds() + b.cpu_seconds()
        async with a.broker.management() as api:
            started = time.perf_counter()
            await api.put_shovel(spec)
        deadline = started + within
        while await _depth(channel, SINK) < count:
            if time.perf_counter() > deadline:
                raise RuntimeError(
                    f"the {spec.name} shovel moved fewer than {count} messages in {within:.0f} s"
                )
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
        cpu = a.cpu_seconds() + b.cpu_seconds() - cpu_before
        async with a.broker.management() as api:
            await api.delete_shovel(VHOST, spec.name)
        sink = await channel.get_queue(SINK, ensure=False)
        await sink.purge()
    return count / elapsed, cpu / count * 1000


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="mlanet-bench-tls-") as folder:
        root = Path(folder)
        link_ca = generate_ca("mlanet federation link CA")
        sides = {}
        for name in ("a", "b"):
            identity = generate_identity(name, f"mlanet-{name}-link", link_ca=link_ca)
            files = write_identity(identity, root / name / "tls")
            client_cas = ca_bundle(
                [identity.ca.certificate, link_ca.certificate], files.folder / "client-cas.pem"
            )
            spec = LocalBrokerSpec(
                name,
                root / name / "broker",
                BrokerTlsFiles(files.ca_cert, files.server_cert, files.server_key, client_cas),
                plaintext=True,  # only for the comparison: mlanet's links are TLS only
            )
            sides[name] = Side(name, identity.ca.certificate, files, LocalBroker(spec))
        a, b = sides["a"], sides["b"]
        try:
            print("starting two RabbitMQ nodes (about 10 s each) ...", file=sys.stderr)
            await asyncio.gather(a.broker.start(), b.broker.start())
            password = os.urandom(16).hex()
            await _prepare(a, b, password)
            b_ca = peer_ca_file([b.ca], a.files.folder, "b")
            plain = ShovelSpec(
                name="bench-plain",
                vhost=VHOST,
                src_uri=f"amqp:///{VHOST}",
                src_queue=SOURCE,
                dest_uri=f"amqp://{LINK_USER}:{password}@localhost:{b.broker.ports.amqp}/{VHOST}",
                dest_exchange=EXCHANGE,
            )
            tls = ShovelSpec(
                name="bench-tls",
                vhost=VHOST,
                src_uri=f"amqp:///{VHOST}",
                src_queue=SOURCE,
                dest_uri=shovel_uri(
                    "localhost",
                    b.broker.ports.amqps,
                    VHOST,
                    cacertfile=b_ca,
                    certfile=a.files.client_cert,
                    keyfile=a.files.client_key,
                ),
                dest_exchange=EXCHANGE,
            )
            results: dict[str, list[tuple[float, float]]] = {"plain": [], "tls": []}
            for index in range(args.rounds):
                order = [("plain", plain), ("tls", tls)]
                if index % 2:
                    order.reverse()
                for label, shovel in order:
                    rate, cpu = await _round(a, b, shovel, args.messages, args.size, args.within)
                    results[label].append((rate, cpu))
                    print(f"  round {index + 1} {label:5} {rate:8.0f} msg/s", file=sys.stderr)
            report(args, results)
        finally:
            await asyncio.gather(a.broker.stop(), b.broker.stop(), return_exceptions=True)


def report(args: argparse.Namespace, results: dict[str, list[tuple[float, float]]]) -> None:
    plain = statistics.median(rate for rate, _ in results["plain"])
    tls = statistics.median(rate for rate, _ in results["tls"])
    plain_cpu = statistics.median(cpu for _, cpu in results["plain"])
    tls_cpu = statistics.median(cpu for _, cpu in results["tls"])
    print(
        f"shovel link between two local brokers: {args.messages} persistent messages of "
        f"{args.size} B, quorum queues, on-confirm, prefetch 1000; median of {args.rounds} rounds"
    )
    print(f"  plaintext AMQP (PLAIN)          {plain:8.0f} msg/s   {plain_cpu:6.3f} CPU s/1000 msg")
    print(f"  mutual TLS (EXTERNAL, verified) {tls:8.0f} msg/s   {tls_cpu:6.3f} CPU s/1000 msg")
    paired = statistics.median(
        t[0] / p[0] for p, t in zip(results["plain"], results["tls"], strict=True)
    )
    print(f"  ratio TLS / plaintext           {tls / plain:8.2f}x  (of the medians)")
    print(f"  ratio TLS / plaintext           {paired:8.2f}x  (median of each round's pair)")
    print(f"  CPU per message TLS / plaintext {tls_cpu / plain_cpu:8.2f}x  (both brokers)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=20000, help="messages per round")
    parser.add_argument("--size", type=int, default=1600, help="bytes per message")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each kind")
    parser.add_argument("--within", type=float, default=300.0, help="seconds a round may take")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(run(parse_args()))
