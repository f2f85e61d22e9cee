"""The hostile-input battery on the real broker: every entry of tests/hostile/corpus.py is sent
into a running node's inbox by a misbehaving peer (its own broker user, its own inbox exchange
unless the entry says otherwise, any AMQP property bytes), one after the other.

Each must end exactly as the corpus says: quarantined with its specific ``x-mlanet-reason``,
refused by the broker (permissions, a forged user id), deduplicated, recorded (a receipt for
nothing casc sent), or (a valid message with undecodable properties, a valid sealed request)
delivered once. The scene is the federation's own: every network lists an encryption key and
casc's node opens payloads sealed for it with the private key beside its signing key. None may
cause a delivery it should not, a forward, a crash or a stall: a good message sent after the
whole corpus is delivered, and the contact point's queue holds exactly the messages that were
meant to arrive, each once.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest

from mlanet.broker import Reason
from mlanet.broker.keys import b64u_decode, b64u_encode
from mlanet.broker.topology import peer_inbox
from mlanet.nodes.local.federation import Federation
from mlanet.nodes.state.store import open_node_store
from tests.hostile.corpus import (
    CONTACT_POINT,
    CORPUS,
    HONEST,
    HOSTILE,
    PRECONDITION_FAILED,
    RECEIVER,
    Deduplicated,
    Delivered,
    Hostile,
    Quarantined,
    Recorded,
    Refused,
    Scene,
    restrict_kinds,
)
from tests.hostile.forge import (
    Frame,
    facilitation_payload,
    header,
    seal_and_sign,
    sealed,
    sign,
    wire,
)
from tests.hostile.harness import rotate
from tests.hostile.peer import BrokerRefusal, Publication, amqp_url, publish, publish_all
from tests.integration.kit import config, depth, drain, drained, eventually, key, running

QUARANTINE = "mlanet.quarantine"
DELIVER = f"mlanet.deliver.{CONTACT_POINT}"


def _message_id(body: bytes) -> str:
    frame = json.loads(body)
    return str(json.loads(b64u_decode(frame["header"]))["message_id"])


def _events(fed: Federation, message_id: str) -> list[str]:
    store = open_node_store(config(fed, RECEIVER), readonly=True)
    try:
        return [event.event for event in store.events(message_id)]
    finally:
        store.close()


def _recorded(fed: Federation, event: str) -> int:
    store = open_node_store(config(fed, RECEIVER), readonly=True)
    try:
        return store.count_events(event, 0.0)
    finally:
        store.close()


class Battery:
    """Sends publications as a peer and follows what the receiving node does with them."""

    def __init__(self, fed: Federation) -> None:
        self.fed = fed
        self.delivered: list[str] = []  # message ids expected at the contact point, in order

    async def send(self, publication: Publication) -> None:
        sender = publication.as_network or HOSTILE
        url = amqp_url(
            self.fed.link_user(sender),
            self.fed.link_password(sender),
            self.fed.door(RECEIVER, sender),
        )
        await publish(url, sender, publication)

    async def deliver(self, publication: Publication) -> None:
        await self.send(publication)
        self.delivered.append(_message_id(publication.body))
        await self.until_delivered()

    async def until_delivered(self) -> None:
        async def arrived() -> bool:
            return await depth(self.fed, RECEIVER, DELIVER) >= len(self.delivered)

        await eventually(arrived, within=60)

    async def run(self, entry: Hostile, scene: Scene) -> str:
        """Play one entry; return what happened, in the words of the corpus table."""
        attack = entry.build(scene)
        for setup in attack.setup:
            await self.deliver(setup)
        expect = entry.expect
        if isinstance(expect, Refused):
            with pytest.raises(BrokerRefusal) as refused:
                await self.send(attack.hostile)
            assert refused.value.code == expect.code, entry.name
            return f"refused by the broker ({expect.code})"
        if isinstance(expect, Delivered):
            await self.deliver(attack.hostile)
            return "delivered once (properties ignored)"
        recorded_before = _recorded(self.fed, expect.event) if isinstance(expect, Recorded) else 0
        await self.send(attack.hostile)
        if isinstance(expect, Recorded):

            async def recorded() -> bool:
                return _recorded(self.fed, expect.event) > recorded_before

            await eventually(recorded, within=60)
            assert await depth(self.fed, RECEIVER, QUARANTINE) == 0, entry.name
            return f"recorded as {expect.event}"
        if isinstance(expect, Deduplicated):
            message_id = _message_id(attack.hostile.body)

            async def deduplicated() -> bool:
                return _events(self.fed, message_id) == ["delivered", "duplicate"]

            await eventually(deduplicated, within=60)
            return "deduplicated"
        assert isinstance(expect, Quarantined)

        async def quarantined() -> bool:
            return await depth(self.fed, RECEIVER, QUARANTINE) >= 1

        await eventually(quarantined, within=60)
        (refused_message,) = await drain(self.fed, RECEIVER, QUARANTINE)
        reason = refused_message.headers["x-mlanet-reason"]
        assert reason == expect.reason.value, f"{entry.name}: {reason}"
        body = attack.hostile.body
        if expect.reason is Reason.OVERSIZED:  # kept: the first max_bytes, the size, the digest
            headers = refused_message.headers
            assert refused_message.body == body[: scene.max_bytes]
            assert headers["x-mlanet-truncated"] == "true"
            assert headers["x-mlanet-size"] == str(len(body))
            assert headers["x-mlanet-sha256"] == b64u_encode(hashlib.sha256(body).digest())
        else:
            assert refused_message.body == body, entry.name
        return str(reason)


@pytest.mark.timeout(600)
async def test_every_hostile_message_gets_its_outcome_and_the_node_keeps_working(
    fed: Federation,
) -> None:
    restrict_kinds(fed.config_path(RECEIVER))
    now = datetime.now(UTC)
    rotate(fed, now)
    scene = Scene.of(fed, now)
    battery = Battery(fed)
    outcomes: dict[str, str] = {}
    async with running(fed, RECEIVER) as nodes:
        for entry in CORPUS:
            if entry.big:
                continue
            outcomes[entry.name] = await battery.run(entry, scene)
            assert not nodes.tasks[RECEIVER].done(), f"the node stopped after {entry.name}"

        # After the whole corpus: a good message from each peer is delivered, sealed for casc
        # as honest origins send them.
        for peer in (HOSTILE, HONEST):
            listed = scene.encryption[RECEIVER]
            good_header = header(
                key(fed, peer),
                datetime.now(UTC),
                sealed=sealed(RECEIVER, listed.key_id),
            )
            asking = facilitation_payload(requesting_country=good_header["origin"]["country"])
            good = seal_and_sign(good_header, asking, key(fed, peer), listed.public_key)
            await battery.deliver(Publication(wire(good), as_network=peer))
        # nothing more on its way from either peer: whatever was to arrive has arrived
        await drained(fed, RECEIVER, peer_inbox(HOSTILE), peer_inbox(HONEST))
        assert not nodes.tasks[RECEIVER].done()

    assert len(outcomes) == len([e for e in CORPUS if not e.big])
    arrived = [_message_id(m.body) for m in await drain(fed, RECEIVER, DELIVER)]
    assert arrived == battery.delivered, "a hostile message was delivered, or one twice"
    assert await depth(fed, RECEIVER, QUARANTINE) == 0
    for peer in (HOSTILE, HONEST):  # only casc's own messages (receipts, directory) went out
        for sent in await drain(fed, RECEIVER, f"mlanet.out.{peer}"):
            origin = json.loads(b64u_decode(json.loads(sent.body)["header"]))["origin"]
            assert origin["network"] == RECEIVER, f"a message from {origin} was forwarded"


@pytest.mark.timeout(300)
async def test_a_body_at_rabbitmqs_default_maximum_is_refused_by_the_broker(
    fed: Federation,
) -> None:
    """A 128 MiB body (RabbitMQ's default max_message_size) from a peer. It used to reach the
    node, which held up to prefetch such bodies in memory before refusing them by their size;
    mlanet's broker now refuses anything above the protocol's cap plus room for hop records
    (``max_message_size``, set by scripts/setup.sh): the peer's publish fails with
    PRECONDITION_FAILED, the node never sees it and goes on with the next message."""
    (entry,) = [e for e in CORPUS if e.big]
    scene = Scene.of(fed, datetime.now(UTC))
    battery = Battery(fed)
    async with running(fed, RECEIVER) as nodes:
        with pytest.raises(BrokerRefusal) as refused:
            await battery.send(entry.build(scene).hostile)
        assert refused.value.code == PRECONDITION_FAILED, (
            "the broker took a 128 MiB body: its max_message_size is not set (scripts/setup.sh)"
        )
        good = sign(
            header(key(fed, HOSTILE), datetime.now(UTC)), facilitation_payload(), key(fed, HOSTILE)
        )
        await battery.deliver(Publication(wire(good)))
        assert not nodes.tasks[RECEIVER].done()
    assert await depth(fed, RECEIVER, QUARANTINE) == 0


@pytest.mark.timeout(300)
async def test_copies_arriving_together_are_delivered_once_and_equivocation_is_caught(
    fed: Federation,
) -> None:
    """Replays sent back to back (no wait between copies) reach the node while the first copy
    is still being handled: each message is delivered once, every copy after it is a duplicate,
    and the same id with other content arriving at the same time is refused as equivocation.
    (Before the node held a message's key from its dedupe check to its record, every copy was
    delivered, and both contents of an equivocation were.)"""
    seajust = key(fed, HOSTILE)
    now = datetime.now(UTC)
    replayed = [sign(header(seajust, now), facilitation_payload(), seajust) for _ in range(10)]
    pairs = []
    for _ in range(5):
        first = header(seajust, now)
        pairs.append(
            (
                sign(first, facilitation_payload(), seajust),
                sign(first, facilitation_payload(summary="Other text, same id."), seajust),
            )
        )
    bodies = [wire(frame) for frame in replayed for _ in range(3)]
    bodies += [wire(frame) for pair in pairs for frame in pair]
    url = amqp_url(fed.link_user(HOSTILE), fed.link_password(HOSTILE), fed.door(RECEIVER, HOSTILE))
    async with running(fed, RECEIVER):
        await publish_all(url, HOSTILE, bodies)

        async def settled() -> bool:
            handled = await depth(fed, RECEIVER, DELIVER) + await depth(fed, RECEIVER, QUARANTINE)
            return handled >= len(replayed) + 2 * len(pairs)

        await eventually(settled, within=120)

        def outcomes(frame: Frame) -> list[str]:  # a copy waiting for the first: accepted then
            return [e for e in _events(fed, _message_id(wire(frame))) if e != "accepted"]

        async def every_copy_recorded() -> bool:  # three copies each: none more to arrive
            return all(len(outcomes(frame)) >= 3 for frame in replayed)

        await eventually(every_copy_recorded, within=60)
        for frame in replayed:
            assert outcomes(frame) == ["delivered", "duplicate", "duplicate"]
    arrived = [_message_id(m.body) for m in await drain(fed, RECEIVER, DELIVER)]
    assert sorted(arrived) == sorted(
        _message_id(wire(f)) for f in [*replayed, *(p[0] for p in pairs)]
    )
    refused = await drain(fed, RECEIVER, QUARANTINE)
    assert [r.headers["x-mlanet-reason"] for r in refused] == ["equivocation"] * len(pairs)
    assert {r.body for r in refused} == {wire(p[1]) for p in pairs}
