"""A link over mutual TLS between brokers of their own, cut, flapping, pointed at the wrong
broker, rotated and revoked, with messages in flight: nothing is lost and nothing is delivered
twice, and what cannot be trusted does not come up, with an alert naming the peer and why.

SEAJust and CASC (and the coordinator, whose key signs the directory) run on RabbitMQ nodes of
their own (``nodes/local/own_brokers.py``), started once for the module and removed at its end.
SEAJust's link to CASC goes through a fault proxy (``tests/battery/proxy.py``): the directory
lists the proxy's port as CASC's AMQPS endpoint, and the proxy passes the TLS bytes on to CASC's
broker untouched (the handshake is end to end), so the proxy can cut the link, make it flap, or
send it to another broker. The tests run in file order: the directory only moves forward, and
the last test revokes CASC's CA.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.hazmat.primitives import serialization

from mlanet.broker.directory_signing import sign_directory
from mlanet.broker.directory_tls import ca_entry
from mlanet.broker.keys import b64u_decode, load_signing_key
from mlanet.broker.tls import (
    ca_bundle,
    client_context,
    generate_ca,
    issue_server_certificate,
    load_certificates,
    probe,
    write_issued,
)
from mlanet.nodes.cli.contact import facilitation_request, read_inbox, submit
from mlanet.nodes.local import own_brokers
from mlanet.nodes.local.brokers import LocalBroker
from mlanet.nodes.local.federation import EXAMPLE_NETWORKS, Federation
from mlanet.nodes.operator.status import collect
from mlanet.schemas.directory import Directory
from mlanet.schemas.submission import Submission
from tests.battery.proxy import FaultProxy
from tests.integration.kit import config, credentials, outbox_state, running
from tests.polling import eventually

pytestmark = pytest.mark.timeout(300)

NETWORKS = {name: EXAMPLE_NETWORKS[name] for name in ("seajust", "casc")}
LINKS = [("seajust", "casc")]
SUMMARY = "Test request: no real case content. "


@dataclass
class Setting:
    fed: Federation
    proxy: FaultProxy  # in front of CASC's AMQPS listener, for SEAJust's link
    sent: list[str] = field(default_factory=list)  # every request sent in the module

    def broker(self, network: str) -> LocalBroker:
        return own_brokers.brokers(self.fed)[network]


def _directory(fed: Federation) -> Directory:
    signed = json.loads((fed.root / "directory.json").read_bytes())
    return Directory.model_validate_json(b64u_decode(signed["document"]))


def _publish(fed: Federation, directory: Directory) -> None:
    """The coordinator signs ``directory`` and puts it where each node's config names it: a
    node takes the newest valid directory at start."""
    key = load_signing_key(fed.coordinator_key())
    (fed.root / "directory.json").write_bytes(sign_directory(directory, key).to_bytes())


def _with_casc(directory: Directory, **tls_fields: object) -> Directory:
    """The next version, with CASC's ``tls`` entry changed."""
    networks = []
    for entry in directory.networks:
        if entry.id == "casc":
            assert entry.tls is not None
            entry = entry.model_copy(update={"tls": entry.tls.model_copy(update=tls_fields)})
        networks.append(entry)
    now = datetime.now(UTC)
    return directory.model_copy(
        update={"version": directory.version + 1, "issued_at": now, "networks": networks}
    )


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setting]:
    root = tmp_path_factory.mktemp("tls-link-faults") / "federation"
    fed = own_brokers.prepare(
        root,
        prefix="f" + uuid.uuid4().hex[:10],
        networks=NETWORKS,
        links=LINKS,
        receipts={"retry_after_seconds": 3.0, "check_every_seconds": 0.5},
    )
    casc = own_brokers.brokers(fed)["casc"]
    proxy = FaultProxy("127.0.0.1", casc.ports.amqps, name="link-into-casc").start()
    try:
        directory = _directory(fed)  # version 1, before any node held it
        entry = directory.network("casc")
        assert entry is not None
        assert entry.tls is not None
        endpoints = [e.model_copy(update={"port": proxy.port}) for e in entry.tls.endpoints]
        _publish(fed, _with_casc(directory, endpoints=endpoints).model_copy(update={"version": 1}))
        asyncio.run(own_brokers.up(fed))
        yield Setting(fed, proxy)
    finally:
        proxy.close()
        asyncio.run(own_brokers.down(fed))


def _request(n: int) -> Submission:
    return facilitation_request(
        "kh-cp-1",
        "UZ",
        case_ref=f"KH-MLA-2026-{n:04d}",
        summary=SUMMARY * 4,
        offences=("cybercrime",),
        measures=("e_evidence_preservation",),
    )


