"""The node's audit trail: an append-only, hash-chained log under the node's signature.

Each record is a canonical JSON object::

    {"at": "...Z", "event": "forwarded", "key_id": "ed25519:1", "meta": {...},
     "network": "casc", "prev": "<sha-256 of the previous record>", "seq": 42}

stored with its SHA-256. ``meta`` holds metadata only (message id, origin, destination, kind,
peer, reason, quarantine id, operator), never case content. Records are written in batches;
each batch ends with a *checkpoint*: an Ed25519 signature by the network's signing key over
``HEAD_CONTEXT + "network:seq:hash"`` of its last record (a context no message signature
uses). Through the hash chain, a checkpoint covers every record before it, so one signature
per batch proves the whole batch, made when it was written and by the key of that time. The
latest checkpoint is also kept as the *head*, rewritten in the same transaction, so that
cutting records off the end is noticed too. (Trails written by earlier versions signed every
record on its own: those signatures are still checked.)

The log is a table in ``<state_dir>/audit.sqlite3`` (WAL, ``synchronous=NORMAL`` like the node's
state: a committed record survives the death of the process; owner-only like the rest of the
state, ``nodes/state_dir.py``). The node appends in group commits: records accumulate in memory
and are written in one transaction, with one checkpoint, before any delivery they are about is
acked. The ``mlanet quarantine`` commands append operator actions from another process, and
``mlanet inbox`` a message it refuses when a contact point reads it, one committed record at a
time (``BEGIN IMMEDIATE`` serialises the writers; each holds the lock only while it writes).

:func:`verify_audit` walks the chain and names the first record that was altered, removed or
reordered; :class:`AuditTrail` is the observer (``nodes/observe.py``) that writes the node's
records.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from broker import MlanetError, RefusedMessage, SigningKey, TrustStore, canonical_bytes
from broker.errors import Reason
from broker.keys import b64u_decode, b64u_encode
from broker.strictjson import loads_strict
from nodes import state_dir
from nodes.observe import Flow, Observer
from schemas.base import format_timestamp

__all__ = [
    "AUDIT_CONTEXT",
    "AUDIT_FILE",
    "HEAD_CONTEXT",
    "AuditError",
    "AuditLog",
    "AuditRecord",
    "AuditTrail",
    "Verdict",
    "flow_meta",
    "refusal",
    "verify_audit",
]

log = structlog.get_logger("mlanet.audit")

AUDIT_FILE = "audit.sqlite3"
AUDIT_CONTEXT = b"mlanet-v1:audit:"
HEAD_CONTEXT = b"mlanet-v1:audit-head:"
GENESIS = "0" * 64
_MAX_RECORD_BYTES = 16 * 1024

MetaValue = str | int | float | bool | None | Sequence[str]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    record TEXT NOT NULL,
    hash TEXT NOT NULL,
    signature TEXT NOT NULL,
    event TEXT NOT NULL,
    message_id TEXT,
    quarantine_id TEXT
);
CREATE INDEX IF NOT EXISTS audit_quarantine ON audit (quarantine_id);
CREATE TABLE IF NOT EXISTS audit_checkpoint (
    seq INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,
    key_id TEXT NOT NULL,
    signature TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_head (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    key_id TEXT NOT NULL,
    signature TEXT NOT NULL
);
"""


class AuditError(MlanetError):
    """The audit trail cannot be written or read."""


@dataclass(frozen=True, slots=True)
class AuditRecord:
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


def _digest(record: bytes) -> str:
    return hashlib.sha256(record).hexdigest()


def _head_input(network: str, seq: int, digest: str) -> bytes:
    return HEAD_CONTEXT + f"{network}:{seq}:{digest}".encode("ascii")


def _clean(meta: Mapping[str, MetaValue]) -> dict[str, Any]:
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


