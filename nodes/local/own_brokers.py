"""A local federation where every network runs a RabbitMQ node of its own, and the links
between them are AMQPS with mutual TLS: the shape of a real federation, on one machine
(issue 13; ``mlanet federation init --own-brokers``, ``mlanet demo --own-brokers``).

Each network (the coordinator's too) gets, in ``<root>/<network>/``:

- ``tls/ca.pem`` and ``ca.key``: the network's CA, which the directory publishes as the CA its
  broker's certificate comes from; ``tls/server.pem`` and ``server.key``: that certificate
  (``localhost`` and ``127.0.0.1``);
- ``tls/link.pem`` and ``link.key``: its link certificate, whose common name is its link user,
  issued by the coordinator's link CA (``<root>/link-ca/``); peers' brokers log its links in
  by it (EXTERNAL);
- ``tls/client-cas.pem``: the only issuers whose client certificates its broker accepts: its
  own CA and the link CA. A broker that trusted its peers' CAs would let any peer mint a
  certificate naming another peer's link user (``broker/tls.py``);
- ``tls/peers/``: where its node writes each peer's CA file from the directory, for its
  broker's shovels to read;
- ``broker/``: its RabbitMQ node (``nodes/local/brokers.py``): own node name, ports, data,
  logs, cookie and plugins; AMQPS and HTTPS only, no plaintext listener, no guest.

The node logs in to its own broker with its password over TLS (as do its contact points: the
broker asks for a client certificate but lets a client without one log in by password);
links log in by certificate only (the directory publishes the hash of a password nobody
keeps). :func:`prepare` writes the files and records the brokers in ``federation.json``
before any starts; :func:`up` starts them all at once and provisions each with its own
administrator over HTTPS; :func:`down` stops them and removes their folders, from the record
alone (another process: ``mlanet federation down``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path

from mlanet.broker.errors import ConfigError
from mlanet.broker.tls import CertificateAuthority, ca_bundle, generate_ca, write_issued
from mlanet.broker.tls import generate_identity as tls_identity
from mlanet.nodes.local.brokers import (
    ADMIN_USER,
    BrokerTlsFiles,
    LocalBroker,
    LocalBrokerSpec,
)
from mlanet.nodes.local.federation import (
    COORDINATOR,
    EXAMPLE_NETWORKS,
    PEER_CA_FOLDER,
    TLS_FILES,
    BrokerSite,
    Federation,
    build,
    check_folder,
    provision_network,
    signed_directory,
)
from mlanet.schemas.directory import Directory

__all__ = ["LINK_CA_FOLDER", "brokers", "down", "prepare", "up"]

LINK_CA_FOLDER = "link-ca"  # the coordinator's link CA: ca.pem, ca.key (0600)
START_WITHIN = 180.0  # seconds for every broker to serve: 6 starting at once on 2 cores take ~30


def _pem(path: Path) -> str:
    return path.read_text(encoding="ascii")


def _link_ca(root: Path) -> CertificateAuthority:
    folder = root / LINK_CA_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    link_ca = generate_ca("mlanet federation link CA")
    write_issued(link_ca, folder / "ca.pem", folder / "ca.key")
    return link_ca


def _broker(
    root: Path, prefix: str, network: str, link_ca: CertificateAuthority, taken: set[int]
) -> LocalBroker:
    """Write ``network``'s TLS files and its broker's folder (ports none of ``taken``)."""
    tls = root / network / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    tls.chmod(0o700)
    (root / network / PEER_CA_FOLDER).mkdir(exist_ok=True)
    identity = tls_identity(network, f"{prefix}-{network}-link", link_ca=link_ca)
    ca, link = root / network / TLS_FILES["ca"], root / network / TLS_FILES["link_cert"]
    write_issued(identity.ca, ca, tls / "ca.key")
    write_issued(identity.server, tls / "server.pem", tls / "server.key")
    write_issued(identity.client, link, root / network / TLS_FILES["link_key"])
    client_cas = ca_bundle([identity.ca.certificate, link_ca.certificate], tls / "client-cas.pem")
    spec = LocalBrokerSpec(
        network,
        root / network / "broker",
        BrokerTlsFiles(ca, tls / "server.pem", tls / "server.key", client_cas),
        fail_if_no_peer_cert=False,  # the node and contact points log in by password over TLS
    )
    for _ in range(5):
        broker = LocalBroker(spec)
        ports = {broker.amqp_port, broker.ports.management, broker.ports.dist}
        if not ports & taken:
            taken |= ports
            return broker
    raise ConfigError(f"no free ports for {network}'s broker after 5 tries")


def prepare(
    root: Path,
    *,
    prefix: str = "mlanet",
    networks: dict[str, tuple[str, list[str]]] | None = None,
    links: list[tuple[str, str]] | None = None,
    coordinator: str | None = COORDINATOR,
    receipts: dict[str, float] | None = None,
    operator_port: int = 0,
    valid_for: timedelta = timedelta(days=30),
    database_url: str | None = None,
) -> Federation:
    """Write everything of a federation on brokers of its own (module docstring) and record
    its brokers in ``federation.json``; nothing is started. ConfigError when ``root`` holds
    another federation (``federation.check_folder``)."""
    check_folder(root, prefix)
    root.mkdir(parents=True, exist_ok=True)
    nodes = [*(networks or EXAMPLE_NETWORKS), *((coordinator,) if coordinator else ())]
    link_ca = _link_ca(root)
    taken: set[int] = set()
    made = {network: _broker(root, prefix, network, link_ca, taken) for network in nodes}
    sites = {
        network: BrokerSite(
            broker.amqp_port, broker.admin.url, _pem(root / network / TLS_FILES["ca"])
        )
        for network, broker in made.items()
    }
    return build(
        root,
        prefix=prefix,
        networks=networks,
        links=links,
        receipts=receipts,
        operator_port=operator_port,
        coordinator=coordinator,
        valid_for=valid_for,
        sites=sites,
        link_ca_pem=_pem(root / LINK_CA_FOLDER / "ca.pem"),
        brokers=tuple(broker.record() for broker in made.values()),
        database_url=database_url,
    )


def brokers(federation: Federation) -> dict[str, LocalBroker]:
    """The federation's brokers by network, found again from its record."""
    return {record.spec.network: LocalBroker.attach(record) for record in federation.brokers}


