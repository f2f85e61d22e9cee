"""Group commit in the node's store: nothing is visible to another connection (or survives a
crash) before commit(); each write block stays atomic; commit makes the whole batch durable."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from mlanet.broker import SigningKey
from mlanet.nodes.config import DatabaseConfig
from mlanet.nodes.state import journal as journal_module
from mlanet.nodes.state.store import Store

KEY = SigningKey.from_seed("casc", "ed25519:1", bytes(range(32)))


def test_grouped_writes_are_durable_only_after_commit(
    tmp_path: Path, database: DatabaseConfig | None
) -> None:
    """The dedupe rows and the journal's rows of a batch become visible together, at the
    group commit (one transaction)."""
    writer = Store(tmp_path / "node.sqlite3", database=database, key=KEY)
    writer.group_commits()
    writer.remember("seajust", "m-1", "h-1", "delivered")
    writer.journal.record("delivered", message_id="m-1", to=["uz-cp-1"])
    writer.remember("seajust", "m-2", "h-2", "forwarded")
    writer.journal.record("forwarded", message_id="m-2", to="ejn")
    assert writer.seen("seajust", "m-1") is not None  # the writer sees its own batch

    reader = Store(tmp_path / "node.sqlite3", database=database, readonly=True)
    assert reader.seen("seajust", "m-1") is None, "visible before the group commit"
    writer.commit()
    assert reader.seen("seajust", "m-1") is not None
    assert reader.seen("seajust", "m-2") is not None
    assert [(e.event, e.detail) for e in reader.events("m-1")] == [("delivered", "to uz-cp-1")]
    head = reader.journal.head()
    assert head is not None
    assert head[0] == 2
    reader.close()
    writer.close()


def test_a_failed_write_block_leaves_nothing_of_itself_but_keeps_the_batch(
    tmp_path: Path, database: DatabaseConfig | None
) -> None:
    store = Store(tmp_path / "node.sqlite3", database=database, key=KEY)
    store.group_commits()
    store.remember("seajust", "m-1", "h-1", "delivered")

    def half_way() -> None:
        with store._tx():
            store._db.execute(
                "INSERT INTO seen (origin, message_id, content_sha256, outcome, at)"
                " VALUES ('seajust', 'm-2', 'h-2', 'x', 0)"
            )
            raise RuntimeError("fails half-way")

    with pytest.raises(RuntimeError):
        half_way()
    store.commit()
    store.close()
    again = Store(tmp_path / "node.sqlite3", database=database, readonly=True)
    assert again.seen("seajust", "m-2") is None
    assert again.seen("seajust", "m-1") is not None
    again.close()


def test_uncommitted_batch_is_lost_when_the_connection_dies(
    tmp_path: Path, database: DatabaseConfig | None
) -> None:
    """What a SIGKILL does: the open transaction is gone; the node had not acked it either."""
    store = Store(tmp_path / "node.sqlite3", database=database)
    store.group_commits()
    store.remember("seajust", "m-1", "h-1", "delivered")
    store._db.close()  # no commit
    again = Store(tmp_path / "node.sqlite3", database=database, readonly=True)
    assert again.seen("seajust", "m-1") is None
    again.close()


def test_each_journal_row_is_one_log_line_of_its_fields(
    tmp_path: Path, database: DatabaseConfig | None
) -> None:
    """The fact's log line is its row: one event (``message_<event>`` when about a message),
    the row's fields, nothing else; a copy accepted from a peer is folded into its outcome."""
    store = Store(tmp_path / "node.sqlite3", database=database, key=KEY)
    store.group_commits()
    with capture_logs() as logs:
        store.journal.accepted({"message_id": "m-1", "origin": "seajust", "from": "seajust"})
        store.event("m-1", "duplicate", "already delivered; not again")
        store.event("-", "directory_applied", version=4, from_="unodc")
        store.commit()
    assert logs == [
        {
            "event": "message_duplicate",
            "log_level": "info",
            "message_id": "m-1",
            "origin": "seajust",
            "from": "seajust",
            "detail": "already delivered; not again",
        },
        {"event": "directory_applied", "log_level": "info", "version": 4, "from": "unodc"},
    ]
    assert [(e.event, e.detail) for e in store.events("m-1")] == [
        ("duplicate", "from seajust already delivered; not again")
    ]
    store.close()


def test_an_acceptance_waits_for_its_outcome_across_commits_and_is_written_at_close(
    tmp_path: Path, database: DatabaseConfig | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit between a peer's acceptance and its outcome (the periodic commit, while the
    forward waits for the broker's confirm) does not split them: the outcome row still names
    the peer. An acceptance with no outcome within the grace, or at close, is a row of its own,
    dated when it was accepted."""
    store = Store(tmp_path / "node.sqlite3", database=database, key=KEY)
    store.group_commits()
    store.journal.accepted({"message_id": "m-1", "origin": "seajust", "from": "casc"})
    store.commit()  # the periodic commit falls here
    store.commit()
    store.event("m-1", "delivered", "to uz-cp-1")
    store.commit()
    assert [(e.event, e.detail) for e in store.events("m-1")] == [
        ("delivered", "from casc to uz-cp-1")
    ]

    clock = [1_000_000.0]
    monkeypatch.setattr(journal_module.time, "time", lambda: clock[0])
    store.journal.accepted({"message_id": "m-2", "origin": "seajust", "from": "casc"})
    store.journal.accepted({"message_id": "m-3", "origin": "seajust", "from": "casc"})
    clock[0] += journal_module.ACCEPTED_GRACE - 1
    store.commit()
    assert store.events("m-2") == []
    clock[0] += 2
    store.commit()
    assert [e.event for e in store.events("m-2")] == ["accepted"]
    store.journal.accepted({"message_id": "m-4", "origin": "seajust", "from": "casc"})
    store.close()
    reopened = Store(tmp_path / "node.sqlite3", database=database, key=KEY)
    assert [e.event for e in reopened.events("m-4")] == ["accepted"]
    assert [e.event for e in reopened.events("m-3")] == ["accepted"]
    reopened.close()


def test_an_acceptance_whose_handling_ended_without_an_outcome_is_written_at_the_next_commit(
    tmp_path: Path, database: DatabaseConfig | None
) -> None:
    """A receipt (or a directory update) consumed here has no outcome row: once its handling
    ends, its acceptance is written at the next commit, not after the grace."""
    store = Store(tmp_path / "node.sqlite3", database=database, key=KEY)
    store.group_commits()
    store.journal.accepted({"message_id": "r-1", "origin": "casc", "from": "casc"})
    store.commit()
    assert store.events("r-1") == []
    store.journal.settled("r-1")
    store.commit()
    assert [(e.event, e.detail) for e in store.events("r-1")] == [("accepted", "from casc")]
    store.close()
