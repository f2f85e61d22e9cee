"""Upgrading the state of the release before the journal: its ``events`` table and the audit
trail it kept in ``audit.sqlite3`` become the journal (``PRAGMA user_version`` 2), the trail
verbatim (its chain and signatures still verify), the tracking rows it did not hold appended
under a checkpoint signed at the upgrade; and the upgraded trail still names any row that is
altered, removed or reordered."""

from __future__ import annotations

import hashlib
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mlanet.broker import SigningKey, TrustStore, canonical_bytes
from mlanet.broker.keys import b64u_encode
from mlanet.nodes.state.audit import AuditLog, verify_audit
from mlanet.nodes.state.journal import JournalError
from mlanet.nodes.state.schema import SCHEMA_VERSION
from mlanet.nodes.state.store import Store
from mlanet.schemas.base import format_timestamp

KEY = SigningKey.from_seed("casc", "ed25519:1", bytes(range(32)))

# The schemas of the previous release, verbatim: nodes/state/store.py and nodes/state/audit.py
# before the journal.
OLD_STORE = """
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
OLD_AUDIT = """
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
OWN = "11111111-1111-4111-8111-111111111111"
RELAYED = "22222222-2222-4222-8222-222222222222"
T0 = 1_790_000_000.0


def _old_trail(path: Path) -> None:
    """An audit trail as the previous release wrote it: its first record signed on its own
    (the earliest trails), then records under signed checkpoints."""
    db = sqlite3.connect(path)
    db.executescript(OLD_AUDIT)
    prev = "0" * 64
    records = [
        ("accepted", {"message_id": OWN, "from": "kh-cp-1", "via": "submit", "kind": "x"}),
        ("forwarded", {"message_id": RELAYED, "origin": "seajust", "from": "seajust", "to": "ejn"}),
        (
            "refused",
            {
                "message_id": RELAYED,
                "quarantine_id": "q-1",
                "reason": "bad_signature",
                "detail": "hop 1",
                "via": "mlanet.inbox.from.seajust",
            },
        ),
    ]
    for seq, (event, meta) in enumerate(records, start=1):
        record = canonical_bytes(
            {
                "at": format_timestamp(datetime.fromtimestamp(T0 + seq, UTC)),
                "event": event,
                "key_id": KEY.key_id,
                "meta": meta,
                "network": "casc",
                "prev": prev,
                "seq": seq,
            }
        )
        prev = hashlib.sha256(record).hexdigest()
        signature = b64u_encode(KEY.sign(b"mlanet-v1:audit:" + record)) if seq == 1 else ""
        db.execute(
            "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?)",
            (seq, record.decode(), prev, signature, event, meta["message_id"], None),
        )
        if seq >= 2:
            head = (seq, prev, KEY.key_id, b64u_encode(KEY.sign(_head(seq, prev))))
            db.execute("INSERT INTO audit_checkpoint VALUES (?, ?, ?, ?)", head)
            db.execute("INSERT OR REPLACE INTO audit_head VALUES (1, ?, ?, ?, ?)", head)
    db.commit()
    db.close()


def _head(seq: int, digest: str) -> bytes:
    return b"mlanet-v1:audit-head:" + f"casc:{seq}:{digest}".encode()


def _old_state(state: Path) -> Path:
    state.mkdir(mode=0o700)
    path = state / "node.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(OLD_STORE)
    db.execute(
        "INSERT INTO outbox VALUES (?, 'facilitation_request', 'kh-cp-1', 'UZ', 'casc',"
        " 'forwarded', ?, x'7b7d', ?, ?, 1, ?, 'to casc')",
        (OWN, "0" * 64, T0, T0, T0 + 60),
    )
    db.execute("INSERT INTO seen VALUES ('seajust', ?, ?, 'forwarded', ?)", (RELAYED, "1" * 64, T0))
    events = [
        (T0 + 1, OWN, "queued", "signed, to UZ"),
        (T0 + 2, OWN, "forwarded", "to casc"),  # in the trail already
        (T0 + 3, RELAYED, "forwarded", "forwarded to ejn (for ejn)"),  # in the trail already
        (T0 + 4, RELAYED, "duplicate", "already delivered; not again"),
        (T0 + 5, "-", "quarantined", "bad_signature: hop 1 (via mlanet.inbox.from.seajust)"),
        (T0 + 6, "-", "directory_applied", "version 3 from unodc"),
    ]
    db.executemany("INSERT INTO events (at, message_id, event, detail) VALUES (?, ?, ?, ?)", events)
    db.commit()
    db.close()
    _old_trail(state / "audit.sqlite3")
    for name in ("node.sqlite3", "audit.sqlite3"):
        (state / name).chmod(0o600)  # as the previous release kept them
    return path


