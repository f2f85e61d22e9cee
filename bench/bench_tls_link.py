"""Benchmark: mlanet's link between two brokers of their own over mutual TLS, beside RabbitMQ's
own shovel over the same TLS link and beside mlanet's plaintext link, in one run.

Two RabbitMQ nodes are started on this machine (``nodes/local/brokers.py``; the shared broker on
:5672 is not used), each with its own CA, an AMQPS listener that requires a client certificate,
and for this comparison also a plaintext listener. Network alpha's link to beta moves alpha's
durable quorum queue ``mlanet.out.beta`` into ``mlanet.inbox.from.alpha`` in alpha's door at
beta, bound to a durable quorum queue. Three shovels do it, one at a time:

- **mlanet TLS**: the definition the node itself declares (``nodes/runtime/reconcile.py``
  ``expected_shovels``, from a node config with ``[link.tls]`` and a directory that lists beta's
  broker with TLS): ``amqps://`` with ``verify=verify_peer`` against beta's CA as the directory
  lists it, the endpoint's name checked, alpha's link certificate presented, EXTERNAL login;
  on-confirm, prefetch 1000;
- **RabbitMQ TLS**: RabbitMQ's shovel with only the required keys (its defaults for the rest)
  over the same TLS URI: the baseline the link should match;
- **mlanet plaintext**: the node's definition for a peer without TLS (``allow_plaintext``):
  ``amqp://`` with the link user's password.

For each round, N persistent messages (the size of a signed envelope) are pre-loaded into the
source queue while no shovel runs; the clock runs from declaring the shovel until the sink
holds N (so it includes one connection set-up, a few milliseconds). The order of the three
rotates each round; the median of each is reported in msg/s with the ratios, and the CPU both
brokers' Erlang VMs spent per message (``/proc``, so Linux only). Both brokers are stopped and
removed at the end, also on failure. Usage: ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pamqp.common import FieldTable

from mlanet.broker.management import ShovelSpec
from mlanet.broker.tls import TlsFiles, ca_bundle, generate_ca, generate_identity, write_identity
from mlanet.broker.topology import door_vhost, inbox_exchange, out_queue
from mlanet.nodes.config import NodeConfig
from mlanet.nodes.local.brokers import BrokerTlsFiles, LocalBroker, LocalBrokerSpec
from mlanet.nodes.runtime.reconcile import expected_shovels, link_name
from mlanet.schemas.directory import Directory

ALPHA, BETA = "alpha", "beta"
SOURCE_VHOST = f"bench-{ALPHA}"
SINK_VHOST = door_vhost(f"bench-{BETA}", ALPHA)  # alpha's door at beta
SOURCE = out_queue(BETA)
EXCHANGE = inbox_exchange(ALPHA)
SINK = "inbox.alpha"
LINK_USER = f"mlanet-{ALPHA}-link"
QUORUM: FieldTable = {"x-queue-type": "quorum"}
PUBLIC = "A6EHv_POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg"  # a signing key the directory lists


@dataclass(frozen=True)
class Side:
    name: str
    ca: x509.Certificate  # the network's CA: what its peers check its broker against
    files: TlsFiles
    broker: LocalBroker

    def admin_url(self, vhost: str) -> str:
        port = self.broker.ports.amqp
        admin = self.broker.admin
        return f"amqp://{admin.user}:{admin.password}@127.0.0.1:{port}/{vhost.replace(':', '%3A')}"

    def cpu_seconds(self) -> float:
        pid = self.broker.pid
        if pid is None:
            return float("nan")
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RabbitShovel(ShovelSpec):
    """RabbitMQ's shovel as its documentation declares one: the required keys only."""

    def definition(self) -> dict[str, Any]:
        return {
            "value": {
                "src-protocol": "amqp091",
                "src-uri": self.src_uri,
                "src-queue": self.src_queue,
                "dest-protocol": "amqp091",
                "dest-uri": self.dest_uri if isinstance(self.dest_uri, str) else self.dest_uri[0],
                "dest-exchange": self.dest_exchange,
            }
        }


