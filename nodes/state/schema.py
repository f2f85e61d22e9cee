"""The schema of the node's state database, versioned: ``PRAGMA user_version`` and ordered
migrations.

Version 1 is the schema of the release before the journal (dedupe, outbox, the ``events``
table, the contact points' archive); version 2 adds the journal (``nodes/state/journal.py``), takes
over the audit trail that release kept in ``audit.sqlite3`` beside it (its records verbatim:
their chain, checkpoints and signatures still verify) and the tracking rows of its ``events``
table that the trail did not hold (appended to the chain under a checkpoint signed at the
upgrade), and drops the ``events`` table. Version 3 lets the contact points' archive purge a
message's content and keep its metadata: its ``created_at``, until when its sender asked it kept,
when it was purged (``docs/PROTOCOL.md`` section 17). A database is upgraded by the first writer
that opens it with the node's signing key (the node); readers of an older one are told to start
the node.

Each migration runs in one transaction with the change of ``user_version``: a crash leaves the
database at the version before it.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from mlanet.broker import SigningKey
from mlanet.nodes.config import DatabaseConfig
from mlanet.nodes.state import state_dir
from mlanet.nodes.state.db import DB_ERRORS, Postgres, advisory_key
from mlanet.nodes.state.journal import JOURNAL_FILE, Journal, JournalError, columns_of, parse_record

__all__ = [
    "AUDIT_FILE_V1",
    "POSTGRES_SCHEMA_VERSION",
    "QUARANTINE_SCHEMA",
    "SCHEMA_VERSION",
    "open_postgres",
    "open_state",
]

AUDIT_FILE_V1 = "audit.sqlite3"  # where the release before the journal kept its audit trail

# The schema of the release before the journal, as it was (nodes/state/store.py).
V1 = """
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

JOURNAL = """
CREATE TABLE journal (
    seq INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    event TEXT NOT NULL,
    message_id TEXT,
    origin TEXT,
    destination TEXT,
    kind TEXT,
    source TEXT,
    target TEXT,
    by_network TEXT,
    reason TEXT,
    detail TEXT,
    via TEXT,
    quarantine_id TEXT,
    operator TEXT,
    record TEXT NOT NULL,
    hash TEXT NOT NULL,
    signature TEXT NOT NULL DEFAULT ''
);
CREATE INDEX journal_message ON journal (message_id);
CREATE INDEX journal_event ON journal (event, at);
CREATE INDEX journal_quarantine ON journal (quarantine_id) WHERE quarantine_id IS NOT NULL;
CREATE TABLE journal_checkpoint (
    seq INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,
    key_id TEXT NOT NULL,
    signature TEXT NOT NULL
);
CREATE TABLE journal_head (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    key_id TEXT NOT NULL,
    signature TEXT NOT NULL
);
"""

