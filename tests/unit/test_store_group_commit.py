"""Group commit in the node's store: nothing is visible to another connection (or survives a
crash) before commit(); each write block stays atomic; commit makes the whole batch durable."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodes.store import Store


def test_grouped_writes_are_durable_only_after_commit(tmp_path: Path) -> None:
    writer = Store(tmp_path / "node.sqlite3")
    writer.group_commits()
    writer.remember("seajust", "m-1", "h-1", "delivered", "delivered to uz-cp-1")
    writer.remember("seajust", "m-2", "h-2", "forwarded", "forwarded to ejn")
    assert writer.seen("seajust", "m-1") is not None  # the writer sees its own batch

    reader = Store(tmp_path / "node.sqlite3", readonly=True)
    assert reader.seen("seajust", "m-1") is None, "visible before the group commit"
    writer.commit()
    assert reader.seen("seajust", "m-1") is not None
    assert reader.seen("seajust", "m-2") is not None
    assert [e.event for e in reader.events("m-1")] == ["delivered"]
    reader.close()
    writer.close()


def test_a_failed_write_block_leaves_nothing_of_itself_but_keeps_the_batch(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "node.sqlite3")
    store.group_commits()
    store.remember("seajust", "m-1", "h-1", "delivered", "ok")

    def half_way() -> None:
        with store._tx():
            store._db.execute(
                "INSERT INTO events (at, message_id, event, detail) VALUES (0, 'm-2', 'x', '')"
            )
            raise RuntimeError("fails half-way")

    with pytest.raises(RuntimeError):
        half_way()
    store.commit()
    store.close()
    again = Store(tmp_path / "node.sqlite3", readonly=True)
    assert again.events("m-2") == []
    assert again.seen("seajust", "m-1") is not None
    again.close()


def test_uncommitted_batch_is_lost_when_the_connection_dies(tmp_path: Path) -> None:
    """What a SIGKILL does: the open transaction is gone; the node had not acked it either."""
    store = Store(tmp_path / "node.sqlite3")
    store.group_commits()
    store.remember("seajust", "m-1", "h-1", "delivered", "ok")
    store._db.close()  # no commit
    again = Store(tmp_path / "node.sqlite3", readonly=True)
    assert again.seen("seajust", "m-1") is None
    again.close()
