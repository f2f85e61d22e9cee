"""The node's journal: one structured, indexed, hash-chained row for every fact.

Every fact about a message (accepted, forwarded, delivered, refused and quarantined, receipt,
duplicate, resent, failed, undeliverable, released or dropped by an operator) and every change of
trust (a directory applied, refused or issued, the signing key changed, a contact point handed over
or added) is one row of the ``journal`` table in the node's state database (``node.sqlite3``),
written in the same SQLite transaction as the dedupe and outbox rows it goes with. ``mlanet track``,
``mlanet status``, the dashboard's flow, the quarantine views and ``mlanet audit show``/``verify``
are queries on it; each row is also the log line of its fact (one structlog event, metadata only).

Each row keeps its fields twice: as indexed columns (``event``, ``message_id``, ``reason``,
``detail``, ``via``, ...) that the views query, and inside its *record*, the canonical JSON
object that is hashed and chained::

    {"at": "...Z", "event": "forwarded", "key_id": "ed25519:1", "meta": {...},
     "network": "casc", "prev": "<sha-256 of the previous record>", "seq": 42}

``meta`` holds metadata only (message id, origin, destination, kind, from, to, by, reason, detail,
via, quarantine id, operator), never case content. :func:`mlanet.nodes.state.audit.verify_audit`
checks that the columns say what the record says. Rows are written in batches (the node's group
commit); each batch ends with a *checkpoint*: an Ed25519 signature by the network's signing key over
``HEAD_CONTEXT + "network:seq:hash"`` of its last record. Through the chain a checkpoint covers
every record before it; the latest is also kept as the *head*, rewritten in the same transaction, so
that cutting rows off the end is noticed too.

The schema is versioned (``PRAGMA user_version``, ``nodes/state/schema.py``): a database of the
previous release (an ``events`` table here and the audit trail in ``audit.sqlite3``) is
upgraded when the node opens it, its audit records taken over verbatim (their chain and
signatures still verify).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from mlanet.broker import MlanetError, SigningKey, canonical_bytes
from mlanet.broker.keys import b64u_encode
from mlanet.broker.strictjson import loads_strict
from mlanet.nodes.state.db import DB_ERRORS, Database, advisory_key, dialect_of, unavailable
from mlanet.schemas.base import format_timestamp

__all__ = [
    "GENESIS",
    "HEAD_CONTEXT",
    "JOURNAL_FILE",
    "OUTCOMES",
    "RECEIVED",
    "Journal",
    "JournalError",
    "JournalRecord",
    "MetaValue",
    "Signer",
    "StateUnavailable",
    "TrackEvent",
    "columns_of",
    "digest_of",
    "head_input",
    "parse_record",
    "state_error",
    "track_detail",
]

log = structlog.get_logger("mlanet.journal")

JOURNAL_FILE = "node.sqlite3"
HEAD_CONTEXT = b"mlanet-v1:audit-head:"
GENESIS = "0" * 64
MAX_RECORD_BYTES = 16 * 1024

MetaValue = str | int | float | bool | None | Sequence[str]
Signer = SigningKey | Callable[[], SigningKey]

# The indexed columns, each the value of one meta key (a list is kept comma-joined: a column
# for reading, never parsed back; the record keeps the list).
COLUMNS = (
    ("message_id", "message_id"),
    ("origin", "origin"),
    ("destination", "destination"),
    ("kind", "kind"),
    ("source", "from"),
    ("target", "to"),
    ("by_network", "by"),
    ("reason", "reason"),
    ("detail", "detail"),
    ("via", "via"),
    ("quarantine_id", "quarantine_id"),
    ("operator", "operator"),
)
_NAMES = ", ".join(name for name, _ in COLUMNS)
_KEYS = tuple(key for _, key in COLUMNS)
_INSERT = (
    f"INSERT INTO journal (seq, at, event, {_NAMES}, record, hash, signature)"  # noqa: S608 - fixed names
    f" VALUES ({', '.join('?' * (len(COLUMNS) + 6))})"
)

# The rows that end the handling of a message accepted from a peer: the first of them about it
# carries its acceptance (``Journal.accepted``).
OUTCOMES = frozenset({"forwarded", "delivered", "refused", "duplicate", "directory_refused"})
# The rows whose ``from`` is the peer a message was received from (the others' ``from`` is
# where a directory came from, or the contact point a hand-over moved messages from).
RECEIVED = OUTCOMES | {"accepted"}
# How long an acceptance waits for its outcome before it is written as a row of its own.
ACCEPTED_GRACE = 5.0


class JournalError(MlanetError):
    """The journal cannot be written or read."""


class StateUnavailable(JournalError):
    """The node's database is out of reach for now (PostgreSQL restarting, its connection
    cut): what failed is tried again once it answers, nothing is acked meanwhile."""


def state_error(what: str, exc: BaseException) -> JournalError:
    """The one-line error for a failed database operation: StateUnavailable when the
    database is out of reach (``nodes/state/db.py``), else JournalError."""
    if unavailable(exc):
        return StateUnavailable(f"{what}: the database is out of reach ({type(exc).__name__})")
    return JournalError(f"{what} ({type(exc).__name__})")


@dataclass(frozen=True, slots=True)
class JournalRecord:
    """One row of the journal as its record says (parsed, not verified)."""

    seq: int
    at: str
    event: str
    network: str
    key_id: str
    meta: dict[str, Any]
    prev: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "event": self.event,
            "network": self.network,
            "meta": self.meta,
            "hash": self.hash,
        }


@dataclass(frozen=True, slots=True)
class TrackEvent:
    """A row as ``mlanet track`` shows it: when, what, and its fields in one line."""

    at: float
    event: str
    detail: str


def digest_of(record: bytes) -> str:
    return hashlib.sha256(record).hexdigest()


def head_input(network: str, seq: int, digest: str) -> bytes:
    return HEAD_CONTEXT + f"{network}:{seq}:{digest}".encode("ascii")


def clean(meta: Mapping[str, MetaValue]) -> dict[str, Any]:
    """Drop empty values; keep lists as lists of strings; round floats to milliseconds."""
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if value is None or value == "":
            continue
        if isinstance(value, float):
            out[key] = round(value, 3)
        elif isinstance(value, str | int | bool):
            out[key] = value
        else:
            out[key] = [str(item) for item in value]
    return out


def columns_of(meta: Mapping[str, Any]) -> tuple[str | None, ...]:
    """The indexed columns of a record's meta, in :data:`COLUMNS` order."""
    values = list(map(meta.get, _KEYS))
    for n, value in enumerate(values):
        if value is not None and type(value) is not str:
            values[n] = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return tuple(values)


