"""The quarantine store: every quarantined message of a node, indexed, in its state folder.

One SQLite database (WAL, ``synchronous=NORMAL`` like the node's state) of its own,
``<state_dir>/quarantine.sqlite3``: the node holds the write lock of its main database across a
whole batch of deliveries (its group commit), and an operator's command must never wait for
that, nor the node for the command. Two tables:

- ``entries``: one row per quarantined message, metadata only (reason, detail, way in, peer,
  time, size, SHA-256, claimed identifiers, whether the body was kept, copies), indexed by
  time, reason and peer so that listing, filtering and paging are index range scans;
- ``bodies``: the bytes of the entries whose body was kept;
- ``retention``: when a kept body is to be purged, for a message that claims a retention
  period (``docs/PROTOCOL.md`` section 17), and when it was. :meth:`QuarantineStore.purge_bodies`
  purges the bodies whose time has come (or that are older than the node's
  ``max_retention_days``): the entry stays, as metadata only (not counted as over its peer's
  bound), and no copy of the body stays in the database's files.

**The node** adds entries with :meth:`QuarantineStore.add` (copies of one refused message are one
entry whose ``copies`` grows): the rows wait in memory and are written by
:meth:`QuarantineStore.commit`, in one short transaction, at the node's group commit and before the
deliveries they are about are acked (``nodes/runtime/group_commit.py``). A peer keeps at most
``quarantine_messages`` bodies and ``quarantine_bytes`` bytes of bodies here (its :class:`Bound`);
beyond that, an entry keeps its metadata only. The node counts each peer's kept bodies in memory and
counts again from the table when a bound seems reached (at most once a second per peer), so that
what operators dropped makes room again.

**Operator commands** (``nodes/state/quarantine.py``) read with :meth:`page` and :meth:`get`, and
claim an entry (:meth:`take`) before they release or drop it, so that two commands never act on
one entry at once; a claim older than :data:`STALE_CLAIM` seconds (its command died) is taken
over. Every write holds the lock for one short transaction (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from mlanet.broker import RefusedMessage, loads_strict
from mlanet.broker.keys import b64u_decode
from mlanet.broker.submission_signing import signed_inner
from mlanet.nodes.config import DatabaseConfig, NodeConfig
from mlanet.nodes.state import state_dir
from mlanet.nodes.state.db import DB_ERRORS, Database, Postgres
from mlanet.nodes.state.journal import state_error
from mlanet.nodes.state.quarantine import Claim, Entry, NotInQuarantine, Page, QuarantineBusy, Where
from mlanet.nodes.state.schema import QUARANTINE_SCHEMA, open_postgres, open_wal
from mlanet.schemas.base import parse_timestamp
from mlanet.schemas.header import MAX_RETENTION_DAYS, MIN_RETENTION_DAYS

__all__ = [
    "QUARANTINE_FILE",
    "STALE_CLAIM",
    "Bound",
    "PeerCounts",
    "QuarantineStore",
    "open_quarantine",
    "purge_after",
    "quarantine_exists",
]

log = structlog.get_logger("mlanet.quarantine")

QUARANTINE_FILE = "quarantine.sqlite3"
STALE_CLAIM = 120.0  # seconds: a command's claim on an entry older than this is taken over
RECOUNT_EVERY = 1.0  # seconds: at most this often per peer, count its kept bodies again
_MAX_BODY = 16 * 1024 * 1024  # what purge_after reads of a body (the largest message cap)

_COLUMNS = (
    "id, reason, detail, via, peer, at, size, body_sha256, returns, truncated_from, full_sha256,"
    " kept, copies, claimed_message_id, claimed_origin, claimed_destination, claimed_kind"
)
_INSERT = (
    f"INSERT INTO entries ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608 - fixed fragments
    " ON CONFLICT (id) DO UPDATE SET copies = entries.copies + 1"
)
_ENTRY_ROW = Sequence[Any]
# Kept bodies due for purging: (now, cap seconds or NULL, the same, now).
_DUE_BODIES = (
    "SELECT e.id, e.reason, e.detail, e.via, e.peer, e.at, e.size, e.body_sha256, e.returns,"
    " e.truncated_from, e.full_sha256, e.kept, e.copies, e.claimed_message_id, e.claimed_origin,"
    " e.claimed_destination, e.claimed_kind FROM entries e JOIN bodies b ON b.id = e.id"
    " LEFT JOIN retention r ON r.id = e.id WHERE e.taken_by IS NULL AND"
    " ((r.purge_after IS NOT NULL AND r.purge_after <= ?) OR"
    " (CAST(? AS DOUBLE PRECISION) IS NOT NULL AND e.at + CAST(? AS DOUBLE PRECISION) <= ?))"
    " ORDER BY e.at, e.seq"
)
# The body of this entry was purged at this time (when it is gone: not when a command held it).
_PURGED = (
    "INSERT INTO retention (id, purged_at) SELECT ?, ? WHERE NOT EXISTS (SELECT 1 FROM bodies"
    " WHERE id=?) ON CONFLICT (id) DO UPDATE SET purged_at=excluded.purged_at"
)
_PURGE_BODY = (
    "DELETE FROM bodies WHERE id=? AND EXISTS (SELECT 1 FROM entries e WHERE e.id = bodies.id"
    " AND e.taken_by IS NULL)"
)


@dataclass(frozen=True, slots=True)
class Bound:
    """How many bodies, and how many bytes of bodies, one peer keeps in the quarantine."""

    messages: int
    bytes: int


@dataclass(frozen=True, slots=True)
class PeerCounts:
    """One peer's entries now (``""``: the local ways in)."""

    waiting: int  # entries
    without_body: int  # of them, kept as metadata only (over the peer's bound)
    recent: int  # refused within the window asked for