async def _send(fed: Federation, count: int, start: int = 0) -> list[str]:
    ids = []
    for n in range(start, start + count):
        request = _request(n)
        await submit(config(fed, "seajust"), credentials(fed, "kh-cp-1"), request)
        ids.append(request.message_id)
    return ids


async def _all_receipted(fed: Federation, ids: list[str]) -> bool:
    return all(outbox_state(fed, "seajust", message_id) == "delivered" for message_id in ids)


async def _exactly_once(setting: Setting, ids: list[str]) -> None:
    """The Uzbek contact point got each request sent in the module so far once (its inbox
    keeps what earlier tests delivered), ``ids`` among them."""
    fed = setting.fed
    setting.sent += ids
    items = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
    delivered = [item.message.header.message_id for item in items]
    assert sorted(delivered) == sorted(setting.sent), "lost or unexpected messages"
    assert len(set(delivered)) == len(delivered), "a message reached the contact point twice"


async def _link_alerts(fed: Federation) -> list[tuple[str, str, str]]:
    status = await collect(config(fed, "seajust"), time.time())
    return [(a.code, a.subject, a.text) for a in status.alerts if a.code == "link_refused"]


async def _ca_file(setting: Setting) -> Path:
    """The CA file SEAJust's link to CASC names (its shovel's definition, as declared)."""
    async with setting.broker("seajust").management() as api:
        found = await api.shovel_definitions(setting.fed.vhost("seajust"))
    uris = found["mlanet-link-casc"]["dest-uri"]
    first = uris[0] if isinstance(uris, list) else uris
    assert first.startswith("amqps://")
    return Path(parse_qs(urlsplit(first).query)["cacertfile"][0])


async def test_a_peer_unreachable_over_tls_loses_nothing(setting: Setting) -> None:
    """CASC's broker cannot be reached (connections reset and refused) while SEAJust sends:
    the messages wait in SEAJust's out queue; once reachable, each arrives once, receipted."""
    fed = setting.fed
    async with running(fed, "seajust", "casc"):
        setting.proxy.cut()
        ids = await _send(fed, 20)
        await eventually(
            lambda: all(outbox_state(fed, "seajust", i) == "forwarded" for i in ids),
            within=60,
            what="every request forwarded into the link while it is cut",
        )
        setting.proxy.heal()
        await eventually(lambda: _all_receipted(fed, ids), within=120, what="receipts back")
        await _exactly_once(setting, ids)


@pytest.mark.battery_long  # ~30 s of flapping
async def test_a_flapping_tls_link_loses_and_repeats_nothing(setting: Setting) -> None:
    """The link goes down for 2 s and up for 3 s, over and over, while SEAJust sends: every
    new TLS session is a full handshake, and every message arrives once, receipted."""
    fed = setting.fed
    async with running(fed, "seajust", "casc"):
        ids: list[str] = []
        for round_ in range(5):
            setting.proxy.cut()
            ids += await _send(fed, 6, start=100 + round_ * 6)
            await asyncio.sleep(2)  # the link is down this long: what the test is about
            setting.proxy.heal()
            ids += await _send(fed, 4, start=200 + round_ * 4)
            await asyncio.sleep(3)  # and up this long
        await eventually(lambda: _all_receipted(fed, ids), within=120, what="receipts back")
        await _exactly_once(setting, ids)
    assert setting.proxy.resets > 0


async def test_a_broker_that_is_not_the_one_the_directory_lists_gets_no_link(
    setting: Setting,
) -> None:
    """The address CASC's entry names now leads to the coordinator's broker (another CA): the
    link does not come up, status names CASC and ``tls_unknown_ca``, and what SEAJust sends
    waits. Pointed back at CASC's broker, it all arrives once."""
    fed = setting.fed
    proper = setting.proxy.target
    async with running(fed, "seajust", "casc"):
        setting.proxy.target = ("127.0.0.1", setting.broker("unodc").ports.amqps)
        setting.proxy.cut()  # the link's session ends; its next handshake meets the impostor
        setting.proxy.heal()
        ids = await _send(fed, 5, start=300)

        async def refused() -> bool:
            return any(
                subject == "casc" and text.startswith("tls_unknown_ca")
                for _, subject, text in await _link_alerts(fed)
            )

        await eventually(refused, within=90, what="a link_refused alert naming tls_unknown_ca")
        assert not any(outbox_state(fed, "seajust", i) == "delivered" for i in ids)
        setting.proxy.target = proper
        setting.proxy.cut()
        setting.proxy.heal()
        await eventually(lambda: _all_receipted(fed, ids), within=120, what="receipts back")
        await _exactly_once(setting, ids)
        await eventually(
            lambda: _no_link_alert(fed), within=60, what="no link alert once it is CASC again"
        )


