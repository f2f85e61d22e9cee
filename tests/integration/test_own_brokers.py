"""A federation where every network runs a RabbitMQ node of its own, linked over AMQPS with
mutual TLS (issue 13): what ``mlanet federation init --own-brokers`` builds
(``nodes/local/own_brokers.py``).

SEAJust, CASC and EJN (and the coordinator, UNODC, whose key signs the directory and which is
linked to SEAJust) each get a broker of their own, started at once for the module and stopped,
their folders removed, at its end. Nodes run in-process (``tests/integration/kit.py``). The
journeys of the demo cross the brokers; then what a link user may do at a peer's broker, and
what a link certificate cannot be used for. The last test runs the CLI's ``init
--own-brokers`` and ``down`` (six brokers of their own). The shared broker on :5672 is not
used.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import aio_pika
import aiormq
import httpx
import pytest
from typer.testing import CliRunner

from mlanet.broker.peer_access import PEER_TAG, inbox_write_pattern
from mlanet.broker.tls import client_context, load_certificates
from mlanet.broker.topology import inbox_exchange, peer_inbox
from mlanet.broker.transport import Transport
from mlanet.nodes.cli.app import app
from mlanet.nodes.cli.contact import facilitation_request, read_inbox, status_update, submit
from mlanet.nodes.local import own_brokers
from mlanet.nodes.local.brokers import LocalBroker, process_alive
from mlanet.nodes.local.federation import (
    COORDINATOR,
    EXAMPLE_NETWORKS,
    TLS_FILES,
    Federation,
)
from tests.integration.kit import (
    collect_own_garbage,
    config,
    credentials,
    outbox_state,
    running,
)
from tests.polling import eventually

pytestmark = pytest.mark.timeout(300)  # four brokers start at once on two cores (~20 s)

NETWORKS = {name: EXAMPLE_NETWORKS[name] for name in ("seajust", "casc", "ejn")}
LINKS = [("seajust", "casc"), ("casc", "ejn")]
REFUSED = aiormq.exceptions.AMQPConnectionError  # aiormq wraps refusals at connect
# A vhost the user has no permission in: the broker answers connection.open with
# connection.close (NOT_ALLOWED) where aiormq waits for open-ok. The user's own door opens
# with the same certificate (each test shows it), so the vhost is what was refused.
VHOST_REFUSED = aiormq.exceptions.InvalidFrameError
VHOST_REFUSED_MATCH = "got <Connection.Close"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("own-brokers") / "federation"
    federation = own_brokers.prepare(
        root,
        prefix="o" + uuid.uuid4().hex[:10],
        networks=NETWORKS,
        links=LINKS,
        receipts={"retry_after_seconds": 3.0, "check_every_seconds": 0.5},
    )
    try:
        asyncio.run(own_brokers.up(federation))
        yield federation
    finally:
        assert asyncio.run(own_brokers.down(federation)) == [*NETWORKS, COORDINATOR]
        for record in federation.brokers:
            assert not record.spec.root.exists(), record.spec.root


@pytest.fixture(autouse=True)
def _own_garbage() -> Iterator[None]:
    """Connections these tests have refused (a foreign vhost, a certificate of another network)
    are collected at each test's end, not in a later one (``kit.collect_own_garbage``)."""
    yield
    collect_own_garbage("test_own_brokers")


def _broker(fed: Federation, network: str) -> LocalBroker:
    return own_brokers.brokers(fed)[network]


def _link_context(fed: Federation, network: str, at: str) -> ssl.SSLContext:
    """``network``'s link certificate, trusting ``at``'s broker's CA (as its shovel does)."""
    return client_context(
        load_certificates(fed.root / at / TLS_FILES["ca"]),
        cert_file=fed.root / network / TLS_FILES["link_cert"],
        key_file=fed.root / network / TLS_FILES["link_key"],
    )


async def _as_link(
    fed: Federation, network: str, at: str, vhost: str
) -> aio_pika.abc.AbstractConnection:
    """An AMQPS connection to ``vhost`` at ``at``'s broker, logged in by ``network``'s link
    certificate (EXTERNAL, no password)."""
    port = _broker(fed, at).ports.amqps
    return await aio_pika.connect(
        f"amqps://localhost:{port}/{quote(vhost, safe='')}?auth=external",
        ssl_context=_link_context(fed, network, at),
        timeout=10,
    )


