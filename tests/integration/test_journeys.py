"""End-to-end journeys through nodes on the real RabbitMQ: routing, relaying, receipts, loops,
no-route, quarantine, dedupe and equivocation."""

from __future__ import annotations

import inspect
import uuid

from mlanet.broker import open_envelope
from mlanet.nodes.cli.contact import facilitation_request, read_inbox, status_update, submit
from mlanet.nodes.directory.book import load_directory, message_trust
from mlanet.nodes.local.federation import Federation
from mlanet.nodes.state.store import open_node_store
from mlanet.schemas import Notice
from mlanet.schemas.submission import Submission
from tests.integration.kit import (
    config,
    credentials,
    depth,
    drain,
    eventually,
    facilitation,
    inject,
    outbox_state,
    running,
)


def _request(sender: str, country: str) -> Submission:
    return facilitation_request(sender, country)


async def _delivered(fed: Federation, network: str, contact_point: str) -> list[str]:
    items = await read_inbox(config(fed, network), credentials(fed, contact_point))
    return [item.message.header.message_id for item in items]


async def test_cambodia_to_uzbekistan_is_delivered_and_the_receipt_returns(fed: Federation) -> None:
    """The seed's journey: SEAJust routes to CASC, CASC delivers to the Uzbek contact point, and
    CASC's signed receipt marks the message delivered at the origin."""
    async with running(fed, "seajust", "casc"):
        request = _request("kh-cp-1", "UZ")
        await submit(config(fed, "seajust"), credentials(fed, request.sender), request)

        async def receipted() -> bool:
            return outbox_state(fed, "seajust", request.message_id) == "delivered"

        await eventually(receipted)
        items = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
        assert [item.message.header.message_id for item in items] == [request.message_id]
        assert items[0].message.path == ("seajust",)
        assert items[0].payload.model_dump()["requested_country"] == "UZ"

        # The Uzbek side answers; the status update travels back the same way.
        update = status_update("uz-cp-1", "kh-cp-1", request.message_id)
        await submit(config(fed, "casc"), credentials(fed, update.sender), update)

        async def answered() -> bool:
            return update.message_id in await _delivered(fed, "seajust", "kh-cp-1")

        await eventually(answered)
        await eventually(lambda: _is(outbox_state(fed, "casc", update.message_id), "delivered"))


async def _is(value: object, expected: object) -> bool:
    if inspect.isawaitable(value):
        value = await value
    return value == expected


async def test_three_network_journey_through_a_relay(fed: Federation) -> None:
    """SEAJust has no link to EJN: CASC relays, adding its signed hop record, and EJN verifies
    the origin end to end and the hop before delivering; the receipt comes back through CASC."""
    async with running(fed, "seajust", "casc", "ejn"):
        request = _request("kh-cp-1", "FR")
        await submit(config(fed, "seajust"), credentials(fed, request.sender), request)
        await eventually(lambda: _is(outbox_state(fed, "seajust", request.message_id), "delivered"))
        items = await read_inbox(config(fed, "ejn"), credentials(fed, "fr-cp-1"))
        assert len(items) == 1
        message = items[0].message
        assert message.path == ("seajust", "casc")
        assert message.hops[0].record.to == "ejn"


async def test_no_route_is_quarantined_and_the_origin_is_told(fed: Federation) -> None:
    """A destination no network serves: quarantined at the origin as no_route, the message is
    marked failed and the sender gets a notice; nothing is silently dropped."""
    async with running(fed, "seajust"):
        request = _request("kh-cp-1", "US")
        await submit(config(fed, "seajust"), credentials(fed, request.sender), request)
        await eventually(lambda: _is(outbox_state(fed, "seajust", request.message_id), "failed"))
        items = await read_inbox(config(fed, "seajust"), credentials(fed, "kh-cp-1"))
        notices = [item.payload for item in items if isinstance(item.payload, Notice)]
        assert [(n.regarding, n.reason) for n in notices] == [(request.message_id, "no_route")]


async def test_no_route_at_a_relay_sends_a_notice_back_to_the_origin(fed: Federation) -> None:
    """A peer hands CASC a message for a country nobody serves: CASC quarantines it with
    no_route and signs a notice back to the origin, which marks its message failed."""
    async with running(fed, "seajust", "casc"):
        message = facilitation(fed, "seajust", "kh-cp-1", "US")
        await inject(fed, "casc", "seajust", message.to_bytes())

        async def quarantined() -> bool:
            return await depth(fed, "casc", "mlanet.quarantine") == 1

        await eventually(quarantined)
        refused = await drain(fed, "casc", "mlanet.quarantine")
        assert refused[0].headers["x-mlanet-reason"] == "no_route"

        async def noticed() -> bool:
            items = await read_inbox(config(fed, "seajust"), credentials(fed, "kh-cp-1"))
            return any(
                isinstance(i.payload, Notice) and i.payload.regarding == message.header.message_id
                for i in items
            )

        await eventually(noticed)


