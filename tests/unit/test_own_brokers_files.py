"""What ``own_brokers.prepare`` writes for a federation on brokers of its own, before any broker
starts (``nodes/local/own_brokers.py``): node configs that speak TLS to their own broker and
link by certificate, a directory that lists each broker's endpoint and CA and the link CA, the
brokers' record in ``federation.json`` that ``down`` finds them by, and broker settings that
trust client certificates from the network's CA and the link CA only."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mlanet.broker.directory_tls import parse_ca
from mlanet.broker.errors import ConfigError
from mlanet.broker.tls import fingerprint, load_certificates
from mlanet.nodes.config import load_config
from mlanet.nodes.local import own_brokers
from mlanet.nodes.local.brokers import LocalBroker
from mlanet.nodes.local.federation import (
    COORDINATOR,
    EXAMPLE_NETWORKS,
    TLS_FILES,
    Federation,
    build,
    signed_directory,
)

NETWORKS = {name: EXAMPLE_NETWORKS[name] for name in ("seajust", "casc")}
LINKS = [("seajust", "casc")]


@pytest.fixture
def fed(tmp_path: Path) -> Federation:
    return own_brokers.prepare(
        tmp_path / "federation", prefix="t-own", networks=NETWORKS, links=LINKS
    )


def test_each_node_config_names_its_own_broker_over_tls_and_its_link_certificate(
    fed: Federation,
) -> None:
    """Every node's config: its own broker's AMQPS port and HTTPS management API (distinct per
    network), checked against its network's CA, password login; [link.tls] with the link
    certificate, no link password and no plaintext allowance."""
    ports = set()
    for network in fed.nodes:
        config = load_config(fed.config_path(network))
        record = fed.broker(network)
        assert record is not None
        assert config.broker.port == record.ports.amqps
        assert config.broker.management_url == f"https://127.0.0.1:{record.ports.management}"
        assert config.broker.tls is not None
        assert config.broker.tls.login == "password"
        assert config.broker.tls.ca_file == record.spec.tls.server_ca
        assert config.link is not None
        assert config.link.tls is not None
        assert config.link.password_file is None
        assert not config.link.allow_plaintext
        assert config.link.tls.cert_file == fed.root / network / TLS_FILES["link_cert"]
        ports.add(record.ports.amqps)
        assert not (fed.root / network / "link.password").exists()
    assert len(ports) == len(fed.nodes)


def test_the_directory_lists_each_broker_its_ca_and_the_link_ca(fed: Federation) -> None:
    """Each network's entry: its AMQPS endpoint (server name localhost) and the CA that issued
    its broker's certificate; ``link_cas``: the CA that issued every link certificate, whose
    common name is that network's link user."""
    directory = signed_directory(fed)
    now = datetime.now(UTC)
    assert directory.link_cas is not None
    [link_ca] = directory.link_cas
    for network in fed.nodes:
        entry = directory.network(network)
        assert entry is not None
        assert entry.tls is not None
        record = fed.broker(network)
        assert record is not None
        assert [(e.host, e.port, e.server_name) for e in entry.tls.endpoints] == [
            ("127.0.0.1", record.ports.amqps, "localhost")
        ]
        [ca] = entry.tls.valid_cas(now)
        server = load_certificates(record.spec.tls.certfile)[0]
        assert server.issuer == load_certificates(record.spec.tls.server_ca)[0].subject
        assert ca.pem == record.spec.tls.server_ca.read_text()
        link = load_certificates(fed.root / network / TLS_FILES["link_cert"])[0]
        assert link.subject.rfc4514_string() == f"CN={fed.link_user(network)}"
        assert link.issuer == parse_ca(link_ca.pem).subject


def test_a_broker_trusts_client_certificates_of_its_own_ca_and_the_link_ca_only(
    fed: Federation,
) -> None:
    """A broker's ``ssl_options.cacertfile`` holds exactly its network's CA and the link CA
    (a peer's CA there would let that peer mint another peer's link user); its config has no
    plaintext listener."""
    link_ca = load_certificates(fed.root / own_brokers.LINK_CA_FOLDER / "ca.pem")[0]
    for record in fed.brokers:
        trusted = {fingerprint(c) for c in load_certificates(record.spec.tls.client_cas)}
        own = load_certificates(record.spec.tls.server_ca)[0]
        assert trusted == {fingerprint(own), fingerprint(link_ca)}
        text = (record.spec.root / "rabbitmq.conf").read_text()
        assert "listeners.tcp = none" in text
        assert f"ssl_options.cacertfile = {record.spec.tls.client_cas}" in text


def test_the_record_finds_every_broker_again(fed: Federation) -> None:
    """``federation.json`` names every node's broker; another process finds each again (node
    name, ports, folders, administrator) without writing anything."""
    loaded = Federation.load(fed.root)
    assert loaded.brokers == fed.brokers
    assert {record.spec.network for record in loaded.brokers} == {*NETWORKS, COORDINATOR}
    for record in loaded.brokers:
        config = (record.spec.root / "rabbitmq.conf").read_bytes()
        broker = LocalBroker.attach(record)
        assert (broker.nodename, broker.ports) == (record.nodename, record.ports)
        assert broker.admin.password in config.decode()
        assert (record.spec.root / "rabbitmq.conf").read_bytes() == config


def test_a_folder_with_brokers_of_its_own_is_not_overwritten(fed: Federation) -> None:
    """Its brokers may run: neither a new federation on brokers of its own nor one on the shared
    broker is written over it while their folders are there; once down removed them, it is."""
    with pytest.raises(ConfigError, match="brokers of its own"):
        own_brokers.prepare(fed.root, prefix=fed.prefix, networks=NETWORKS)
    with pytest.raises(ConfigError, match="brokers of its own"):
        build(fed.root, prefix=fed.prefix, networks=NETWORKS, links=LINKS)
    for record in fed.brokers:  # what down does, once they are stopped
        shutil.rmtree(record.spec.root)
    again = own_brokers.prepare(fed.root, prefix=fed.prefix, networks=NETWORKS, links=LINKS)
    assert {record.nodename for record in again.brokers}.isdisjoint(
        {record.nodename for record in fed.brokers}
    )


def test_a_shared_broker_federation_records_no_broker(tmp_path: Path) -> None:
    """The default federation records no broker of its own, so down removes it from the shared
    broker as before; a record an older version wrote (no ``brokers``) still loads."""
    fed = build(tmp_path / "shared", prefix="t-shared", networks=NETWORKS, links=LINKS)
    assert Federation.load(fed.root).brokers == ()
    record = fed.root / "federation.json"
    older = json.loads(record.read_text())
    del older["brokers"]
    record.write_text(json.dumps(older))
    assert Federation.load(fed.root).brokers == ()
    config = load_config(fed.config_path("seajust"))
    assert config.broker.tls is None
    assert config.link is not None
    assert config.link.allow_plaintext