async def _no_link_alert(fed: Federation) -> bool:
    return await _link_alerts(fed) == []


async def test_casc_rotates_its_broker_ca_with_messages_in_flight(setting: Setting) -> None:
    """The coordinator lists CASC's new CA beside the old one (overlap); SEAJust's link trusts
    both (a new CA file, so a new shovel URI); CASC's broker switches to a certificate from the
    new CA while messages flow; then the old CA is retired. Nothing is lost or repeated."""
    fed = setting.fed
    new_ca = generate_ca("mlanet casc CA 2")
    pem = new_ca.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
    held = _directory(fed)
    entry = held.network("casc")
    assert entry is not None
    assert entry.tls is not None
    old = entry.tls.cas[0].model_copy(update={"retire_at": datetime.now(UTC) + timedelta(hours=1)})
    _publish(fed, _with_casc(held, cas=[old, ca_entry(pem, "casc-ca-2")]))
    # CASC's own node and contact points trust both CAs too, from a file of a new name (a TLS
    # context is built once per file: OPERATIONS.md, "Links over mutual TLS")
    both = ca_bundle(
        [*load_certificates(fed.root / "casc" / "tls" / "ca.pem"), new_ca.certificate],
        fed.root / "casc" / "tls" / "ca-rotation.pem",
    )
    node_toml = fed.config_path("casc")
    node_toml.write_text(
        node_toml.read_text(encoding="utf-8").replace(
            'ca_file = "tls/ca.pem"', f'ca_file = "{both}"'
        )
    )
    async with running(fed, "seajust", "casc"):
        await eventually(
            lambda: _trusts(setting, 2), within=60, what="the link's CA file lists both CAs"
        )
        ids = await _send(fed, 15, start=400)
        tls = fed.root / "casc" / "tls"
        write_issued(issue_server_certificate(new_ca), tls / "server.pem", tls / "server.key")
        await setting.broker("casc").ctl("eval", "ssl:clear_pem_cache().")
        setting.proxy.cut()  # sessions end; the next handshakes present the new certificate
        setting.proxy.heal()
        ids += await _send(fed, 15, start=420)
        await eventually(lambda: _all_receipted(fed, ids), within=120, what="receipts back")
        await _exactly_once(setting, ids)
        # CASC's broker now presents a certificate from the new CA (else this raises TlsError)
        await probe(
            "127.0.0.1",
            setting.proxy.port,
            client_context([new_ca.certificate]),
            server_name="localhost",
        )

    retired = _directory(fed)
    entry = retired.network("casc")
    assert entry is not None
    assert entry.tls is not None
    _publish(fed, _with_casc(retired, cas=[entry.tls.cas[1]]))
    async with running(fed, "seajust", "casc"):
        await eventually(
            lambda: _trusts(setting, 1), within=60, what="the link trusts the new CA only"
        )
        ids = await _send(fed, 5, start=450)
        await eventually(lambda: _all_receipted(fed, ids), within=120, what="receipts back")
        await _exactly_once(setting, ids)


async def _trusts(setting: Setting, count: int) -> bool:
    try:
        return len(load_certificates(await _ca_file(setting))) == count
    except (KeyError, OSError):
        return False


async def test_a_revoked_ca_takes_the_link_down_with_an_alert_and_loses_nothing(
    setting: Setting,
) -> None:
    """The coordinator revokes CASC's broker CA: SEAJust's node makes no link to CASC any more
    (``link_no_valid_ca``), says so in a critical alert naming CASC, and what it sends waits in
    its out queue: refused, not lost."""
    fed = setting.fed
    held = _directory(fed)
    entry = held.network("casc")
    assert entry is not None
    assert entry.tls is not None
    revoked = [ca.model_copy(update={"revoked_at": datetime.now(UTC)}) for ca in entry.tls.cas]
    _publish(fed, _with_casc(held, cas=revoked))
    async with running(fed, "seajust"):
        async with setting.broker("seajust").management() as api:
            shovels = await api.shovel_names(fed.vhost("seajust"))
        assert "mlanet-link-casc" not in shovels
        alerts = await _link_alerts(fed)
        assert [(subject, text.split(":")[0]) for _, subject, text in alerts] == [
            ("casc", "link_no_valid_ca")
        ]
        ids = await _send(fed, 3, start=500)
        await eventually(
            lambda: all(outbox_state(fed, "seajust", i) == "forwarded" for i in ids),
            within=60,
            what="the requests kept in the out queue",
        )
