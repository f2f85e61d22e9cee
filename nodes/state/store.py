"""The node's embedded state (SQLite, WAL): dedupe records, its own messages' states, and
the journal of every fact (``nodes/state/journal.py``), written in the same transactions.

Survives a restart or a SIGKILL of the node (WAL with ``synchronous=NORMAL`` loses no committed
transaction when the process dies; an operating-system crash can lose the last ones, see
``docs/OPERATIONS.md``). Holds metadata and the signed bytes of messages this node originated
(for resending); it never writes case content anywhere else. The node process writes it; the
operator's commands read it, and append their own journal rows one committed transaction at a
time (``BEGIN IMMEDIATE`` serialises the writers). A contact point's inbox archive is a
database of the same schema in its credentials folder.

Case content at rest is owner-only: the state folder is checked (and created 0700) before a
database in it is opened, and a new database file is created 0600, which SQLite passes on to
its ``-wal`` and ``-shm`` files (``nodes/state/state_dir.py``).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlanet.broker import SigningKey
from mlanet.nodes.config import DatabaseConfig, NodeConfig
from mlanet.nodes.state.db import DB_ERRORS, Database, Postgres
from mlanet.nodes.state.journal import (
    JOURNAL_FILE,
    Journal,
    JournalError,
    MetaValue,
    Signer,
    TrackEvent,
    state_error,
)
from mlanet.nodes.state.schema import open_postgres, open_state

__all__ = [
    "OutboxEntry",
    "Purged",
    "Seen",
    "Store",
    "TrackEvent",
    "node_store_exists",
    "open_node_store",
]

_REMEMBER = (
    "INSERT INTO seen (origin, message_id, content_sha256, outcome, at) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (origin, message_id) DO UPDATE SET "
    "outcome=excluded.outcome WHERE seen.content_sha256=excluded.content_sha256"
)


# The archive: its columns of the release before retention are what adopt_inbox copies.
_ARCHIVE = (
    "INSERT INTO inbox (contact_point, origin, message_id, content_sha256, kind, wire,"
    " received_at, created_at, retain_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT DO NOTHING"
)
_ADOPT = (
    "INSERT INTO inbox (contact_point, origin, message_id, content_sha256, kind, wire,"
    " received_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_OLDER = (
    "SELECT contact_point, origin, message_id, content_sha256, kind, wire, received_at"
    " FROM inbox WHERE (? IS NULL OR contact_point=?)"
)
# Due: the period its sender asked for has passed, or the cap (seconds) since it was created.
_PURGE_DUE = (
    "SELECT origin, message_id, kind, content_sha256, created_at, received_at FROM inbox"
    " WHERE contact_point=? AND purged_at IS NULL AND ((retain_until IS NOT NULL AND"
    " retain_until <= ?) OR (CAST(? AS DOUBLE PRECISION) IS NOT NULL AND"
    " COALESCE(created_at, received_at) + CAST(? AS DOUBLE PRECISION) <= ?))"
    " ORDER BY received_at"
)
_PURGE = (
    "UPDATE inbox SET wire=?, purged_at=?"
    " WHERE contact_point=? AND purged_at IS NULL AND ((retain_until IS NOT NULL AND"
    " retain_until <= ?) OR (CAST(? AS DOUBLE PRECISION) IS NOT NULL AND"
    " COALESCE(created_at, received_at) + CAST(? AS DOUBLE PRECISION) <= ?))"
)
_WERE_PURGED = (
    "SELECT origin, message_id, kind, content_sha256, created_at, received_at, purged_at"
    " FROM inbox WHERE contact_point=? AND purged_at IS NOT NULL ORDER BY received_at"
)


@dataclass(frozen=True, slots=True)
class Purged:
    """What a contact point's archive keeps of a message whose content it purged."""

    origin: str
    message_id: str
    kind: str
    content_sha256: str
    created_at: float | None  # None: archived before this version recorded it
    received_at: float
    purged_at: float


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


