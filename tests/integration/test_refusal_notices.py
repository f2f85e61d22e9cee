"""A refusal at any hop after the origin reaches the origin (docs/PROTOCOL.md section 10.1), on
the real RabbitMQ with nodes of a local federation.

The example links: unodc - seajust - casc - ejn, ejn - wacap, ejn - gljc, wacap - gljc. The
coordinator's network, unodc, has no contact points.

- the issue's case: a notice for a network without contact points, refused at its destination
  (two hops away) as no_route: the origin marks it failed and stops resending, its contact point
  is told, and the destination holds one quarantine entry;
- a relay that is neither the addressee nor the origin's first step refuses: it proves that it
  held the message with the hop record of the relay before it;
- the origin's first step refuses a copy that has no hop records;
- forged refusal notices, from a network that never held the message, are refused at the
  origin with their reasons and change nothing; the true one, on the same link, is taken;
- copies of one refused message are one quarantine entry with a count and one notice;
- ``mlanet send`` refuses at once what the origin knows it cannot route.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from mlanet.broker import SignedMessage, add_hop, open_envelope, sign_message
from mlanet.broker.keys import b64u_decode, b64u_encode
from mlanet.broker.strictjson import canonical_bytes
from mlanet.nodes.cli.contact import facilitation_request, read_inbox, submit, track
from mlanet.nodes.directory.book import load_directory, message_trust
from mlanet.nodes.local.federation import Federation
from mlanet.nodes.state.quarantine import Entry, Where
from mlanet.nodes.state.store import open_node_store
from mlanet.schemas import Destination, Header, Notice, Origin
from mlanet.schemas.base import format_timestamp
from mlanet.schemas.payloads import NoticeHop
from mlanet.schemas.submission import Submission
from tests.integration.kit import (
    config,
    credentials,
    eventually,
    facilitation,
    inject,
    key,
    mlanet_send,
    running,
)
from tests.integration.quarantine_kit import open_store


def _entries(fed: Federation, network: str) -> list[Entry]:
    store = open_store(fed, network)
    if store is None:
        return []
    with store:
        return list(store.page(Where(), limit=1000).entries)


async def _has_entries(fed: Federation, network: str, count: int) -> bool:
    return len(_entries(fed, network)) >= count


def _outbox(fed: Federation, network: str, message_id: str) -> tuple[str, str] | None:
    entry = track(config(fed, network), message_id).entry
    return (entry.state, entry.detail) if entry else None


def _resends(fed: Federation, network: str, message_id: str) -> bool:
    """Is the message still among those the origin resends (at any time from now on)?"""
    store = open_node_store(config(fed, network), readonly=True)
    try:
        return message_id in {e.message_id for e in store.outbox_due(time.time() + 1e9)}
    finally:
        store.close()


async def _failed(fed: Federation, network: str, message_id: str) -> bool:
    found = _outbox(fed, network, message_id)
    return found is not None and found[0] == "failed"


async def _notices(fed: Federation, network: str, contact_point: str, about: str) -> list[Any]:
    """The notices about ``about`` in a contact point's inbox: (signer, payload)."""
    return [
        (item.message.header.origin.network, item.payload)
        for item in await read_inbox(config(fed, network), credentials(fed, contact_point))
        if isinstance(item.payload, Notice) and item.payload.regarding == about
    ]


def _submission(sender: str, destination: dict[str, str], kind: str = "notice") -> Submission:
    payload = {"topic": "plenary", "title": "Plenary, no real case content"}
    return Submission.model_validate(
        {
            "message_id": str(uuid.uuid4()),
            "kind": kind,
            "sender": sender,
            "destination": destination,
            "payload": payload,
        }
    )


async def test_a_notice_refused_at_a_destination_without_contact_points_reaches_its_origin(
    fed: Federation,
) -> None:
    """The issue's case: CASC's Uzbek contact point sends a notice to the network unodc, which
    has no contact points, through SEAJust. unodc refuses it as no_route and tells CASC: CASC
    marks it failed with that reason, no longer resends it, and tells uz-cp-1; unodc holds one
    quarantine entry for it."""
    async with running(fed, "casc", "seajust", "unodc"):
        notice = _submission("uz-cp-1", {"network": "unodc"})
        await submit(config(fed, "casc"), credentials(fed, notice.sender), notice)
        await eventually(lambda: _failed(fed, "casc", notice.message_id), within=60)
        assert _outbox(fed, "casc", notice.message_id) == ("failed", "no_route: refused by unodc")
        assert not _resends(fed, "casc", notice.message_id)

        ((by, told),) = await _notices(fed, "casc", "uz-cp-1", notice.message_id)
        assert (by, told.reason, told.topic) == ("unodc", "no_route", "delivery")
        (hop,) = told.hops  # SEAJust's hop record, addressed to unodc: the proof
        record = json.loads(b64u_decode(hop.record))
        assert (record["network"], record["to"]) == ("seajust", "unodc")

        (refused,) = _entries(fed, "unodc")
        assert (refused.reason, refused.claim.message_id) == ("no_route", notice.message_id)
        assert refused.copies >= 1


