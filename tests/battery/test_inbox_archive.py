"""A contact point reads its inbox while its node is busy writing: the archive is a database of
its own, so reading never waits for the node's write transactions (found by the fault battery:
with the node's group commit holding the write lock, archiving waited seconds per message and
failed with "database is locked" after five)."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mlanet.nodes.cli.contact import ARCHIVE_FILE, read_inbox, submit
from mlanet.nodes.local.federation import Federation, build, provision, teardown
from mlanet.nodes.state.store import Store
from mlanet.schemas.submission import Submission
from tests.battery.rabbit import ScratchBroker
from tests.integration.kit import config, credentials, eventually, outbox_state, running

pytestmark = pytest.mark.integration


@pytest.fixture
async def fed(tmp_path: Path, battery_broker: ScratchBroker) -> AsyncIterator[Federation]:
    federation = build(
        tmp_path / "federation",
        prefix="a" + uuid.uuid4().hex[:10],
        port=battery_broker.amqp_port,
        management_url=battery_broker.admin.url,
        receipts={"retry_after_seconds": 3.0, "check_every_seconds": 0.5},
    )
    await provision(federation, battery_broker.admin)
    try:
        yield federation
    finally:
        await teardown(federation, battery_broker.admin)


def _request(n: int) -> Submission:
    return Submission.model_validate(
        {
            "message_id": str(uuid.uuid4()),
            "kind": "facilitation_request",
            "sender": "kh-cp-1",
            "destination": {"country": "UZ"},
            "payload": {
                "case_ref": f"KH-MLA-2026-{n:04d}",
                "requesting_country": "KH",
                "requested_country": "UZ",
                "offence_categories": ["cybercrime"],
                "measures_sought": ["evidence"],
                "languages": ["en"],
                "summary": "Test request: no real case content.",
            },
        }
    )


async def test_reading_an_inbox_never_waits_for_the_nodes_write_lock(fed: Federation) -> None:
    """Three requests are delivered to Uzbekistan; while something holds the node database's
    write lock (as the node's group commit does under load), the contact point reads its inbox
    at once and gets all three, archived once each."""
    async with running(fed, "seajust", "casc"):
        requests = [_request(n) for n in range(3)]
        for request in requests:
            await submit(config(fed, "seajust"), credentials(fed, request.sender), request)

        async def receipted() -> bool:
            states = {outbox_state(fed, "seajust", r.message_id) for r in requests}
            return states == {"delivered"}

        await eventually(receipted, within=60)
        node_db = config(fed, "casc").state_dir / "node.sqlite3"
        holder = sqlite3.connect(node_db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # the node's write lock, held
        try:
            items = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert sorted(i.message.header.message_id for i in items) == sorted(
            r.message_id for r in requests
        )
        assert all(item.new for item in items)
        again = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
        assert [item.new for item in again] == [False, False, False]


def test_an_archive_kept_in_the_node_state_is_adopted_for_its_own_contact_point_only(
    tmp_path: Path,
) -> None:
    """A contact point's archive written by an earlier version (inside the node's database, or
    the contact points' shared archive in the node's state folder) is copied into the contact
    point's own archive, in its credentials folder, the first time it is opened, once; another
    contact point's messages are not."""
    from mlanet.nodes.cli.contact import open_archive

    state = tmp_path / "state"
    older = Store(state / "node.sqlite3")
    older.inbox_add("uz-cp-1", "seajust", "m-1", "h" * 43, "facilitation_request", b"{}")
    older.inbox_add("kz-cp-1", "seajust", "m-2", "h" * 43, "facilitation_request", b"{}")
    older.close()
    shared = Store(state / ARCHIVE_FILE)
    shared.inbox_add("uz-cp-1", "casc", "m-3", "h" * 43, "facilitation_request", b"{}")
    shared.inbox_add("kz-cp-1", "casc", "m-4", "h" * 43, "facilitation_request", b"{}")
    shared.close()

    class _Config:
        state_dir = state
        database = None  # SQLite: what an earlier version wrote is in the state folder

    class _Credentials:
        folder = tmp_path / "uz-cp-1"
        contact_point = "uz-cp-1"

    archive = open_archive(_Config(), _Credentials())  # type: ignore[arg-type]
    try:
        assert sorted(row[1] for row in archive.inbox("uz-cp-1")) == ["m-1", "m-3"]
        assert list(archive.inbox("kz-cp-1")) == []
        assert not archive.inbox_add("uz-cp-1", "seajust", "m-1", "h" * 43, "x", b"{}")
    finally:
        archive.close()
    assert (tmp_path / "uz-cp-1" / ARCHIVE_FILE).exists()
