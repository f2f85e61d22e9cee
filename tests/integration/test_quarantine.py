"""Operators and the quarantine, end to end on the real RabbitMQ through the ``mlanet`` command:
refused messages are listed with their reasons and stable ids, shown without their content,
released through the way they came in (a corrected config then accepts them) or dropped, and
nothing else in the quarantine is lost, duplicated or reordered. Every action is in the audit
trail. (A flood of refusals, the per-peer bound and the paging: test_quarantine_flood.py.)"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aio_pika

from mlanet.broker import SigningKey, canonical_bytes
from mlanet.broker.keys import b64u_encode
from mlanet.broker.transport import QUARANTINE, Transport, peer_inbox
from mlanet.nodes.cli.contact import read_inbox
from mlanet.nodes.local.federation import Federation
from mlanet.nodes.state.audit import AuditLog
from mlanet.nodes.state.quarantine_store import open_quarantine
from mlanet.nodes.state.store import open_node_store
from tests.integration.kit import (
    amqp,
    config,
    credentials,
    depth,
    eventually,
    facilitation,
    inject,
    running,
)

MARK = "QUARANTINE-TEST-CONTENT-7Q2X"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


async def mlanet(fed: Federation, network: str, *args: str) -> Result:
    """Run the real command line against ``network``'s node config."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mlanet",
        *args,
        "--config",
        str(fed.config_path(network)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 120)
    finally:
        if process.returncode is None:  # timed out: leave no command behind
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


async def _depth_is(fed: Federation, network: str, queue: str, expected: int) -> bool:
    return await depth(fed, network, queue) == expected


def _audit_events(fed: Federation, network: str) -> list[tuple[str, dict[str, Any]]]:
    with AuditLog.of(config(fed, network), readonly=True) as audit:
        return [(record.event, record.meta) for record in audit.records()]


def _tampered(fed: Federation) -> bytes:
    message = facilitation(fed, "seajust", "kh-cp-1", "UZ", summary=f"Tampered {MARK}", seal=False)
    payload = bytearray(message.payload_bytes)
    payload[payload.index(b"Tampered")] = ord("t")
    return message.to_bytes().replace(
        message.payload_b64.encode(), b64u_encode(bytes(payload)).encode()
    )


async def test_refused_messages_are_listed_shown_and_dropped_and_nothing_else_moves(
    fed: Federation,
) -> None:
    """Three refused messages: list gives each its reason and a stable id (twice the same, in
    the same order, none lost); show prints metadata only unless --payload; drop removes
    exactly the one named; the audit trail holds every action and still verifies."""
    stranger = SigningKey.from_seed("seajust", "ed25519:7", bytes(range(32)))
    async with running(fed, "casc"):
        unknown = facilitation(fed, "seajust", "kh-cp-1", "UZ", signer=stranger, summary=MARK)
        good = facilitation(fed, "seajust", "kh-cp-1", "UZ")
        for body in (_tampered(fed), unknown.to_bytes(), b'{"not": "an envelope"', good.to_bytes()):
            await inject(fed, "casc", "seajust", body)
        await eventually(lambda: _depth_is(fed, "casc", QUARANTINE, 3), within=60)

        listed = await mlanet(fed, "casc", "quarantine", "list", "--json")
        assert listed.code == 0, listed.err
        entries = listed.json_lines()
        assert sorted(e["reason"] for e in entries) == [
            "bad_signature",
            "invalid_json",
            "unknown_key",
        ]
        assert len({e["id"] for e in entries}) == 3
        assert all(e["via"] == "mlanet.inbox.from.seajust" for e in entries)
        assert MARK not in listed.out
        again = await mlanet(fed, "casc", "quarantine", "list", "--json")
        assert [e["id"] for e in again.json_lines()] == [e["id"] for e in entries]
        assert await depth(fed, "casc", QUARANTINE) == 3

        target = next(e for e in entries if e["reason"] == "unknown_key")
        shown = await mlanet(fed, "casc", "quarantine", "show", target["id"])
        assert shown.code == 0, shown.err
        assert "unknown_key" in shown.out
        assert unknown.header.message_id in shown.out  # the claimed id, marked unverified
        assert MARK not in shown.out
        with_payload = await mlanet(fed, "casc", "quarantine", "show", target["id"], "--payload")
        assert MARK in with_payload.out

        dropped = await mlanet(fed, "casc", "quarantine", "drop", target["id"], "--yes")
        assert dropped.code == 0, dropped.err
        left = (await mlanet(fed, "casc", "quarantine", "list", "--json")).json_lines()
        assert [e["id"] for e in left] == [e["id"] for e in entries if e is not target]
        assert await depth(fed, "casc", QUARANTINE) == 2
        missing = await mlanet(fed, "casc", "quarantine", "drop", target["id"], "--yes")
        assert missing.code == 1
        assert f"no quarantined message has the id {target['id']}" in missing.err

    events = _audit_events(fed, "casc")
    refused = {meta["quarantine_id"]: meta for event, meta in events if event == "refused"}
    assert set(refused) == {e["id"] for e in entries}
    assert refused[target["id"]]["reason"] == "unknown_key"
    operator = [(event, meta) for event, meta in events if event.startswith("quarantine_")]
    assert [event for event, _ in operator] == [
        "quarantine_listed",
        "quarantine_listed",
        "quarantine_shown",
        "quarantine_shown",
        "quarantine_dropped",
        "quarantine_listed",
    ]
    assert [meta.get("payload") for event, meta in operator if event == "quarantine_shown"] == [
        False,
        True,
    ]
    assert all(meta["operator"] for _, meta in operator)
    assert ("delivered", good.header.message_id) in {
        (event, meta.get("message_id")) for event, meta in events
    }
    verified = await mlanet(fed, "casc", "audit", "verify")
    assert verified.code == 0, verified.out + verified.err
    assert all(MARK not in json.dumps(meta) for _, meta in events)