async def test_a_relay_that_is_not_the_addressee_proves_it_held_the_message(
    fed: Federation,
) -> None:
    """SEAJust sends Nigeria (WACAP) a request with a hop limit of 1: CASC relays it to EJN,
    which would need a second hop record and refuses it (hop_limit_exceeded). EJN is neither
    the addressee nor SEAJust's first step: CASC's hop record addressed to EJN, carried in the
    notice, is what makes SEAJust take it."""
    async with running(fed, "seajust", "casc", "ejn"):
        request = facilitation_request("kh-cp-1", "NG").model_copy(update={"hop_limit": 1})
        await submit(config(fed, "seajust"), credentials(fed, request.sender), request)
        await eventually(lambda: _failed(fed, "seajust", request.message_id), within=60)
        assert _outbox(fed, "seajust", request.message_id) == (
            "failed",
            "hop_limit_exceeded: refused by ejn",
        )
        assert not _resends(fed, "seajust", request.message_id)
        ((by, told),) = await _notices(fed, "seajust", "kh-cp-1", request.message_id)
        assert (by, told.reason) == ("ejn", "hop_limit_exceeded")
        sent = _sent(fed, "seajust", request.message_id)
        assert told.content_sha256 == sent.content_sha256
        (refused,) = _entries(fed, "ejn")
        assert refused.reason == "hop_limit_exceeded"


async def test_the_origins_first_step_refusing_a_copy_without_hop_records_is_taken(
    fed: Federation,
) -> None:
    """SEAJust's rules send what is for unodc through CASC; CASC could only send it back
    (loop_detected). The copy CASC refused has no hop records: SEAJust takes CASC's notice
    because CASC is where its own routing hands the message."""
    path = fed.config_path("seajust")
    path.write_text(
        path.read_text(encoding="utf-8") + '\n[[routes]]\nvia = "casc"\nnetworks = ["unodc"]\n',
        encoding="utf-8",
    )
    async with running(fed, "seajust", "casc"):
        notice = _submission("kh-cp-1", {"network": "unodc"})
        await submit(config(fed, "seajust"), credentials(fed, notice.sender), notice)
        await eventually(lambda: _failed(fed, "seajust", notice.message_id), within=60)
        assert _outbox(fed, "seajust", notice.message_id) == (
            "failed",
            "loop_detected: refused by casc",
        )
        ((by, told),) = await _notices(fed, "seajust", "kh-cp-1", notice.message_id)
        assert (by, told.reason, told.hops) == ("casc", "loop_detected", [])


def _sent(fed: Federation, network: str, message_id: str) -> SignedMessage:
    """The signed bytes an origin keeps for its own message."""
    store = open_node_store(config(fed, network), readonly=True)
    try:
        entry = store.outbox_get(message_id)
        assert entry is not None
        wire = entry.wire
    finally:
        store.close()
    return open_envelope(wire, message_trust(load_directory(config(fed, network))))


def _refusal_by(
    fed: Federation, network: str, about: SignedMessage, hops: list[NoticeHop], content: str
) -> SignedMessage:
    """A refusal notice ``network``'s node signs about SEAJust's message ``about``."""
    signing = key(fed, network)
    header = Header(
        kind="notice",
        message_id=str(uuid.uuid4()),
        origin=Origin(network=network),
        destination=Destination(network="seajust", country="KH", contact_point="kh-cp-1"),
        created_at=datetime.now(UTC),
        key_id=signing.key_id,
        in_reply_to=about.header.message_id,
    )
    payload = Notice(
        topic="delivery",
        title="Message refused",
        regarding=about.header.message_id,
        reason="no_route",
        content_sha256=content,
        hops=hops,
    )
    return sign_message(header, payload, signing)


