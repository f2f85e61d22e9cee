"""A node, its contact points and its operator's commands reach their own broker over TLS only
(issue 13, point 3).

One RabbitMQ node of this module's own (``nodes/local/brokers.py``: AMQPS and HTTPS only, no
plaintext listener) starts once for the module and is stopped and removed at the end; the
shared broker on :5672 is not used. On it, seajust's vhost, node user and contact point users
are provisioned as ``mlanet federation init`` provisions them. Seajust's node logs in by its
client certificate (EXTERNAL) and its management client by password over HTTPS, both checked
against seajust's CA; its contact points log in with their passwords over TLS. A config whose
CA is another one is refused in one line, and the node keeps retrying.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlanet.broker.tls import (
    ca_bundle,
    generate_ca,
    generate_identity,
    issue_client_certificate,
    write_identity,
    write_issued,
)
from mlanet.broker.transport import deliver_queue
from mlanet.nodes.cli.app import app
from mlanet.nodes.cli.contact import facilitation_request, read_inbox, submit
from mlanet.nodes.config import load_config
from mlanet.nodes.directory.contact_points import Credentials
from mlanet.nodes.local.brokers import BrokerTlsFiles, LocalBroker, LocalBrokerSpec
from mlanet.nodes.local.federation import Federation, build, provision
from mlanet.nodes.runtime.lifecycle import Phase, read_lifecycle
from mlanet.nodes.runtime.node import Node
from tests.integration.kit import collect_own_garbage
from tests.polling import eventually

NETWORKS = {
    "seajust": ("South East Asia Justice Network", ["KH", "LA"]),
    "casc": ("Central Asia and Southern Caucasus Network", ["UZ"]),
}


@pytest.fixture(scope="module", autouse=True)
def _own_garbage() -> Iterator[None]:
    """What this module's refused TLS connections leave for the garbage collector is collected
    here, not in whichever later test runs when the collector happens to run.

    In about one whole-suite run in four a socket of a refused TLS handshake (the wrong-CA
    node, status or send) was left unclosed and surfaced as a ResourceWarning in a later test
    of another module: not reproduced in isolation yet (see the closing note of that change).
    The sockets found are printed, so that the leak stays visible."""
    yield
    collect_own_garbage("test_node_tls")


@dataclass(frozen=True)
class Setup:
    broker: LocalBroker
    fed: Federation
    config: Path  # seajust's node over TLS, logged in by its certificate
    wrong_ca: Path  # the same node, but trusting another CA than the broker's


def _tls_table(folder: Path, ca_file: Path) -> str:
    return (
        "\n[broker.tls]\n"
        f'ca_file = "{ca_file}"\n'
        f'cert_file = "{folder / "node.pem"}"\n'
        f'key_file = "{folder / "node.key"}"\n'
        'login = "certificate"\n'
    )


def _configs(fed: Federation, tls: Path, other_ca: Path) -> tuple[Path, Path]:
    """Seajust's config with ``[broker.tls]``, and a copy that trusts ``other_ca`` (its own
    state folder). Its peers' doors are on this broker; the links to their brokers are another
    matter (tests/integration/test_tls_brokers.py)."""
    path = fed.config_path("seajust")
    text = path.read_text()
    path.write_text(text + _tls_table(tls, tls / "ca.pem"), encoding="utf-8")
    wrong = path.with_name("wrong-ca.toml")
    wrong.write_text(
        text.replace('state_dir = "state"', 'state_dir = "state-wrong-ca"')
        + _tls_table(tls, other_ca),
        encoding="utf-8",
    )
    return path, wrong


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("node-tls")
    identity = generate_identity("seajust", "unused-link-user")
    files = write_identity(identity, root / "tls")
    client_cas = ca_bundle([identity.ca.certificate], files.folder / "client-cas.pem")
    other_ca = ca_bundle([generate_ca("mlanet other CA").certificate], root / "other-ca.pem")
    broker = LocalBroker(
        LocalBrokerSpec(
            "seajust",
            root / "broker",
            BrokerTlsFiles(files.ca_cert, files.server_cert, files.server_key, client_cas),
            fail_if_no_peer_cert=False,  # contact points log in by password over TLS
        )
    )
    fed = build(
        root / "federation",
        prefix="t" + uuid.uuid4().hex[:10],
        networks=NETWORKS,
        links=[("seajust", "casc")],
        port=broker.ports.amqps,
        management_url=broker.admin.url,
        receipts={"retry_after_seconds": 3.0, "check_every_seconds": 0.5},
    )
    write_issued(
        issue_client_certificate(identity.ca, fed.user("seajust")),
        files.folder / "node.pem",
        files.folder / "node.key",
    )
    config, wrong = _configs(fed, files.folder, other_ca)

    async def start() -> None:
        await broker.start()
        await provision(fed, replace(broker.admin, verify=broker.server_context()))

    try:
        asyncio.run(start())
        yield Setup(broker, fed, config, wrong)
    finally:
        asyncio.run(broker.stop())
        assert not (root / "broker").exists()


async def _node_connections(setup: Setup) -> list[tuple[str, bool, str, str]]:
    """(user, over TLS, auth mechanism, vhost) of every AMQP connection the broker has."""
    async with setup.broker.management() as api:
        found = await api._request("GET", "/connections?columns=user,ssl,auth_mechanism,vhost")
    return [
        (c["user"], bool(c["ssl"]), str(c["auth_mechanism"]), str(c["vhost"])) for c in found or []
    ]


async def test_node_runs_over_tls_and_delivers_a_local_submission(setup: Setup) -> None:
    """The node connects over AMQPS by its certificate (EXTERNAL), to each of its peers' doors too,
    and to the management API over HTTPS (it puts its policies and shovels there before it is
    ready), declares its topology, and a contact point's submission, handed in over TLS with its own
    password, reaches the other contact point's delivery queue and its inbox."""
    config = load_config(setup.config)
    assert config.amqp_url().startswith("amqps://127.0.0.1:")
    node = Node(config)
    task = asyncio.create_task(node.run())
    try:
        ready = asyncio.create_task(node.ready.wait())
        await asyncio.wait({ready, task}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        assert ready.done(), read_lifecycle(config.state_dir)
        assert node.transport.tls
        user = config.broker.user

        vhosts = {
            config.broker.vhost,
            setup.fed.door("seajust", "casc"),
            setup.fed.door("seajust", "unodc"),
        }

        async def listed() -> bool:  # the API lists a connection a few seconds after it opened
            found = await _node_connections(setup)
            return {v for u, tls, how, v in found if (u, tls, how) == (user, True, "EXTERNAL")} == (
                vhosts
            )

        await eventually(listed, within=30, what="the node's connections, its doors' too")
        assert all(tls for _, tls, _, _ in await _node_connections(setup))
        async with setup.broker.management() as api:
            policies = await api.policies(config.broker.vhost)
        assert policies, "the node's management client put no policy"

        sender = Credentials.load(setup.fed.credentials("kh-cp-1"))
        reader = Credentials.load(setup.fed.credentials("la-cp-1"))
        message_id = await submit(config, sender, facilitation_request("kh-cp-1", "LA"))

        async def delivered() -> bool:
            items = await read_inbox(config, reader)
            return message_id in {item.message.header.message_id for item in items}

        await eventually(delivered, within=30, what=f"delivery into {deliver_queue('la-cp-1')}")
    finally:
        node.stop()
        await asyncio.wait_for(task, timeout=30)


async def test_node_trusting_another_ca_refuses_the_broker_and_keeps_retrying(
    setup: Setup,
) -> None:
    """A node whose [broker.tls] ca_file is not the CA of its broker's certificate never
    connects (no plaintext is tried either): each attempt fails with one line naming the
    reason, which ``mlanet status`` shows; the node retries with its backoff and stops cleanly
    when told to."""
    config = load_config(setup.wrong_ca)
    node = Node(config)
    task = asyncio.create_task(node.run())
    try:

        def retried() -> bool:
            state = read_lifecycle(config.state_dir)
            return state is not None and state.phase is Phase.RETRYING and state.attempt >= 2

        await eventually(retried, within=30, what="a second failed attempt")
        state = read_lifecycle(config.state_dir)
        assert state is not None
        assert state.error is not None
        assert "tls_unknown_ca" in state.error
        assert "\n" not in state.error
        assert "Traceback" not in state.error
        assert not task.done()
        assert not node.ready.is_set()
        users = {who for who, _, _, _ in await _node_connections(setup)}
        assert config.broker.user not in users
        # mlanet status names the node process's state and its reason, in its one line
        shown = await asyncio.to_thread(
            CliRunner().invoke, app, ["status", "--config", str(setup.wrong_ca)]
        )
        last = shown.output.strip().splitlines()[-1]
        assert "node process" in last
        assert "retrying" in last
        assert last.count("tls_unknown_ca") == 2  # the management API's and the node's
    finally:
        node.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=30)
    assert read_lifecycle(config.state_dir).phase is Phase.STOPPED  # type: ignore[union-attr]