class AuditLog:
    """The audit table of one node. ``key`` is needed to append, not to read."""

    def __init__(self, path: Path, key: SigningKey | None = None, *, readonly: bool = False):
        self.path = path
        self._key = key
        self._readonly = readonly
        self._grouped = False
        # appended, not yet written: (time, event, cleaned meta)
        self._buffer: list[tuple[float, str, dict[str, Any]]] = []
        self._before_commit: list[Callable[[], None]] = []
        state_dir.secure(path.parent)  # owner-only, or ConfigError with what to run
        try:
            if readonly:
                if not path.exists():
                    raise AuditError(f"no audit trail at {path.name}")
                self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            else:
                self._db = sqlite3.connect(state_dir.private_file(path), isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
            self._db.execute("PRAGMA busy_timeout=10000")
        except sqlite3.Error as exc:
            raise AuditError(f"cannot open the audit trail ({type(exc).__name__})") from exc

    def close(self) -> None:
        try:
            if not self._readonly:
                self.commit()
        finally:
            self._db.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing ----------------------------------------------------------------------------
    def group_commits(self) -> None:
        """From now on, appends accumulate until :meth:`commit`, which writes them in one
        transaction under one signed checkpoint (the node commits before it acks any delivery
        whose records are in the batch, see ``nodes/group_commit.py``)."""
        self._grouped = True

    def before_commit(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` at the start of every commit (it may append what it held back)."""
        self._before_commit.append(hook)

    def append(self, event: str, meta: Mapping[str, MetaValue]) -> None:
        """Append one record; without group commits, also commit it (and sign its head)."""
        if self._key is None:
            raise AuditError("the audit trail was opened without the signing key")
        self._buffer.append((time.time(), event, _clean(meta)))
        if not self._grouped:
            self.commit()

    def commit(self) -> None:
        """Write what was appended since the last commit, chained to the records before it,
        and sign a checkpoint (the new head) over the last one: one signature per batch.

        The write lock is held for this call only (``BEGIN IMMEDIATE``): another writer (an
        operator's command) appends between two batches. A batch that cannot be written is
        dropped whole, and AuditError raised: the node then acks none of its deliveries."""
        for hook in self._before_commit:
            hook()
        if not self._buffer:
            return
        key = self._key
        assert key is not None
        batch, self._buffer = self._buffer, []
        try:
            self._db.execute("BEGIN IMMEDIATE")  # the write lock: no other writer until COMMIT
            row = self._db.execute("SELECT seq, hash FROM audit_head").fetchone()
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
                prev = _digest(record)
                rows.append(
                    (
                        seq,
                        record.decode("ascii"),
                        prev,
                        event,
                        meta.get("message_id"),
                        meta.get("quarantine_id"),
                    )
                )
            self._db.executemany(
                "INSERT INTO audit (seq, record, hash, signature, event, message_id,"
                " quarantine_id) VALUES (?, ?, ?, '', ?, ?, ?)",
                rows,
            )
            self._write_head(key, seq, prev)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise AuditError(f"cannot write the audit trail ({type(exc).__name__})") from exc

    def _write_head(self, key: SigningKey, seq: int, digest: str) -> None:
        """The signed head (the last record), kept also as a checkpoint: every record stays
        covered by the signature made when it was written, by the key of that time."""
        head = (
            seq,
            digest,
            key.key_id,
            b64u_encode(key.sign(_head_input(key.network, seq, digest))),
        )
        self._db.execute(
            "INSERT INTO audit_head (one, seq, hash, key_id, signature)"
            " VALUES (1, ?, ?, ?, ?) ON CONFLICT (one) DO UPDATE SET seq=excluded.seq,"
            " hash=excluded.hash, key_id=excluded.key_id, signature=excluded.signature",
            head,
        )
        self._db.execute(
            "INSERT INTO audit_checkpoint (seq, hash, key_id, signature) VALUES (?, ?, ?, ?)",
            head,
        )

    # --- reading ----------------------------------------------------------------------------
    def records(self, *, last: int | None = None, event: str | None = None) -> list[AuditRecord]:
        """Records in order (the last ``last`` of them), parsed without verification."""
        where, args = ("WHERE event=?", [event]) if event else ("", [])
        limit = f"LIMIT {int(last)}" if last is not None else ""
        rows = self._db.execute(
            f"SELECT record, hash FROM (SELECT seq, record, hash FROM audit {where}"  # noqa: S608 - fixed fragments
            f" ORDER BY seq DESC {limit}) ORDER BY seq",
            args,
        ).fetchall()
        return [_parse(record, digest) for record, digest in rows]

    def records_after(self, seq: int, limit: int) -> list[AuditRecord]:
        """Up to ``limit`` records after ``seq``, in order (for a reader that follows the trail:
        the operator surface's counters)."""
        rows = self._db.execute(
            "SELECT record, hash FROM audit WHERE seq>? ORDER BY seq LIMIT ?", (seq, limit)
        ).fetchall()
        return [_parse(record, digest) for record, digest in rows]

    def about_quarantine(self, quarantine_id: str) -> list[AuditRecord]:
        rows = self._db.execute(
            "SELECT record, hash FROM audit WHERE quarantine_id=? ORDER BY seq",
            (quarantine_id,),
        ).fetchall()
        return [_parse(record, digest) for record, digest in rows]

    def head(self) -> tuple[int, str] | None:
        row = self._db.execute("SELECT seq, hash FROM audit_head").fetchone()
        return (int(row[0]), str(row[1])) if row else None

    def raw_rows(self) -> Iterator[tuple[Any, Any, Any, Any]]:
        """(seq, record, hash, signature) as stored, in seq order, for verification."""
        yield from self._db.execute("SELECT seq, record, hash, signature FROM audit ORDER BY seq")

    def raw_checkpoints(self) -> Iterator[tuple[Any, Any, Any, Any]]:
        """(seq, hash, key id, signature) of every signed checkpoint, in seq order."""
        found = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='audit_checkpoint'"
        ).fetchone()
        if found:  # a trail written before checkpoints has none
            yield from self._db.execute(
                "SELECT seq, hash, key_id, signature FROM audit_checkpoint ORDER BY seq"
            )

    def raw_head(self) -> tuple[Any, Any, Any, Any] | None:
        """(seq, hash, key id, signature) of the signed head as stored."""
        row = self._db.execute("SELECT seq, hash, key_id, signature FROM audit_head").fetchone()
        return tuple(row) if row else None


def _parse(record: str, digest: str) -> AuditRecord:
    body = loads_strict(record.encode("utf-8"), max_bytes=_MAX_RECORD_BYTES, max_depth=4)
    return AuditRecord(
        int(body["seq"]),
        str(body["at"]),
        str(body["event"]),
        str(body["network"]),
        str(body["key_id"]),
        dict(body["meta"]),
        str(body["prev"]),
        digest,
    )


# --- verification ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of :func:`verify_audit`. ``first_bad`` names the first record in doubt."""

    records: int
    head: tuple[int, str] | None
    first_bad: int | None = None
    problem: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem


_FIELDS = {"at", "event", "key_id", "meta", "network", "prev", "seq"}


def _check_record(
    record: str, digest: str, signature: str, trust: TrustStore, network: str
) -> tuple[dict[str, Any] | None, str]:
    """The record's body when it is intact (hash, form, signature), else a problem."""
    raw = record.encode("utf-8", errors="replace")
    if _digest(raw) != digest:
        return None, "altered: its content does not match its hash"
    try:
        body = loads_strict(raw, max_bytes=_MAX_RECORD_BYTES, max_depth=4)
    except RefusedMessage:
        return None, "altered: it is not a well-formed record"
    if (
        not isinstance(body, dict)
        or set(body) != _FIELDS
        or canonical_bytes(body) != raw
        or type(body["seq"]) is not int
        or not isinstance(body["key_id"], str)
        or not isinstance(body["prev"], str)
    ):
        return None, "altered: it is not a well-formed record"
    if body["network"] != network:
        return None, f"altered: it names network {body['network']!s:.32}, not {network}"
    if signature:  # records written before checkpoints were signed one by one
        try:
            trust.verify(
                network,
                body["key_id"],
                b64u_decode(signature),
                AUDIT_CONTEXT + raw,
                reason=Reason.BAD_SIGNATURE,
            )
        except RefusedMessage as exc:
            return None, f"altered: its signature does not verify ({exc.reason.value})"
    return body, ""


def _signed_by(
    trust: TrustStore, network: str, key_id: object, signature: object, seq: int, digest: str
) -> bool:
    try:
        trust.verify(
            network,
            str(key_id),
            b64u_decode(str(signature)),
            _head_input(network, seq, digest),
            reason=Reason.BAD_SIGNATURE,
        )
    except RefusedMessage:
        return False
    return True


def _claimed_seq(record: object) -> int | None:
    try:
        seq = loads_strict(str(record).encode("utf-8"), max_bytes=_MAX_RECORD_BYTES)["seq"]
    except (RefusedMessage, TypeError, KeyError):
        return None
    return seq if type(seq) is int else None


def verify_audit(
    audit: AuditLog, trust: TrustStore, network: str, *, anchor: tuple[int, str] | None = None
) -> Verdict:
    """Walk the whole chain: every record intact, signed, in order and linked, up to the signed
    head (and through ``anchor``, a (seq, hash) an operator kept elsewhere).

    The first problem found is reported with the number of the record it concerns: the record
    that was altered, the first one that was removed, the place where the order breaks.
    """
    rows = list(audit.raw_rows())
    stored = audit.raw_head()
    head = (int(stored[0]), str(stored[1])) if stored else None
    claimed = {_claimed_seq(row[1]) for row in rows}
    expected, prev = 1, GENESIS
    hashes: dict[int, str] = {}

    def bad(seq: int, problem: str) -> Verdict:
        return Verdict(len(hashes), head, seq, f"record {seq} {problem}")

    for row_seq, record, digest, signature in rows:
        body, problem = _check_record(str(record), str(digest), str(signature), trust, network)
        if body is None:
            return bad(min(int(row_seq), expected), problem)
        seq = body["seq"]
        if seq != expected or int(row_seq) != expected:
            if seq > expected and expected not in claimed:
                return bad(expected, f"was removed (the chain jumps from {expected - 1} to {seq})")
            return bad(expected, f"was reordered (record {seq} is in its place)")
        if body["prev"] != prev:
            if expected == 1:
                return bad(1, "altered: it does not start the chain")
            return bad(
                expected - 1, f"altered: its hash is not the one record {expected} was chained to"
            )
        prev = hashes[seq] = str(digest)
        expected += 1

    last = expected - 1
    if stored is None:
        return Verdict(len(hashes), None, None, "the signed head is missing" if rows else "")
    head_seq, head_hash, head_key, head_sig = int(stored[0]), str(stored[1]), stored[2], stored[3]
    if not _signed_by(trust, network, head_key, head_sig, head_seq, head_hash):
        return Verdict(
            len(hashes), head, None, "the head is altered: its signature does not verify"
        )
    if last < head_seq:
        return bad(
            last + 1,
            f"was removed: the log ends at {last} but its signed head is at {head_seq} "
            "(the log was truncated)",
        )
    if last > head_seq:
        return bad(head_seq + 1, f"is not covered by the signed head (at {head_seq})")
    if hashes.get(head_seq) != head_hash:
        return bad(head_seq, "altered: it does not match the signed head")
    for seq, digest, key_id, signature in audit.raw_checkpoints():
        seq = int(seq)
        if not _signed_by(trust, network, key_id, signature, seq, str(digest)):
            return bad(seq, "is under a checkpoint whose signature does not verify")
        if seq > last:
            return bad(last + 1, "was removed: a checkpoint was signed over it")
        if hashes.get(seq) != str(digest):
            return bad(seq, "altered: it does not match the checkpoint signed over it")
    if anchor is not None and hashes.get(anchor[0]) != anchor[1]:
        return bad(anchor[0], "does not match the anchor kept elsewhere (altered or removed)")
    return Verdict(len(hashes), head)


# --- the node's records, through the observer seam -----------------------------------------
def flow_meta(flow: Flow | None) -> dict[str, MetaValue]:
    """A message's identifiers as record metadata (nothing when none could be read)."""
    if flow is None:
        return {}
    return {
        "message_id": flow.message_id,
        "origin": flow.origin,
        "destination": flow.destination,
        "kind": flow.kind,
    }


def refusal(
    about: Mapping[str, MetaValue], quarantine_id: str, reason: str, detail: str, via: str
) -> dict[str, MetaValue]:
    """The metadata of a ``refused`` record: the message (``about``), its quarantine entry,
    the reason code and its metadata-only detail, and the way it came (a peer's inbox
    exchange, ``mlanet.submit``, or a contact point's delivery queue when it was refused as
    the contact point read it)."""
    return {
        **about,
        "quarantine_id": quarantine_id,
        "reason": reason,
        "detail": detail,
        "via": via,
    }


class AuditTrail(Observer):
    """Appends a record for every accept, refusal, forward, delivery and receipt.

    A message accepted from a peer and then forwarded, delivered or refused gets one record,
    of its outcome, naming the peer it came from (``from``); one whose outcome is not known by
    the next commit (or that has none of these: a receipt, a repeat) gets an ``accepted``
    record of its own then.

    Registered as a *required* observer: a record that cannot be written raises, so the node
    does not ack the delivery it is about (it is redelivered and the record written then).
    """

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit
        self._accepted: dict[str, dict[str, MetaValue]] = {}  # by message id, not yet written
        audit.before_commit(self._write_accepted)

    def _write_accepted(self) -> None:
        accepted, self._accepted = self._accepted, {}
        for meta in accepted.values():
            self.audit.append("accepted", meta)

    def _outcome(self, flow: Flow | None) -> dict[str, MetaValue]:
        if flow is None:
            return {}
        return self._accepted.pop(flow.message_id, None) or flow_meta(flow)

    def received(self, sender: str, flow: Flow) -> None:
        self._accepted[flow.message_id] = {**flow_meta(flow), "from": sender}

    def submitted(self, contact_point: str, flow: Flow) -> None:
        self.audit.append("accepted", {**flow_meta(flow), "from": contact_point, "via": "submit"})

    def quarantined(
        self, quarantine_id: str, reason: str, detail: str, via: str, flow: Flow | None
    ) -> None:
        self.audit.append(
            "refused", refusal(self._outcome(flow), quarantine_id, reason, detail, via)
        )

    def forwarded(self, peer: str, flow: Flow) -> None:
        self.audit.append("forwarded", {**self._outcome(flow), "to": peer})

    def delivered(self, contact_points: tuple[str, ...], flow: Flow) -> None:
        self.audit.append("delivered", {**self._outcome(flow), "to": list(contact_points)})

    def receipt(self, for_id: str, by: str, waited: float) -> None:
        self.audit.append("receipt", {"message_id": for_id, "by": by, "waited_s": waited})

    def undeliverable(self, for_id: str) -> None:
        self.audit.append("undeliverable", {"message_id": for_id})
