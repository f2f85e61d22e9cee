"""Two replicas of one network's node, competing consumers on its quorum queues, with its state
in PostgreSQL (``nodes/runtime/replicas.py``): every message is delivered once and its origin
gets one receipt row, though copies of it reach both replicas at the same time; a copy with other
content is an equivocation whichever replica takes it; the journal both write is one chain that
verifies; the outbox is resent by one replica; a paused replica is fenced and comes back."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from mlanet.nodes.cli.contact import read_inbox
from mlanet.nodes.directory.book import load_directory, message_trust
from mlanet.nodes.local.federation import Federation
from mlanet.nodes.runtime.replicas import Member
from mlanet.nodes.state.audit import AuditLog, verify_audit
from mlanet.nodes.state.schema import open_postgres
from tests.integration.kit import (
    config,
    credentials,
    depth,
    drain,
    eventually,
    facilitation,
    inject,
    mlanet_send,
    running,
)

MESSAGES = 30
DELIVER = "mlanet.deliver.uz-cp-1"


def _count(fed: Federation, network: str, event: str) -> int:
    with AuditLog.of(config(fed, network), readonly=True) as journal:
        return len(journal.records(event=event))


def _verified(fed: Federation, network: str) -> tuple[bool, int, str]:
    cfg = config(fed, network)
    with AuditLog.of(cfg, readonly=True) as journal:
        verdict = verify_audit(journal, message_trust(load_directory(cfg)), network)
    return verdict.ok, verdict.records, verdict.problem


async def test_two_replicas_deliver_each_message_once_and_write_one_chain(
    fed_pg: Federation,
) -> None:
    fed = fed_pg
    async with running(fed, "seajust") as nodes:
        first = await nodes.start_replica("casc", "casc-a")
        second = await nodes.start_replica("casc", "casc-b")
        messages = [facilitation(fed, "seajust", "kh-cp-1", "UZ") for _ in range(MESSAGES)]
        for message in messages:  # two copies in a row: the replicas take one each, at once
            await inject(fed, "casc", "seajust", message.to_bytes())
            await inject(fed, "casc", "seajust", message.to_bytes())

        async def handled() -> bool:
            done = _count(fed, "casc", "delivered") + _count(fed, "casc", "duplicate")
            return done >= 2 * MESSAGES

        await eventually(handled, within=90, what="every copy handled at casc")
        assert _count(fed, "casc", "delivered") == MESSAGES
        assert _count(fed, "casc", "duplicate") == MESSAGES
        # one copy of each reached the contact point's queue: no repeat for its archive to absorb
        assert await depth(fed, "casc", DELIVER) == MESSAGES
        delivered = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
        assert sorted(item.message.header.message_id for item in delivered) == sorted(
            message.header.message_id for message in messages
        )
        # both replicas took part, and both are in the database, alive
        assert first.commits.waited > 0
        assert second.commits.waited > 0
        rows = {row.name: row for row in first.replicas.rows()}
        assert set(rows) == {"casc-a", "casc-b"}
        assert all(row.healthy for row in rows.values())

    ok, records, problem = _verified(fed, "casc")
    assert ok, problem
    assert records >= 2 * MESSAGES  # deliveries and duplicates of both replicas: one chain


async def test_replicas_at_both_ends_record_one_receipt_per_message(fed_pg: Federation) -> None:
    """Sent from an origin of two replicas to a destination of two: each message is delivered
    once and its origin records one receipt for it."""
    fed = fed_pg
    async with running(fed) as nodes:
        for network in ("seajust", "casc"):
            await nodes.start_replica(network, f"{network}-a")
            await nodes.start_replica(network, f"{network}-b")
        for n in range(4):
            code, said = await mlanet_send(fed, "--to-country", "UZ", summary=f"Request {n}.")
            assert code == 0, said

        async def receipted() -> bool:
            return _count(fed, "seajust", "receipt") >= 4

        await eventually(receipted, within=90, what="four receipts at seajust")
        delivered = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
        assert len(delivered) == 4
        assert _count(fed, "seajust", "receipt") == 4
        assert _count(fed, "casc", "delivered") == 4
    for network in ("seajust", "casc"):
        ok, _, problem = _verified(fed, network)
        assert ok, problem


async def test_other_content_under_one_id_is_an_equivocation_whichever_replica_takes_it(
    fed_pg: Federation,
) -> None:
    fed = fed_pg
    async with running(fed) as nodes:
        await nodes.start_replica("casc", "casc-a")
        await nodes.start_replica("casc", "casc-b")
        pairs = []
        for _ in range(8):
            message_id = str(uuid.uuid4())
            honest = facilitation(fed, "seajust", "kh-cp-1", "UZ", message_id=message_id)
            other = facilitation(
                fed, "seajust", "kh-cp-1", "UZ", message_id=message_id, summary="Other text."
            )
            pairs.append((honest, other))
            await inject(fed, "casc", "seajust", honest.to_bytes())
            await inject(fed, "casc", "seajust", other.to_bytes())

        async def quarantined() -> bool:
            return await depth(fed, "casc", "mlanet.quarantine") >= len(pairs)

        await eventually(quarantined, within=90, what="one copy of each pair quarantined")
        refused = await drain(fed, "casc", "mlanet.quarantine")
        assert [entry.headers["x-mlanet-reason"] for entry in refused] == ["equivocation"] * len(
            pairs
        )
        delivered = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
        assert len(delivered) == len(pairs)  # one of each pair, never both


async def test_the_outbox_is_resent_by_one_replica(fed_pg: Federation) -> None:
    """Only the replica that holds the outbox duty resends; the other never does."""
    fed = fed_pg
    async with running(fed) as nodes:
        first = await nodes.start_replica("seajust", "seajust-a")
        second = await nodes.start_replica("seajust", "seajust-b")
        await eventually(
            lambda: first.replicas.holds("outbox") != second.replicas.holds("outbox"),
            what="one replica holds the outbox duty",
        )
        holder, other = (first, second) if first.replicas.holds("outbox") else (second, first)
        assert holder.replicas.holds("outbox")
        assert not other.replicas.holds("outbox")
        # the holder stops: its session ends, and the other takes the duty on its next round
        await nodes.stop("seajust/seajust-a" if holder is first else "seajust/seajust-b")
        await eventually(lambda: other.replicas.holds("outbox"), what="the duty taken over")


async def test_a_paused_replica_is_fenced_and_comes_back_as_a_fresh_member(
    fed_pg: Federation,
) -> None:
    """A replica whose heartbeat stops for longer than the lease loses its database sessions
    (its claims with them); its next heartbeat joins again."""
    fed = fed_pg
    database = config(fed, "casc").database
    assert database is not None
    lease = database.replica_lease_seconds
    quick = database.model_copy(update={"replica_lease_seconds": 2.0})
    store = open_postgres(quick, purpose="store of casc-paused")  # creates the schema
    paused = Member(quick, "casc-paused", backends=lambda: [store.backend_pid()])
    watcher = Member(quick, "casc-watcher", backends=list)
    try:
        paused.join()
        watcher.join()
        assert not await paused.claim("seajust", "m-1")  # held by the paused one
        await asyncio.sleep(2.5)  # the paused replica does not beat
        watcher.beat()
        watcher.fence()
        assert watcher.fenced_others == 1
        rows = {row.name: row for row in watcher.rows()}
        assert rows["casc-paused"].state == "fenced"
        assert not rows["casc-paused"].healthy
        # its claim went with its session: the watcher takes the message at once
        assert not await asyncio.wait_for(watcher.claim("seajust", "m-1"), 5)
        # its other connections were ended too: what it had not committed is gone
        with pytest.raises(psycopg.OperationalError):
            store.execute("SELECT 1")
        # the paused one comes back: its old session is gone (its first heartbeat fails, as
        # in Member.run); the next one joins again
        with pytest.raises(psycopg.OperationalError):
            paused.beat()
        paused.beat()
        rows = {row.name: row for row in watcher.rows()}
        assert rows["casc-paused"].state == "running"
        assert lease > 2.0  # the federation's own lease was not the one used here
    finally:
        store.close()
        paused.leave()
        watcher.leave()