class Store:
    """The state of one node: SQLite in its state folder, or its network's PostgreSQL schema
    (``database``, shared by its replicas). Not thread-safe; used from the node's event loop."""

    def __init__(
        self,
        path: Path,
        *,
        readonly: bool = False,
        key: Signer | None = None,
        database: DatabaseConfig | None = None,
        purpose: str = "node",
    ) -> None:
        """``key``: the node's signing key (or what gives it now: it follows a rotation),
        which signs the journal's checkpoints and upgrades a database of an earlier version;
        without it, nothing can be recorded. ``database``: PostgreSQL instead of ``path``
        (``purpose`` names the connection there)."""
        self._grouped = False
        # With group commits, the dedupe rows wait here and go in with one executemany at the
        # commit (readers of this connection see them: _write_pending first).
        self._seen_rows: dict[tuple[str, str], tuple[str, str, str, str, float]] = {}
        now = key if key is None or isinstance(key, SigningKey) else key()
        self._db: Database = (
            open_state(path, readonly=readonly, key=now)
            if database is None
            else open_postgres(database, purpose=purpose, readonly=readonly)
        )
        self.journal = Journal(self._db, key, attached=True)

    def close(self) -> None:
        try:
            if self._db.in_transaction or self.journal.pending():
                self.commit(everything=True)
        except (JournalError, *DB_ERRORS):
            pass  # closing: what was not committed is not acked either
        finally:
            self._db.close()

    def answers(self) -> bool:
        """Whether the database answers now (after a failure: the next statement connects
        again once the failed transaction was rolled back)."""
        try:
            self._db.execute("SELECT 1").fetchone()
        except DB_ERRORS:
            return False
        return True

    def losses(self) -> int:
        """How many times the database connection was lost so far: a delivery during which
        it changed may have written into a transaction that is gone (``Node.settle``)."""
        return self._db.losses if isinstance(self._db, Postgres) else 0

    def backend_pids(self) -> list[int]:
        """The PostgreSQL backend of this store's connection (none for SQLite)."""
        return [self._db.backend_pid()] if isinstance(self._db, Postgres) else []

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

    def remember(self, origin: str, message_id: str, content_sha256: str, outcome: str) -> None:
        """Record the outcome of a message for dedupe (its journal row is written by whoever
        records the fact, in the same transaction: ``nodes/state/audit.py``'s observer)."""
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
            return
        with self._tx():
            self._db.execute(_REMEMBER, (origin, message_id, content_sha256, outcome, now))

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
                "INSERT INTO outbox (message_id, kind, sender, destination, target,"
                " state, content_sha256, wire, created_at, updated_at, attempts, next_attempt) "
                "VALUES (?, ?, ?, ?, NULL, 'queued', ?, ?, ?, ?, 0, ?) ON CONFLICT DO NOTHING",
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

    def outbox_update(
        self,
        message_id: str,
        state: str,
        detail: str = "",
        *,
        target: str | None = None,
        next_attempt: float | None = None,
        attempt: bool = False,
        record: bool = False,
        **fields: MetaValue,
    ) -> None:
        """Change the state of one of our messages; ``record``: it is a fact of its own (a
        failure), recorded in the journal in the same transaction as a row named ``state``
        with ``detail`` and ``fields`` (``reason``, ``by``). The facts that come with the
        other states (forwarded, delivered, receipt, undeliverable) are recorded by the
        node's observer (``nodes/state/audit.py``), in the same group commit."""
        now = time.time()
        with self._tx():
            self._db.execute(
                "UPDATE outbox SET state=?, detail=?, updated_at=?, target=COALESCE(?, target),"
                " next_attempt=COALESCE(?, next_attempt), attempts=attempts+? WHERE message_id=?",
                (state, detail, now, target, next_attempt, 1 if attempt else 0, message_id),
            )
            if record:
                self.journal.record(state, message_id=message_id, detail=detail, **fields)

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
            "SELECT COUNT(*), MIN(created_at),"
            " COALESCE(SUM(CASE WHEN created_at < ? THEN 1 ELSE 0 END), 0) FROM outbox"
            " WHERE state IN ('queued', 'forwarded')",
            (sent_before,),
        ).fetchone()
        return int(row[0]), row[1], int(row[2])

    # --- the journal: facts, and the views that query them ------------------------------------
    def event(self, message_id: str, event: str, detail: str = "", **fields: MetaValue) -> None:
        """Record one fact about a message (``"-"``: none) in the journal: a row named
        ``event`` with ``detail`` and structured ``fields`` (``reason``, ``via``, ``peer``...)."""
        with self._tx():
            self.journal.record(
                event, message_id=None if message_id == "-" else message_id, detail=detail, **fields
            )

    def recent_events(self, event: str, limit: int = 50) -> list[tuple[float, str, str]]:
        """(at, reason, detail) of the latest ``limit`` rows of one kind, newest first."""
        return self.journal.recent(event, limit)

    def count_events(self, event: str, since: float) -> int:
        """How many rows of one kind were recorded at or after ``since``."""
        return self.journal.count(event, since)

    def quarantine_reasons(self) -> dict[str, int]:
        """How many messages this node refused into its quarantine, by reason code (all
        recorded time)."""
        return self.journal.by_reason("refused")

    def events(self, message_id: str) -> list[TrackEvent]:
        """What happened to one message, in order (``mlanet track``)."""
        return self.journal.about_message(message_id)

    # --- a contact point's archive of delivered messages ---------------------------------
    def inbox_add(
        self,
        contact_point: str,
        origin: str,
        message_id: str,
        content_sha256: str,
        kind: str,
        wire: bytes,
        *,
        created_at: float | None = None,
        retain_until: float | None = None,
    ) -> bool:
        """Archive a delivered message; False when it was already there (a duplicate).
        ``created_at``: the header's; ``retain_until``: when its content is to be purged by the
        retention period its sender asked for (None: none asked)."""
        with self._tx():
            cursor = self._db.execute(
                _ARCHIVE,
                (
                    contact_point,
                    origin,
                    message_id,
                    content_sha256,
                    kind,
                    wire,
                    time.time(),
                    created_at,
                    retain_until,
                ),
            )
        return bool(cursor.rowcount == 1)

    def inbox_purge(
        self, contact_point: str, *, now: float, max_days: int | None = None
    ) -> list[Purged]:
        """Purge the content of every message of ``contact_point`` whose retention has passed
        at ``now``: the period its sender asked for, or ``max_days`` after it was created
        (received, for one archived before this version) when that comes first. Its row stays
        with the metadata (origin, message id, kind, content hash, times); its signed bytes are
        emptied. Returns what was purged now."""
        cap = None if max_days is None else max_days * 86400.0
        arguments = (contact_point, now, cap, cap, now)
        rows = self._db.execute(_PURGE_DUE, arguments).fetchall()
        if not rows:
            return []
        # Overwrite the freed bytes with zeros, and fold the write-ahead log (which holds the
        # pages as they were) back into the file: no copy of the content stays in either.
        self._db.execute("PRAGMA secure_delete=ON")
        with self._tx():
            self._db.execute(_PURGE, (b"", now, *arguments))
        if not self._grouped:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return [
            Purged(origin, message_id, kind, sha256, created_at, received_at, now)
            for origin, message_id, kind, sha256, created_at, received_at in rows
        ]

    def inbox_purged(self, contact_point: str) -> list[Purged]:
        """The metadata of ``contact_point``'s messages whose content was purged."""
        return [Purged(*row) for row in self._db.execute(_WERE_PURGED, (contact_point,))]

    def adopt_inbox(self, older: Path, *, contact_point: str | None = None) -> None:
        """Copy the contact points' archive that an earlier version kept in ``older`` (the
        node's own database) into this one (only ``contact_point``'s messages, when given);
        what is here already stays as it is. ``older`` is only read: a write lock the node
        holds on it does not matter."""
        if not older.exists():
            return
        source = sqlite3.connect(f"file:{older}?mode=ro", uri=True)
        try:
            found = source.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='inbox'"
            ).fetchone()
            rows = (
                source.execute(_OLDER, (contact_point, contact_point)).fetchall() if found else []
            )
        finally:
            source.close()
        if rows:
            with self._tx():
                self._db.executemany(_ADOPT, rows)

    def inbox(self, contact_point: str) -> Iterator[tuple[str, str, str, bytes, float]]:
        """The archived messages of ``contact_point`` that still have their content."""
        yield from self._db.execute(
            "SELECT origin, message_id, kind, wire, received_at FROM inbox WHERE contact_point=?"
            " AND purged_at IS NULL ORDER BY received_at",
            (contact_point,),
        )

    # --- internals ---------------------------------------------------------------------
    def _write_pending(self) -> None:
        """Write the dedupe rows waiting for the group commit."""
        if not self._seen_rows:
            return
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")
        seen_rows, self._seen_rows = self._seen_rows, {}
        self._db.executemany(_REMEMBER, seen_rows.values())

    # --- group commit ----------------------------------------------------------------------
    def group_commits(self) -> None:
        """From now on, writes accumulate in one open transaction until :meth:`commit`.

        The node commits once for all the deliveries handled in one pass of its event loop,
        and acks none of them before that commit (``nodes/runtime/group_commit.py``). Each write
        block stays atomic on its own (a savepoint), so a failed one leaves nothing half-written.
        The journal's rows go into the same transaction, under one signed checkpoint.
        """
        self._grouped = True
        self.journal.group_commits()

    def commit(self, *, everything: bool = False) -> None:
        """Write what waits (dedupe rows, the journal's rows and checkpoint) and commit it
        all in one transaction; JournalError when it cannot be written (nothing of it is).
        ``everything``: also the acceptances still waiting for their outcome (at close)."""
        try:
            self._write_pending()
            self.journal.flush(everything=everything)
            if self._db.in_transaction:
                self._db.execute("COMMIT")
        except DB_ERRORS as exc:
            with contextlib.suppress(*DB_ERRORS):
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
            raise state_error("cannot write the node's state", exc) from exc

    def _tx(self) -> _Transaction:
        return _Transaction(self._db, grouped=self._grouped)


class _Transaction:
    def __init__(self, db: Database, *, grouped: bool = False) -> None:
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


def open_node_store(
    config: NodeConfig,
    *,
    readonly: bool = False,
    key: Signer | None = None,
    purpose: str = "node",
) -> Store:
    """The node's state as its config says: ``[database]`` (PostgreSQL, shared by the
    network's replicas) or ``node.sqlite3`` in its state folder."""
    return Store(
        config.state_dir / JOURNAL_FILE,
        readonly=readonly,
        key=key,
        database=config.database,
        purpose=purpose,
    )


def node_store_exists(config: NodeConfig) -> bool:
    """Whether there is a state to read (a reader does not create one): always with
    ``[database]`` (an unreachable one fails when opened, with its reason)."""
    return config.database is not None or (config.state_dir / JOURNAL_FILE).exists()