# --- the journeys, across three brokers ----------------------------------------------------------
async def test_cambodia_to_uzbekistan_and_back_across_two_brokers(fed: Federation) -> None:
    """The seed's journey from SEAJust's broker to CASC's: delivered to the Uzbek contact point,
    CASC's signed receipt back at SEAJust; the Uzbek status update travels back the same way.
    The links that carried them are shovels to the peer's broker over AMQPS, verifying it
    against the CA the directory lists and logging in by the link certificate: no password in
    any definition."""
    async with running(fed, "seajust", "casc"):
        request = facilitation_request("kh-cp-1", "UZ")
        await submit(config(fed, "seajust"), credentials(fed, "kh-cp-1"), request)
        await eventually(
            lambda: outbox_state(fed, "seajust", request.message_id) == "delivered",
            what="the receipt back at seajust",
        )
        items = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
        assert [item.message.header.message_id for item in items] == [request.message_id]
        assert items[0].message.path == ("seajust",)

        update = status_update("uz-cp-1", "kh-cp-1", request.message_id)
        await submit(config(fed, "casc"), credentials(fed, "uz-cp-1"), update)
        await eventually(
            lambda: outbox_state(fed, "casc", update.message_id) == "delivered",
            what="the status update's receipt back at casc",
        )
        back = await read_inbox(config(fed, "seajust"), credentials(fed, "kh-cp-1"))
        assert update.message_id in {item.message.header.message_id for item in back}

        for network, peers in (("seajust", {"casc", COORDINATOR}), ("casc", {"seajust", "ejn"})):
            async with _broker(fed, network).management() as api:
                shovels = await api.shovel_definitions(fed.vhost(network))
            assert set(shovels) == {f"mlanet-link-{peer}" for peer in peers}
            for definition in shovels.values():
                assert definition["src-uri"] == f"amqp:///{quote(fed.vhost(network), safe='')}"
                for uri in definition["dest-uri"]:
                    parts = urlsplit(uri)
                    query = parse_qs(parts.query)
                    assert parts.scheme == "amqps", uri
                    assert parts.username is None, uri
                    assert parts.password is None, "a password in a shovel definition"
                    assert query["auth_mechanism"] == ["external"]
                    assert query["verify"] == ["verify_peer"]
                    assert query["certfile"] == [str(fed.root / network / TLS_FILES["link_cert"])]


async def test_cambodia_to_france_is_relayed_by_casc_across_three_brokers(
    fed: Federation,
) -> None:
    """SEAJust's broker has no link to EJN's: CASC's node relays the request from its broker to
    EJN's, with its signed hop record; EJN's receipt comes back to SEAJust through CASC."""
    async with running(fed, "seajust", "casc", "ejn"):
        request = facilitation_request("kh-cp-1", "FR")
        await submit(config(fed, "seajust"), credentials(fed, "kh-cp-1"), request)
        await eventually(
            lambda: outbox_state(fed, "seajust", request.message_id) == "delivered",
            what="ejn's receipt back at seajust",
        )
        items = await read_inbox(config(fed, "ejn"), credentials(fed, "fr-cp-1"))
        assert [item.message.header.message_id for item in items] == [request.message_id]
        assert items[0].message.path == ("seajust", "casc")
        assert [hop.record.network for hop in items[0].message.hops] == ["casc"]


# --- the brokers ---------------------------------------------------------------------------------
async def test_no_broker_has_a_plaintext_listener(fed: Federation) -> None:
    """Every broker listens for AMQPS and HTTPS only; plain AMQP spoken to its AMQPS port, with
    its administrator's own password, gets no connection."""
    for network in fed.nodes:
        broker = _broker(fed, network)
        async with broker.management() as api:
            overview = await api.overview()
        protocols = {listener["protocol"] for listener in overview["listeners"]}
        assert {"amqp/ssl", "https"} <= protocols, network
        assert not protocols & {"amqp", "http"}, (network, protocols)
        with pytest.raises(REFUSED):
            await aio_pika.connect(
                f"amqp://{broker.admin.user}:{broker.admin.password}@127.0.0.1:"
                f"{broker.ports.amqps}/",
                timeout=10,
            )


