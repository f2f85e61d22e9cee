"""Key lifecycle against the real broker: a key rotated while messages flow (none refused), and an
emergency revocation that also catches messages already queued at the destination."""

from __future__ import annotations

import asyncio

import pytest

from mlanet.broker import open_delivered
from mlanet.broker.keys import load_signing_key
from mlanet.nodes.cli.contact import read_inbox, submit
from mlanet.nodes.directory.book import load_directory, message_trust
from mlanet.nodes.local.federation import Federation
from tests.integration.directory_kit import (
    all_hold,
    dfed,
    events,
    mlanet,
    quarantine_depth,
    quarantined,
    request,
)
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

__all__ = ["dfed"]

# Several waits on a busy shared broker: more than the default per-test timeout.
pytestmark = pytest.mark.timeout(300)


async def test_a_key_rotated_while_messages_flow_refuses_none(dfed: Federation) -> None:
    """SEAJust rotates its key mid-stream: the coordinator lists the new key (valid after a
    short activation delay) and keeps the old one valid for an overlap; SEAJust switches by itself
    once the new key is valid. Every message is delivered and receipted, nothing is refused,
    and the messages signed before and after the switch carry the old and the new key id."""
    fed = dfed
    async with running(fed, "unodc", "seajust", "casc") as nodes:
        seajust = nodes.nodes["seajust"]
        sent: list[str] = []
        stop = asyncio.Event()

        async def flow() -> None:
            while not stop.is_set():
                message = request("kh-cp-1", country="UZ")
                await submit(config(fed, "seajust"), credentials(fed, message.sender), message)
                sent.append(message.message_id)
                await asyncio.sleep(0.1)  # the pace of the traffic that runs across the rotation

        sender = asyncio.create_task(flow())
        await eventually(lambda: _at_least(sent, 5), within=90)
        rotated = await mlanet("keys", "rotate", "--config", fed.config_path("seajust"))
        assert "seajust.2.key" in rotated.output
        request_file = fed.root / "seajust" / "key-rotation-2.json"
        await mlanet(
            "directory", "approve", request_file, "--config", fed.config_path("unodc"),
            "--activate-in", "3", "--overlap", "3600",
        )  # fmt: skip
        await all_hold(fed, 2, ("unodc", "seajust", "casc"))
        listed = seajust.directory.network("seajust")
        assert listed is not None
        (new_key,) = [key for key in listed.keys if key.key_id == "ed25519:2"]
        assert new_key.not_before is not None

        async def switched() -> bool:
            return seajust.key.key_id == "ed25519:2"

        await eventually(switched, within=90)
        after = len(sent)
        await eventually(lambda: _at_least(sent, after + 5), within=90)
        stop.set()
        await sender

        async def all_receipted() -> bool:
            return all(outbox_state(fed, "seajust", m) == "delivered" for m in sent)

        await eventually(all_receipted, within=90)
        delivered = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
        assert sorted(i.message.header.message_id for i in delivered) == sorted(sent)
        assert {i.message.header.key_id for i in delivered} == {"ed25519:1", "ed25519:2"}
        assert all(  # it switched only once the new key was valid
            i.message.header.created_at >= new_key.not_before
            for i in delivered
            if i.message.header.key_id == "ed25519:2"
        )
        for network in ("seajust", "casc"):
            assert await quarantine_depth(fed, network) == 0, f"{network} refused something"


async def _at_least(items: list[str], count: int) -> bool:
    return len(items) >= count


