"""The store's read side for operators: awaiting receipts, quarantine reasons, recent events."""

from __future__ import annotations

import time
from pathlib import Path

from mlanet.broker import SigningKey
from mlanet.nodes.config import DatabaseConfig
from mlanet.nodes.state.store import Store

KEY = SigningKey.from_seed("casc", "ed25519:1", bytes(range(32)))


def _add(store: Store, message_id: str) -> None:
    store.outbox_add(
        message_id=message_id,
        kind="facilitation_request",
        sender="kh-cp-1",
        destination="UZ",
        content_sha256="0" * 64,
        wire=b"{}",
        next_attempt=time.time() + 60,
    )


def test_awaiting_counts_queued_and_forwarded_and_the_overdue_among_them(
    tmp_path: Path, database: DatabaseConfig | None
) -> None:
    store = Store(tmp_path / "node.sqlite3", database=database)
    assert store.outbox_awaiting(time.time()) == (0, None, 0)
    for message_id in ("a", "b", "c"):
        _add(store, message_id)
    store.outbox_update("b", "forwarded", "to casc")
    store.outbox_update("c", "delivered", "receipt")
    count, oldest, overdue = store.outbox_awaiting(time.time() + 1)
    assert count == 2
    assert oldest is not None
    assert oldest <= time.time()
    assert overdue == 2
    assert store.outbox_awaiting(time.time() - 3600)[2] == 0
    store.close()


def test_quarantine_reasons_are_counted_from_the_journal_columns(
    tmp_path: Path, database: DatabaseConfig | None
) -> None:
    """Reasons and details are columns of the journal's ``refused`` rows: counted and listed
    by a query, never split out of a line of text."""
    store = Store(tmp_path / "node.sqlite3", database=database, key=KEY)
    inbox = "mlanet.inbox.from.casc"
    store.event("-", "refused", "origin signature", reason="bad_signature", via=inbox)
    store.event("-", "refused", "hop 1", reason="bad_signature", via=inbox)
    store.event("-", "refused", "payload.summary", reason="schema_invalid", via="mlanet.submit")
    store.event("m-1", "delivered", to=["uz-cp-1"])
    store.event("m-2", "refused", "key ed25519:1 of casc: a: b", reason="key_revoked")
    assert store.quarantine_reasons() == {
        "bad_signature": 2,
        "schema_invalid": 1,
        "key_revoked": 1,
    }
    recent = store.recent_events("refused", limit=2)
    assert [(reason, detail) for _, reason, detail in recent] == [
        ("key_revoked", "key ed25519:1 of casc: a: b"),
        ("schema_invalid", "payload.summary"),
    ]
    store.close()