async def test_a_message_coming_back_to_a_network_on_its_path_is_a_loop(fed: Federation) -> None:
    """A message whose path already holds the receiving network is refused as a loop."""
    async with running(fed, "seajust"):
        own = facilitation(fed, "seajust", "kh-cp-1", "UZ")
        await inject(fed, "seajust", "casc", own.to_bytes())  # casc "returns" seajust's message
        await eventually(lambda: _positive(depth(fed, "seajust", "mlanet.quarantine")))
        refused = await drain(fed, "seajust", "mlanet.quarantine")
        # casc is not the last signer: wrong_sender catches it before routing
        assert refused[0].headers["x-mlanet-reason"] == "wrong_sender"

        from mlanet.broker import add_hop
        from tests.integration.kit import key

        relayed = add_hop(own, key(fed, "casc"), to="seajust", at=own.header.created_at)
        await inject(fed, "seajust", "casc", relayed.to_bytes())
        await eventually(lambda: _positive(depth(fed, "seajust", "mlanet.quarantine")))
        refused = await drain(fed, "seajust", "mlanet.quarantine")
        assert refused[0].headers["x-mlanet-reason"] == "loop_detected"


async def _positive(count: object) -> bool:
    return await count > 0  # type: ignore[misc,operator]


async def test_bad_messages_are_quarantined_while_the_ones_behind_them_flow(
    fed: Federation,
) -> None:
    """A tampered message and one signed by an unknown key go to quarantine with their reasons;
    the good messages sent before and after them are delivered."""
    from mlanet.broker import SigningKey

    async with running(fed, "casc"):
        first = facilitation(fed, "seajust", "kh-cp-1", "UZ")
        good_wire = bytearray(first.to_bytes())
        tampered = facilitation(fed, "seajust", "kh-cp-1", "UZ", seal=False)
        payload = bytearray(tampered.payload_bytes)
        payload[payload.index(b"Test")] = ord("B")
        from mlanet.broker.keys import b64u_encode

        tampered_wire = tampered.to_bytes().replace(
            tampered.payload_b64.encode(), b64u_encode(bytes(payload)).encode()
        )
        stranger = SigningKey.from_seed("seajust", "ed25519:7", bytes(range(32)))
        unknown = facilitation(fed, "seajust", "kh-cp-1", "UZ", signer=stranger)
        last = facilitation(fed, "seajust", "kh-cp-1", "UZ")
        for body in (bytes(good_wire), tampered_wire, unknown.to_bytes(), last.to_bytes()):
            await inject(fed, "casc", "seajust", body)

        async def both_delivered() -> bool:
            found = await _delivered(fed, "casc", "uz-cp-1")
            return {first.header.message_id, last.header.message_id} <= set(found)

        await eventually(both_delivered)
        await eventually(lambda: _equal(depth(fed, "casc", "mlanet.quarantine"), 2))
        reasons = sorted(
            r.headers["x-mlanet-reason"] for r in await drain(fed, "casc", "mlanet.quarantine")
        )
        assert reasons == ["bad_signature", "unknown_key"]
        assert len(await _delivered(fed, "casc", "uz-cp-1")) == 2


async def _equal(count: object, expected: int) -> bool:
    return await count == expected  # type: ignore[misc]


async def _handled(fed: Federation, network: str, message_id: str) -> list[str]:
    """What ``network``'s node recorded for a message (delivered, duplicate, ...): its
    outcomes (a copy still waiting for an earlier one at a group commit has its own
    ``accepted`` row before its outcome)."""
    store = open_node_store(config(fed, network))
    try:
        return [event.event for event in store.events(message_id) if event.event != "accepted"]
    finally:
        store.close()


async def test_a_redelivered_message_reaches_the_contact_point_once(fed: Federation) -> None:
    """The same signed message arriving three times (AMQP is at least once) is delivered once;
    each repeat still gets a receipt so a lost receipt is repaired."""
    async with running(fed, "casc"):
        message = facilitation(fed, "seajust", "kh-cp-1", "UZ")
        for _ in range(3):
            await inject(fed, "casc", "seajust", message.to_bytes())
        await eventually(
            lambda: _is(
                _handled(fed, "casc", message.header.message_id),
                ["delivered", "duplicate", "duplicate"],
            )
        )
        assert await _delivered(fed, "casc", "uz-cp-1") == [message.header.message_id]
        assert await depth(fed, "casc", "mlanet.deliver.uz-cp-1") == 0
        assert await depth(fed, "casc", "mlanet.quarantine") == 0


async def test_the_same_id_with_other_content_is_refused_as_equivocation(fed: Federation) -> None:
    """Same origin and message id, different content: the second is quarantined as
    equivocation and never delivered."""
    async with running(fed, "casc"):
        message_id = str(uuid.uuid4())
        honest = facilitation(fed, "seajust", "kh-cp-1", "UZ", message_id=message_id)
        other = facilitation(
            fed,
            "seajust",
            "kh-cp-1",
            "UZ",
            message_id=message_id,
            summary="A different text under the same id.",
        )
        await inject(fed, "casc", "seajust", honest.to_bytes())
        await eventually(lambda: _is(_handled(fed, "casc", message_id), ["delivered"]))
        await inject(fed, "casc", "seajust", other.to_bytes())
        await eventually(lambda: _equal(depth(fed, "casc", "mlanet.quarantine"), 1))
        refused = await drain(fed, "casc", "mlanet.quarantine")
        assert refused[0].headers["x-mlanet-reason"] == "equivocation"
        delivered = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
        assert len(delivered) == 1
        assert delivered[0].message.content_sha256 == honest.content_sha256
        trust = message_trust(load_directory(config(fed, "casc")))
        assert open_envelope(refused[0].body, trust).content_sha256 == other.content_sha256