async def test_a_revoked_key_is_refused_also_for_messages_already_queued(
    dfed: Federation,
) -> None:
    """SEAJust's key is revoked in an emergency. Messages it signed before that, already
    delivered to the Uzbek contact point's queue or still waiting in CASC's inbox while CASC was
    down, are refused when the contact point reads them (quarantined as key_revoked) once CASC
    holds the update; CASC catches the update up after its restart; a new message signed with
    the revoked key is refused at once."""
    fed = dfed
    async with running(fed, "unodc", "seajust", "casc") as nodes:
        early = [request("kh-cp-1", country="UZ") for _ in range(3)]
        for message in early:
            await submit(config(fed, "seajust"), credentials(fed, message.sender), message)

        async def all_delivered() -> bool:
            return all(outbox_state(fed, "seajust", m.message_id) == "delivered" for m in early)

        await eventually(all_delivered, within=90)
        assert await depth(fed, "casc", "mlanet.deliver.uz-cp-1") == 3  # not read yet

        await nodes.stop("casc")
        late = [request("kh-cp-1", country="UZ") for _ in range(3)]
        for message in late:
            await submit(config(fed, "seajust"), credentials(fed, message.sender), message)

        async def on_their_way() -> bool:  # in SEAJust's queue to CASC, or in CASC's inbox
            return all(outbox_state(fed, "seajust", m.message_id) == "forwarded" for m in late)

        await eventually(on_their_way, within=90)

        await mlanet(
            "directory", "revoke", "--config", fed.config_path("unodc"),
            "--network", "seajust", "--key-id", "ed25519:1",
        )  # fmt: skip
        await all_hold(fed, 2, ("unodc", "seajust"))
        await nodes.start("casc")
        await all_hold(fed, 2, ("casc",))  # caught up after its restart

        async def all_handled() -> bool:  # they were ahead of the update in CASC's queue
            return all(
                any(e == "delivered" for e, _ in events(fed, "casc", m.message_id)) for m in late
            )

        await eventually(all_handled, within=120)

        items = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
        assert items == [], "a message signed with the revoked key reached the contact point"

        async def all_handed_back() -> bool:  # signed by uz-cp-1; the node quarantines them
            return await quarantine_depth(fed, "casc") >= len(early) + len(late)

        await eventually(all_handed_back, within=90)
        assert (
            "refused",
            "key_revoked: refused at delivery by uz-cp-1 (via mlanet.deliver.uz-cp-1)",
        ) in events(fed, "casc", early[0].message_id)
        refused = await drain(fed, "casc", "mlanet.quarantine")
        trust = message_trust(load_directory(config(fed, "casc")))
        assert sorted(
            (
                open_delivered(r.body, trust).header.message_id,  # handed back as delivered
                r.headers["x-mlanet-reason"],
                r.headers["x-mlanet-via"],
            )
            for r in refused
        ) == sorted(
            (m.message_id, "key_revoked", "mlanet.deliver.uz-cp-1") for m in (*early, *late)
        )

        forged_later = facilitation(
            fed, "seajust", "kh-cp-1", "UZ", signer=load_signing_key(
                fed.root / "seajust" / "seajust.1.key"
            )
        )  # fmt: skip
        await inject(fed, "casc", "seajust", forged_later.to_bytes())

        async def refused() -> bool:
            return await quarantine_depth(fed, "casc") >= 1

        await eventually(refused, within=90)
        assert await quarantined(fed, "casc") == ["key_revoked"]


async def test_a_node_away_during_an_immediate_rotation_catches_up_from_the_update_itself(
    dfed: Federation,
) -> None:
    """CASC is down while SEAJust's new key becomes valid at once: the update SEAJust passes on
    is already signed with the new key, which CASC does not know yet. CASC reads the directory
    the update carries (the coordinator's signature is checked on its own), applies it, and
    then accepts the update and SEAJust's new messages; nothing is refused."""
    fed = dfed
    async with running(fed, "unodc", "seajust", "casc") as nodes:
        await nodes.stop("casc")
        await mlanet("keys", "rotate", "--config", fed.config_path("seajust"))
        await mlanet(
            "directory", "approve", fed.root / "seajust" / "key-rotation-2.json",
            "--config", fed.config_path("unodc"), "--activate-in", "0", "--overlap", "3600",
        )  # fmt: skip
        await all_hold(fed, 2, ("unodc", "seajust"))
        await eventually(lambda: _is_key(nodes.nodes["seajust"].key.key_id, "ed25519:2"), within=90)
        message = request("kh-cp-1", country="UZ")
        await submit(config(fed, "seajust"), credentials(fed, message.sender), message)

        await nodes.start("casc")
        await all_hold(fed, 2, ("casc",))
        await eventually(lambda: _delivered(fed, message.message_id), within=90)
        (item,) = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
        assert item.message.header.key_id == "ed25519:2"
        assert await quarantine_depth(fed, "casc") == 0


async def _is_key(key_id: str, expected: str) -> bool:
    return key_id == expected


async def _delivered(fed: Federation, message_id: str) -> bool:
    return outbox_state(fed, "seajust", message_id) == "delivered"
