"""No member network can act as another: the review's attacks, performed on the real RabbitMQ
against nodes of a local federation by a member network that holds its own broker password.

Each forged message is signed with the attacking network's own key (and, for a colluding relay,
the relay's own key) and published into a node's inbox with that network's own broker user, as
the review did. Each must land in the receiving node's quarantine with its specific reason;
nothing of it is delivered, and the legitimate traffic sent after it still flows (on the same
links, in order, so once the good message has arrived a forged one would have arrived too).

The example links: seajust - casc - ejn, ejn - wacap, ejn - gljc, wacap - gljc.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from mlanet.broker import SignedMessage, add_hop, sign_message
from mlanet.nodes.cli.contact import facilitation_request, read_inbox, submit
from mlanet.nodes.local.federation import Federation
from mlanet.nodes.state.store import open_node_store
from mlanet.schemas import Destination, FacilitationRequest, Header, Notice, Origin, Receipt
from tests.integration.kit import (
    config,
    credentials,
    depth,
    drain,
    eventually,
    facilitation,
    inject,
    key,
    outbox_state,
    running,
)

QUARANTINE = "mlanet.quarantine"


def _forged_origin(
    fed: Federation,
    signer: str,
    origin: Origin,
    to_country: str,
    *,
    requesting: str | None = None,
) -> SignedMessage:
    """A facilitation request ``signer`` signs with its own key, claiming ``origin``."""
    signing = key(fed, signer)
    header = Header(
        kind="facilitation_request",
        message_id=str(uuid.uuid4()),
        origin=origin,
        destination=Destination(country=to_country),
        created_at=datetime.now(UTC),
        key_id=signing.key_id,
    )
    payload = FacilitationRequest(
        case_ref="KH-MLA-2020-0042",
        requesting_country=requesting or origin.country or "KH",
        requested_country=to_country,
        offence_categories=["drug_trafficking"],
        measures_sought=["evidence"],
        languages=["en"],
        summary="Test request: no real case content.",
    )
    return sign_message(header, payload, signing)


async def _quarantined(fed: Federation, network: str, count: int) -> list[tuple[str, bytes]]:
    """Wait until ``network`` has quarantined ``count`` messages; take them out (reason, body)."""

    async def arrived() -> bool:
        return await depth(fed, network, QUARANTINE) >= count

    await eventually(arrived, within=60)
    return [(m.headers["x-mlanet-reason"], m.body) for m in await drain(fed, network, QUARANTINE)]


async def _inbox(fed: Federation, network: str, contact_point: str) -> list[str]:
    return [
        item.message.header.message_id
        for item in await read_inbox(config(fed, network), credentials(fed, contact_point))
    ]


async def _delivered(fed: Federation, network: str, contact_point: str, message_id: str) -> None:
    async def arrived() -> bool:
        return message_id in await _inbox(fed, network, contact_point)

    await eventually(arrived, within=60)


async def _state(fed: Federation, network: str, message_id: str, expected: str) -> bool:
    return outbox_state(fed, network, message_id) == expected


UZBEK = Origin(network="seajust", country="UZ", contact_point="uz-cp-1")


async def test_a_network_signing_as_another_networks_contact_point_is_refused_at_every_hop(
    fed: Federation,
) -> None:
    """SEAJust signs messages with origin {seajust, UZ, uz-cp-1} (CASC's Uzbek contact point).

    - at the destination: handed to CASC for Uzbekistan, quarantined as origin_not_member (it
      was delivered, and the inbox showed "from uz-cp-1 via seajust");
    - at a relay: handed to CASC for France, CASC refuses to relay it;
    - past a colluding relay: CASC's own hop record on it, handed to EJN, EJN refuses it;
    - in the payload: SEAJust's own Cambodian contact point asking on behalf of Uzbekistan;
    - on the origin's own submit path: a SEAJust contact point submits such a request to its
      node, which refuses to sign it out.

    Then SEAJust's legitimate requests reach Uzbekistan and France, with their receipts."""
    async with running(fed, "seajust", "casc", "ejn"):
        to_uz = _forged_origin(fed, "seajust", UZBEK, "UZ")
        to_fr = _forged_origin(fed, "seajust", UZBEK, "FR")
        past_relay = add_hop(
            _forged_origin(fed, "seajust", UZBEK, "FR"),
            key(fed, "casc"),
            to="ejn",
            at=datetime.now(UTC),
        )
        on_behalf = _forged_origin(
            fed,
            "seajust",
            Origin(network="seajust", country="KH", contact_point="kh-cp-1"),
            "UZ",
            requesting="UZ",
        )
        for forged in (to_uz, to_fr, on_behalf):
            await inject(fed, "casc", "seajust", forged.to_bytes())
        await inject(fed, "ejn", "casc", past_relay.to_bytes())
        usual = facilitation_request("kh-cp-1", "UZ")
        own = usual.model_copy(update={"payload": {**usual.payload, "requesting_country": "UZ"}})
        await submit(config(fed, "seajust"), credentials(fed, own.sender), own)

        at_casc = await _quarantined(fed, "casc", 3)
        assert sorted(at_casc) == sorted(
            ("origin_not_member", m.to_bytes()) for m in (to_uz, to_fr, on_behalf)
        )
        assert await _quarantined(fed, "ejn", 1) == [("origin_not_member", past_relay.to_bytes())]
        # SEAJust's own submission, and the refusal notices CASC and EJN sent back about the
        # three forged messages that name the Uzbek contact point, which SEAJust cannot
        # deliver (docs/PROTOCOL.md section 10.1; the fourth is for kh-cp-1).
        at_seajust = sorted(reason for reason, _ in await _quarantined(fed, "seajust", 4))
        assert at_seajust == ["no_route", "no_route", "no_route", "origin_not_member"]
        assert outbox_state(fed, "seajust", own.message_id) is None  # never signed out

        # The legitimate traffic flows, on the same links, after the forged messages.
        good_uz = facilitation_request("kh-cp-1", "UZ")
        good_fr = facilitation_request("kh-cp-1", "FR")
        for good in (good_uz, good_fr):
            await submit(config(fed, "seajust"), credentials(fed, good.sender), good)

        async def both_receipted() -> bool:
            states = {outbox_state(fed, "seajust", g.message_id) for g in (good_uz, good_fr)}
            return states == {"delivered"}

        await eventually(both_receipted)
        assert await _inbox(fed, "casc", "uz-cp-1") == [good_uz.message_id]
        assert await _inbox(fed, "ejn", "fr-cp-1") == [good_fr.message_id]
        for network in ("seajust", "casc", "ejn"):
            assert await depth(fed, network, QUARANTINE) == 0


async def test_hop_records_that_fake_a_path_are_refused(fed: Federation) -> None:
    """Each of the review's hop-record attacks, handed to CASC by the network that signed the
    last record, lands in CASC's quarantine with its own reason (all four were delivered):

    - SEAJust adds a hop record of its own to its own message: hop_by_origin;
    - GLJC's message with SEAJust's hop record (gljc - seajust is no link): unknown_link;
    - WACAP's message, GLJC's record addressed to SEAJust, then EJN's: hop_chain_broken;
    - WACAP's message relayed by EJN with a hop record dated 9999-12-31: clock_skew.

    An honest message relayed WACAP -> EJN -> CASC, and SEAJust's own, are delivered."""
    now = datetime.now(UTC)
    origin_hop = add_hop(
        facilitation(fed, "seajust", "kh-cp-1", "UZ"), key(fed, "seajust"), to="casc", at=now
    )
    no_link = add_hop(
        facilitation(fed, "gljc", "ke-cp-1", "UZ"), key(fed, "seajust"), to="casc", at=now
    )
    unchained = add_hop(
        add_hop(
            facilitation(fed, "wacap", "ng-cp-1", "UZ"), key(fed, "gljc"), to="seajust", at=now
        ),
        key(fed, "ejn"),
        to="casc",
        at=now,
    )
    far = datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
    future = add_hop(
        facilitation(fed, "wacap", "ng-cp-1", "UZ"), key(fed, "ejn"), to="casc", at=far
    )
    honest = add_hop(
        facilitation(fed, "wacap", "ng-cp-1", "UZ"),
        key(fed, "ejn"),
        to="casc",
        at=now + timedelta(milliseconds=5),
    )
    async with running(fed, "casc"):
        await inject(fed, "casc", "seajust", origin_hop.to_bytes())
        await inject(fed, "casc", "seajust", no_link.to_bytes())
        await inject(fed, "casc", "ejn", unchained.to_bytes())
        await inject(fed, "casc", "ejn", future.to_bytes())
        refused = dict((body, reason) for reason, body in await _quarantined(fed, "casc", 4))
        assert refused == {
            origin_hop.to_bytes(): "hop_by_origin",
            no_link.to_bytes(): "unknown_link",
            unchained.to_bytes(): "hop_chain_broken",
            future.to_bytes(): "clock_skew",
        }

        good = facilitation(fed, "seajust", "kh-cp-1", "UZ")
        await inject(fed, "casc", "ejn", honest.to_bytes())
        await inject(fed, "casc", "seajust", good.to_bytes())
        await _delivered(fed, "casc", "uz-cp-1", good.header.message_id)
        await _delivered(fed, "casc", "uz-cp-1", honest.header.message_id)
        assert sorted(await _inbox(fed, "casc", "uz-cp-1")) == sorted(
            [good.header.message_id, honest.header.message_id]
        )
        assert await depth(fed, "casc", QUARANTINE) == 0


def _signed_by(
    fed: Federation, network: str, kind: str, about: str, payload: Receipt | Notice
) -> SignedMessage:
    """A receipt or notice as ``network``'s node signs one, to SEAJust's Cambodian contact
    point, about SEAJust's message ``about``."""
    signing = key(fed, network)
    header = Header(
        kind=kind,  # type: ignore[arg-type]
        message_id=str(uuid.uuid4()),
        origin=Origin(network=network),
        destination=Destination(network="seajust", country="KH", contact_point="kh-cp-1"),
        created_at=datetime.now(UTC),
        key_id=signing.key_id,
        in_reply_to=about,
    )
    return sign_message(header, payload, signing)


async def test_receipts_and_notices_count_only_from_the_network_a_message_was_sent_to(
    fed: Federation,
) -> None:
    """SEAJust sends a request to France (for EJN, through CASC) while EJN's node is down.
    CASC, the relay, signs a notice that it failed that does not name the message's content
    (this used to mark it failed) and a receipt with the right content hash: SEAJust
    quarantines both as unauthorised and the message stays forwarded. When EJN comes up it
    delivers the request and EJN's receipt marks it delivered. A second request's failure
    notice from EJN, the network it was sent to, is taken. (A refusal notice that proves its
    signer held the message is taken from any hop: tests/integration/test_refusal_notices.py.)"""
    async with running(fed, "seajust", "casc") as nodes:
        request = facilitation_request("kh-cp-1", "FR")
        await submit(config(fed, "seajust"), credentials(fed, request.sender), request)
        await eventually(lambda: _state(fed, "seajust", request.message_id, "forwarded"))
        sent = await _sent(fed, request.message_id)
        failed = Notice(
            topic="delivery",
            title="Message could not be routed",
            regarding=request.message_id,
            reason="no_route",
        )
        receipt = Receipt(
            receipt_for=request.message_id,
            content_sha256=sent.content_sha256,
            received_at=datetime.now(UTC),
        )
        by_relay = [
            _signed_by(fed, "casc", "notice", request.message_id, failed),
            _signed_by(fed, "casc", "receipt", request.message_id, receipt),
        ]
        for forged in by_relay:
            await inject(fed, "seajust", "casc", forged.to_bytes())
        refused = await _quarantined(fed, "seajust", 2)
        assert sorted(refused) == sorted(("unauthorised", m.to_bytes()) for m in by_relay)
        assert outbox_state(fed, "seajust", request.message_id) == "forwarded"
        assert request.message_id not in [
            i.payload.regarding
            for i in await read_inbox(config(fed, "seajust"), credentials(fed, "kh-cp-1"))
            if isinstance(i.payload, Notice)
        ]

        await nodes.start("ejn")
        await eventually(lambda: _state(fed, "seajust", request.message_id, "delivered"))
        assert await _inbox(fed, "ejn", "fr-cp-1") == [request.message_id]

        # The network a message was sent to may say it failed.
        second = facilitation_request("kh-cp-1", "FR")
        await nodes.stop("ejn")
        await submit(config(fed, "seajust"), credentials(fed, second.sender), second)
        await eventually(lambda: _state(fed, "seajust", second.message_id, "forwarded"))
        from_ejn = Notice(
            topic="delivery",
            title="Message could not be delivered",
            regarding=second.message_id,
            reason="no_route",
            content_sha256=(await _sent(fed, second.message_id)).content_sha256,
        )
        relayed = add_hop(
            _signed_by(fed, "ejn", "notice", second.message_id, from_ejn),
            key(fed, "casc"),
            to="seajust",
            at=datetime.now(UTC),
        )
        await inject(fed, "seajust", "casc", relayed.to_bytes())
        await eventually(lambda: _state(fed, "seajust", second.message_id, "failed"))
        assert await depth(fed, "seajust", QUARANTINE) == 0


async def _sent(fed: Federation, message_id: str) -> SignedMessage:
    """The signed bytes SEAJust keeps for its own message."""
    from mlanet.broker import open_envelope
    from mlanet.nodes.directory.book import load_directory, message_trust

    store = open_node_store(config(fed, "seajust"), readonly=True)
    try:
        entry = store.outbox_get(message_id)
        assert entry is not None
        wire = entry.wire
    finally:
        store.close()
    return open_envelope(wire, message_trust(load_directory(config(fed, "seajust"))))


async def test_a_route_leading_back_to_a_network_on_the_path_is_a_loop(fed: Federation) -> None:
    """SEAJust hands CASC a message for Cambodia: CASC could only send it back to SEAJust,
    which is on its path. Quarantined as loop_detected (it was no_route); a message for
    Uzbekistan behind it is delivered."""
    async with running(fed, "casc"):
        back = facilitation(fed, "seajust", "kh-cp-1", "KH")
        good = facilitation(fed, "seajust", "kh-cp-1", "UZ")
        await inject(fed, "casc", "seajust", back.to_bytes())
        await inject(fed, "casc", "seajust", good.to_bytes())
        assert await _quarantined(fed, "casc", 1) == [("loop_detected", back.to_bytes())]
        await _delivered(fed, "casc", "uz-cp-1", good.header.message_id)
        assert await _inbox(fed, "casc", "uz-cp-1") == [good.header.message_id]