def parse_record(record: str, digest: str) -> JournalRecord:
    body = loads_strict(record.encode("utf-8"), max_bytes=MAX_RECORD_BYTES, max_depth=4)
    return JournalRecord(
        int(body["seq"]),
        str(body["at"]),
        str(body["event"]),
        str(body["network"]),
        str(body["key_id"]),
        dict(body["meta"]),
        str(body["prev"]),
        digest,
    )


def track_detail(
    source: str | None,
    target: str | None,
    by: str | None,
    reason: str | None,
    detail: str | None,
    via: str | None,
) -> str:
    """One line of a row's fields for ``mlanet track`` (a rendering; nothing reads it back)."""
    parts = []
    if source:
        parts.append(f"from {source}")
    if target:
        parts.append(f"to {target}")
    if by:
        parts.append(f"by {by}")
    if reason:
        parts.append(f"{reason}: {detail}" if detail else reason)
    elif detail:
        parts.append(detail)
    if via:
        parts.append(f"(via {via})")
    return " ".join(parts)


class Journal:
    """The journal of one node, on a connection to its state database.

    ``key`` is needed to append, not to read. Rows appended wait in memory until
    :meth:`flush` writes them, chained, with one signed checkpoint, into the transaction open
    on the connection (one is begun when none is). The owner of the connection commits: the
    :class:`mlanet.nodes.state.store.Store` at its group commit (``attached``), else
    :meth:`commit` here.
    """

    def __init__(
        self,
        db: Database,
        key: Signer | None,
        *,
        attached: bool = False,
        emit: bool = True,
    ) -> None:
        """``emit``: each row written is also logged (the node's log line of the fact); an
        operator's command, which prints what it did, does not log."""
        self._db = db
        self._postgres = dialect_of(db) == "postgresql"
        self._chain_lock = advisory_key("mlanet:journal", getattr(db, "schema", ""))
        self._emit = emit
        self._key = key  # or what gives the node's key now (it follows a rotation)
        self._attached = attached
        self._grouped = False
        self._buffer: list[tuple[float, str, dict[str, Any]]] = []
        # messages accepted from a peer whose outcome is not yet known, with when: the first
        # row about one of them names the peer (``from``); one still without an outcome
        # ACCEPTED_GRACE seconds later (or at close) gets an ``accepted`` row of its own
        # (accepted at, row, settled: its handling ended without an outcome)
        self._accepted: dict[str, list[tuple[float, dict[str, Any], bool]]] = {}

    # --- writing ----------------------------------------------------------------------------
    @property
    def writable(self) -> bool:
        return self._key is not None

    def group_commits(self) -> None:
        """From now on, appends accumulate until the owner's commit, which writes them in one
        transaction under one signed checkpoint."""
        self._grouped = True

    def accepted(self, meta: Mapping[str, MetaValue]) -> None:
        """A message accepted from a peer (``meta`` names it and the peer, ``from``): its
        outcome's row, recorded before the next flush, carries these fields; else a row of its
        own is written then."""
        cleaned = clean(meta)
        message_id = cleaned.get("message_id")
        if isinstance(message_id, str):
            self._accepted.setdefault(message_id, []).append((time.time(), cleaned, False))

    def settled(self, message_id: str) -> None:
        """The handling of a message accepted from a peer ended without an outcome row (a
        receipt or a directory update consumed here): its acceptance is written at the next
        flush rather than after ACCEPTED_GRACE."""
        copies = self._accepted.get(message_id)
        if copies:
            copies[0] = (copies[0][0], copies[0][1], True)

    def append(self, event: str, meta: Mapping[str, MetaValue], *, at: float | None = None) -> None:
        """Record one fact (now, or ``at``); without group commits, also write and commit it."""
        if self._key is None:
            raise JournalError("the journal was opened without the signing key")
        cleaned = clean(meta)
        message_id = cleaned.get("message_id")
        if event in OUTCOMES and isinstance(message_id, str) and self._accepted:
            copies = self._accepted.get(message_id)
            if copies:
                cleaned = {**copies.pop(0)[1], **cleaned}
                if not copies:
                    del self._accepted[message_id]
        self._buffer.append((time.time() if at is None else at, event, cleaned))
        self._log(event, cleaned)
        if not self._grouped:
            self.commit()

    def record(self, event: str, **fields: MetaValue) -> None:
        """:meth:`append` with the fields as keywords (``from_`` for ``from``)."""
        if "from_" in fields:
            fields["from"] = fields.pop("from_")
        self.append(event, fields)

    def pending(self) -> bool:
        return bool(self._buffer or self._accepted)

    def flush(self, *, everything: bool = False) -> None:
        """Write the rows appended so far into the open transaction (begun when none is),
        chained to the rows before them, and sign a checkpoint (the new head) over the last.
        The write lock is held from here to the owner's COMMIT (``BEGIN IMMEDIATE``): another
        writer (an operator's command) appends between two batches.

        An acceptance waits for its outcome's row for ACCEPTED_GRACE seconds (a forward or a
        delivery waits for the broker's confirm across several flushes) unless ``everything``
        (at close): so whether the outcome row names the peer does not depend on timing."""
        if self._accepted:
            self._flush_acceptances(None if everything else time.time() - ACCEPTED_GRACE)
        if not self._buffer:
            return
        if self._key is None:
            raise JournalError("the journal was opened without the signing key")
        key = self._key if isinstance(self._key, SigningKey) else self._key()
        batch, self._buffer = self._buffer, []
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")
        if self._postgres:  # one chain for every replica: the writers take turns, to COMMIT
            self._db.execute("SELECT pg_advisory_xact_lock(?)", (self._chain_lock,))
        row = self._db.execute("SELECT seq, hash FROM journal_head").fetchone()
        seq, prev = (int(row[0]), str(row[1])) if row else (0, GENESIS)
        rows = []
        for at, event, meta in batch:
            seq += 1
            record = canonical_bytes(
                {
                    "at": format_timestamp(datetime.fromtimestamp(at, UTC)),
                    "event": event,
                    "key_id": key.key_id,
                    "meta": meta,
                    "network": key.network,
                    "prev": prev,
                    "seq": seq,
                }
            )
            prev = digest_of(record)
            rows.append((seq, at, event, *columns_of(meta), record.decode("ascii"), prev, ""))
        self._db.executemany(_INSERT, rows)
        self._write_head(key, seq, prev)

    def _flush_acceptances(self, before: float | None) -> None:
        """Acceptances made before ``before`` (all when None) become rows of their own."""
        for message_id in list(self._accepted):
            copies = self._accepted[message_id]
            due = [c for c in copies if before is None or c[2] or c[0] < before]
            if not due:
                continue
            for at, meta, _ in due:
                self._buffer.append((at, "accepted", meta))
                self._log("accepted", meta)
            left = [c for c in copies if not any(c is d for d in due)]
            if left:
                self._accepted[message_id] = left
            else:
                del self._accepted[message_id]

    def _log(self, event: str, meta: Mapping[str, Any]) -> None:
        """The fact's log line: one event, the row's fields (metadata only), in the context
        the node bound for the message it handles; ``message_<event>`` when about a message."""
        if self._emit:
            log.info(f"message_{event}" if "message_id" in meta else event, **meta)

    def commit(self, *, everything: bool = False) -> None:
        """Flush and commit (the owner commits instead when the journal is attached to the
        store's group commit). A batch that cannot be written is dropped whole, and
        JournalError raised: the node then acks none of its deliveries. ``everything``: as
        :meth:`flush`."""
        try:
            self.flush(everything=everything)
            if not self._attached and self._db.in_transaction:
                self._db.execute("COMMIT")
        except DB_ERRORS as exc:
            if not self._attached:
                with contextlib.suppress(*DB_ERRORS):
                    self._db.execute("ROLLBACK")
            raise state_error("cannot write the journal", exc) from exc

    def _write_head(self, key: SigningKey, seq: int, digest: str) -> None:
        """The signed head (the last record), kept also as a checkpoint: every row stays
        covered by the signature made when it was written, by the key of that time."""
        head = (
            seq,
            digest,
            key.key_id,
            b64u_encode(key.sign(head_input(key.network, seq, digest))),
        )
        self._db.execute(
            "INSERT INTO journal_head (one, seq, hash, key_id, signature)"
            " VALUES (1, ?, ?, ?, ?) ON CONFLICT (one) DO UPDATE SET seq=excluded.seq,"
            " hash=excluded.hash, key_id=excluded.key_id, signature=excluded.signature",
            head,
        )
        self._db.execute(
            "INSERT INTO journal_checkpoint (seq, hash, key_id, signature) VALUES (?, ?, ?, ?)",
            head,
        )

    # --- reading: the views are queries ------------------------------------------------------
    def records(self, *, last: int | None = None, event: str | None = None) -> list[JournalRecord]:
        """Rows in order (the last ``last`` of them), parsed without verification."""
        where, args = ("WHERE event=?", [event]) if event else ("", [])
        limit = f"LIMIT {int(last)}" if last is not None else ""
        rows = self._db.execute(
            f"SELECT record, hash FROM (SELECT seq, record, hash FROM journal {where}"  # noqa: S608 - fixed fragments
            f" ORDER BY seq DESC {limit}) AS latest ORDER BY seq",
            args,
        ).fetchall()
        return [parse_record(record, digest) for record, digest in rows]

    def records_after(self, seq: int, limit: int) -> list[JournalRecord]:
        """Up to ``limit`` rows after ``seq``, in order (for a reader that follows the journal:
        the operator surface's counters)."""
        rows = self._db.execute(
            "SELECT record, hash FROM journal WHERE seq>? ORDER BY seq LIMIT ?", (seq, limit)
        ).fetchall()
        return [parse_record(record, digest) for record, digest in rows]

    def about_quarantine(self, quarantine_id: str) -> list[JournalRecord]:
        rows = self._db.execute(
            "SELECT record, hash FROM journal WHERE quarantine_id=? ORDER BY seq",
            (quarantine_id,),
        ).fetchall()
        return [parse_record(record, digest) for record, digest in rows]

    def about_message(self, message_id: str) -> list[TrackEvent]:
        """What happened to one message, in order (``mlanet track``)."""
        rows = self._db.execute(
            "SELECT at, event, source, target, by_network, reason, detail, via FROM journal"
            " WHERE message_id=? ORDER BY seq",
            (message_id,),
        ).fetchall()
        return [TrackEvent(row[0], row[1], track_detail(*row[2:])) for row in rows]

    def recent(self, event: str, limit: int) -> list[tuple[float, str, str]]:
        """(at, reason, detail) of the latest ``limit`` rows of one kind, newest first."""
        rows = self._db.execute(
            "SELECT at, COALESCE(reason, ''), COALESCE(detail, '') FROM journal WHERE event=?"
            " ORDER BY seq DESC LIMIT ?",
            (event, limit),
        ).fetchall()
        return [(float(at), str(reason), str(detail)) for at, reason, detail in rows]

    def count(self, event: str, since: float) -> int:
        """How many rows of one kind were written at or after ``since``."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM journal WHERE event=? AND at>=?", (event, since)
        ).fetchone()
        return int(row[0])

    def by_reason(self, event: str) -> dict[str, int]:
        """How many rows of one kind, by reason code (all recorded time)."""
        rows = self._db.execute(
            "SELECT reason, COUNT(*) FROM journal WHERE event=? AND reason IS NOT NULL"
            " GROUP BY reason",
            (event,),
        ).fetchall()
        return {str(reason): int(count) for reason, count in rows}

    def head(self) -> tuple[int, str] | None:
        row = self._db.execute("SELECT seq, hash FROM journal_head").fetchone()
        return (int(row[0]), str(row[1])) if row else None

    # --- reading as stored, for verification -------------------------------------------------
    def raw_rows(self) -> Iterator[tuple[Any, ...]]:
        """(seq, record, hash, signature, *columns) as stored, in seq order."""
        yield from self._db.execute(
            f"SELECT seq, record, hash, signature, {_NAMES} FROM journal ORDER BY seq"  # noqa: S608 - fixed names
        )

    def raw_checkpoints(self) -> Iterator[tuple[Any, Any, Any, Any]]:
        """(seq, hash, key id, signature) of every signed checkpoint, in seq order."""
        yield from self._db.execute(
            "SELECT seq, hash, key_id, signature FROM journal_checkpoint ORDER BY seq"
        )

    def raw_head(self) -> tuple[Any, Any, Any, Any] | None:
        """(seq, hash, key id, signature) of the signed head as stored."""
        row = self._db.execute("SELECT seq, hash, key_id, signature FROM journal_head").fetchone()
        return tuple(row) if row else None
