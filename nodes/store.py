"""The node's embedded state (SQLite, WAL): dedupe records, its own messages' states, events.

Survives a restart or a SIGKILL of the node (WAL with ``synchronous=NORMAL`` loses no committed
transaction when the process dies; an operating-system crash can lose the last ones, see
``docs/OPERATIONS.md``). Holds metadata and the signed bytes of messages this node originated
(for resending); it never writes case content anywhere else. One writer: the node process;
the CLI opens it read-only except for a contact point's inbox archive.

Case content at rest is owner-only: the state folder is checked (and created 0700) before a
database in it is opened, and a new database file is created 0600, which SQLite passes on to
its ``-wal`` and ``-shm`` files (``nodes/state_dir.py``).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nodes import state_dir

__all__ = ["OutboxEntry", "Seen", "Store", "TrackEvent"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    origin TEXT NOT NULL,
    message_id TEXT NOT NULL,
    content_sha256 TEXT NOT NULL,
    outcome TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (origin, message_id)
);
CREATE TABLE IF NOT EXISTS outbox (
    message_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    sender TEXT,
    destination TEXT NOT NULL,
    target TEXT,
    state TEXT NOT NULL,
    content_sha256 TEXT NOT NULL,
    wire BLOB NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (state, next_attempt);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    message_id TEXT NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_message ON events (message_id);
CREATE INDEX IF NOT EXISTS events_kind ON events (event, id);
CREATE TABLE IF NOT EXISTS inbox (
    contact_point TEXT NOT NULL,
    origin TEXT NOT NULL,
    message_id TEXT NOT NULL,
    content_sha256 TEXT NOT NULL,
    kind TEXT NOT NULL,
    wire BLOB NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (contact_point, origin, message_id)
);
"""


_REMEMBER = (
    "INSERT INTO seen (origin, message_id, content_sha256, outcome, at) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (origin, message_id) DO UPDATE SET "
    "outcome=excluded.outcome WHERE seen.content_sha256=excluded.content_sha256"
)
_EVENT = "INSERT INTO events (at, message_id, event, detail) VALUES (?, ?, ?, ?)"


@dataclass(frozen=True, slots=True)
class Seen:
    content_sha256: str
    outcome: str


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    message_id: str
    kind: str
    sender: str | None
    destination: str
    target: str | None
    state: str
    content_sha256: str
    wire: bytes
    created_at: float
    updated_at: float
    attempts: int
    next_attempt: float
    detail: str


@dataclass(frozen=True, slots=True)
class TrackEvent:
    at: float
    event: str
    detail: str