_BLOCK = "# kinds restricted by the test\n"


def _restrict(fed: Federation, network: str, peer: str, kinds: list[str] | None) -> None:
    """Change which kinds ``network`` accepts from ``peer`` (None: every kind), as an operator
    would: a ``[[peers]]`` table for that peer in the node's config."""
    path = fed.config_path(network)
    text = path.read_text(encoding="utf-8").split(_BLOCK)[0]
    if kinds is not None:
        text += (
            f'{_BLOCK}[[peers]]\nnetwork = "{peer}"\nuser = "{fed.link_user(network)}"\n'
            f'password_file = "link.password"\nkinds = {json.dumps(kinds)}\n'
        )
    path.write_text(text, encoding="utf-8")


async def test_a_release_after_a_config_fix_is_delivered_with_its_original_sender(
    fed: Federation,
) -> None:
    """CASC does not yet accept facilitation requests from SEAJust: the request is quarantined
    as unauthorised. The operator corrects the config, restarts, and releases it: it goes
    through the whole pipeline again through SEAJust's inbox exchange and is delivered. A
    tampered audit record is then named by ``mlanet audit verify``."""
    _restrict(fed, "casc", "seajust", ["status_update", "receipt", "notice"])
    request = facilitation(fed, "seajust", "kh-cp-1", "UZ")
    async with running(fed, "casc"):
        await inject(fed, "casc", "seajust", request.to_bytes())
        await eventually(lambda: _depth_is(fed, "casc", QUARANTINE, 1), within=60)
    entries = (await mlanet(fed, "casc", "quarantine", "list", "--json")).json_lines()
    assert [(e["reason"], e["claimed"]["message_id"]) for e in entries] == [
        ("unauthorised", request.header.message_id)
    ]
    _restrict(fed, "casc", "seajust", None)
    async with running(fed, "casc"):
        released = await mlanet(fed, "casc", "quarantine", "release", entries[0]["id"])
        assert released.code == 0, released.err
        assert "mlanet.inbox.from.seajust" in released.out

        async def delivered() -> bool:
            items = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
            return [i.message.header.message_id for i in items] == [request.header.message_id]

        await eventually(delivered, within=60)
        items = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
        assert items[0].message.path == ("seajust",)
        assert await depth(fed, "casc", QUARANTINE) == 0
        again = await mlanet(fed, "casc", "quarantine", "release", entries[0]["id"])
        assert again.code == 1

    records = _audit_events(fed, "casc")
    events = [event for event, meta in records]
    assert events[0] == "refused"  # the pipeline refused it before accepting it
    after = events[events.index("quarantine_release") + 1 :]
    # the node may deliver the copy before the command has recorded the confirmed release;
    # its acceptance from seajust is in the record of its delivery
    assert sorted(after[:2]) == ["delivered", "quarantine_released"]
    assert [meta.get("from") for event, meta in records if event == "delivered"] == ["seajust"]
    assert (await mlanet(fed, "casc", "audit", "verify")).code == 0
    shown = await mlanet(fed, "casc", "audit", "show", "--last", "3")
    assert "delivered" in shown.out

    # make the refusal look like a different one, as whoever can write the state could
    store = open_node_store(config(fed, "casc"))
    store._db.execute("UPDATE journal SET record=replace(record, 'unauthorised', 'bad_signature')")
    store.close()
    tampered = await mlanet(fed, "casc", "audit", "verify")
    assert tampered.code == 1
    assert "FAILED: record 1 altered" in tampered.out


