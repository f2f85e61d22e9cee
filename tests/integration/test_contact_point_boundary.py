"""No one acts as a contact point without its own credentials (the review's "No member network can
act as another": contact points were not authenticated inside a network). Each attack is made on
the real broker against running nodes: with the node's config alone, with another contact
point's key or broker user, or with nothing signed at all. Each is refused with its reason and
quarantined, nothing is signed or sent for it, and the honest journey still works. See "Contact
points" and "Security model" in docs/OPERATIONS.md."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import httpx
import pytest

from mlanet.broker import canonical_bytes, sign_message
from mlanet.broker.contact_point_access import CONTACT_POINT_TAG
from mlanet.broker.keys import b64u_encode
from mlanet.broker.management import Management
from mlanet.broker.submission_signing import SUBMISSION_CONTEXT
from mlanet.broker.transport import CONTENT_TYPE, SUBMIT, SUBMIT_EXCHANGE, deliver_queue, out_queue
from mlanet.nodes.cli.contact import facilitation_request, read_inbox, submit
from mlanet.nodes.directory.contact_points import Credentials, broker_user
from mlanet.nodes.local.federation import Federation
from mlanet.nodes.state.store import open_node_store
from mlanet.schemas import Destination, FacilitationRequest, Header, Origin
from tests.integration.kit import (
    ADMIN,
    config,
    credentials,
    depth,
    drain,
    eventually,
    key,
    outbox_state,
    running,
)
from tests.integration.test_quarantine import mlanet

API = "http://127.0.0.1:15672/api"


def _events(fed: Federation, network: str, message_id: str) -> list[tuple[str, str]]:
    store = open_node_store(config(fed, network))
    try:
        return [(e.event, e.detail) for e in store.events(message_id)]
    finally:
        store.close()


async def _quarantined(fed: Federation, network: str, count: int) -> list[dict[str, Any]]:
    """Wait for ``count`` entries in the quarantine, then take them: headers and claimed id."""

    async def arrived() -> bool:
        return await depth(fed, network, "mlanet.quarantine") >= count

    await eventually(arrived, within=60)
    return [
        {**{k: str(v) for k, v in d.headers.items()}, "body": d.body}
        for d in await drain(fed, network, "mlanet.quarantine")
    ]


async def _publish(url: str, body: bytes, *, exchange: str = "", routing_key: str = "") -> None:
    """Publish with confirms as the user of ``url`` (through ``exchange``; "" is the default)."""
    async with await aio_pika.connect(url, timeout=30) as connection:
        channel = await connection.channel(publisher_confirms=True)
        target = (
            channel.default_exchange
            if exchange == ""
            else await channel.get_exchange(exchange, ensure=False)
        )
        message = aio_pika.Message(body, content_type=CONTENT_TYPE, message_id="x")
        await target.publish(message, routing_key=routing_key, mandatory=True)


async def test_with_the_node_config_alone_nobody_sends_as_a_contact_point(
    fed: Federation,
) -> None:
    """Whoever holds node.toml (and so the node's own broker password) but no contact point's
    credentials: ``mlanet send`` will not run without them or with another contact point's;
    a submission published straight into ``mlanet.submit`` as the node's own user, unsigned
    as before, is refused as ``unsigned_submission`` and quarantined, never signed or sent,
    and ``mlanet track`` shows the refusal under the id it claims."""
    flags = ["send", "--to-country", "UZ", "--case-ref", "KH-MLA-2020-0042", "--summary", "x"]
    without = await mlanet(fed, "seajust", *flags, "--from", "kh-cp-1")
    assert without.code == 2
    assert "--credentials" in without.err
    someone_else = await mlanet(
        fed,
        "seajust",
        *flags,
        "--from",
        "kh-cp-1",
        "--credentials",
        str(fed.credentials("la-cp-1")),
    )
    assert someone_else.code == 2
    assert "these credentials are la-cp-1's, not kh-cp-1's" in someone_else.err

    forged = facilitation_request("kh-cp-1", "UZ")
    bare = canonical_bytes(forged.model_dump(mode="json", exclude_none=True))
    async with running(fed, "seajust"):
        await _publish(config(fed, "seajust").amqp_url(), bare, routing_key=SUBMIT)
        (entry,) = await _quarantined(fed, "seajust", 1)
    assert (entry["x-mlanet-reason"], entry["x-mlanet-via"]) == ("unsigned_submission", SUBMIT)
    assert entry["body"] == bare  # kept as it came, for an operator to look at
    assert outbox_state(fed, "seajust", forged.message_id) is None  # never signed
    assert await depth(fed, "seajust", out_queue("casc")) == 0  # nothing sent on
    (refusal,) = _events(fed, "seajust", forged.message_id)
    assert refusal[0] == "refused"
    assert refusal[1].startswith("unsigned_submission: ")


async def test_a_submission_signed_with_another_contact_points_key_is_refused(
    fed: Federation,
) -> None:
    """la-cp-1, with its own credentials, hands in submissions claiming to be from kh-cp-1:
    signed by its own key and saying so (``wrong_sender``), or signed by its own key and
    naming kh-cp-1 as signer (``bad_signature``). bn-cp-1 is in the directory but its node
    vouches for no key of it any more (``unknown_key``). All quarantined with their reason;
    none is signed; kh-cp-1's own submission right after them goes through."""
    la_cp_1 = credentials(fed, "la-cp-1")
    seajust = config(fed, "seajust")
    as_kh = facilitation_request("kh-cp-1", "UZ")
    document = canonical_bytes(as_kh.model_dump(mode="json", exclude_none=True))
    encoded = b64u_encode(document)
    says_la = {
        "mlanet_submission": 1,
        "contact_point": "la-cp-1",
        "key_id": la_cp_1.key.key_id,
        "submission": encoded,
        "signature": b64u_encode(la_cp_1.key.sign(SUBMISSION_CONTEXT + encoded.encode())),
    }
    says_kh = says_la | {"contact_point": "kh-cp-1"}
    bn_cp_1 = credentials(fed, "bn-cp-1")
    (fed.contact_point_keys("seajust") / "bn-cp-1.pub").unlink()  # the operator withdrew it
    keyless = facilitation_request("bn-cp-1", "UZ")

    async with running(fed, "seajust", "casc"):
        for frame in (says_la, says_kh):
            await _publish(
                la_cp_1.amqp_url(seajust), canonical_bytes(frame), exchange=SUBMIT_EXCHANGE
            )
        await submit(seajust, bn_cp_1, keyless)
        refused = await _quarantined(fed, "seajust", 3)
        assert sorted((e["x-mlanet-reason"], e["x-mlanet-detail"]) for e in refused) == [
            ("bad_signature", "signature by kh-cp-1 ed25519:1 does not verify"),
            ("unknown_key", "no key for contact point bn-cp-1 here"),
            ("wrong_sender", "signed by la-cp-1, sent as kh-cp-1"),
        ]
        assert {e["x-mlanet-via"] for e in refused} == {SUBMIT}
        for message_id, copies in ((as_kh.message_id, 2), (keyless.message_id, 1)):
            assert outbox_state(fed, "seajust", message_id) is None  # never signed
            events = _events(fed, "seajust", message_id)
            assert [event for event, _ in events] == ["refused"] * copies

        genuine = facilitation_request("kh-cp-1", "UZ")
        await submit(seajust, credentials(fed, "kh-cp-1"), genuine)

        async def receipted() -> bool:
            return outbox_state(fed, "seajust", genuine.message_id) == "delivered"

        await eventually(receipted, within=90)
        items = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
        assert [item.message.header.message_id for item in items] == [genuine.message_id]
        assert items[0].message.header.origin.contact_point == "kh-cp-1"
        assert await depth(fed, "seajust", "mlanet.quarantine") == 0


def _cp_url(fed: Federation, network: str, cp: Credentials) -> str:
    return cp.amqp_url(config(fed, network))


async def _refused_over_amqp(url: str, attempt: str, name: str) -> None:
    """``attempt`` on ``name`` as the user of ``url``: the broker refuses it (ACCESS_REFUSED)."""
    async with await aio_pika.connect(url, timeout=30) as connection:
        channel = await connection.channel(publisher_confirms=True)

        async def act() -> object:
            if attempt == "get":
                return await (await channel.get_queue(name, ensure=False)).get(fail=False)
            if attempt == "declare":
                return await channel.declare_queue(name, durable=True)
            if attempt == "unbind":  # would cut every contact point off from the node
                return await (await channel.get_queue(name, ensure=False)).unbind(SUBMIT_EXCHANGE)
            message = aio_pika.Message(b"{}")
            if attempt == "default exchange":
                return await channel.default_exchange.publish(message, routing_key=name)
            exchange = await channel.get_exchange(name, ensure=False)
            return await exchange.publish(message, routing_key="")

        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await act()


async def test_a_contact_points_broker_user_reads_only_its_own_queue_and_writes_only_submit(
    fed: Federation,
) -> None:
    """kh-cp-1's broker user: no management tag (the API refuses it); in SEAJust's vhost it may
    publish through the ``mlanet.submit`` exchange and read ``mlanet.deliver.kh-cp-1``, and
    nothing else: not another contact point's delivery queue, the quarantine or the submit
    queue; not ``mlanet.out.<peer>`` or anything through the default exchange; no peer's inbox
    exchange; no declarations, no unbinding the submit queue; no other network's vhost. Rights
    exactly as provisioned."""
    kh_cp_1 = credentials(fed, "kh-cp-1")
    url = _cp_url(fed, "seajust", kh_cp_1)
    name = broker_user(fed.user("seajust"), "kh-cp-1")
    async with Management(ADMIN) as management:
        user = await management.user(name)
        assert user is not None
        assert user["tags"] == [CONTACT_POINT_TAG]
        assert await management.user_permissions(name) == [
            {
                "user": name,
                "vhost": fed.vhost("seajust"),
                "configure": "^$",
                "write": r"^mlanet\.submit$",
                "read": r"^mlanet\.deliver\.kh\-cp\-1$",
            }
        ]
    async with httpx.AsyncClient(auth=(name, kh_cp_1.password), timeout=60) as client:
        for path in ("/overview", "/queues", "/vhosts", "/users", "/whoami"):
            assert (await client.get(API + path)).status_code == 401, path

    async with running(fed, "seajust"):
        for attempt, target in (
            ("get", deliver_queue("th-cp-1")),
            ("get", "mlanet.quarantine"),
            ("get", SUBMIT),
            ("default exchange", "mlanet.out.casc"),
            ("default exchange", SUBMIT),
            ("exchange", "mlanet.inbox.from.casc"),
            ("exchange", "mlanet.unroutable"),
            ("declare", "stolen"),
            ("unbind", SUBMIT),
        ):
            await _refused_over_amqp(url, attempt, target)
        with pytest.raises(aiormq.exceptions.AMQPError):  # not allowed to open CASC's vhost
            await aio_pika.connect(
                url.replace(f"/{fed.vhost('seajust')}?", f"/{fed.vhost('casc')}?"), timeout=30
            )
        # positive controls: what it may do, it can
        async with await aio_pika.connect(url, timeout=30) as connection:
            channel = await connection.channel()
            own = await channel.get_queue(deliver_queue("kh-cp-1"), ensure=False)
            assert await own.get(fail=False) is None
        await submit(config(fed, "seajust"), kh_cp_1, facilitation_request("kh-cp-1", "SG"))
        await eventually(lambda: _has(fed, "seajust", deliver_queue("sg-cp-1")), within=60)
        assert await depth(fed, "seajust", "mlanet.quarantine") == 0


async def _has(fed: Federation, network: str, queue: str) -> bool:
    return await depth(fed, network, queue) >= 1


async def test_the_journey_with_each_contact_points_own_credentials(fed: Federation) -> None:
    """``mlanet send`` and ``mlanet inbox`` as a contact point types them, each with its own
    credentials folder: Cambodia's request reaches Uzbekistan, verified end to end, and
    uz-cp-1's credentials read no other contact point's inbox."""
    async with running(fed, "seajust", "casc"):
        sent = await mlanet(
            fed, "seajust", "send", "--credentials", str(fed.credentials("kh-cp-1")),
            "--to-country", "UZ", "--case-ref", "KH-MLA-2020-0042",
            "--offence", "drug_trafficking", "--summary", "Test request: no real case content.",
        )  # fmt: skip
        assert sent.code == 0, sent.err
        message_id = sent.out.strip()

        async def receipted() -> bool:
            return outbox_state(fed, "seajust", message_id) == "delivered"

        await eventually(receipted, within=90)
        read = await mlanet(
            fed, "casc", "inbox", "--credentials", str(fed.credentials("uz-cp-1")), "--json"
        )
        assert read.code == 0, read.err
        (record,) = read.json_lines()
        assert (record["message_id"], record["from"], record["path"]) == (
            message_id,
            "kh-cp-1",
            ["seajust"],
        )
        assert record["payload"]["case_ref"] == "KH-MLA-2020-0042"
        other = await mlanet(
            fed, "casc", "inbox", "--credentials", str(fed.credentials("uz-cp-1")),
            "--contact-point", "kz-cp-1",
        )  # fmt: skip
        assert other.code == 2
        assert "these credentials are uz-cp-1's, not kz-cp-1's" in other.err


async def test_a_message_a_contact_point_refuses_at_delivery_is_quarantined_by_its_node(
    fed: Federation,
) -> None:
    """A message in uz-cp-1's delivery queue that no longer verifies (here: a body altered in
    the queue) is not archived; ``mlanet inbox``, as uz-cp-1's user, hands it back to the node
    signed by uz-cp-1, and the node quarantines it with the reason, the delivery queue as its
    way in, and the refusal in ``mlanet track``. Nothing is lost; the next message arrives."""
    casc = config(fed, "casc")
    header = Header(
        kind="facilitation_request",
        message_id="4f1d3c5e-2a7b-4c9d-8e6f-1a2b3c4d5e6f",
        origin=Origin(network="seajust", country="KH", contact_point="kh-cp-1"),
        destination=Destination(country="UZ"),
        created_at=datetime.now(UTC),
        key_id="ed25519:1",
    )
    payload = FacilitationRequest(
        case_ref="KH-MLA-2020-0042",
        requesting_country="KH",
        requested_country="UZ",
        offence_categories=["drug_trafficking"],
        measures_sought=["evidence"],
        languages=["en"],
        summary="Test request: no real case content.",
    )
    signed = sign_message(header, payload, key(fed, "seajust"))
    altered = signed.to_bytes().replace(signed.signature_b64.encode(), b"A" * 86)
    async with running(fed, "casc"):
        await _publish(casc.amqp_url(), altered, routing_key=deliver_queue("uz-cp-1"))
        items = await read_inbox(casc, credentials(fed, "uz-cp-1"))
        assert items == []
        (entry,) = await _quarantined(fed, "casc", 1)
    assert entry["x-mlanet-reason"] == "bad_signature"
    assert entry["x-mlanet-via"] == deliver_queue("uz-cp-1")
    assert entry["x-mlanet-detail"] == "refused at delivery by uz-cp-1"
    assert entry["body"] == altered
    assert _events(fed, "casc", header.message_id) == [
        (
            "refused",
            "bad_signature: refused at delivery by uz-cp-1 (via mlanet.deliver.uz-cp-1)",
        )
    ]


async def test_contact_point_add_and_provision_give_a_new_contact_point_its_rights_only(
    fed: Federation, tmp_path: Path
) -> None:
    """The operator adds a contact point (``mlanet contact-point add``) and runs ``mlanet
    directory provision``: its credentials folder holds its key and password (owner-only), the
    node's folder its public key and a password hash, and the broker a user with exactly its
    rights. Adding it again is refused. Once the node stops vouching for it (its files
    removed), provision removes its user."""
    out = tmp_path / "kh-cp-9"
    added = await mlanet(
        fed, "seajust", "contact-point", "add", "--id", "kh-cp-9", "--out", str(out)
    )
    assert added.code == 0, added.err
    assert "the directory lists no kh-cp-9 at seajust" in added.err
    assert sorted(p.name for p in out.iterdir()) == ["broker.password", "contact-point.key"]
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o600}
    assert out.stat().st_mode & 0o077 == 0
    keys = fed.contact_point_keys("seajust")
    assert (keys / "kh-cp-9.pub").exists()
    vouched = json.loads((keys / "kh-cp-9.user").read_text(encoding="ascii"))
    assert (out / "broker.password").read_text(encoding="ascii").strip() not in json.dumps(vouched)
    again = await mlanet(
        fed, "seajust", "contact-point", "add", "--id", "kh-cp-9", "--out", str(out)
    )
    assert again.code == 2
    assert "exists" in again.err
    malformed = await mlanet(
        fed, "seajust", "contact-point", "add", "--id", "../x", "--out", str(tmp_path / "x")
    )
    assert malformed.code == 2

    provision = ["directory", "provision", "--admin-user", ADMIN.user]
    provisioned = await mlanet(fed, "seajust", *provision)
    assert provisioned.code == 0, provisioned.err
    name = broker_user(fed.user("seajust"), "kh-cp-9")
    assert f"contact point kh-cp-9 ({name}): granted" in provisioned.out
    async with Management(ADMIN) as management:
        assert await management.permissions(fed.vhost("seajust"), name) == {
            "user": name,
            "vhost": fed.vhost("seajust"),
            "configure": "^$",
            "write": r"^mlanet\.submit$",
            "read": r"^mlanet\.deliver\.kh\-cp\-9$",
        }
        async with await aio_pika.connect(_cp_url(fed, "seajust", Credentials.load(out))):
            pass  # it can log in with the password only its folder holds
        (keys / "kh-cp-9.pub").unlink()
        (keys / "kh-cp-9.user").unlink()
        withdrawn = await mlanet(fed, "seajust", *provision)
        assert withdrawn.code == 0, withdrawn.err
        assert f"former contact point ({name}): access removed" in withdrawn.out
        assert await management.user(name) is None
        assert await management.user(broker_user(fed.user("seajust"), "kh-cp-1")) is not None
