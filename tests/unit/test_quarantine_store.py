"""The quarantine store: entries are found by index (reason, peer, time) a page at a time; a
peer keeps bodies up to its bound and metadata beyond it; a redelivery adds nothing and a copy
is counted; commands claim an entry before acting, and every operator action is audited."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlanet.broker import SigningKey
from mlanet.nodes.config import DatabaseConfig
from mlanet.nodes.state.audit import AUDIT_FILE, AuditLog
from mlanet.nodes.state.quarantine import (
    Claim,
    Entry,
    NotInQuarantine,
    QuarantineAction,
    QuarantineBusy,
    QuarantineError,
    Where,
    entry_of,
)
from mlanet.nodes.state.quarantine_store import QUARANTINE_FILE, STALE_CLAIM, Bound, QuarantineStore

KEY = SigningKey.from_seed("casc", "ed25519:1", bytes(range(32)))
T0 = 1_800_000_000.0
WIDE = Bound(1_000_000, 2**40)


def _entry(n: int, *, peer: str = "seajust", reason: str = "invalid_json", at: float = T0) -> Entry:
    body = b"junk %d" % n
    return Entry(
        id=f"00000000-0000-4000-8000-{n:012d}",
        reason=reason,
        detail="line 1, column 1",
        via=f"mlanet.inbox.from.{peer}" if peer else "mlanet.submit",
        at=at,
        size=len(body),
        body_sha256=hashlib.sha256(body).hexdigest(),
        returns=0,
        claim=Claim(),
    )


def _add(store: QuarantineStore, entry: Entry, bound: Bound = WIDE) -> bool | None:
    return store.add(entry, b"junk %d" % int(entry.id[-12:]), bound, now=T0)


@pytest.fixture
def store(tmp_path: Path, database: DatabaseConfig | None) -> Iterator[QuarantineStore]:
    """On both stores the quarantine can live in (``tests/stores.py``)."""
    with QuarantineStore(tmp_path / QUARANTINE_FILE, database=database) as opened:
        yield opened


def test_entries_are_written_at_the_commit_and_listed_oldest_first_a_page_at_a_time(
    store: QuarantineStore,
) -> None:
    for n in range(10):
        _add(store, _entry(n, at=T0 + (9 - n)))  # the last added is the oldest
    assert store.count() == 0  # waiting for the node's group commit
    store.commit()
    first = store.page(Where(), limit=4)
    assert (first.total, first.more) == (10, True)
    assert [e.id[-1] for e in first.entries] == ["9", "8", "7", "6"]
    second = store.page(Where(), after=first.entries[-1].id, limit=4)
    third = store.page(Where(), after=second.entries[-1].id, limit=4)
    assert [e.id[-1] for e in second.entries + third.entries] == list("543210")
    assert not third.more
    assert all(e.body is None for e in first.entries)  # listing loads no body
    with pytest.raises(NotInQuarantine):
        store.page(Where(), after="no-such-id")


def test_filters_narrow_by_reason_peer_and_time(store: QuarantineStore) -> None:
    _add(store, _entry(1, peer="seajust", reason="invalid_json", at=T0))
    _add(store, _entry(2, peer="seajust", reason="bad_signature", at=T0 + 60))
    _add(store, _entry(3, peer="ejn", reason="invalid_json", at=T0 + 120))
    _add(store, _entry(4, peer="", reason="unauthorised", at=T0 + 180))
    store.commit()

    def ids(where: Where) -> list[int]:
        return [int(e.id[-12:]) for e in store.page(where).entries]

    assert ids(Where(reasons=("invalid_json",))) == [1, 3]
    assert ids(Where(reasons=("invalid_json", "unauthorised"))) == [1, 3, 4]
    assert ids(Where(peer="seajust")) == [1, 2]
    assert ids(Where(peer="")) == [4]  # the local ways in
    assert ids(Where(since=T0 + 60, until=T0 + 180)) == [2, 3]
    assert ids(Where(peer="seajust", reasons=("bad_signature",))) == [2]
    assert store.page(Where(peer="ejn")).total == 1


def test_a_peer_keeps_bodies_up_to_its_bound_and_metadata_beyond_it(
    store: QuarantineStore,
) -> None:
    bound = Bound(messages=3, bytes=2**40)
    kept = [_add(store, _entry(n, peer="seajust"), bound) for n in range(5)]
    assert kept == [True, True, True, False, False]
    assert _add(store, _entry(10, peer="ejn"), bound) is True  # each peer its own bound
    store.commit()
    assert store.count(Where(peer="seajust")) == 5  # the metadata of every refusal stays
    over = store.get(_entry(4).id)
    assert over is not None
    assert (over.body_kept, over.body, over.size) == (False, None, len(b"junk 4"))
    within = store.get(_entry(0).id)
    assert within is not None
    assert within.body == b"junk 0"
    counts = store.by_peer(T0 - 1)
    assert (counts["seajust"].waiting, counts["seajust"].without_body) == (5, 2)
    assert counts["ejn"].without_body == 0


def test_the_bound_counts_bytes_too(store: QuarantineStore) -> None:
    bound = Bound(messages=100, bytes=len(b"junk 1") * 2)
    assert [_add(store, _entry(n), bound) for n in range(1, 4)] == [True, True, False]


def test_what_operators_dropped_makes_room_again_after_a_recount(
    tmp_path: Path, database: DatabaseConfig | None
) -> None:
    bound = Bound(messages=2, bytes=2**40)
    node = QuarantineStore(tmp_path / QUARANTINE_FILE, database=database)
    for n in range(3):
        node.add(_entry(n), b"junk %d" % n, bound, now=T0)
    node.commit()
    operator = QuarantineStore(tmp_path / QUARANTINE_FILE, database=database)
    operator.take(_entry(0).id, "op", T0)
    assert operator.remove("op") == 1
    # within a second the node does not count again; after one it does
    assert node.add(_entry(3), b"junk 3", bound, now=T0 + 0.5) is False
    assert node.add(_entry(4), b"junk 4", bound, now=T0 + 1.5) is True
    node.close()
    operator.close()


def test_a_redelivery_adds_nothing_and_an_identical_copy_is_counted(
    store: QuarantineStore,
) -> None:
    death = {"count": 1, "reason": "delivery_limit", "queue": "mlanet.inbox.seajust"}
    headers = {"x-death": [death | {"exchange": "mlanet.inbox.from.seajust"}]}
    entry = entry_of(b"poison", "mlanet.unroutable", None, headers, now=T0)
    assert store.add(entry, b"poison", WIDE, fresh=False) is True
    store.commit()
    assert store.add(entry, b"poison", WIDE, fresh=False, redelivered=True) is None
    assert store.add(entry, b"poison", WIDE, fresh=False) is None  # a second copy
    store.commit()
    assert store.count() == 1
    found = store.get(entry.id)
    assert found is not None
    assert (found.copies, found.reason, found.peer) == (2, "delivery_limit", "seajust")


def test_a_command_claims_an_entry_and_a_second_one_is_told_to_try_again(
    store: QuarantineStore,
) -> None:
    for n in range(3):
        _add(store, _entry(n))
    store.commit()
    target = _entry(1).id
    taken = store.take(target, "first", T0)
    assert taken.body == b"junk 1"
    with pytest.raises(QuarantineBusy):
        store.take(target, "second", T0 + 1)
    assert [e.id for e in store.take_matching(Where(), "bulk", T0 + 1, 10)] == [
        _entry(0).id,
        _entry(2).id,
    ]
    store.let_go("bulk")
    store.take(target, "third", T0 + STALE_CLAIM + 1)  # the first command died: taken over
    assert store.remove("first") == 0  # what it held is no longer its own
    assert store.remove("third") == 1
    with pytest.raises(NotInQuarantine):
        store.take(target, "fourth", T0)
    assert store.count() == 2


def _action(tmp_path: Path, store: QuarantineStore) -> QuarantineAction:
    audit = AuditLog(tmp_path / AUDIT_FILE, KEY)
    return QuarantineAction(store, audit, None, "operator-a", clock=lambda: T0 + 1000)


async def test_drop_and_bulk_drop_are_audited_entry_by_entry(
    tmp_path: Path, store: QuarantineStore
) -> None:
    for n in range(5):
        _add(store, _entry(n, peer="seajust" if n < 4 else "ejn"))
    store.commit()
    action = _action(tmp_path, store)
    await action.drop(_entry(0).id)
    assert await action.drop_matching(Where(peer="seajust")) == 3
    assert [e.id for e in store.page(Where()).entries] == [_entry(4).id]
    events = [(r.event, r.meta.get("quarantine_id")) for r in action.audit.records()]
    assert events[0] == ("quarantine_dropped", _entry(0).id)
    assert events[1:4] == [("quarantine_dropped", _entry(n).id) for n in (1, 2, 3)]
    assert events[4][0] == "quarantine_dropped_matching"
    assert action.audit.records()[-1].meta["count"] == 3
    action.audit.close()


async def test_show_lists_history_and_release_refuses_what_it_cannot_send(
    tmp_path: Path, store: QuarantineStore
) -> None:
    bound = Bound(messages=1, bytes=2**40)
    _add(store, _entry(1), bound)
    _add(store, _entry(2), bound)  # over the bound: metadata only
    _add(store, _entry(3, peer=""), bound)
    store.commit()
    action = _action(tmp_path, store)
    entry, history = await action.show(_entry(1).id, payload=True)
    assert entry.body == b"junk 1"
    assert history == ["quarantine_shown"]
    with pytest.raises(QuarantineError, match="only its metadata was kept"):
        await action.release(_entry(2).id)
    with pytest.raises(QuarantineError, match="needs the broker"):
        await action.release(_entry(3).id)  # a submission: released into mlanet.submit
    assert store.count() == 3  # a refused release leaves the entry, and lets go of it
    await action.drop(_entry(2).id)
    action.audit.close()
