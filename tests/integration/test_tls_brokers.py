"""Two networks, each on a RabbitMQ node of its own, linked over AMQPS with mutual TLS (issue 13).

Alpha's and beta's brokers (``nodes/local/brokers.py``) listen for AMQPS only, require a client
certificate, and log a client in by its certificate's common name (EXTERNAL). Each network's CA
issued its broker's certificate; the federation's link CA (the coordinator's) issued each
network's link certificate; a broker accepts client certificates from its own CA and the link
CA only (see ``broker/tls.py``). Both brokers start once for the module (about 10 s each) and
are stopped and removed at the end. The shared broker on :5672 is not used.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import httpx
import pytest

from mlanet.broker.management import ShovelSpec
from mlanet.broker.tls import (
    CertificateAuthority,
    TlsError,
    TlsFiles,
    TlsIdentity,
    TlsReason,
    ca_bundle,
    client_context,
    fingerprint,
    generate_ca,
    generate_identity,
    issue_client_certificate,
    peer_ca_file,
    probe,
    shovel_uri,
    write_identity,
    write_issued,
)
from mlanet.nodes.local.brokers import BrokerTlsFiles, LocalBroker, LocalBrokerSpec

NO_HASH = "rabbit_password_hashing_sha256"
REFUSED = aiormq.exceptions.AMQPConnectionError  # aiormq wraps the TLS and socket errors


@dataclass(frozen=True)
class Network:
    name: str
    identity: TlsIdentity
    files: TlsFiles
    broker: LocalBroker
    admin_cert: Path  # the operator's client certificate (from the network's own CA)
    admin_key: Path

    @property
    def vhost(self) -> str:
        return f"mlanet-{self.name}"

    @property
    def link_user(self) -> str:
        return f"mlanet-{self.name}-link"

    def trusting(self) -> ssl.SSLContext:
        """A client context that checks this network's broker against its CA, no certificate."""
        return client_context([self.identity.ca.certificate])

    async def admin(self) -> aio_pika.abc.AbstractRobustConnection:
        """The administrator over AMQPS: its own client certificate, then PLAIN."""
        context = client_context(
            [self.identity.ca.certificate], cert_file=self.admin_cert, key_file=self.admin_key
        )
        return await aio_pika.connect_robust(
            f"amqps://{self.broker.admin.user}:{self.broker.admin.password}@127.0.0.1:"
            f"{self.broker.ports.amqps}/{self.vhost}",
            ssl_context=context,
            timeout=10,
        )


@dataclass(frozen=True)
class Federation:
    root: Path
    link_ca: CertificateAuthority
    alpha: Network
    beta: Network


async def _provision(net: Network, peer: str) -> None:
    """The network's vhost, its inbox exchange for ``peer`` (bound to a queue the test reads)
    and ``peer``'s link user, which may only write that exchange and has no password."""
    async with net.broker.management() as api:
        await api.put_vhost(net.vhost)
        await api.put_permissions(
            net.vhost, net.broker.admin.user, configure=".*", write=".*", read=".*"
        )
        await api.put_user_hash(f"mlanet-{peer}-link", "", NO_HASH, "")
        await api.put_permissions(
            net.vhost,
            f"mlanet-{peer}-link",
            configure="^$",
            write=rf"^mlanet\.inbox\.from\.{peer}$",
            read="^$",
        )
    connection = await net.admin()
    async with connection:
        channel = await connection.channel()
        for source in (peer, "gamma"):
            exchange = await channel.declare_exchange(
                f"mlanet.inbox.from.{source}", aio_pika.ExchangeType.FANOUT, durable=True
            )
            queue = await channel.declare_queue(f"inbox.{source}", durable=True)
            await queue.bind(exchange)
        await channel.declare_queue(f"mlanet.out.{peer}", durable=True)


async def _start(fed: Federation) -> None:
    await asyncio.gather(fed.alpha.broker.start(), fed.beta.broker.start())
    await asyncio.gather(_provision(fed.alpha, "beta"), _provision(fed.beta, "alpha"))


async def _stop(fed: Federation) -> None:
    await asyncio.gather(fed.alpha.broker.stop(), fed.beta.broker.stop())