class Store:
    """SQLite state of one node. Not thread-safe; used from the node's event loop."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self._grouped = False
        # With group commits, the per-message rows wait here and go in with one executemany
        # each at the commit (readers of this connection see them: _write_pending first).
        self._seen_rows: dict[tuple[str, str], tuple[str, str, str, str, float]] = {}
        self._event_rows: list[tuple[float, str, str, str]] = []
        state_dir.secure(path.parent)
        if readonly:
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        else:
            self._db = sqlite3.connect(state_dir.private_file(path), isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        self._db.execute("PRAGMA busy_timeout=5000")

    def close(self) -> None:
        self._db.close()

    # --- dedupe ---------------------------------------------------------------------------------
    def seen(self, origin: str, message_id: str) -> Seen | None:
        pending = self._seen_rows.get((origin, message_id))
        if pending is not None:
            return Seen(pending[2], pending[3])
        row = self._db.execute(
            "SELECT content_sha256, outcome FROM seen WHERE origin=? AND message_id=?",
            (origin, message_id),
        ).fetchone()
        return Seen(row[0], row[1]) if row else None

    def remember(
        self, origin: str, message_id: str, content_sha256: str, outcome: str, event: str = ""
    ) -> None:
        """Record the outcome of a message (and its tracking event) in one transaction."""
        now = time.time()
        if self._grouped:
            earlier = self._seen_rows.get((origin, message_id))
            if earlier is None or earlier[2] == content_sha256:  # the first content stays
                self._seen_rows[(origin, message_id)] = (
                    origin,
                    message_id,
                    content_sha256,
                    outcome,
                    now,
                )
            if event:
                self._event(now, message_id, outcome, event)
            return
        with self._tx():
            self._db.execute(_REMEMBER, (origin, message_id, content_sha256, outcome, now))
            if event:
                self._event(now, message_id, outcome, event)

    # --- messages this node originated ------------------------------------------------------------
    def outbox_get(self, message_id: str) -> OutboxEntry | None:
        row = self._db.execute("SELECT * FROM outbox WHERE message_id=?", (message_id,)).fetchone()
        return OutboxEntry(*row) if row else None

    def outbox_add(
        self,
        *,
        message_id: str,
        kind: str,
        sender: str | None,
        destination: str,
        content_sha256: str,
        wire: bytes,
        next_attempt: float,
    ) -> None:
        now = time.time()
        with self._tx():
            self._db.execute(
                "INSERT OR IGNORE INTO outbox (message_id, kind, sender, destination, target,"
                " state, content_sha256, wire, created_at, updated_at, attempts, next_attempt) "
                "VALUES (?, ?, ?, ?, NULL, 'queued', ?, ?, ?, ?, 0, ?)",
                (
                    message_id,
                    kind,
                    sender,
                    destination,
                    content_sha256,
                    wire,
                    now,
                    now,
                    next_attempt,
                ),
            )
            self._event(now, message_id, "queued", f"signed, to {destination}")

    def outbox_update(
        self,
        message_id: str,
        state: str,
        detail: str = "",
        *,
        target: str | None = None,
        next_attempt: float | None = None,
        attempt: bool = False,
    ) -> None:
        now = time.time()
        with self._tx():
            self._db.execute(
                "UPDATE outbox SET state=?, detail=?, updated_at=?, target=COALESCE(?, target),"
                " next_attempt=COALESCE(?, next_attempt), attempts=attempts+? WHERE message_id=?",
                (state, detail, now, target, next_attempt, 1 if attempt else 0, message_id),
            )
            self._event(now, message_id, state, detail)

    def outbox_due(self, now: float) -> list[OutboxEntry]:
        rows = self._db.execute(
            "SELECT * FROM outbox WHERE state IN ('queued', 'forwarded') AND next_attempt <= ?"
            " ORDER BY next_attempt LIMIT 500",
            (now,),
        ).fetchall()
        return [OutboxEntry(*row) for row in rows]

    def outbox_states(self) -> dict[str, int]:
        rows = self._db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall()
        return {state: count for state, count in rows}

    def outbox_awaiting(self, sent_before: float) -> tuple[int, float | None, int]:
        """Messages still waiting for a receipt: (how many, oldest created_at, how many of
        them were created before ``sent_before``)."""
        row = self._db.execute(
            "SELECT COUNT(*), MIN(created_at), COALESCE(SUM(created_at < ?), 0) FROM outbox"
            " WHERE state IN ('queued', 'forwarded')",
            (sent_before,),
        ).fetchone()
        return int(row[0]), row[1], int(row[2])

    # --- tracking ---------------------------------------------------------------------------------
    def event(self, message_id: str, event: str, detail: str = "") -> None:
        with self._tx():
            self._event(time.time(), message_id, event, detail)

    def recent_events(self, event: str, limit: int = 50) -> list[TrackEvent]:
        """The latest ``limit`` events of one kind (e.g. ``quarantined``), newest first."""
        self._write_pending()
        rows = self._db.execute(
            "SELECT at, event, detail FROM events WHERE event=? ORDER BY id DESC LIMIT ?",
            (event, limit),
        ).fetchall()
        return [TrackEvent(*row) for row in rows]

    def count_events(self, event: str, since: float) -> int:
        """How many events of one kind were recorded at or after ``since``."""
        self._write_pending()
        row = self._db.execute(
            "SELECT COUNT(*) FROM events WHERE event=? AND at>=?", (event, since)
        ).fetchone()
        return int(row[0])

    def quarantine_reasons(self) -> dict[str, int]:
        """How many messages this node quarantined, by reason code (all recorded time); a
        refusal when a contact point read its delivery is recorded as ``at delivery: <reason>``."""
        self._write_pending()
        rows = self._db.execute(
            "SELECT substr(d, 1, instr(d, ':') - 1) AS reason, COUNT(*) FROM (SELECT CASE WHEN"
            " detail LIKE 'at delivery: %' THEN substr(detail, 14) ELSE detail END AS d"
            " FROM events WHERE event='quarantined') GROUP BY reason"
        ).fetchall()
        return {reason: count for reason, count in rows if reason}

    def events(self, message_id: str) -> list[TrackEvent]:
        self._write_pending()
        rows = self._db.execute(
            "SELECT at, event, detail FROM events WHERE message_id=? ORDER BY id", (message_id,)
        ).fetchall()
        return [TrackEvent(*row) for row in rows]

    # --- a contact point's archive of delivered messages ---------------------------------
    def inbox_add(
        self,
        contact_point: str,
        origin: str,
        message_id: str,
        content_sha256: str,
        kind: str,
        wire: bytes,
    ) -> bool:
        """Archive a delivered message; False when it was already there (a duplicate)."""
        with self._tx():
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO inbox VALUES (?, ?, ?, ?, ?, ?, ?)",
                (contact_point, origin, message_id, content_sha256, kind, wire, time.time()),
            )
        return cursor.rowcount == 1

    def adopt_inbox(self, older: Path, *, contact_point: str | None = None) -> None:
        """Copy the contact points' archive that an earlier version kept in ``older`` (the
        node's own database) into this one (only ``contact_point``'s messages, when given);
        what is here already stays as it is. ``older`` is only read: a write lock the node
        holds on it does not matter."""
        if not older.exists():
            return
        self._db.execute("ATTACH DATABASE ? AS older", (str(older),))
        try:
            found = self._db.execute(
                "SELECT 1 FROM older.sqlite_master WHERE type='table' AND name='inbox'"
            ).fetchone()
            if not found:
                rows = []
            elif contact_point is None:
                rows = self._db.execute("SELECT * FROM older.inbox").fetchall()
            else:
                rows = self._db.execute(
                    "SELECT * FROM older.inbox WHERE contact_point=?", (contact_point,)
                ).fetchall()
        finally:
            self._db.execute("DETACH DATABASE older")
        if rows:
            with self._tx():
                self._db.executemany(
                    "INSERT OR IGNORE INTO inbox VALUES (?, ?, ?, ?, ?, ?, ?)", rows
                )

    def inbox(self, contact_point: str) -> Iterator[tuple[str, str, str, bytes, float]]:
        yield from self._db.execute(
            "SELECT origin, message_id, kind, wire, received_at FROM inbox WHERE contact_point=?"
            " ORDER BY received_at",
            (contact_point,),
        )

    # --- internals ---------------------------------------------------------------------
    def _event(self, at: float, message_id: str, event: str, detail: str) -> None:
        if self._grouped:
            self._event_rows.append((at, message_id, event, detail))
        else:
            self._db.execute(_EVENT, (at, message_id, event, detail))

    def _write_pending(self) -> None:
        """Write the rows waiting for the group commit, in the order they came."""
        if not (self._seen_rows or self._event_rows):
            return
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")
        seen_rows, self._seen_rows = self._seen_rows, {}
        event_rows, self._event_rows = self._event_rows, []
        self._db.executemany(_REMEMBER, seen_rows.values())
        self._db.executemany(_EVENT, event_rows)

    # --- group commit ----------------------------------------------------------------------
    def group_commits(self) -> None:
        """From now on, writes accumulate in one open transaction until :meth:`commit`.

        The node commits once for all the deliveries handled in one pass of its event loop,
        and acks none of them before that commit (``nodes/group_commit.py``). Each write block stays
        atomic on its own (a savepoint), so a failed one leaves nothing half-written.
        """
        self._grouped = True

    def commit(self) -> None:
        try:
            self._write_pending()
        finally:
            if self._db.in_transaction:
                self._db.execute("COMMIT")

    def _tx(self) -> _Transaction:
        return _Transaction(self._db, grouped=self._grouped)


class _Transaction:
    def __init__(self, db: sqlite3.Connection, *, grouped: bool = False) -> None:
        self._db = db
        self._grouped = grouped

    def __enter__(self) -> None:
        if not self._grouped:
            self._db.execute("BEGIN IMMEDIATE")
            return
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("SAVEPOINT write_block")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self._grouped:
            self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
            return
        if exc_type is not None:
            self._db.execute("ROLLBACK TO write_block")
        self._db.execute("RELEASE write_block")