async def _provision(federation: Federation, directory: Directory, broker: LocalBroker) -> None:
    async with broker.management() as management:
        await provision_network(management, federation, directory, broker.spec.network, ADMIN_USER)


async def up(federation: Federation, *, within: float = START_WITHIN) -> None:
    """Start every broker of the federation at once, then provision each (its network's vhost,
    node user, contact points and doors) with its own administrator over HTTPS. When one fails,
    every one is stopped, its folder kept for its log (``down`` removes them); the error names
    the broker."""
    if not federation.brokers:
        raise ConfigError(f"{federation.root} records no brokers of their own")
    started = brokers(federation)
    directory = signed_directory(federation)
    try:
        async with asyncio.TaskGroup() as group:
            for broker in started.values():
                group.create_task(broker.start(within))
        async with asyncio.TaskGroup() as group:
            for broker in started.values():
                group.create_task(_provision(federation, directory, broker))
    except BaseException as exc:
        await _stop(started.values(), remove=False)  # what failed is what is raised
        if isinstance(exc, BaseExceptionGroup):
            raise exc.exceptions[0] from None  # the first to fail names its broker
        raise


async def _stop(found: Iterable[LocalBroker], *, remove: bool) -> list[BaseException]:
    """Stop every broker at once; what failed, after all were tried."""
    results = await asyncio.gather(
        *(broker.stop(remove=remove) for broker in found), return_exceptions=True
    )
    return [result for result in results if isinstance(result, BaseException)]


async def down(federation: Federation) -> list[str]:
    """Stop the federation's brokers (all at once) and remove their folders; the networks
    whose broker was stopped or removed. A broker whose folder is already gone is skipped;
    one that does not stop raises LocalBrokerError (the others are stopped all the same)."""
    present = [record for record in federation.brokers if record.spec.root.exists()]
    failed = await _stop([LocalBroker.attach(record) for record in present], remove=True)
    if failed:
        raise failed[0]
    return [record.spec.network for record in present]