def _verify(path: Path) -> tuple[int | None, str]:
    trust = TrustStore()
    trust.add_signing_key(KEY)
    with AuditLog(path, readonly=True) as journal:
        verdict = verify_audit(journal, trust, "casc")
    return verdict.first_bad, verdict.problem


def test_a_database_of_the_previous_release_is_upgraded_and_its_trail_verifies(
    tmp_path: Path,
) -> None:
    path = _old_state(tmp_path / "state")
    with pytest.raises(JournalError, match="start the node once to upgrade it"):
        Store(path, readonly=True)  # a reader does not upgrade it
    with pytest.raises(JournalError, match="start the node once"):
        Store(path)  # nor a writer without the node's key (it signs what it takes over)

    Store(path, key=KEY).close()  # the node opens it

    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "events" not in tables
    assert {"journal", "journal_head", "journal_checkpoint", "seen", "outbox"} <= tables
    db.close()

    assert _verify(path) == (None, "")
    with AuditLog(path, readonly=True) as journal:
        records = journal.records()
    # the trail verbatim, then the tracking rows it did not hold, at their own times
    assert [(r.seq, r.event) for r in records] == [
        (1, "accepted"),
        (2, "forwarded"),
        (3, "refused"),
        (4, "queued"),
        (5, "duplicate"),
        (6, "directory_applied"),
    ]
    assert records[3].at == format_timestamp(datetime.fromtimestamp(T0 + 1, UTC))
    assert records[5].meta == {"detail": "version 3 from unodc"}

    store = Store(path, readonly=True)
    try:
        assert store.outbox_get(OWN) is not None  # the state itself is untouched
        assert store.seen("seajust", RELAYED) is not None
        assert [(e.event, e.detail) for e in store.events(RELAYED)] == [
            ("forwarded", "from seajust to ejn"),
            ("refused", "bad_signature: hop 1 (via mlanet.inbox.from.seajust)"),
            ("duplicate", "already delivered; not again"),
        ]
        assert store.quarantine_reasons() == {"bad_signature": 1}
    finally:
        store.close()

    # the node goes on writing the same chain
    store = Store(path, key=KEY)
    store.event(RELAYED, "duplicate", "already delivered; not again")
    store.close()
    assert _verify(path) == (None, "")
    Store(path, key=KEY).close()  # upgraded once: opening again changes nothing
    with AuditLog(path, readonly=True) as journal:
        assert len(journal.records()) == 7


@pytest.mark.parametrize(
    ("tamper", "first_bad", "problem"),
    [
        (
            "UPDATE journal SET record=replace(record, 'ejn', 'gljc') WHERE seq=2",
            2,
            "altered: its content does not match its hash",
        ),
        ("DELETE FROM journal WHERE seq=2", 2, "was removed"),
        (
            "UPDATE journal SET seq=-1 WHERE seq=2; UPDATE journal SET seq=2 WHERE seq=3;"
            " UPDATE journal SET seq=3 WHERE seq=-1",
            2,
            "was reordered",
        ),
        (
            "UPDATE journal SET reason='no_route' WHERE seq=3",
            3,
            "altered: its indexed columns do not say what its record says",
        ),
        ("DELETE FROM journal WHERE seq=6", 6, "was removed"),
    ],
)
def test_the_upgraded_trail_names_a_row_altered_removed_or_reordered(
    tmp_path: Path, tamper: str, first_bad: int, problem: str
) -> None:
    path = _old_state(tmp_path / "state")
    Store(path, key=KEY).close()
    db = sqlite3.connect(path)
    db.executescript(tamper)
    db.close()
    found, said = _verify(path)
    assert found == first_bad
    assert problem in said