async def _started_once(path: Path) -> None:
    """Run the node until it is ready (its topology declared), then stop it."""
    node = Node(load_config(path))
    task = asyncio.create_task(node.run())
    try:
        await eventually(lambda: node.ready.is_set() or task.done(), within=60, what="ready")
        assert node.ready.is_set()
    finally:
        node.stop()
        await asyncio.wait_for(task, timeout=30)


def test_cli_commands_work_over_tls_and_name_a_wrong_ca_in_one_line(setup: Setup) -> None:
    """``mlanet status`` reads the broker over AMQPS and HTTPS; ``mlanet send`` hands in over
    TLS as the contact point; ``mlanet directory provision`` reaches the management API over
    HTTPS as the administrator, checked against the config's CA. With a config that trusts
    another CA, ``send`` and ``directory provision`` end with one line that names the TLS
    refusal, and so does ``status`` (exit status 2: it shows nothing of a broker its config
    does not trust)."""
    asyncio.run(_started_once(setup.config))  # the queues that status shows and send uses
    runner = CliRunner()
    credentials = str(setup.fed.credentials("kh-cp-1"))
    status = runner.invoke(app, ["status", "--config", str(setup.config)])
    assert "not available" not in status.output, status.output
    assert "mlanet.submit" in status.output

    sent = runner.invoke(
        app,
        [
            "send",
            "--config",
            str(setup.config),
            "--credentials",
            credentials,
            "--to-country",
            "LA",
            "--case-ref",
            "KH-MLA-2026-0001",
            "--offence",
            "drug_trafficking",
            "--summary",
            "Test request: no real case content.",
        ],
    )
    assert sent.exit_code == 0, sent.output

    refused = runner.invoke(
        app,
        [
            "send",
            "--config",
            str(setup.wrong_ca),
            "--credentials",
            credentials,
            "--to-country",
            "LA",
            "--case-ref",
            "KH-MLA-2026-0002",
            "--offence",
            "drug_trafficking",
            "--summary",
            "Test request: no real case content.",
        ],
    )
    assert refused.exit_code == 1
    lines = refused.output.strip().splitlines()
    assert len(lines) == 1, refused.output
    assert lines[0].startswith("mlanet: ")
    assert "tls_unknown_ca" in lines[0]

    admin = ["--admin-user", setup.broker.admin.user]
    admin += ["--admin-password-file", str(setup.broker.root / "admin.password")]
    provisioned = runner.invoke(
        app, ["directory", "provision", "--config", str(setup.config), *admin]
    )
    assert provisioned.exit_code == 0, provisioned.output
    refused_admin = runner.invoke(
        app, ["directory", "provision", "--config", str(setup.wrong_ca), *admin]
    )
    assert refused_admin.exit_code != 0
    assert "tls_unknown_ca" in refused_admin.output.strip().splitlines()[-1]

    wrong = runner.invoke(app, ["status", "--config", str(setup.wrong_ca)])
    assert wrong.exit_code == 2
    last = wrong.output.strip().splitlines()[-1]
    assert last.startswith("mlanet: cannot reach the management API at 127.0.0.1:")
    assert "tls_unknown_ca" in last
    assert "Traceback" not in wrong.output