def _hop_as(fed: Federation, network: str, signer: str, prev: str, to: str) -> NoticeHop:
    """A hop record naming ``network`` as the relay, signed with ``signer``'s key."""
    signing = key(fed, signer)
    record = b64u_encode(
        canonical_bytes(
            {
                "at": format_timestamp(datetime.now(UTC)),
                "key_id": key(fed, network).key_id,
                "network": network,
                "prev": prev,
                "to": to,
            }
        )
    )
    signature = b64u_encode(signing.sign(b"mlanet-v1:hop:" + record.encode("ascii")))
    return NoticeHop(record=record, signature=signature)


async def test_a_forged_refusal_notice_from_a_network_that_never_held_the_message_is_refused(
    fed: Federation,
) -> None:
    """SEAJust's request for Uzbekistan waits at CASC (its node is down). Each forged refusal
    notice about it, with the right content hash, is quarantined at SEAJust with its reason and
    the request stays forwarded, its contact point told nothing:

    - unodc (SEAJust's peer, which never held the request), without hop records: unauthorised;
    - unodc with a hop record "CASC sent it to unodc" it signed itself: bad_hop_signature;
    - unodc with CASC's genuine hop record from another message: hop_chain_broken;
    - CASC, the addressee, naming other content: unauthorised.

    CASC's true notice, on the same link after them, marks the request failed."""
    async with running(fed, "seajust"):
        request = facilitation_request("kh-cp-1", "UZ")
        await submit(config(fed, "seajust"), credentials(fed, request.sender), request)

        async def forwarded() -> bool:
            found = _outbox(fed, "seajust", request.message_id)
            return found is not None and found[0] == "forwarded"

        await eventually(forwarded)
        sent = _sent(fed, "seajust", request.message_id)
        content = sent.content_sha256
        another = add_hop(
            facilitation(fed, "seajust", "kh-cp-1", "UZ"),
            key(fed, "casc"),
            to="unodc",
            at=datetime.now(UTC),
        )
        borrowed = [NoticeHop(record=h.record_b64, signature=h.signature_b64) for h in another.hops]
        forged_hop = _hop_as(fed, "casc", "unodc", sent.last_link_digest(), "unodc")
        forged = {
            "unauthorised": _refusal_by(fed, "unodc", sent, [], content),
            "bad_hop_signature": _refusal_by(fed, "unodc", sent, [forged_hop], content),
            "hop_chain_broken": _refusal_by(fed, "unodc", sent, borrowed, content),
        }
        other_content = _refusal_by(fed, "casc", sent, [], another.content_sha256)
        for message in forged.values():
            await inject(fed, "seajust", "unodc", message.to_bytes())
        await inject(fed, "seajust", "casc", other_content.to_bytes())

        await eventually(lambda: _has_entries(fed, "seajust", 4), within=60)
        refused = {e.claim.message_id: e.reason for e in _entries(fed, "seajust")}
        assert refused == {
            **{m.header.message_id: reason for reason, m in forged.items()},
            other_content.header.message_id: "unauthorised",
        }
        assert _outbox(fed, "seajust", request.message_id) == ("forwarded", "to casc")
        assert _resends(fed, "seajust", request.message_id)
        assert await _notices(fed, "seajust", "kh-cp-1", request.message_id) == []

        true = _refusal_by(fed, "casc", sent, [], content)
        await inject(fed, "seajust", "casc", true.to_bytes())
        await eventually(lambda: _failed(fed, "seajust", request.message_id), within=60)
        assert _outbox(fed, "seajust", request.message_id) == (
            "failed",
            "no_route: refused by casc",
        )
        assert len(_entries(fed, "seajust")) == 4