async def _hand_back(fed: Federation, network: str, limit: int) -> None:
    """Be a consumer that keeps failing on seajust's inbox queue's only message (in seajust's
    door) until the broker has handed it out ``limit`` times."""
    connection = await aio_pika.connect(amqp(fed, network, door="seajust"))
    async with connection:
        channel = await connection.channel()
        inbox = await channel.get_queue(peer_inbox("seajust"), ensure=False)
        for _ in range(limit):
            message = await inbox.get(no_ack=False, fail=False)
            assert message is not None
            await message.nack(requeue=True)


async def test_a_message_handed_out_too_often_is_quarantined_and_released_through_its_door(
    fed: Federation,
) -> None:
    """A door's queue has no broker-side delivery limit (it has no quarantine to dead-letter
    into): the node counts. A message the broker already handed out ``delivery_limit`` times
    unfinished is quarantined as delivery_limit, by way of its sender's inbox exchange, before
    it is handled again; released, it goes back through that exchange in the sender's door, so
    the pipeline sees the right sender and delivers it."""
    cfg = config(fed, "casc")
    async with running(fed, "casc"):  # the node makes its doors' queues, then is away
        pass
    poison = facilitation(fed, "seajust", "kh-cp-1", "UZ")
    await inject(fed, "casc", "seajust", poison.to_bytes())
    await _hand_back(fed, "casc", cfg.limits.delivery_limit)

    async with running(fed, "casc"):
        entries: list[dict[str, Any]] = []

        async def taken_in() -> bool:
            nonlocal entries
            entries = (await mlanet(fed, "casc", "quarantine", "list", "--json")).json_lines()
            return len(entries) == 1

        await eventually(taken_in, within=60, every=0.5)
        [entry] = entries
        assert entry["reason"] == "delivery_limit"
        assert entry["via"] == "mlanet.inbox.from.seajust"
        assert await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1")) == []
        released = await mlanet(fed, "casc", "quarantine", "release", entry["id"])
        assert released.code == 0, released.err

        async def delivered() -> bool:
            items = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
            return {i.message.header.message_id for i in items} == {poison.header.message_id}

        await eventually(delivered, within=60)
        assert await depth(fed, "casc", QUARANTINE) == 0


async def test_a_released_submission_goes_back_through_submit_and_strays_are_not_released(
    fed: Federation,
) -> None:
    """A submission its contact point did not sign is refused; released, it goes
    into mlanet.submit again and is refused again under a new id. A message that came in by no
    legitimate way cannot be released (it would lose its sender); it stays until dropped."""
    submission = canonical_bytes(
        {
            "message_id": str(uuid.uuid4()),
            "kind": "status_update",
            "sender": "zz-cp-1",
            "destination": {"country": "KH"},
            "payload": {"case_ref": "KH-MLA-2020-0042", "status": "received"},
        }
    )
    async with running(fed, "casc"):
        async with Transport(amqp(fed, "casc")) as transport:
            await transport.publish("mlanet.submit", submission, message_id="s", kind="x")
            await transport.publish("mlanet.inbox", b"{}", message_id="d", kind="x")
        oversized = b"{" + b" " * config(fed, "casc").limits.max_message_bytes + b"}"
        await inject(fed, "casc", "seajust", oversized)
        await eventually(lambda: _depth_is(fed, "casc", QUARANTINE, 3), within=60)
        kept = await mlanet(fed, "casc", "quarantine", "list", "--json")
        assert kept.code == 0, kept.err
        part = next(e for e in kept.json_lines() if e["reason"] == "oversized")
        assert part["truncated_from"] == len(oversized)
        refused_release = await mlanet(fed, "casc", "quarantine", "release", part["id"])
        assert refused_release.code == 1
        assert "kept only in part" in refused_release.err
        assert (await mlanet(fed, "casc", "quarantine", "drop", part["id"], "--yes")).code == 0
        first = {
            e["via"]: e
            for e in (await mlanet(fed, "casc", "quarantine", "list", "--json")).json_lines()
        }
        assert set(first) == {"mlanet.submit", ""}
        assert first["mlanet.submit"]["reason"] == "unsigned_submission"
        assert first[""]["reason"] == "bad_transport"

        stray = await mlanet(fed, "casc", "quarantine", "release", first[""]["id"])
        assert stray.code == 1
        assert "drop it instead" in stray.err
        released = await mlanet(fed, "casc", "quarantine", "release", first["mlanet.submit"]["id"])
        assert released.code == 0, released.err

        async def refused_again() -> bool:
            entries = (await mlanet(fed, "casc", "quarantine", "list", "--json")).json_lines()
            ids = {e["id"] for e in entries if e["via"] == "mlanet.submit"}
            return len(entries) == 2 and bool(ids) and first["mlanet.submit"]["id"] not in ids

        await eventually(refused_again, within=60, every=0.5)


