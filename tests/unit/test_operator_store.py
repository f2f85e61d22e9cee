"""The store's read side for operators: awaiting receipts, quarantine reasons, recent events."""

from __future__ import annotations

import time
from pathlib import Path

from nodes.store import Store


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


def test_awaiting_counts_queued_and_forwarded_and_the_overdue_among_them(tmp_path: Path) -> None:
    store = Store(tmp_path / "node.sqlite3")
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


def test_quarantine_reasons_are_counted_from_the_recorded_events(tmp_path: Path) -> None:
    store = Store(tmp_path / "node.sqlite3")
    store.event("-", "quarantined", "bad_signature: origin signature (via mlanet.inbox.from.casc)")
    store.event("-", "quarantined", "bad_signature: hop 1 (via mlanet.inbox.from.casc)")
    store.event("-", "quarantined", "schema_invalid: payload.summary (via mlanet.submit)")
    store.event("m-1", "delivered", "delivered to uz-cp-1")
    store.event("m-2", "quarantined", "at delivery: key_revoked: key ed25519:1 of casc")
    assert store.quarantine_reasons() == {
        "bad_signature": 2,
        "schema_invalid": 1,
        "key_revoked": 1,
    }
    recent = store.recent_events("quarantined", limit=2)
    assert [event.detail.split(":")[0] for event in recent] == ["at delivery", "schema_invalid"]
    store.close()