async def _prepare(a: Side, b: Side, link_password: str) -> None:
    for side, vhost in ((a, SOURCE_VHOST), (b, SINK_VHOST)):
        async with side.broker.management() as api:
            await api.put_vhost(vhost)
            await api.put_permissions(
                vhost, side.broker.admin.user, configure=".*", write=".*", read=".*"
            )
    async with b.broker.management() as api:
        await api.put_user(LINK_USER, link_password)  # PLAIN for plaintext, EXTERNAL for TLS
        await api.put_permissions(
            SINK_VHOST, LINK_USER, configure="^$", write="^" + re.escape(EXCHANGE) + "$", read="^$"
        )
    connection = await aio_pika.connect(b.admin_url(SINK_VHOST))
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
        )
        queue = await channel.declare_queue(SINK, durable=True, arguments=QUORUM)
        await queue.bind(exchange)
    connection = await aio_pika.connect(a.admin_url(SOURCE_VHOST))
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(SOURCE, durable=True, arguments=QUORUM)


def _directory(b: Side, tls: bool) -> Directory:
    """A directory of alpha and beta; beta's broker listed with TLS (its CA, its AMQPS port) or
    with its plaintext port only."""
    now = datetime.now(UTC)
    pem = b.ca.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def entry(network: str, country: str) -> dict[str, Any]:
        found: dict[str, Any] = {
            "id": network,
            "name": network,
            "members": [country],
            "contact_points": [{"id": f"{country.lower()}-cp-1", "country": country}],
            "keys": [{"key_id": "ed25519:1", "public_key": PUBLIC}],
            "broker": {"host": "localhost", "port": 5672, "vhost": f"bench-{network}"},
        }
        if network == BETA:
            port = b.broker.ports.amqps if tls else b.broker.ports.amqp
            found["broker"]["port"] = port
            if tls:
                found["tls"] = {
                    "endpoints": [{"host": "localhost", "port": port, "server_name": "localhost"}],
                    "cas": [
                        {
                            "id": "beta-ca-1",
                            "pem": pem,
                            "not_before": b.ca.not_valid_before_utc,
                            "not_after": b.ca.not_valid_after_utc,
                        }
                    ],
                }
        return found

    return Directory.model_validate(
        {
            "version": 1,
            "issued_at": now,
            "valid_until": now + timedelta(days=1),
            "networks": [entry(ALPHA, "KH"), entry(BETA, "UZ")],
            "links": [[ALPHA, BETA]],
        },
        strict=False,
    )


def _alpha_config(root: Path, a: Side, password_file: Path, tls: bool) -> NodeConfig:
    """Alpha's node config: what the node would declare its link to beta from."""
    link: dict[str, Any] = {"user": LINK_USER, "password_file": str(password_file)}
    if tls:
        link["tls"] = {
            "cert_file": str(a.files.client_cert),
            "key_file": str(a.files.client_key),
            "ca_folder": str(root / ALPHA / "peers"),
        }
    else:
        link["allow_plaintext"] = True
    return NodeConfig.model_validate(
        {
            "network": ALPHA,
            "signing_key": str(root / "unused.key"),
            "directory": str(root / "unused.json"),
            "state_dir": str(root / "state"),
            "broker": {"vhost": SOURCE_VHOST, "user": "bench", "password_file": "unused"},
            "link": link,
            "peers": [{"network": BETA, "user": LINK_USER, "password_file": str(password_file)}],
        }
    )


def _mlanet_link(root: Path, a: Side, b: Side, password_file: Path, tls: bool) -> ShovelSpec:
    config = _alpha_config(root, a, password_file, tls)
    spec = expected_shovels(config, _directory(b, tls))[link_name(BETA)]
    return spec