async def test_two_operators_never_act_on_one_entry_at_once(fed: Federation) -> None:
    """While one command holds an entry (its claim in the quarantine store), another one's
    release or drop of it is told to try again and sends nothing; listing is never blocked and
    always shows every entry in order. Once the first lets go, the second acts."""
    async with running(fed, "casc"):
        for n in range(3):
            await inject(fed, "casc", "seajust", b"not json %d" % n)
        await eventually(lambda: _depth_is(fed, "casc", QUARANTINE, 3), within=60)
        before = (await mlanet(fed, "casc", "quarantine", "list", "--json")).json_lines()
        target = before[1]["id"]
        with open_quarantine(config(fed, "casc")) as store:
            store.take(target, "another operator's command", time.time())
            for verb in (["release", target], ["drop", target, "--yes"]):
                busy = await mlanet(fed, "casc", "quarantine", *verb)
                assert busy.code == 1
                assert "being worked on elsewhere" in busy.err
            listed = (await mlanet(fed, "casc", "quarantine", "list", "--json")).json_lines()
            assert [e["id"] for e in listed] == [e["id"] for e in before]
            store.let_go("another operator's command")
        dropped = await mlanet(fed, "casc", "quarantine", "drop", target, "--yes")
        assert dropped.code == 0, dropped.err
        after = (await mlanet(fed, "casc", "quarantine", "list", "--json")).json_lines()
        assert [e["id"] for e in after] == [before[0]["id"], before[2]["id"]]
        assert await depth(fed, "casc", QUARANTINE) == 2


async def test_a_senders_escape_sequences_and_bidi_overrides_are_printed_escaped(
    fed: Federation,
) -> None:
    """A peer chose the text: `quarantine show --payload` prints a junk body's terminal escape
    sequences escaped, and `mlanet inbox` a delivered summary's right-to-left override and
    8-bit control sequence (both pass the schema, which refuses only C0 controls)."""
    junk = b"\x1b[2J\x1b]0;owned\x07 \xe2\x80\xae" + MARK.encode()
    summary = f"Test request {MARK} \u202eevil\u202c \x9b31m"
    request = facilitation(fed, "seajust", "kh-cp-1", "UZ", summary=summary)
    async with running(fed, "casc"):
        await inject(fed, "casc", "seajust", junk)
        await inject(fed, "casc", "seajust", request.to_bytes())
        await eventually(lambda: _depth_is(fed, "casc", QUARANTINE, 1), within=60)
        await eventually(lambda: _depth_is(fed, "casc", "mlanet.deliver.uz-cp-1", 1), within=60)
    (entry,) = (await mlanet(fed, "casc", "quarantine", "list", "--json")).json_lines()
    shown = await mlanet(fed, "casc", "quarantine", "show", entry["id"], "--payload")
    assert shown.code == 0, shown.err
    assert MARK in shown.out  # the positive control: the payload is printed
    for hidden in ("\x1b", "\x07", "\u202e"):
        assert hidden not in shown.out
    assert "\\x1b[2J\\x1b]0;owned\\x07 \\u202e" in shown.out
    inbox = await mlanet(fed, "casc", "inbox", "--credentials", str(fed.credentials("uz-cp-1")))
    assert inbox.code == 0, inbox.err
    assert MARK in inbox.out
    for hidden in ("\u202e", "\u202c", "\x9b"):
        assert hidden not in inbox.out
    assert "\\u202eevil\\u202c \\x9b31m" in inbox.out
