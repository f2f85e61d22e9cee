"""Contact points and observers follow the directory: a replaced contact point's pending and later
messages reach its successor, and observers get notices only, never a members_only message."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from mlanet.broker import sign_message
from mlanet.nodes.cli.contact import read_inbox, submit
from mlanet.nodes.local.federation import Federation
from mlanet.nodes.state.audit import AuditLog
from mlanet.schemas import Destination, Header, Notice, Origin
from mlanet.schemas.submission import Submission
from tests.integration.directory_kit import (
    all_hold,
    dfed,
    events,
    mlanet,
    notice,
    quarantine_depth,
    quarantined,
    request,
)
from tests.integration.kit import (
    config,
    credentials,
    depth,
    enrol,
    eventually,
    inject,
    key,
    outbox_state,
    running,
)

__all__ = ["dfed"]

# Several waits on a busy shared broker: more than the default per-test timeout.
pytestmark = pytest.mark.timeout(300)


async def _state(fed: Federation, network: str, message_id: str, expected: str) -> bool:
    return outbox_state(fed, network, message_id) == expected


async def test_a_replaced_contact_points_messages_reach_its_successor(dfed: Federation) -> None:
    """uz-cp-1 is replaced by uz-cp-2 while two messages addressed to uz-cp-1 wait unread in its
    delivery queue: they move to the successor's queue; later messages addressed to uz-cp-1 or
    to Uzbekistan go to the successor too. Nothing addressed to either is lost."""
    fed = dfed
    async with running(fed, "unodc", "seajust", "casc") as nodes:
        pending = [request("kh-cp-1", contact_point="uz-cp-1") for _ in range(2)]
        for message in pending:
            await submit(config(fed, "seajust"), credentials(fed, message.sender), message)
        for message in pending:
            await eventually(
                lambda m=message: _state(fed, "seajust", m.message_id, "delivered"), within=90
            )
        assert await depth(fed, "casc", "mlanet.deliver.uz-cp-1") == 2

        await mlanet(
            "directory", "handover", "--config", fed.config_path("unodc"),
            "--network", "casc", "--from", "uz-cp-1", "--to", "uz-cp-2",
            "--role", "Prosecutor, international cooperation",
        )  # fmt: skip
        await all_hold(fed, 2, ("unodc", "seajust", "casc"))

        async def moved() -> bool:
            return await depth(fed, "casc", "mlanet.deliver.uz-cp-1") == 0

        await eventually(moved, within=90)
        await enrol(fed, "casc", "uz-cp-2")  # CASC's operator: its key and broker user
        assert "uz-cp-2" in nodes.nodes["casc"].contact_points
        assert "uz-cp-1" not in nodes.nodes["casc"].contact_points

        later = [
            request("kh-cp-1", contact_point="uz-cp-1"),
            request("kh-cp-1", country="UZ"),
        ]
        for message in later:
            await submit(config(fed, "seajust"), credentials(fed, message.sender), message)
        for message in later:
            await eventually(
                lambda m=message: _state(fed, "seajust", m.message_id, "delivered"), within=90
            )

        at_successor = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-2"))
        assert sorted(i.message.header.message_id for i in at_successor) == sorted(
            m.message_id for m in (*pending, *later)
        )
        assert await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1")) == []
        assert ("handed_over", "from uz-cp-1 to uz-cp-2") in events(
            fed, "casc", pending[0].message_id
        )
        assert await quarantine_depth(fed, "casc") == 0
    # the directory change and the hand-over are in casc's signed trail, which verifies
    with AuditLog.of(config(fed, "casc"), readonly=True) as journal:
        applied = [r.meta for r in journal.records(event="directory_applied")]
        handed = [r.meta for r in journal.records(event="handed_over")]
    assert any(meta.get("version") == 2 for meta in applied)
    assert {(meta["message_id"], meta["from"], meta["to"]) for meta in handed} == {
        (m.message_id, "uz-cp-1", "uz-cp-2") for m in pending
    }
    verified = await mlanet("audit", "verify", "--config", fed.config_path("casc"))
    assert "audit trail of casc ok: " in verified.output


async def test_observers_get_notices_and_never_a_members_only_message(dfed: Federation) -> None:
    """Mongolia attends CASC as an observer (with contact point mn-cp-1). A notice reaches it;
    a facilitation request or a members_only notice is refused at the origin (not_for_observers,
    the sender told why); CASC refuses one too when a peer hands it over anyway; a broadcast to
    CASC reaches mn-cp-1 unless it is members_only."""
    fed = dfed
    async with running(fed, "unodc", "seajust", "casc"):
        await mlanet(
            "directory", "membership", "--config", fed.config_path("unodc"),
            "--network", "casc", "--add-observer", "MN",
            "--contact-point", "mn-cp-1=Observer delegate",
        )  # fmt: skip
        await all_hold(fed, 2, ("unodc", "seajust", "casc"))
        await enrol(fed, "casc", "mn-cp-1")  # CASC's operator: its key and broker user

        plenary = notice("kh-cp-1", "MN")
        secret = notice("kh-cp-1", "MN", members_only=True)
        case = request("kh-cp-1", country="MN")
        for message in (plenary, secret, case):
            await submit(config(fed, "seajust"), credentials(fed, message.sender), message)
        await eventually(lambda: _state(fed, "seajust", secret.message_id, "failed"), within=90)
        await eventually(lambda: _state(fed, "seajust", case.message_id, "failed"), within=90)

        async def notice_arrived() -> bool:
            items = await read_inbox(config(fed, "casc"), credentials(fed, "mn-cp-1"))
            return [i.message.header.message_id for i in items] == [plenary.message_id]

        await eventually(notice_arrived, within=90)
        told = [
            item.payload
            for item in await read_inbox(config(fed, "seajust"), credentials(fed, "kh-cp-1"))
            if isinstance(item.payload, Notice)
        ]
        assert sorted((n.regarding, n.reason) for n in told) == sorted(
            [(secret.message_id, "not_for_observers"), (case.message_id, "not_for_observers")]
        )

        # A misbehaving origin hands CASC a members_only notice for the observer anyway.
        forced = sign_message(
            Header.model_validate(
                {
                    "kind": "notice",
                    "message_id": str(uuid.uuid4()),
                    "origin": Origin(network="seajust", country="KH", contact_point="kh-cp-1"),
                    "destination": Destination(country="MN"),
                    "created_at": datetime.now(UTC),
                    "key_id": "ed25519:1",
                    "members_only": True,
                }
            ),
            Notice(topic="plenary", title="Members only"),
            key(fed, "seajust"),
        )
        await inject(fed, "casc", "seajust", forced.to_bytes())
        await eventually(lambda: _positive(quarantine_depth(fed, "casc")), within=90)
        assert await quarantined(fed, "casc") == ["not_for_observers"]

        # Broadcasts to the whole network: the observer is left out of the members_only one.
        everyone = _broadcast("kh-cp-1", members_only=False)
        members = _broadcast("kh-cp-1", members_only=True)
        for message in (everyone, members):
            await submit(config(fed, "seajust"), credentials(fed, message.sender), message)

        async def broadcasts_arrived() -> bool:
            at_uz = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
            ids = {i.message.header.message_id for i in at_uz}
            return {everyone.message_id, members.message_id} <= ids

        await eventually(broadcasts_arrived, within=90)
        at_mn = await read_inbox(config(fed, "casc"), credentials(fed, "mn-cp-1"))
        assert [i.message.header.message_id for i in at_mn] == [
            plenary.message_id,
            everyone.message_id,
        ]
        assert all(item.message.header.members_only is None for item in at_mn)


async def _positive(count: object) -> bool:
    return await count > 0  # type: ignore[misc,operator]


def _broadcast(sender: str, *, members_only: bool) -> Submission:
    return Submission.model_validate(
        {
            "message_id": str(uuid.uuid4()),
            "kind": "notice",
            "sender": sender,
            "destination": {"network": "casc"},
            "members_only": True if members_only else None,
            "payload": {"topic": "working_group", "title": "Working group on e-evidence"},
        }
    )