def _row(entry: Entry, kept: bool) -> tuple[object, ...]:
    return (
        entry.id,
        entry.reason,
        entry.detail,
        entry.via,
        entry.peer,
        entry.at,
        entry.size,
        entry.body_sha256,
        entry.returns,
        entry.truncated_from,
        entry.full_sha256,
        1 if kept else 0,
        entry.copies,
        entry.claim.message_id,
        entry.claim.origin,
        entry.claim.destination,
        entry.claim.kind,
    )


def purge_after(body: bytes, at: float) -> float | None:
    """When the body of a refused message is to be purged, by the retention period it claims
    (unverified: a refused message's claims are all that is left): its header's ``created_at``
    (``at``, the refusal's time, for a local submission or when unreadable) plus
    ``retention_days``; None when it claims no valid period."""
    try:
        frame = loads_strict(body, max_bytes=_MAX_BODY)
        if isinstance(frame, dict) and (inner := signed_inner(frame)) is not None:
            frame = loads_strict(inner, max_bytes=_MAX_BODY)
        if not isinstance(frame, dict):
            return None
        fields: object = frame
        if isinstance(frame.get("header"), str) and len(frame["header"]) <= 64 * 1024:
            fields = loads_strict(b64u_decode(frame["header"]), max_bytes=48 * 1024, max_depth=4)
    except RefusedMessage:
        return None
    if not isinstance(fields, dict):
        return None
    days = fields.get("retention_days")
    if type(days) is not int or not MIN_RETENTION_DAYS <= days <= MAX_RETENTION_DAYS:
        return None
    try:
        created = parse_timestamp(fields.get("created_at")).timestamp()
    except ValueError:
        created = at
    return created + days * 86400.0


def _entry(row: _ENTRY_ROW, body: bytes | None = None) -> Entry:
    (
        entry_id,
        reason,
        detail,
        via,
        _peer,
        at,
        size,
        body_sha256,
        returns,
        truncated_from,
        full_sha256,
        kept,
        copies,
        message_id,
        origin,
        destination,
        kind,
    ) = row
    return Entry(
        id=entry_id,
        reason=reason,
        detail=detail,
        via=via,
        at=at,
        size=size,
        body_sha256=body_sha256,
        returns=returns,
        claim=Claim(message_id, origin, destination, kind),
        body=body,
        truncated_from=truncated_from,
        full_sha256=full_sha256,
        body_kept=bool(kept),
        copies=copies,
    )


def _where(where: Where) -> tuple[str, list[object]]:
    clauses: list[str] = []
    args: list[object] = []
    if where.reasons:
        clauses.append(f"reason IN ({', '.join('?' for _ in where.reasons)})")
        args.extend(where.reasons)
    if where.peer is not None:
        clauses.append("peer = ?")
        args.append(where.peer)
    if where.since is not None:
        clauses.append("at >= ?")
        args.append(where.since)
    if where.until is not None:
        clauses.append("at < ?")
        args.append(where.until)
    return " AND ".join(clauses) or "TRUE", args