async def _preload(a: Side, count: int, size: int) -> None:
    body = os.urandom(size // 2).hex().encode()[:size]
    connection = await aio_pika.connect(a.admin_url(SOURCE_VHOST))
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
    connection = await aio_pika.connect(b.admin_url(SINK_VHOST))
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
            await asyncio.sleep(0.02)  # polling the sink's depth; the clock is the shovel's
        elapsed = time.perf_counter() - started
        cpu = a.cpu_seconds() + b.cpu_seconds() - cpu_before
        async with a.broker.management() as api:
            await api.delete_shovel(SOURCE_VHOST, spec.name)
        sink = await channel.get_queue(SINK, ensure=False)
        await sink.purge()
    return count / elapsed, cpu / count * 1000


LABELS = {
    "tls": "mlanet link, mutual TLS (EXTERNAL)",
    "rabbit": "RabbitMQ shovel, same TLS link",
    "plain": "mlanet link, plaintext (PLAIN)",
}


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="mlanet-bench-tls-") as folder:
        root = Path(folder)
        link_ca = generate_ca("mlanet federation link CA")
        sides = {}
        for name in (ALPHA, BETA):
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
        a, b = sides[ALPHA], sides[BETA]
        try:
            print("starting two RabbitMQ nodes (about 10 s each) ...", file=sys.stderr)
            await asyncio.gather(a.broker.start(), b.broker.start())
            password = os.urandom(16).hex()
            password_file = root / "link.password"
            password_file.write_text(password + "\n", encoding="ascii")
            await _prepare(a, b, password)
            tls = _mlanet_link(root, a, b, password_file, tls=True)
            shovels = {
                "tls": tls,
                "rabbit": RabbitShovel(
                    name="bench-rabbit",
                    vhost=SOURCE_VHOST,
                    src_uri=tls.src_uri,
                    src_queue=SOURCE,
                    dest_uri=tls.dest_uri,
                    dest_exchange=EXCHANGE,
                ),
                "plain": _mlanet_link(root, a, b, password_file, tls=False),
            }
            results: dict[str, list[tuple[float, float]]] = {label: [] for label in shovels}
            orders = itertools.cycle(
                [["tls", "rabbit", "plain"], ["rabbit", "plain", "tls"], ["plain", "tls", "rabbit"]]
            )
            for index in range(args.rounds):
                for label in next(orders):
                    rate, cpu = await _round(
                        a, b, shovels[label], args.messages, args.size, args.within
                    )
                    results[label].append((rate, cpu))
                    print(f"  round {index + 1} {label:6} {rate:8.0f} msg/s", file=sys.stderr)
            report(args, results)
        finally:
            await asyncio.gather(a.broker.stop(), b.broker.stop(), return_exceptions=True)


def report(args: argparse.Namespace, results: dict[str, list[tuple[float, float]]]) -> None:
    rate = {label: statistics.median(r for r, _ in runs) for label, runs in results.items()}
    cpu = {label: statistics.median(c for _, c in runs) for label, runs in results.items()}
    print(
        f"a link between two local brokers: {args.messages} persistent messages of "
        f"{args.size} B, quorum queues; median of {args.rounds} rounds"
    )
    for label, text in LABELS.items():
        print(f"  {text:<38} {rate[label]:8.0f} msg/s   {cpu[label]:6.3f} CPU s/1000 msg")

    def paired(top: str, bottom: str) -> float:
        return statistics.median(
            t[0] / b[0] for t, b in zip(results[top], results[bottom], strict=True)
        )

    print(
        f"  mlanet TLS / RabbitMQ TLS          {rate['tls'] / rate['rabbit']:6.2f}x  "
        f"(paired {paired('tls', 'rabbit'):.2f}x; goal >= 0.9x)"
    )
    print(
        f"  mlanet TLS / mlanet plaintext      {rate['tls'] / rate['plain']:6.2f}x  "
        f"(paired {paired('tls', 'plain'):.2f}x)"
    )
    print(f"  CPU per message TLS / plaintext    {cpu['tls'] / cpu['plain']:6.2f}x  (both brokers)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=20000, help="messages per round")
    parser.add_argument("--size", type=int, default=1600, help="bytes per message")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each kind")
    parser.add_argument("--within", type=float, default=300.0, help="seconds a round may take")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(run(parse_args()))