async def test_a_link_user_may_only_write_its_inbox_exchange_in_its_door(
    fed: Federation,
) -> None:
    """At CASC's broker SEAJust's link user has one permission, in its door: write on its own
    inbox exchange; no read, no configure, no other vhost, and no management tag (the API
    refuses it). Logged in by its certificate, it cannot publish elsewhere, read its inbox
    queue, declare anything, or open CASC's own vhost or EJN's door."""
    link = fed.link_user("seajust")
    door = fed.door("casc", "seajust")
    async with _broker(fed, "casc").management() as api:
        permissions = await api.user_permissions(link)
        user = await api.user(link)
    assert [(p["vhost"], p["write"], p["read"], p["configure"]) for p in permissions] == [
        (door, inbox_write_pattern("seajust"), "^$", "^$")
    ]
    assert user is not None
    tags = user["tags"]
    assert (tags if isinstance(tags, list) else tags.split(",")) == [PEER_TAG]
    management = _broker(fed, "casc").admin.url
    async with httpx.AsyncClient(verify=_broker(fed, "casc").server_context()) as client:
        answer = await client.get(f"{management}/api/overview", auth=(link, ""), timeout=10)
    assert answer.status_code == 401

    connection = await _as_link(fed, "seajust", "casc", door)
    async with connection:
        channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await channel.default_exchange.publish(
                aio_pika.Message(b"not a door's exchange"), routing_key=peer_inbox("seajust")
            )
        channel = await connection.channel()
        inbox = await channel.get_queue(peer_inbox("seajust"), ensure=False)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await inbox.get(fail=False)
        channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await channel.declare_queue("seajust-own-queue")
    for elsewhere in (fed.vhost("casc"), fed.door("casc", "ejn")):
        with pytest.raises(VHOST_REFUSED, match=VHOST_REFUSED_MATCH):
            await _as_link(fed, "seajust", "casc", elsewhere)


async def test_a_link_certificate_cannot_write_as_another_network(fed: Federation) -> None:
    """EJN's link certificate at CASC's broker opens EJN's door only: publishing into
    SEAJust's door (to pass as SEAJust) is refused at the vhost, and in EJN's own door the
    exchange of SEAJust's inbox is refused. At EJN's broker, where SEAJust has no door,
    SEAJust's link certificate does not log in at all."""
    with pytest.raises(VHOST_REFUSED, match=VHOST_REFUSED_MATCH):
        await _as_link(fed, "ejn", "casc", fed.door("casc", "seajust"))
    connection = await _as_link(fed, "ejn", "casc", fed.door("casc", "ejn"))
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(inbox_exchange("seajust"), ensure=False)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await exchange.publish(aio_pika.Message(b"as seajust"), routing_key="")
    with pytest.raises(aiormq.exceptions.ProbableAuthenticationError, match="EXTERNAL"):
        await _as_link(fed, "seajust", "ejn", fed.door("ejn", "casc"))


# --- the commands --------------------------------------------------------------------------------
def _pids(folder: Path) -> dict[str, int]:
    found = {}
    for record in Federation.load(folder).brokers:
        pid = LocalBroker.attach(record).pid
        assert pid is not None, record.spec.network
        found[record.spec.network] = pid
    return found


@pytest.mark.battery_long  # six brokers started and stopped: ~45 s
def test_init_own_brokers_leaves_them_running_and_down_removes_them(tmp_path: Path) -> None:
    """``mlanet federation init --own-brokers`` returns with a broker running for each of the
    six networks (each answering its management API over HTTPS), recorded in the folder;
    ``mlanet federation down`` then stops every one and removes its folder."""
    folder = tmp_path / "federation"
    runner = CliRunner()
    pids: dict[str, int] = {}
    try:
        made = runner.invoke(
            app,
            ["federation", "init", "--own-brokers", "--dir", str(folder), "--prefix",
             "o" + uuid.uuid4().hex[:10], "--operator-port", "0"],
        )  # fmt: skip
        assert made.exit_code == 0, made.output
        fed = Federation.load(folder)
        assert {record.spec.network for record in fed.brokers} == {*EXAMPLE_NETWORKS, COORDINATOR}
        pids = _pids(folder)
        assert all(process_alive(pid) for pid in pids.values())

        async def answering() -> None:
            for broker in own_brokers.brokers(fed).values():
                async with broker.management() as api:
                    assert (await api.overview())["node"] == broker.nodename

        asyncio.run(answering())
        assert all(record.nodename in made.output for record in fed.brokers)
    finally:
        gone = runner.invoke(app, ["federation", "down", "--dir", str(folder)])
    assert gone.exit_code == 0, gone.output
    assert "stopped the brokers" in gone.output
    assert not [network for network, pid in pids.items() if process_alive(pid)]
    assert not [r.spec.root for r in Federation.load(folder).brokers if r.spec.root.exists()]