def open_quarantine(config: NodeConfig, *, readonly: bool = False) -> QuarantineStore:
    """The node's quarantine as its config says (``[database]`` or its state folder)."""
    return QuarantineStore(
        config.state_dir / QUARANTINE_FILE, readonly=readonly, database=config.database
    )


def quarantine_exists(config: NodeConfig) -> bool:
    """Whether the node has a quarantine to read yet (always with ``[database]``)."""
    return config.database is not None or (config.state_dir / QUARANTINE_FILE).exists()


class QuarantineStore:
    """The quarantine of one node. Not thread-safe; one per process (the node, a command)."""

    def __init__(
        self, path: Path, *, readonly: bool = False, database: DatabaseConfig | None = None
    ) -> None:
        """``database``: in the network's PostgreSQL schema (``nodes/state/db.py``), whose
        tables the node's schema migrations create, instead of ``path``."""
        self.path = path
        self._db: Database
        if database is not None:
            self._db = open_postgres(database, purpose="quarantine", readonly=readonly)
        elif readonly:
            state_dir.secure(path.parent)  # case content at rest: owner-only (state_dir.py)
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        else:
            state_dir.secure(path.parent)
            self._db = open_wal(path, 10000)
            self._db.executescript(QUARANTINE_SCHEMA)
        self._db.execute("PRAGMA busy_timeout=10000")
        # the node's rows waiting for its group commit: entries, and bodies kept
        self._rows: list[tuple[object, ...]] = []
        self._bodies: list[tuple[str, bytes]] = []
        self._retention: list[tuple[str, float]] = []
        self._pending_ids: set[str] = set()
        self._pending_kept: dict[str, tuple[int, int]] = {}  # per peer, of the waiting rows
        # per peer: (bodies kept, their bytes) as far as this node knows, and when it counted
        self._kept: dict[str, tuple[int, int]] = {}
        self._counted: dict[str, float] = {}
        self._over: set[str] = set()  # peers whose last refusal found their bound reached

    def close(self) -> None:
        self._db.close()

    def losses(self) -> int:
        """How many times the database connection was lost (``Store.losses``)."""
        return self._db.losses if isinstance(self._db, Postgres) else 0

    def backend_pids(self) -> list[int]:
        """The PostgreSQL backend of this store's connection (none for SQLite)."""
        return [self._db.backend_pid()] if isinstance(self._db, Postgres) else []

    def __enter__(self) -> QuarantineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the node's writes --------------------------------------------------------------------
    def add(
        self,
        entry: Entry,
        body: bytes,
        bound: Bound,
        *,
        fresh: bool = True,
        redelivered: bool = False,
        now: float | None = None,
    ) -> bool | None:
        """Add one entry (written at the next :meth:`commit`). True: its body is kept; False:
        over its peer's bound, its metadata only. ``fresh``: the id is new (a UUID the node
        just made). Otherwise the id was derived from the message (``nodes/state/quarantine.py``):
        an entry already stored under it is this same message redelivered (``redelivered``:
        nothing is added, None) or another copy of it (its count of copies grows, None): a
        byte-identical copy of a dead-lettered message, or one more copy of a message the node
        refused itself (same origin, message id, content and reason; its first body stays)."""
        if not fresh and (entry.id in self._pending_ids or self._exists(entry.id)):
            if not redelivered:
                self._rows.append(_row(replace(entry, copies=1), kept=False))
            return None
        moment = time.time() if now is None else now
        peer = entry.peer
        kept = self._room(peer, len(body), bound, moment)
        if kept:
            count, size = self._kept[peer]
            self._kept[peer] = (count + 1, size + len(body))
            count, size = self._pending_kept.get(peer, (0, 0))
            self._pending_kept[peer] = (count + 1, size + len(body))
            self._bodies.append((entry.id, body))
            if (after := purge_after(body, entry.at)) is not None:
                self._retention.append((entry.id, after))
        self._rows.append(_row(entry, kept))
        self._pending_ids.add(entry.id)
        return kept

    def _room(self, peer: str, size: int, bound: Bound, now: float) -> bool:
        def fits(kept: tuple[int, int]) -> bool:
            return kept[0] + 1 <= bound.messages and kept[1] + size <= bound.bytes

        known = self._kept.get(peer)
        if known is None or (
            not fits(known) and now - self._counted.get(peer, 0.0) >= RECOUNT_EVERY
        ):
            known = self._count_kept(peer)
            self._kept[peer] = known
            self._counted[peer] = now
        room = fits(known)
        if not room and peer not in self._over:
            self._over.add(peer)
            log.warning(
                "quarantine_bound_reached",
                peer=peer or "local",
                bodies=known[0],
                bytes=known[1],
                bound_messages=bound.messages,
                bound_bytes=bound.bytes,
            )
        elif room and peer in self._over:
            self._over.discard(peer)
            log.info("quarantine_bound_room_again", peer=peer or "local", bodies=known[0])
        return room

    def _count_kept(self, peer: str) -> tuple[int, int]:
        """Bodies kept for ``peer``: committed, and waiting for the commit."""
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM entries WHERE peer=? AND kept=1", (peer,)
        ).fetchone()
        count, size = self._pending_kept.get(peer, (0, 0))
        return int(row[0]) + count, int(row[1]) + size

    def claimed(self, entry_id: str) -> bool:
        """Is the entry ``entry_id`` claimed by an operator's command right now (a release or
        a drop that will remove it)? A new copy must then not be counted on it."""
        found = self._db.execute(
            "SELECT 1 FROM entries WHERE id=? AND taken_by IS NOT NULL", (entry_id,)
        ).fetchone()
        return found is not None

    def _exists(self, entry_id: str) -> bool:
        found = self._db.execute("SELECT 1 FROM entries WHERE id=?", (entry_id,)).fetchone()
        return found is not None

    def commit(self) -> None:
        """Write the entries added since the last commit, in one transaction. If it fails,
        they stay waiting for the next commit (and the error propagates)."""
        if not self._rows:
            return
        rows, bodies, retention = self._rows, self._bodies, self._retention
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(_INSERT, rows)
            self._db.executemany(
                "INSERT INTO bodies (id, body) VALUES (?, ?) ON CONFLICT DO NOTHING", bodies
            )
            self._db.executemany(
                "INSERT INTO retention (id, purge_after) VALUES (?, ?) ON CONFLICT DO NOTHING",
                retention,
            )
            self._db.execute("COMMIT")
        except DB_ERRORS as exc:
            with contextlib.suppress(*DB_ERRORS):
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
            raise state_error("cannot write the quarantine", exc) from exc
        self._rows, self._bodies, self._pending_ids, self._pending_kept = [], [], set(), {}
        self._retention = []

    # --- retention ----------------------------------------------------------------------------
    def due_bodies(self, now: float, max_days: int | None = None) -> list[Entry]:
        """The entries whose kept body is due for purging at ``now``: the retention period its
        message claims has passed, or it was refused more than ``max_days`` ago. An entry an
        operator's command holds waits for the next time."""
        cap = None if max_days is None else max_days * 86400.0
        rows = self._db.execute(_DUE_BODIES, (now, cap, cap, now)).fetchall()
        return [_entry(row) for row in rows]

    def purge_bodies(self, ids: Sequence[str]) -> int:
        """Purge the bodies of these entries (not held by a command): each entry stays, as
        metadata only. The freed bytes are overwritten and the write-ahead log folded back into
        the file, so that no copy of a body stays. How many were purged."""
        if not ids:
            return 0
        self._db.execute("PRAGMA secure_delete=ON")
        rows = [(entry_id,) for entry_id in ids]
        with self._write():
            purged = 0
            for row in rows:
                cursor = self._db.execute(_PURGE_BODY, row)
                purged += cursor.rowcount
            self._db.executemany(_PURGED, [(row[0], time.time(), row[0]) for row in rows])
            self._db.executemany("UPDATE entries SET kept=0 WHERE id=? AND taken_by IS NULL", rows)
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._counted.clear()  # count the kept bodies again when a bound seems reached
        return purged

    # --- reading ------------------------------------------------------------------------------
    def page(self, where: Where, *, after: str | None = None, limit: int = 1000) -> Page:
        """Entries that match, oldest first, after the entry ``after`` (metadata only)."""
        clause, args = _where(where)
        total = int(
            self._db.execute(f"SELECT COUNT(*) FROM entries WHERE {clause}", args).fetchone()[0]  # noqa: S608 - fixed fragments
        )
        position: list[object] = []
        if after is not None:
            found = self._db.execute("SELECT at, seq FROM entries WHERE id=?", (after,)).fetchone()
            if found is None:
                raise NotInQuarantine(after)
            clause += " AND (at, seq) > (?, ?)"
            position = [found[0], found[1]]
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE {clause} ORDER BY at, seq LIMIT ?",  # noqa: S608 - fixed fragments
            [*args, *position, limit + 1],
        ).fetchall()
        return Page(tuple(_entry(row) for row in rows[:limit]), total, len(rows) > limit)

    def get(self, entry_id: str) -> Entry | None:
        """One entry, with its body when it was kept."""
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE id=?",  # noqa: S608 - fixed fragments
            (entry_id,),
        ).fetchone()
        if row is None:
            return None
        body = self._db.execute("SELECT body FROM bodies WHERE id=?", (entry_id,)).fetchone()
        return _entry(row, bytes(body[0]) if body else None)

    def count(self, where: Where | None = None) -> int:
        clause, args = _where(where or Where())
        return int(
            self._db.execute(f"SELECT COUNT(*) FROM entries WHERE {clause}", args).fetchone()[0]  # noqa: S608 - fixed fragments
        )

    def by_peer(self, recent_since: float) -> dict[str, PeerCounts]:
        """Per peer: entries, entries without their body (over the peer's bound: not those
        purged when their retention ended), and those refused since ``recent_since`` (the
        alert on a peer's rate of refusals)."""
        rows = self._db.execute(
            "SELECT peer, COUNT(*), COALESCE(SUM(CASE WHEN kept = 0 AND id NOT IN (SELECT id"
            " FROM retention WHERE purged_at IS NOT NULL) THEN 1 ELSE 0 END), 0) FROM entries"
            " GROUP BY peer"
        ).fetchall()
        recent = dict(
            self._db.execute(
                "SELECT peer, COUNT(*) FROM entries WHERE at >= ? GROUP BY peer", (recent_since,)
            ).fetchall()
        )
        return {
            peer: PeerCounts(int(waiting), int(without), int(recent.get(peer, 0)))
            for peer, waiting, without in rows
        }

    def by_reason(self) -> dict[str, int]:
        rows = self._db.execute("SELECT reason, COUNT(*) FROM entries GROUP BY reason").fetchall()
        return {reason: int(count) for reason, count in rows}

    # --- operator commands --------------------------------------------------------------------
    def take(self, entry_id: str, token: str, now: float) -> Entry:
        """Claim one entry for the command ``token`` and return it with its body."""
        with self._write():
            row = self._db.execute(
                "SELECT taken_by, taken_at FROM entries WHERE id=?", (entry_id,)
            ).fetchone()
            if row is None:
                raise NotInQuarantine(entry_id)
            if row[0] is not None and row[1] > now - STALE_CLAIM:
                raise QuarantineBusy(entry_id)
            self._db.execute(
                "UPDATE entries SET taken_by=?, taken_at=? WHERE id=?", (token, now, entry_id)
            )
        entry = self.get(entry_id)
        assert entry is not None  # claimed: no other command removes it
        return entry

    def take_matching(self, where: Where, token: str, now: float, limit: int) -> list[Entry]:
        """Claim up to ``limit`` entries that match and no other command holds, oldest first
        (metadata only)."""
        clause, args = _where(where)
        with self._write():
            seqs = [
                row[0]
                for row in self._db.execute(
                    f"SELECT seq FROM entries WHERE {clause}"  # noqa: S608 - fixed fragments
                    " AND (taken_by IS NULL OR taken_at <= ?) ORDER BY at, seq LIMIT ?",
                    [*args, now - STALE_CLAIM, limit],
                )
            ]
            self._db.executemany(
                "UPDATE entries SET taken_by=?, taken_at=? WHERE seq=?",
                [(token, now, seq) for seq in seqs],
            )
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE taken_by=? ORDER BY at, seq",  # noqa: S608 - fixed fragments
            (token,),
        ).fetchall()
        return [_entry(row) for row in rows]

    def remove(self, token: str) -> int:
        """Remove every entry (and body) the command ``token`` holds; how many."""
        with self._write():
            ids = [
                row[0]
                for row in self._db.execute("SELECT id FROM entries WHERE taken_by=?", (token,))
            ]
            self._delete(ids)
        return len(ids)

    def let_go(self, token: str) -> None:
        """Give back what the command ``token`` holds, unchanged."""
        with self._write():
            self._db.execute(
                "UPDATE entries SET taken_by=NULL, taken_at=NULL WHERE taken_by=?", (token,)
            )

    def _delete(self, ids: Iterable[str]) -> None:
        rows = [(entry_id,) for entry_id in ids]
        self._db.executemany("DELETE FROM bodies WHERE id=?", rows)
        self._db.executemany("DELETE FROM retention WHERE id=?", rows)
        self._db.executemany("DELETE FROM entries WHERE id=?", rows)

    def _write(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on an error."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