async def test_copies_of_one_refused_message_are_one_entry_and_one_notice(
    fed: Federation,
) -> None:
    """SEAJust hands CASC four copies of a message CASC can only send back (loop_detected),
    then a copy of another message with its signature broken. CASC keeps one entry for the
    four copies, counting them, and tells SEAJust once (the gate withholds the other three);
    the broken message, refused before it could be opened, is told to nobody."""
    async with running(fed, "seajust", "casc"):
        back = facilitation(fed, "seajust", "kh-cp-1", "KH")
        broken = facilitation(fed, "seajust", "kh-cp-1", "UZ")
        wire = broken.to_wire()
        wire["signature"] = back.signature_b64  # a valid signature of other bytes
        with capture_logs(processors=[merge_contextvars]) as logs:
            for _ in range(4):
                await inject(fed, "casc", "seajust", back.to_bytes())
            await inject(fed, "casc", "seajust", canonical_bytes(wire))

            async def all_handled() -> bool:
                entries = {e.reason: e for e in _entries(fed, "casc")}
                told = [
                    log
                    for log in logs
                    if log["event"] in ("refusal_notice_sent", "refusal_notice_withheld")
                    and log.get("message_id") == back.header.message_id
                ]
                return (
                    "bad_signature" in entries
                    and entries.get("loop_detected") is not None
                    and entries["loop_detected"].copies == 4
                    and len(told) == 4
                )

            await eventually(all_handled, within=60)
            events = [
                log["event"]
                for log in logs
                if log["event"].startswith("refusal_notice")
                and log.get("message_id") == back.header.message_id
            ]
            assert sorted(events) == ["refusal_notice_sent"] + ["refusal_notice_withheld"] * 3
            assert not [
                log
                for log in logs
                if log["event"].startswith("refusal_notice")
                and log.get("message_id") == broken.header.message_id
            ]
        assert sorted(e.reason for e in _entries(fed, "casc")) == [
            "bad_signature",
            "loop_detected",
        ]

        async def told() -> bool:
            return bool(await _notices(fed, "seajust", "kh-cp-1", back.header.message_id))

        await eventually(told, within=60)
        ((by, notice),) = await _notices(fed, "seajust", "kh-cp-1", back.header.message_id)
        assert (by, notice.reason, notice.content_sha256) == (
            "casc",
            "loop_detected",
            back.content_sha256,
        )


async def test_a_copy_refused_while_its_entry_is_being_released_is_an_entry_of_its_own(
    fed: Federation,
) -> None:
    """A release (or drop) claims the entry, republishes it and then removes it: a copy refused
    meanwhile (the released one, refused again for the same reason) must not be counted on the
    entry that is about to go. With the entry claimed as a release claims it, CASC keeps the
    next copy as an entry of its own; once the release removes the claimed entry, that copy is
    still there."""
    async with running(fed, "seajust", "casc"):
        back = facilitation(fed, "seajust", "kh-cp-1", "KH")
        await inject(fed, "casc", "seajust", back.to_bytes())
        await eventually(lambda: _has_entries(fed, "casc", 1), within=60)
        (first,) = _entries(fed, "casc")
        store = open_store(fed, "casc")
        assert store is not None
        with store:
            store.take(first.id, "a-release", time.time())
            await inject(fed, "casc", "seajust", back.to_bytes())
            await eventually(lambda: _has_entries(fed, "casc", 2), within=60)
            assert store.remove("a-release") == 1
        (kept,) = _entries(fed, "casc")
        assert kept.id != first.id
        assert (kept.reason, kept.claim.message_id, kept.copies) == (
            "loop_detected",
            back.header.message_id,
            1,
        )
        assert kept.body_kept


async def test_mlanet_send_refuses_at_once_what_the_origin_cannot_route(
    fed: Federation, tmp_path: Path
) -> None:
    """No network serves the United States, and unodc has no contact points (the directory
    says so): ``mlanet send`` says so for each and submits nothing (no outbox entry, no
    quarantine entry at SEAJust); a request for Uzbekistan sent the same way right after them
    is submitted and forwarded."""
    plenary = tmp_path / "plenary.json"
    plenary.write_text('{"topic": "plenary", "title": "Plenary"}', encoding="utf-8")
    async with running(fed, "seajust"):
        code, said = await mlanet_send(fed, "--to-country", "US")
        assert code == 1
        assert said.startswith("mlanet: not sent: no network serves the destination")
        assert "(destination US) (no_route); nothing was submitted" in said
        code, said = await mlanet_send(
            fed, "--to-network", "unodc", "--kind", "notice", "--file", str(plenary)
        )
        assert code == 1
        assert said.startswith("mlanet: not sent: unodc has no contact points")
        assert "(destination unodc) (no_route)" in said
        code, said = await mlanet_send(fed, "--to-country", "UZ")
        assert code == 0, said
        message_id = said.strip()

        async def forwarded() -> bool:
            found = _outbox(fed, "seajust", message_id)
            return found is not None and found[0] == "forwarded"

        await eventually(forwarded)
        store = open_node_store(config(fed, "seajust"), readonly=True)
        try:
            assert store.outbox_states() == {"forwarded": 1}
        finally:
            store.close()
        assert _entries(fed, "seajust") == []