def _network(root: Path, name: str, link_ca: CertificateAuthority) -> Network:
    identity = generate_identity(name, f"mlanet-{name}-link", link_ca=link_ca)
    files = write_identity(identity, root / name / "tls")
    client_cas = ca_bundle(
        [identity.ca.certificate, link_ca.certificate], files.folder / "client-cas.pem"
    )
    admin_cert, admin_key = files.folder / "admin.pem", files.folder / "admin.key"
    write_issued(issue_client_certificate(identity.ca, "mlanet-admin"), admin_cert, admin_key)
    spec = LocalBrokerSpec(
        name,
        root / name / "broker",
        BrokerTlsFiles(files.ca_cert, files.server_cert, files.server_key, client_cas),
    )
    return Network(name, identity, files, LocalBroker(spec), admin_cert, admin_key)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("tls-brokers")
    link_ca = generate_ca("mlanet federation link CA")
    federation = Federation(
        root, link_ca, _network(root, "alpha", link_ca), _network(root, "beta", link_ca)
    )
    try:
        asyncio.run(_start(federation))
        yield federation
    finally:
        asyncio.run(_stop(federation))
        assert not (root / "alpha" / "broker").exists()
        assert not (root / "beta" / "broker").exists()


def _link_url(net: Network) -> str:
    return f"amqps://127.0.0.1:{net.broker.ports.amqps}/{net.vhost}?auth=external"


async def _depth(net: Network, queue: str) -> int:
    connection = await net.admin()
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0


