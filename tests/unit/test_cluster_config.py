"""A broker that is a RabbitMQ cluster, without a broker: ``[broker] cluster`` and
``cluster_management_urls`` are checked when the config is loaded (each problem one ConfigError
line), shape the node's AMQP URL (the transport reads the other nodes from it) and its
management endpoint; a local cluster's folder (``mlanet cluster up`` before it starts anything)
holds three plaintext nodes with one cookie, one password and ports of their own, and its
record is refused when it points outside its folder."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from mlanet.broker.errors import ConfigError
from mlanet.broker.transport import Transport, with_vhost
from mlanet.nodes.config import load_config
from mlanet.nodes.local.brokers import (
    LocalBrokerError,
    LocalBrokerSpec,
    Ports,
    render_config,
    render_plugins,
)
from mlanet.nodes.local.cluster import LocalCluster

NODES = '["127.0.0.1:5682", "rabbit-3.example:5672"]'


def _write(folder: Path, broker_extra: str, tls: str | None = None) -> Path:
    (folder / "broker.password").write_text("secret\n", encoding="utf-8")
    text = (
        'network = "seajust"\nsigning_key = "seajust.key"\ndirectory = "directory.json"\n'
        'state_dir = "state"\n\n[broker]\nhost = "127.0.0.1"\nvhost = "mlanet-seajust"\n'
        f'user = "mlanet-seajust"\npassword_file = "broker.password"\n{broker_extra}'
    )
    if tls is not None:
        text += f"\n[broker.tls]\n{tls}"
    path = folder / "node.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_cluster_nodes_go_into_the_nodes_url_and_the_transport_reads_them(
    tmp_path: Path,
) -> None:
    config = load_config(
        _write(
            tmp_path,
            f"cluster = {NODES}\n"
            'cluster_management_urls = ["http://127.0.0.1:15682", "http://rabbit-3.example:15672"]\n',
        )
    )
    assert config.broker.cluster == ("127.0.0.1:5682", "rabbit-3.example:5672")
    url = config.amqp_url()
    query = parse_qs(urlsplit(url).query)
    assert query["cluster"] == ["127.0.0.1:5682,rabbit-3.example:5672"]
    assert query["heartbeat"] == ["15"]
    transport = Transport(url)
    assert transport.address == "127.0.0.1:5672, 127.0.0.1:5682 or rabbit-3.example:5672"
    assert transport.node is None  # not connected
    # a door (another vhost) fails over across the same nodes
    assert Transport(with_vhost(url, "mlanet-seajust:door:casc")).address == transport.address
    endpoint = config.management_endpoint()
    assert endpoint.url == "http://127.0.0.1:15672"
    assert endpoint.fallback_urls == ("http://127.0.0.1:15682", "http://rabbit-3.example:15672")


def test_without_a_cluster_the_url_and_endpoint_are_as_before(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, ""))
    assert "cluster" not in parse_qs(urlsplit(config.amqp_url()).query)
    assert Transport(config.amqp_url()).address == "127.0.0.1:5672"
    assert config.management_endpoint().fallback_urls == ()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ('["rabbit-2.example"]', "is not host:port"),
        ('["rabbit-2.example:0"]', "port 0 is not 1-65535"),
        ('["rabbit-2.example:70000"]', "port 70000 is not 1-65535"),
        ('["rabbit 2:5672"]', "is not host:port"),
        ('["user@rabbit-2:5672"]', "is not host:port"),
        ('["rabbit-2:56x2"]', "is not host:port"),
        (f'["{"a" * 300}:5672"]', "at most 260 characters"),
        (str([f"r{i}:5672" for i in range(17)]).replace("'", '"'), "at most 16 items"),
    ],
)
def test_a_cluster_entry_that_is_not_host_and_port_is_refused_with_its_reason(
    tmp_path: Path, value: str, reason: str
) -> None:
    with pytest.raises(ConfigError, match=reason) as refused:
        load_config(_write(tmp_path, f"cluster = {value}\n"))
    assert "broker.cluster" in str(refused.value)


def test_with_tls_every_management_url_of_the_cluster_must_be_https(tmp_path: Path) -> None:
    from mlanet.broker.tls import ca_bundle, generate_ca

    ca_bundle([generate_ca("mlanet seajust CA").certificate], tmp_path / "ca.pem")
    extra = 'cluster_management_urls = ["http://rabbit-2.example:15672"]\n'
    with pytest.raises(ConfigError, match="cluster_management_urls must be https://"):
        load_config(_write(tmp_path, extra, tls='ca_file = "ca.pem"\n'))
    config = load_config(
        _write(
            tmp_path,
            'cluster = ["rabbit-2.example:5671"]\n'
            'cluster_management_urls = ["https://rabbit-2.example:15671"]\n',
            tls='ca_file = "ca.pem"\n',
        )
    )
    url = config.amqp_url()
    assert url.startswith("amqps://")
    assert parse_qs(urlsplit(url).query)["cluster"] == ["rabbit-2.example:5671"]
    assert Transport(url).address == "127.0.0.1:5671 or rabbit-2.example:5671"
    assert config.management_endpoint().verify is not None


@pytest.mark.parametrize("cluster", ["rabbit-2", "rabbit-2:0", "rabbit-2:5672,:5673", "r:99999"])
def test_a_broker_url_with_a_bad_cluster_is_a_config_error(cluster: str) -> None:
    with pytest.raises(ConfigError, match="cluster= in a broker URL"):
        Transport(f"amqp://u:p@127.0.0.1:5672/v?cluster={cluster}")


def test_a_cluster_node_config_is_plaintext_on_the_loopback_and_pauses_a_minority(
    tmp_path: Path,
) -> None:
    spec = LocalBrokerSpec("c-1", tmp_path / "node1", None, home=tmp_path / "home", clustered=True)
    rendered = render_config(spec, Ports(None, 15682, 25682, 5682), "pw", tmp_path / "log")
    settings = dict(line.split(" = ", 1) for line in rendered.splitlines() if " = " in line)
    assert settings["listeners.tcp.1"] == "127.0.0.1:5682"
    assert settings["listeners.ssl"] == "none"
    assert settings["management.tcp.port"] == "15682"
    assert settings["management.tcp.ip"] == "127.0.0.1"
    assert settings["cluster_partition_handling"] == "pause_minority"
    assert settings["max_message_size"] == "327680"
    assert settings["default_user"] == "mlanet-admin"
    assert not any(key.startswith(("ssl_options", "management.ssl")) for key in settings)
    assert render_plugins(tls=False) == (
        "[rabbitmq_management,rabbitmq_shovel,rabbitmq_shovel_management].\n"
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_prepared_cluster_has_three_nodes_one_cookie_one_password_and_own_ports(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cluster"
    cluster = LocalCluster.prepare(root)
    password = (root / "admin.password").read_text(encoding="ascii").strip()
    assert _mode(root / "admin.password") == 0o600
    assert _mode(root / "home" / ".erlang.cookie") == 0o400
    assert not any((root / f"node{n}" / "home").exists() for n in (1, 2, 3))  # the one HOME
    names, ports = set(), []
    for node in cluster.nodes:
        config = node.config_file.read_text(encoding="utf-8")
        assert f"default_pass = {password}" in config
        assert "cluster_partition_handling = pause_minority" in config
        assert node.home == root / "home"
        names.add(node.nodename)
        ports += [node.amqp_port, node.ports.management, node.ports.dist]
        assert node.ports.amqps is None
    assert len(names) == 3
    assert len(set(ports)) == 9
    again = LocalCluster.attach(root)
    assert [n.nodename for n in again.nodes] == [n.nodename for n in cluster.nodes]
    assert again.amqp_addresses() == cluster.amqp_addresses()
    assert again.management_urls() == cluster.management_urls()
    with pytest.raises(LocalBrokerError, match="holds a local cluster already"):
        LocalCluster.prepare(root)


def test_a_cluster_is_only_prepared_in_a_new_or_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "something.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(LocalBrokerError, match="is not an empty folder"):
        LocalCluster.prepare(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["something.txt"]


def test_a_record_that_points_outside_its_folder_or_is_not_one_is_refused(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cluster"
    LocalCluster.prepare(root)
    record = json.loads((root / "cluster.json").read_text(encoding="utf-8"))
    record["nodes"][1]["root"] = str(tmp_path / "elsewhere")
    (root / "cluster.json").write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(LocalBrokerError, match="node 2 is not one of this folder's nodes"):
        LocalCluster.attach(root)
    record["nodes"][1]["root"] = str(root / "node2")
    record["nodes"][2]["nodename"] = "rabbit@localhost"  # the shared broker's node
    (root / "cluster.json").write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(LocalBrokerError, match="node 3 is not one of this folder's nodes"):
        LocalCluster.attach(root)
    for text, reason in [
        ("{", "JSONDecodeError"),
        ('{"kind": "x"}', "not written by mlanet cluster up"),
        (json.dumps(record | {"nodes": record["nodes"][:2]}), "does not list 3 nodes"),
        (json.dumps(record | {"nodes": [{}, {}, {}]}), "node 1 is not readable"),
    ]:
        (root / "cluster.json").write_text(text, encoding="utf-8")
        with pytest.raises(LocalBrokerError, match=reason):
            LocalCluster.attach(root)
    with pytest.raises(LocalBrokerError, match="no local cluster in"):
        LocalCluster.attach(tmp_path / "nothing")


def test_the_cluster_commands_refuse_a_folder_that_holds_no_cluster_and_touch_nothing(
    tmp_path: Path,
) -> None:
    """Each ends with one line: ``up`` refuses a folder in use, ``status`` and ``down`` a
    folder without the record ``up`` writes (nothing removed), ``down`` a missing one is done."""
    from typer.testing import CliRunner

    from mlanet.nodes.cli.app import app

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine", encoding="utf-8")
    runner = CliRunner()
    up = runner.invoke(app, ["cluster", "up", "--root", str(mine)])
    assert up.exit_code == 2
    assert up.output == f"mlanet: {mine} is not an empty folder: give a new one\n"
    status = runner.invoke(app, ["cluster", "status", "--root", str(mine)])
    assert status.exit_code == 1
    assert status.output.startswith(f"mlanet: no local cluster in {mine} (no cluster.json)")
    assert len(status.output.splitlines()) == 1
    down = runner.invoke(app, ["cluster", "down", "--root", str(mine)])
    assert down.exit_code == 1
    assert down.output.endswith("; nothing removed\n")
    assert len(down.output.splitlines()) == 1
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    gone = runner.invoke(app, ["cluster", "down", "--root", str(tmp_path / "gone")])
    assert gone.exit_code == 0
    assert gone.output == f"no cluster in {tmp_path / 'gone'}: nothing to stop (removed already?)\n"


def test_a_federation_with_one_network_on_a_cluster_names_its_nodes_where_each_is_used(
    tmp_path: Path,
) -> None:
    """CASC's config names node 1 and fails over to nodes 2 and 3; the directory lists node 3,
    so SEAJust's link (a plaintext shovel: one URI, one node) goes there; the others stay on
    the shared broker; ``federation.json`` keeps the site, so ``teardown`` finds the cluster."""
    from mlanet.nodes.directory.book import effective_config, load_directory
    from mlanet.nodes.local.federation import Federation, build, signed_directory
    from mlanet.nodes.local.sites import ClusterSite
    from mlanet.nodes.runtime.reconcile import expected_shovels

    cluster = LocalCluster.prepare(tmp_path / "cluster")
    site = ClusterSite.of("casc", cluster)
    fed = build(tmp_path / "fed", prefix="t-cl", port=5999, clusters=(site,))
    nodes, apis = cluster.amqp_addresses(), cluster.management_urls()

    casc = load_config(fed.config_path("casc")).broker
    assert f"{casc.host}:{casc.port}" == nodes[0]
    assert casc.management_url == apis[0]
    assert casc.cluster == tuple(nodes[1:])
    assert casc.cluster_management_urls == tuple(apis[1:])
    seajust = load_config(fed.config_path("seajust"))
    assert (seajust.broker.host, seajust.broker.port, seajust.broker.cluster) == (
        "127.0.0.1",
        5999,
        (),
    )

    listed = signed_directory(fed).network("casc")
    assert listed is not None
    assert f"{listed.broker.host}:{listed.broker.port}" == nodes[2]
    directory = load_directory(seajust)
    shovel = expected_shovels(effective_config(seajust, directory), directory)["mlanet-link-casc"]
    assert isinstance(shovel.dest_uri, str)
    assert f"@{nodes[2]}/" in shovel.dest_uri

    again = Federation.load(fed.root)
    assert again.cluster("casc") == site
    assert again.cluster("seajust") is None
    endpoint = site.admin()
    assert endpoint.user == "mlanet-admin"
    assert endpoint.password == (cluster.root / "admin.password").read_text("ascii").strip()
    assert endpoint.fallback_urls == tuple(apis[1:])
    with pytest.raises(ValueError, match="shared-broker federation"):
        build(tmp_path / "other", prefix="t-cl2", clusters=(ClusterSite.of("nowhere", cluster),))