# The quarantine's own database (``quarantine_store.py``): entries, kept bodies, retention.
QUARANTINE_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    via TEXT NOT NULL,
    peer TEXT NOT NULL,
    at REAL NOT NULL,
    size INTEGER NOT NULL,
    body_sha256 TEXT NOT NULL,
    returns INTEGER NOT NULL,
    truncated_from INTEGER,
    full_sha256 TEXT,
    kept INTEGER NOT NULL,
    copies INTEGER NOT NULL DEFAULT 1,
    claimed_message_id TEXT NOT NULL,
    claimed_origin TEXT NOT NULL,
    claimed_destination TEXT NOT NULL,
    claimed_kind TEXT NOT NULL,
    taken_by TEXT,
    taken_at REAL
);
CREATE INDEX IF NOT EXISTS entries_at ON entries (at);
CREATE INDEX IF NOT EXISTS entries_reason ON entries (reason, at);
CREATE INDEX IF NOT EXISTS entries_peer ON entries (peer, at);
CREATE INDEX IF NOT EXISTS entries_kept ON entries (peer, kept, size);
CREATE INDEX IF NOT EXISTS entries_taken ON entries (taken_by) WHERE taken_by IS NOT NULL;
CREATE TABLE IF NOT EXISTS bodies (
    id TEXT PRIMARY KEY,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS retention (
    id TEXT PRIMARY KEY,
    purge_after REAL,
    purged_at REAL
);
"""

# Tracking rows of the release before the journal that its audit trail held already (under
# another record): not taken over twice.
_IN_THE_TRAIL = ("forwarded", "delivered", "quarantined")


def _v1(db: sqlite3.Connection, trail: Path | None, key: SigningKey | None) -> None:
    for statement in V1.split(";"):
        if statement.strip():
            db.execute(statement)


def _v2(db: sqlite3.Connection, trail: Path | None, key: SigningKey | None) -> None:
    """The journal; the earlier audit trail (``trail``) and tracking rows taken into it."""
    for statement in JOURNAL.split(";"):
        if statement.strip():
            db.execute(statement)
    events = db.execute(
        "SELECT at, message_id, event, detail FROM events WHERE event NOT IN (?, ?, ?) ORDER BY id",
        _IN_THE_TRAIL,
    ).fetchall()
    if trail is not None and not trail.exists():
        trail = None
    if (events or trail is not None) and key is None:
        raise JournalError(
            "the node's state is from an earlier version: start the node once to upgrade it"
        )
    if trail is not None:
        _take_trail(db, trail)
    if events:
        journal = Journal(db, key, attached=True, emit=False)  # not facts of now: not logged
        journal.group_commits()
        for at, message_id, event, detail in events:
            journal.append(
                str(event),
                {"message_id": None if message_id == "-" else message_id, "detail": detail},
                at=float(at),  # the time it was recorded at
            )
        journal.flush()
    db.execute("DROP TABLE events")


def _v3(db: sqlite3.Connection, trail: Path | None, key: SigningKey | None) -> None:
    """The archive's retention: when a message was created (NULL: archived before this
    version), until when its sender asked it kept (NULL: no period), when its content was
    purged (NULL: it was not; then ``wire`` is empty)."""
    for column in ("created_at", "retain_until", "purged_at"):
        db.execute(f"ALTER TABLE inbox ADD COLUMN {column} REAL")


def _take_trail(db: sqlite3.Connection, trail: Path) -> None:
    """Copy the audit trail of ``audit.sqlite3``: records, hashes and signatures verbatim."""
    old = sqlite3.connect(f"file:{trail}?mode=ro", uri=True)
    try:
        tables = {
            row[0] for row in old.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }

        def rows(query: str, table: str) -> list[tuple[object, ...]]:
            return old.execute(query).fetchall() if table in tables else []

        records = rows("SELECT seq, record, hash, signature FROM audit ORDER BY seq", "audit")
        checkpoints = rows(
            "SELECT seq, hash, key_id, signature FROM audit_checkpoint", "audit_checkpoint"
        )
        heads = rows("SELECT one, seq, hash, key_id, signature FROM audit_head", "audit_head")
    finally:
        old.close()
    for seq, record, digest, signature in records:
        parsed = parse_record(str(record), str(digest))
        db.execute(
            "INSERT INTO journal (seq, at, event, message_id, origin, destination, kind,"
            " source, target, by_network, reason, detail, via, quarantine_id, operator,"
            " record, hash, signature) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
            " ?, ?, ?, ?)",
            (
                seq,
                _epoch(parsed.at),
                parsed.event,
                *columns_of(parsed.meta),
                record,
                digest,
                signature,
            ),
        )
    db.executemany("INSERT INTO journal_checkpoint VALUES (?, ?, ?, ?)", checkpoints)
    db.executemany("INSERT INTO journal_head VALUES (?, ?, ?, ?, ?)", heads)


def _epoch(at: str) -> float:
    return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()


MIGRATIONS: tuple[Callable[[sqlite3.Connection, Path | None, SigningKey | None], None], ...] = (
    _v1,
    _v2,
    _v3,
)
SCHEMA_VERSION = len(MIGRATIONS)


def open_state(
    path: Path, *, readonly: bool = False, key: SigningKey | None = None, busy_ms: int = 5000
) -> sqlite3.Connection:
    """Open the node's state database (owner-only, WAL, ``synchronous=NORMAL``), upgraded to
    :data:`SCHEMA_VERSION` when opened for writing. Raises JournalError when it cannot be
    opened, or is of an earlier version and cannot be upgraded here."""
    state_dir.secure(path.parent)  # owner-only, or ConfigError with what to run
    try:
        if readonly:
            if not path.exists():
                raise JournalError(f"no journal at {path.name}")
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        else:
            db = open_wal(path, busy_ms)
        db.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version < SCHEMA_VERSION:
            if readonly:
                db.close()
                raise JournalError(
                    "the node's state is from an earlier version: start the node once to upgrade it"
                )
            _migrate(db, path, key)
        elif version > SCHEMA_VERSION:
            db.close()
            raise JournalError(
                f"the node's state is from a later version ({version}, this one knows"
                f" {SCHEMA_VERSION})"
            )
    except sqlite3.Error as exc:  # SQLite's reasons name files and locks, never content
        raise JournalError(f"cannot open the node's state ({exc or type(exc).__name__})") from exc
    return db


def open_wal(path: Path, busy_ms: float) -> sqlite3.Connection:
    """Open (or create, owner-only) a state database for writing, in WAL mode with
    ``synchronous=NORMAL``. Switching a new file to WAL needs a lock that SQLite does not wait
    for when another process is setting the same file up (two `mlanet inbox` at once on a new
    archive): the switch is tried again until ``busy_ms`` have passed."""
    db = sqlite3.connect(state_dir.private_file(path), isolation_level=None)
    db.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
    deadline = time.monotonic() + busy_ms / 1000
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                db.close()
                raise
            time.sleep(0.02)
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def _migrate(db: sqlite3.Connection, path: Path, key: SigningKey | None) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])  # under the lock
        fresh = (
            version == 0
            and not db.execute("SELECT 1 FROM sqlite_master WHERE name='events'").fetchone()
        )
        # a new database takes nothing over: a trail beside it is not its own; nor does
        # another database of the state (a contact points' archive)
        ours = not fresh and path.name == JOURNAL_FILE
        trail = path.parent / AUDIT_FILE_V1 if ours else None
        for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
            step(db, trail, key)
            db.execute(f"PRAGMA user_version={number}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        db.close()
        raise


# --- PostgreSQL ([database]): one schema per network, shared by its replicas -------------------
# The same tables as SQLite's latest version, and the quarantine's (``quarantine_store.py``),
# the replicas' heartbeats and the newest signed directory one of them applied
# (``nodes/runtime/replicas.py``). Versioned in ``schema_version``;
# each migration runs in one transaction with its version, under an advisory lock, so that
# replicas starting together upgrade it once.
POSTGRES_V1 = """
CREATE TABLE seen (
    origin TEXT NOT NULL,
    message_id TEXT NOT NULL,
    content_sha256 TEXT NOT NULL,
    outcome TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (origin, message_id)
);
CREATE TABLE outbox (
    message_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    sender TEXT,
    destination TEXT NOT NULL,
    target TEXT,
    state TEXT NOT NULL,
    content_sha256 TEXT NOT NULL,
    wire BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt DOUBLE PRECISION NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX outbox_pending ON outbox (state, next_attempt);
CREATE TABLE inbox (
    contact_point TEXT NOT NULL,
    origin TEXT NOT NULL,
    message_id TEXT NOT NULL,
    content_sha256 TEXT NOT NULL,
    kind TEXT NOT NULL,
    wire BYTEA NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    created_at DOUBLE PRECISION,
    retain_until DOUBLE PRECISION,
    purged_at DOUBLE PRECISION,
    PRIMARY KEY (contact_point, origin, message_id)
);
CREATE TABLE replicas (
    name TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    version TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL,
    backends TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE TABLE directories (
    version BIGINT PRIMARY KEY,
    body BYTEA NOT NULL,
    by_replica TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL
)
"""


def _for_postgres(ddl: str) -> str:
    """SQLite's DDL in PostgreSQL's types (the same tables, one definition)."""
    ddl = ddl.replace(
        "seq INTEGER PRIMARY KEY", "seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
    )
    ddl = ddl.replace("seq INTEGER NOT NULL", "seq BIGINT NOT NULL")
    return re.sub(r"\bBLOB\b", "BYTEA", re.sub(r"\bREAL\b", "DOUBLE PRECISION", ddl))


POSTGRES_MIGRATIONS: tuple[str, ...] = (
    ";".join((POSTGRES_V1, _for_postgres(JOURNAL), _for_postgres(QUARANTINE_SCHEMA))),
)
POSTGRES_SCHEMA_VERSION = len(POSTGRES_MIGRATIONS)


def open_postgres(config: DatabaseConfig, *, purpose: str, readonly: bool = False) -> Postgres:
    """Connect to the network's PostgreSQL schema, created and upgraded to
    :data:`POSTGRES_SCHEMA_VERSION` when opened for writing. JournalError (one line) when the
    database cannot be reached or is of a later version."""
    try:
        db = Postgres(config, purpose=purpose, readonly=readonly)
    except DB_ERRORS as exc:
        raise JournalError(f"cannot open the node's state: {exc}") from None
    try:
        version = _postgres_version(db)
        if version < POSTGRES_SCHEMA_VERSION and not readonly:
            _postgres_migrate(db)
        elif version < POSTGRES_SCHEMA_VERSION:
            raise JournalError(
                f"the database schema {config.schema_name} is not set up: start the node once"
            )
        elif version > POSTGRES_SCHEMA_VERSION:
            raise JournalError(
                f"the node's state is from a later version ({version}, this one knows"
                f" {POSTGRES_SCHEMA_VERSION})"
            )
    except DB_ERRORS as exc:
        db.close()
        raise JournalError(f"cannot open the node's state ({type(exc).__name__})") from exc
    except JournalError:
        db.close()
        raise
    return db


def _postgres_version(db: Postgres) -> int:
    found = db.execute(
        "SELECT 1 FROM information_schema.tables WHERE table_schema=? AND"
        " table_name='schema_version'",
        (db.schema,),
    ).fetchone()
    if not found:
        return 0
    row = db.execute("SELECT version FROM schema_version").fetchone()
    return int(row[0]) if row else 0


def _postgres_migrate(db: Postgres) -> None:
    db.execute("BEGIN")
    try:
        db.execute("SELECT pg_advisory_xact_lock(?)", (advisory_key("mlanet:schema", db.schema),))
        db.execute(f'CREATE SCHEMA IF NOT EXISTS "{db.schema}"')
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (one INTEGER PRIMARY KEY CHECK (one = 1),"
            " version INTEGER NOT NULL)"
        )
        row = db.execute("SELECT version FROM schema_version").fetchone()
        version = int(row[0]) if row else 0  # under the lock: another replica may have done it
        for number, ddl in enumerate(POSTGRES_MIGRATIONS[version:], start=version + 1):
            for statement in ddl.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(
                "INSERT INTO schema_version (one, version) VALUES (1, ?) ON CONFLICT (one)"
                " DO UPDATE SET version=excluded.version",
                (number,),
            )
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(*DB_ERRORS):
            db.execute("ROLLBACK")
        raise