async def _until_depth(net: Network, queue: str, wanted: int, within: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while (depth := await _depth(net, queue)) < wanted:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{queue} on {net.name} holds {depth}, not {wanted}")
        await asyncio.sleep(0.2)


async def _connect_and_close(url: str, context: ssl.SSLContext) -> None:
    connection = await aio_pika.connect(url, ssl_context=context, timeout=10)
    await connection.close()


# --- logging in by certificate -------------------------------------------------------------------
async def test_link_user_logs_in_by_its_certificate_and_publishes(fed: Federation) -> None:
    """Alpha's link certificate (CN = alpha's link user, from the link CA) logs in at beta's
    broker with EXTERNAL and no password, and a confirmed publish lands in beta's inbox."""
    before = await _depth(fed.beta, "inbox.alpha")
    context = client_context(
        [fed.beta.identity.ca.certificate],
        cert_file=fed.alpha.files.client_cert,
        key_file=fed.alpha.files.client_key,
    )
    connection = await aio_pika.connect(_link_url(fed.beta), ssl_context=context, timeout=10)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange("mlanet.inbox.from.alpha", ensure=False)
        await exchange.publish(aio_pika.Message(b"sealed envelope"), routing_key="")
    await _until_depth(fed.beta, "inbox.alpha", before + 1)
    async with fed.beta.broker.management() as api:
        connections = await api.user_permissions("mlanet-alpha-link")
    assert [(p["vhost"], p["write"], p["read"], p["configure"]) for p in connections] == [
        ("mlanet-beta", r"^mlanet\.inbox\.from\.alpha$", "^$", "^$")
    ]


async def test_link_user_may_write_only_its_own_inbox_exchange(fed: Federation) -> None:
    """Logged in by its certificate, alpha's link user cannot publish into another network's
    inbox exchange on beta's broker, nor read or declare anything."""
    context = client_context(
        [fed.beta.identity.ca.certificate],
        cert_file=fed.alpha.files.client_cert,
        key_file=fed.alpha.files.client_key,
    )
    connection = await aio_pika.connect(_link_url(fed.beta), ssl_context=context, timeout=10)
    async with connection:
        channel = await connection.channel()
        other = await channel.get_exchange("mlanet.inbox.from.gamma", ensure=False)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await other.publish(aio_pika.Message(b"as gamma"), routing_key="")
        channel = await connection.channel()
        inbox = await channel.get_queue("inbox.alpha", ensure=False)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await inbox.get(fail=False)
        channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await channel.declare_queue("alpha-own-queue")


# --- refusals ------------------------------------------------------------------------------------
async def test_plaintext_connection_to_tls_only_listener_is_refused(fed: Federation) -> None:
    """Beta's broker has no plaintext AMQP listener, and plain AMQP spoken to its TLS port does
    not get a connection."""
    async with fed.beta.broker.management() as api:
        overview = await api.overview()
    protocols = {listener["protocol"] for listener in overview["listeners"]}
    assert "amqp" not in protocols
    assert {"amqp/ssl", "https"} <= protocols
    with pytest.raises(REFUSED):
        await aio_pika.connect(
            f"amqp://{fed.beta.broker.admin.user}:{fed.beta.broker.admin.password}@127.0.0.1:"
            f"{fed.beta.broker.ports.amqps}/",
            timeout=10,
        )


async def test_client_certificate_from_another_network_ca_is_refused(fed: Federation) -> None:
    """A certificate naming alpha's link user, minted by another network's CA (gamma's, which
    beta's broker does not trust for clients), is refused by beta's broker: a network cannot log
    in as another network's link user. (The first test: the same name from the link CA is
    accepted.)"""
    gamma = generate_ca("mlanet gamma CA")
    minted = issue_client_certificate(gamma, "mlanet-alpha-link")
    cert, key = fed.root / "minted.pem", fed.root / "minted.key"
    write_issued(minted, cert, key)
    context = client_context([fed.beta.identity.ca.certificate], cert_file=cert, key_file=key)
    with pytest.raises(REFUSED):
        await _connect_and_close(_link_url(fed.beta), context)


async def test_expired_client_certificate_is_refused(fed: Federation) -> None:
    """A link certificate from the right CA for the right user, but expired, is refused."""
    now = dt.datetime.now(dt.UTC)
    expired = issue_client_certificate(
        fed.link_ca,
        "mlanet-alpha-link",
        not_before=now - dt.timedelta(days=30),
        not_after=now - dt.timedelta(days=1),
    )
    cert, key = fed.root / "expired.pem", fed.root / "expired.key"
    write_issued(expired, cert, key)
    context = client_context([fed.beta.identity.ca.certificate], cert_file=cert, key_file=key)
    # TLS 1.3: the broker's alert (certificate expired) races the client's first read, so the
    # client sees either that alert or a reset; it never gets a connection.
    with pytest.raises(REFUSED):
        await _connect_and_close(_link_url(fed.beta), context)


async def test_client_without_a_certificate_is_refused(fed: Federation) -> None:
    """A TLS client that presents no certificate does not get an AMQP connection."""
    with pytest.raises(REFUSED):
        await _connect_and_close(_link_url(fed.beta), fed.beta.trusting())


async def test_link_certificate_of_a_user_the_broker_does_not_have_is_refused(
    fed: Federation,
) -> None:
    """A valid link certificate (the link CA's, unexpired) for a link user beta's broker does
    not have, as after a network was unlinked and its user removed, is refused at login."""
    removed = issue_client_certificate(fed.link_ca, "mlanet-delta-link")
    cert, key = fed.root / "removed.pem", fed.root / "removed.key"
    write_issued(removed, cert, key)
    context = client_context([fed.beta.identity.ca.certificate], cert_file=cert, key_file=key)
    with pytest.raises(aiormq.exceptions.ProbableAuthenticationError, match="EXTERNAL"):
        await _connect_and_close(_link_url(fed.beta), context)


async def test_client_refuses_a_broker_that_is_not_the_expected_one(fed: Federation) -> None:
    """Checked against alpha's CA (as if the directory named alpha's), beta's broker is refused
    with a reason; a pinned fingerprint that is not beta's is refused; a wrong name is refused;
    beta's own CA and fingerprint pass."""
    port = fed.beta.broker.ports.amqps
    with pytest.raises(TlsError) as other_ca:
        await probe("127.0.0.1", port, fed.alpha.trusting())
    assert other_ca.value.reason is TlsReason.UNKNOWN_CA
    assert "expected CA" in str(other_ca.value)

    with pytest.raises(aiormq.exceptions.AMQPConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        await aio_pika.connect(_link_url(fed.beta), ssl_context=fed.alpha.trusting(), timeout=10)

    with pytest.raises(TlsError) as pinned:
        await probe(
            "127.0.0.1",
            port,
            fed.beta.trusting(),
            pinned=[fingerprint(fed.alpha.identity.server.certificate)],
        )
    assert pinned.value.reason is TlsReason.FINGERPRINT_MISMATCH

    with pytest.raises(TlsError) as name:
        await probe("127.0.0.1", port, fed.beta.trusting(), server_name="broker.gamma.example")
    assert name.value.reason is TlsReason.NAME_MISMATCH

    seen = await probe(
        "127.0.0.1",
        port,
        fed.beta.trusting(),
        pinned=[fingerprint(fed.beta.identity.server.certificate)],
    )
    assert seen.fingerprint == fingerprint(fed.beta.identity.server.certificate)


# --- a shovel over mutual TLS --------------------------------------------------------------------
def _peer_ca_file(fed: Federation, peer: Network, trusted: Network) -> Path:
    """What alpha's node writes from the directory: the CA the directory names for ``peer``
    (here ``trusted``'s, to make a wrong entry on purpose)."""
    return peer_ca_file([trusted.identity.ca.certificate], fed.alpha.files.folder, peer.name)


def _shovel(
    fed: Federation, name: str, peer_ca: Path, server_name: str = "localhost"
) -> ShovelSpec:
    return ShovelSpec(
        name=name,
        vhost=fed.alpha.vhost,
        src_uri=f"amqp:///{fed.alpha.vhost}",
        src_queue="mlanet.out.beta",
        dest_uri=shovel_uri(
            "localhost",
            fed.beta.broker.ports.amqps,
            fed.beta.vhost,
            cacertfile=peer_ca,
            certfile=fed.alpha.files.client_cert,
            keyfile=fed.alpha.files.client_key,
            server_name=server_name,
        ),
        dest_exchange="mlanet.inbox.from.alpha",
    )


async def _shovel_status(net: Network, name: str) -> dict[str, Any]:
    async with httpx.AsyncClient(
        verify=net.broker.server_context(),
        auth=(net.broker.admin.user, net.broker.admin.password),
        timeout=10,
    ) as client:
        response = await client.get(f"{net.broker.admin.url}/api/shovels/{net.vhost}")
        response.raise_for_status()
    found = [item for item in response.json() if item.get("name") == name]
    return dict(found[0]) if found else {}


async def test_shovel_moves_messages_over_mutual_tls_with_external_login(
    fed: Federation,
) -> None:
    """A dynamic shovel on alpha's broker, verifying beta's broker against beta's CA
    (``verify=verify_peer``, host name checked) and logging in with alpha's link certificate
    (EXTERNAL), moves alpha's outgoing queue into beta's inbox exchange; nothing is left behind."""
    count = 200
    before = await _depth(fed.beta, "inbox.alpha")
    async with fed.alpha.broker.management() as api:
        await api.put_shovel(
            _shovel(fed, "mlanet-link-beta", _peer_ca_file(fed, fed.beta, fed.beta))
        )
    connection = await fed.alpha.admin()
    async with connection:
        channel = await connection.channel()
        for index in range(count):
            await channel.default_exchange.publish(
                aio_pika.Message(f"envelope {index}".encode(), delivery_mode=2),
                routing_key="mlanet.out.beta",
            )
    await _until_depth(fed.beta, "inbox.alpha", before + count)
    await _until_depth(fed.alpha, "mlanet.out.beta", 0)
    status = await _shovel_status(fed.alpha, "mlanet-link-beta")
    assert status["state"] == "running"
    async with fed.alpha.broker.management() as api:
        await api.delete_shovel(fed.alpha.vhost, "mlanet-link-beta")


@pytest.mark.parametrize(
    ("wrong", "logged"),
    [("ca", "unknown ca"), ("name", "hostname_check_failed")],
    ids=["another-ca", "another-name"],
)
async def test_shovel_to_a_broker_with_an_unexpected_certificate_does_not_come_up(
    fed: Federation, wrong: str, logged: str
) -> None:
    """When the CA alpha's node has for beta is not the one beta's certificate comes from, or
    the name it expects is not in that certificate, the shovel never connects: it never runs,
    alpha's outgoing message waits, and alpha's broker logs why (unknown CA, host name)."""
    name = f"mlanet-link-wrong-{wrong}"
    if wrong == "ca":
        spec = _shovel(fed, name, _peer_ca_file(fed, fed.beta, fed.alpha))
    else:
        peer_ca = _peer_ca_file(fed, fed.beta, fed.beta)
        spec = _shovel(fed, name, peer_ca, server_name="broker.gamma.example")
    log = fed.alpha.broker.log_folder / "rabbit.log"
    seen = len(log.read_bytes())
    async with fed.alpha.broker.management() as api:
        await api.put_shovel(spec)
    before = await _depth(fed.beta, "inbox.alpha")
    connection = await fed.alpha.admin()
    async with connection:
        channel = await connection.channel()
        await channel.default_exchange.publish(
            aio_pika.Message(b"envelope", delivery_mode=2), routing_key="mlanet.out.beta"
        )
        try:
            deadline = asyncio.get_running_loop().time() + 30
            while logged not in log.read_bytes()[seen:].decode(errors="replace").lower():
                assert asyncio.get_running_loop().time() < deadline, f"no {logged} logged"
                status = await _shovel_status(fed.alpha, name)
                assert status.get("state") != "running", status
                await asyncio.sleep(0.5)
            assert (await _shovel_status(fed.alpha, name)).get("state") != "running"
            assert await _depth(fed.alpha, "mlanet.out.beta") == 1
            assert await _depth(fed.beta, "inbox.alpha") == before
        finally:
            async with fed.alpha.broker.management() as api:
                await api.delete_shovel(fed.alpha.vhost, name)
            outgoing = await channel.get_queue("mlanet.out.beta", ensure=False)
            await outgoing.purge()
