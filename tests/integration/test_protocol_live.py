"""docs/PROTOCOL.md's additions, on the real broker, with the test acting as a second
implementation (``tests/independent.py``, written from the document alone).

- Section 12.1: what a running node declares in its vhost (exchanges, queues and their
  arguments, bindings, policies, its links' shovels) is exactly what the document lists.
- Section 12.2: a refusal published into ``mlanet.quarantine`` with the documented headers is
  taken into the node's quarantine with that reason, detail, place and time.
- Sections 8.1, 10.1 and 10.2, as the destination sees them: messages the independent
  implementation signs as SEAJust are forwarded and delivered by the Python nodes where the
  document's routing says, carry hop records the independent verifier accepts, and come back
  with receipts built as section 8.1 says.
- Section 8.1, as the origin sees it: SEAJust's Python node takes the independent
  implementation's receipt (also one whose origin names a country and contact point of the
  receipting network) and refuses one for other content or from a country not of that network.
- Section 16: the local federation lists each network's encryption key, so what the independent
  implementation sends is sealed for its target network and what comes back is sealed for
  SEAJust; it opens that with SEAJust's key file, reads the delivered form of a contact point,
  and a sealed payload moved into another message or sealed for another network is quarantined
  at the destination with its own reason.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika
import httpx
import pytest

from mlanet.nodes.cli.contact import submit
from mlanet.nodes.local.federation import Federation
from tests import independent
from tests.integration.directory_kit import quarantined, request
from tests.integration.kit import (
    ADMIN,
    amqp,
    config,
    credentials,
    drain,
    eventually,
    inject,
    outbox_state,
    running,
)
from tests.integration.quarantine_kit import open_store

pytestmark = pytest.mark.timeout(300)

DOC = (Path(__file__).parents[2] / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")


def _block(name: str) -> Any:
    found = re.search(rf"<!-- mlanet-example: {name} -->\n```\w*\n(.*?)\n```\n", DOC, re.DOTALL)
    assert found is not None, name
    return json.loads(found.group(1))


def _seed(fed: Federation, network: str) -> bytes:
    text = (fed.root / network / f"{network}.1.key").read_text(encoding="ascii")
    return independent.private_key_file(text)[2]


def _recipient(fed: Federation, network: str, directory: dict[str, Any]) -> independent.Recipient:
    """``network`` as the destination of sealed payloads: its key file and directory entry."""
    text = (fed.root / network / f"{network}.seal.1.key").read_text(encoding="ascii")
    return independent.Recipient.of(directory, [independent.seal_key_file(text)])


def _coordinator(fed: Federation) -> independent.Keys:
    text = fed.coordinator_key().read_text(encoding="ascii")
    network, key_id, seed = independent.private_key_file(text)
    return {(network, key_id): independent.public_key_of(seed)}


def _directory(fed: Federation) -> dict[str, Any]:
    """The federation's directory, opened the documented way with the coordinator's key."""
    return independent.open_directory((fed.root / "directory.json").read_bytes(), _coordinator(fed))


def _keys(directory: dict[str, Any]) -> independent.Keys:
    return {
        (entry["id"], key["key_id"]): key["public_key"]
        for entry in directory["networks"]
        for key in entry["keys"]
    }


async def _api(path: str) -> Any:
    """GET from the management API as the broker administrator (the listing's raw fields)."""
    async with httpx.AsyncClient(
        base_url=ADMIN.url.rstrip("/") + "/api", auth=(ADMIN.user, ADMIN.password), timeout=60
    ) as client:
        answer = await client.get("/" + path)
        answer.raise_for_status()
        return answer.json()


def _expand(template: Any, **names: str) -> Any:
    text = json.dumps(template)
    for placeholder, value in names.items():
        text = text.replace(f"<{placeholder}>", value)
    return json.loads(text)


async def test_a_running_node_declares_exactly_what_section_12_1_lists(fed: Federation) -> None:
    declared = _block("amqp")
    directory = _directory(fed)
    network = "casc"
    peers = sorted(
        {b for a, b in directory["links"] if a == network}
        | {a for a, b in directory["links"] if b == network}
    )
    entry = next(n for n in directory["networks"] if n["id"] == network)
    contact_points = [cp["id"] for cp in entry["contact_points"]]
    vhost = quote(fed.vhost(network), safe="")

    def each(template: dict[str, Any]) -> list[dict[str, Any]]:
        text = json.dumps(template)
        if "<contact_point>" in text:
            return [_expand(template, contact_point=cp) for cp in contact_points]
        if "<peer>" in text:
            return [_expand(template, peer=peer, network=network) for peer in peers]
        return [_expand(template, network=network)]

    async with running(fed, network):

        async def settled() -> bool:  # policies and shovels are put a moment after the start
            policies = await _api("policies")  # the node's vhost's and its doors'
            shovels = await _api(f"parameters/shovel/{vhost}")
            mine = {fed.vhost(network), *(fed.door(network, peer) for peer in peers)}
            return len([p for p in policies if p["vhost"] in mine]) >= len(peers) + 1 and len(
                shovels
            ) >= len(peers)

        await eventually(settled)
        exchanges = {e["name"]: e for e in await _api(f"exchanges/{vhost}")}
        queues = {q["name"]: q for q in await _api(f"queues/{vhost}")}
        bindings = {(b["source"], b["destination"]) for b in await _api(f"bindings/{vhost}")}
        policies = {p["name"]: p for p in await _api(f"policies/{vhost}")}
        shovels = {s["name"]: s["value"] for s in await _api(f"parameters/shovel/{vhost}")}
        doors: dict[str, dict[str, Any]] = {}
        for peer in peers:  # each peer's door, named as the document says
            door = _expand(declared["door"]["vhost"], vhost=fed.vhost(network), peer=peer)
            assert door == fed.door(network, peer)
            at = quote(door, safe="")
            doors[peer] = {
                "exchanges": {e["name"]: e for e in await _api(f"exchanges/{at}")},
                "queues": {q["name"]: q for q in await _api(f"queues/{at}")},
                "bindings": {(b["source"], b["destination"]) for b in await _api(f"bindings/{at}")},
                "policies": {p["name"]: p for p in await _api(f"policies/{at}")},
            }

    for template in declared["exchanges"]:
        for wanted in each(template):
            found = exchanges[wanted["name"]]
            assert {k: found[k] for k in wanted} == wanted
    for template in declared["queues"]:
        for wanted in each(template):
            found = queues[wanted["name"]]
            assert (found["durable"], found["arguments"]) == (
                wanted["durable"],
                wanted["arguments"],
            )
    for template in declared["bindings"]:
        for wanted in each(template):
            assert (wanted["source"], wanted["destination"]) in bindings
    for template in declared["policies"]:
        for wanted in each(template):
            found = policies[wanted["name"]]
            assert {k: found[k] for k in wanted} == wanted
    for template in declared["shovels"]:
        for wanted in each(template):
            value = {k: v for k, v in shovels[wanted["name"]].items() if not k.endswith("-uri")}
            assert value == wanted["value"]
    documented = {q["name"] for t in declared["queues"] for q in each(t)}
    assert set(queues) == documented, "the node declares a queue the document does not list"
    for peer, found in doors.items():
        wanted = _expand(declared["door"], peer=peer, network=network)
        for exchange in wanted["exchanges"]:
            there = found["exchanges"][exchange["name"]]
            assert {k: there[k] for k in exchange} == exchange
        assert {q["name"] for q in wanted["queues"]} == set(found["queues"]), peer
        for queue in wanted["queues"]:
            there = found["queues"][queue["name"]]
            assert (there["durable"], there["arguments"]) == (queue["durable"], queue["arguments"])
        assert {(b["source"], b["destination"]) for b in wanted["bindings"]} <= found["bindings"]
        for policy in wanted["policies"]:
            there = found["policies"][policy["name"]]
            assert {k: there[k] for k in policy} == policy
        # nothing of the node's own vhost is in a door
        assert not set(found["exchanges"]) & {"mlanet.unroutable", "mlanet.submit"}


async def test_a_refusal_published_with_the_documented_headers_is_quarantined_as_such(
    fed: Federation,
) -> None:
    example = _block("quarantine_headers")
    body = b"bytes another implementation refused"
    async with running(fed, "casc"):
        connection = await aio_pika.connect(amqp(fed, "casc"))
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            await channel.default_exchange.publish(
                aio_pika.Message(
                    body, headers=example["headers"], message_id=example["message_id"]
                ),
                routing_key="mlanet.quarantine",
            )

        async def taken_in() -> bool:
            store = open_store(fed, "casc")
            if store is None:
                return False
            with store:
                return store.get(example["message_id"]) is not None

        await eventually(taken_in)
    store = open_store(fed, "casc")
    assert store is not None
    with store:
        entry = store.get(example["message_id"])
    assert entry is not None
    headers = example["headers"]
    assert (entry.reason, entry.detail, entry.via, entry.body) == (
        headers["x-mlanet-reason"],
        headers["x-mlanet-detail"],
        headers["x-mlanet-via"],
        body,
    )
    assert entry.at == datetime.fromisoformat(headers["x-mlanet-at"]).timestamp()


def _request(
    origin: str, sender: str, destination: dict[str, str], kind: str = "facilitation_request"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A header and payload as another implementation writes them (section 6, 8)."""
    header = {
        "content": "json",
        "created_at": independent.timestamp(datetime.now(UTC)),
        "destination": destination,
        "format": 1,
        "hop_limit": 6,
        "key_id": "ed25519:1",
        "kind": kind,
        "message_id": str(uuid.uuid4()),
        "origin": {"contact_point": sender, "country": sender[:2].upper(), "network": origin},
        "urgency": "normal",
    }
    if kind == "notice":
        return header, {"title": "Annual plenary", "topic": "plenary"}
    payload = {
        "case_ref": "KH-MLA-2020-0042",
        "languages": ["en"],
        "measures_sought": ["evidence"],
        "offence_categories": ["drug_trafficking"],
        "requested_country": destination.get("country", "UZ"),
        "requesting_country": sender[:2].upper(),
        "summary": "Test request: no real case content.",
    }
    return header, payload


async def _take(fed: Federation, network: str, queue: str, count: int) -> list[bytes]:
    """Wait for ``count`` messages in a queue of ``network`` and take them."""
    taken: list[bytes] = []

    async def arrived() -> bool:
        taken.extend(d.body for d in await drain(fed, network, queue))
        return len(taken) >= count

    await eventually(arrived, within=90)
    assert len(taken) == count, f"{queue}: {len(taken)} messages, not {count}"
    return taken


async def test_messages_of_another_implementation_go_where_sections_10_1_and_10_2_say(
    fed: Federation,
) -> None:
    """The test signs as SEAJust from the document alone; CASC and EJN are Python nodes. What
    they deliver, relay and send back is what the document predicts, and verifies by it."""
    directory = _directory(fed)
    keys = _keys(directory)
    networks = {n["id"]: n for n in directory["networks"]}
    seajust = _seed(fed, "seajust")
    now = datetime.now(UTC)
    async with running(fed, "seajust"):
        pass  # SEAJust's queues are declared; from now on the test speaks for SEAJust

    to_germany = _request("seajust", "kh-cp-1", {"country": "DE"})
    to_uzbekistan = _request("seajust", "kh-cp-1", {"country": "UZ"})
    to_casc = _request("seajust", "kh-cp-1", {"network": "casc"}, kind="notice")
    mine = _recipient(fed, "seajust", directory)
    sent, wires = {}, []
    for header, payload in (to_germany, to_uzbekistan, to_casc):  # sealed but for the notice
        sealing = independent.seal_for(header, directory, "seajust", now)
        assert (sealing is None) == (header["kind"] == "notice")
        wire = independent.sign(header, payload, seajust, seal_for=sealing)
        sent[header["message_id"]] = independent.open_envelope(wire, keys, payload=False)
        wires.append(wire)
    assert sent[to_germany[0]["message_id"]].header["sealed"]["network"] == "ejn"
    assert sent[to_uzbekistan[0]["message_id"]].header["sealed"]["network"] == "casc"
    assert independent.next_hop(to_germany[0], ["seajust"], directory, "casc", now) == (
        "forward",
        ["ejn"],
    )
    assert independent.next_hop(to_germany[0], ["seajust", "casc"], directory, "ejn", now) == (
        "deliver",
        ["de-cp-1"],
    )
    assert independent.next_hop(to_uzbekistan[0], ["seajust"], directory, "casc", now) == (
        "deliver",
        ["uz-cp-1"],
    )
    _, to_all = independent.next_hop(to_casc[0], ["seajust"], directory, "casc", now)
    assert sorted(to_all) == sorted(cp["id"] for cp in networks["casc"]["contact_points"])

    async with running(fed, "casc", "ejn"):
        for wire in wires:
            await inject(fed, "casc", "seajust", wire)
        (at_germany,) = await _take(fed, "ejn", "mlanet.deliver.de-cp-1", 1)
        relayed = independent.open_delivered(at_germany, keys)  # section 16.7
        assert relayed.path == ["seajust", "casc"]
        assert relayed.records[0]["to"] == "ejn"
        assert relayed.content_sha256 == sent[to_germany[0]["message_id"]].content_sha256
        assert relayed.opened == independent.canonical(to_germany[1])
        assert relayed.payload == to_germany[1]
        for contact_point in to_all:
            expected = 2 if contact_point == "uz-cp-1" else 1
            bodies = await _take(fed, "casc", f"mlanet.deliver.{contact_point}", expected)
            ids = {independent.open_delivered(b, keys).header["message_id"] for b in bodies}
            assert to_casc[0]["message_id"] in ids
        back: list[independent.Opened] = []

        async def two_receipts() -> bool:  # none for the notice
            for drained in await drain(fed, "seajust", "mlanet.inbox.casc", door="casc"):
                back.append(independent.open_envelope(drained.body, keys, recipient=mine))
            return sum(m.header["kind"] == "receipt" for m in back) >= 2

        await eventually(two_receipts, within=90)

    # CASC also announced its directory at start (section 14.4): from itself, to SEAJust only.
    updates = [m for m in back if m.header["kind"] == "directory_update"]
    assert len(updates) + 2 == len(back)
    for update in updates:
        assert update.path == ["casc"]
        assert (update.header["origin"], update.header["destination"]) == (
            {"network": "casc"},
            {"network": "seajust"},
        )
        carried = json.dumps(update.payload["directory"]).encode()
        assert independent.open_directory(carried, _coordinator(fed)) == directory

    by_message = {m.payload["receipt_for"]: m for m in back if m.header["kind"] == "receipt"}
    for header, target, delivered_to, path in (
        (to_germany[0], "ejn", "de-cp-1", ["ejn", "casc"]),
        (to_uzbekistan[0], "casc", "uz-cp-1", ["casc"]),
    ):
        receipt = by_message[header["message_id"]]
        assert receipt.path == path
        assert receipt.header["kind"] == "receipt"
        assert receipt.header["sealed"]["network"] == "seajust"  # back sealed for the origin
        assert receipt.opened is not None
        assert receipt.header["origin"] == {"network": target}
        assert receipt.header["destination"] == header["origin"]
        assert receipt.header["in_reply_to"] == header["message_id"]
        assert receipt.payload["received_by"] == "node"
        assert receipt.payload["delivered_to"] == delivered_to
        assert independent.receipt_counts(receipt, sent[header["message_id"]], target=target)
    assert await quarantined(fed, "casc") == []
    assert await quarantined(fed, "ejn") == []


async def test_the_origin_takes_receipts_built_from_the_document_and_refuses_false_ones(
    fed: Federation,
) -> None:
    """SEAJust's Python node sends a request to Uzbekistan; the test answers as CASC from the
    document alone. A receipt for other content and one whose origin names a country CASC does
    not have are refused; one whose origin names CASC's Uzbek contact point counts."""
    directory = _directory(fed)
    keys = _keys(directory)
    casc = _seed(fed, "casc")
    as_casc = _recipient(fed, "casc", directory)
    async with running(fed, "casc"):
        pass  # CASC's inbox for SEAJust is declared; from now on the test speaks for CASC
    outgoing = request("kh-cp-1", country="UZ")
    async with running(fed, "seajust"):
        await submit(config(fed, "seajust"), credentials(fed, outgoing.sender), outgoing)
        arrived: list[independent.Opened] = []

        async def the_request() -> bool:  # SEAJust's directory announcement comes too
            for drained in await drain(fed, "casc", "mlanet.inbox.seajust", door="seajust"):
                arrived.append(independent.open_envelope(drained.body, keys, recipient=as_casc))
            return any(m.header["message_id"] == outgoing.message_id for m in arrived)

        await eventually(the_request, within=90)
        sent = next(m for m in arrived if m.header["message_id"] == outgoing.message_id)
        assert sent.header["kind"] == "facilitation_request"
        assert sent.header["sealed"]["network"] == "casc"  # section 16.2: for the target
        assert sent.payload["requesting_country"] == "KH"
        assert sent.path == ["seajust"]
        target = independent.next_hop(sent.header, [], directory, "seajust", datetime.now(UTC))
        assert target == ("forward", ["casc"])

        back_to = independent.encryption_key(directory, "seajust", datetime.now(UTC))
        assert back_to is not None

        def answer(**options: Any) -> bytes:
            return independent.receipt_for(
                sent,
                network="casc",
                key_id="ed25519:1",
                seed=casc,
                delivered_to="uz-cp-1",
                at=datetime.now(UTC),
                seal_for=("seajust", back_to),
                **options,
            )

        other_content = answer(content_sha256=sent.origin_link_digest)
        not_casc = answer(origin={"network": "casc", "country": "KH"})
        named = answer(origin={"contact_point": "uz-cp-1", "country": "UZ", "network": "casc"})
        for wire in (other_content, not_casc):
            await inject(fed, "seajust", "casc", wire)

        async def refused_both() -> bool:
            store = open_store(fed, "seajust")
            if store is None:
                return False
            with store:
                return store.count() >= 2

        await eventually(refused_both)
        assert outbox_state(fed, "seajust", outgoing.message_id) != "delivered"
        await inject(fed, "seajust", "casc", named)

        async def delivered() -> bool:
            return outbox_state(fed, "seajust", outgoing.message_id) == "delivered"

        await eventually(delivered)
    assert sorted(await quarantined(fed, "seajust")) == ["origin_not_member", "unauthorised"]


async def test_a_sealed_payload_the_destination_cannot_open_is_quarantined_with_its_reason(
    fed: Federation,
) -> None:
    """Section 16.6 on the real broker: the independent implementation, as SEAJust, sends CASC
    a request sealed for it, the same sealed payload moved into another message (signed by the
    origin all the same), and a request for Uzbekistan sealed for EJN. CASC delivers the first
    and quarantines the others as ``seal_does_not_open`` and ``sealed_for_other_network``."""
    directory = _directory(fed)
    keys = _keys(directory)
    seajust = _seed(fed, "seajust")
    now = datetime.now(UTC)
    async with running(fed, "seajust"):
        pass  # SEAJust's queues are declared; from now on the test speaks for SEAJust
    header, payload = _request("seajust", "kh-cp-1", {"country": "UZ"})
    sealing = independent.seal_for(header, directory, "seajust", now)
    assert sealing is not None
    assert sealing[0] == "casc"
    good = independent.sign(header, payload, seajust, seal_for=sealing)
    sealed_payload = independent.b64u_decode(json.loads(good)["payload"])
    other = {
        **header,
        "message_id": str(uuid.uuid4()),
        "sealed": json.loads(independent.b64u_decode(json.loads(good)["header"]))["sealed"],
    }
    moved = independent.sign(other, sealed_payload, seajust)
    for_ejn = independent.encryption_key(directory, "ejn", now)
    assert for_ejn is not None
    elsewhere = {**header, "message_id": str(uuid.uuid4())}
    misaddressed = independent.sign(elsewhere, payload, seajust, seal_for=("ejn", for_ejn))
    async with running(fed, "casc"):
        for wire in (good, moved, misaddressed):
            await inject(fed, "casc", "seajust", wire)
        (delivered,) = await _take(fed, "casc", "mlanet.deliver.uz-cp-1", 1)
        opened = independent.open_delivered(delivered, keys)
        assert opened.header["message_id"] == header["message_id"]
        assert opened.payload == payload

        async def both_refused() -> bool:
            store = open_store(fed, "casc")
            if store is None:
                return False
            with store:
                return store.count() >= 2

        await eventually(both_refused)
    assert sorted(await quarantined(fed, "casc")) == [
        "seal_does_not_open",
        "sealed_for_other_network",
    ]