# --- sealed payloads: nothing readable at a relay ------------------------------------------------
def _files_with(root: Path, forms: list[bytes]) -> list[str]:
    """The files under ``root`` that hold any of ``forms`` (as bytes, anywhere in the file)."""
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if any(form in data for form in forms):
                found.append(str(path.relative_to(root)))
    return found


def _header(body: bytes) -> dict[str, Any]:
    """The header of an envelope, decoded (read only: nothing here is verified)."""
    encoded = json.loads(body)["header"]
    return json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))  # type: ignore[no-any-return]


def _canary_forms(canary: str) -> list[bytes]:
    """The canary as text and inside base64 (both alphabets, all three alignments)."""
    raw = canary.encode()
    forms = [raw, raw.lower()]
    for offset in range(3):
        for encode in (base64.urlsafe_b64encode, base64.standard_b64encode):
            encoded = encode(b"\0" * offset + raw).rstrip(b"=")
            forms.append(encoded[4 if offset else 0 : -4])
    return forms


async def test_a_relay_holds_nothing_readable_of_a_case_it_carries(fed: Federation) -> None:
    """Cambodia -> France through CASC, with a canary as the case summary: while the request
    waits in CASC's broker (CASC's node stopped) and after CASC has relayed it, the canary is
    in none of CASC's queues, broker data or log files, node state (journal, audit trail,
    quarantine, outbox), node log or files; EJN's contact point reads it, and its archive holds
    it (owner-only). The payload crossed sealed for EJN: CASC holds no key that opens it."""
    canary = f"CANARY-{secrets.token_hex(6).upper()}"
    forms = _canary_forms(canary)
    request = facilitation_request("kh-cp-1", "FR", summary=f"Case summary {canary}.")
    casc = config(fed, "casc")  # as casc's node, in the door seajust's link writes into
    door = casc.model_copy(
        update={"broker": casc.broker.model_copy(update={"vhost": fed.door("casc", "seajust")})}
    )
    async with running(fed, "casc"):
        pass  # its topology declared (the door's queue), then casc's node is down
    collect_own_garbage("test_own_brokers, casc started and stopped")
    async with running(fed, "seajust"):
        await submit(config(fed, "seajust"), credentials(fed, "kh-cp-1"), request)
        found: list[bytes] = []

        async def waiting_at_casc() -> bool:
            async with Transport(door.amqp_url()) as transport:
                held = []  # each stays in the queue: requeued once all are read
                while (incoming := await transport.get(peer_inbox("seajust"))) is not None:
                    held.append(incoming)
                for incoming in held:
                    await incoming.requeue()
            found[:] = [i.body for i in held if _header(i.body)["message_id"] == request.message_id]
            return bool(found)

        await eventually(waiting_at_casc, what="the request in casc's inbox queue")
    header = _header(found[0])
    assert header["sealed"]["network"] == "ejn"
    assert not any(form in found[0] for form in forms), "the case in casc's queue"

    async with running(fed, "seajust", "casc", "ejn"):
        await eventually(
            lambda: outbox_state(fed, "seajust", request.message_id) == "delivered",
            what="ejn's receipt back at seajust",
        )
        items = await read_inbox(config(fed, "ejn"), credentials(fed, "fr-cp-1"))
    # positive controls: the destination reads the case, and the search finds it on disk
    ours = [item for item in items if item.message.header.message_id == request.message_id]
    assert [canary in item.payload.model_dump_json() for item in ours] == [True]
    archive_folder = fed.credentials("fr-cp-1")
    assert _files_with(archive_folder, forms) == ["inbox.sqlite3"]
    assert (archive_folder / "inbox.sqlite3").stat().st_mode & 0o077 == 0
    assert archive_folder.stat().st_mode & 0o077 == 0
    # the origin's broker kept the contact point's submission (plain, between a contact point
    # and its own node) in its data: the search finds what a broker writes to disk
    assert _files_with(_broker(fed, "seajust").root, forms) != []
    # at the relay: nothing, in its broker's data and logs and in its node's folder
    assert _files_with(_broker(fed, "casc").root, forms) == []
    assert _files_with(fed.root / "casc", forms) == []
