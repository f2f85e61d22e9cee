"""The audit trail: a chain of records under the node's signed checkpoints, whose verification
names the first record that was altered, removed, reordered or cut off; and the seam keeps it
before the ack."""

from __future__ import annotations

import itertools
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mlanet.broker import SigningKey, TrustStore
from mlanet.broker.keys import b64u_encode
from mlanet.nodes.runtime.observe import Flow, Observer, Observers
from mlanet.nodes.state.audit import AUDIT_CONTEXT, AuditError, AuditLog, AuditTrail, verify_audit

KEY = SigningKey.from_seed("casc", "ed25519:1", bytes(range(32)))
OTHER = SigningKey.from_seed("casc", "ed25519:1", bytes(range(1, 33)))
N = 10


def _trust(*keys: SigningKey) -> TrustStore:
    trust = TrustStore()
    for key in keys or (KEY,):
        trust.add_signing_key(key)
    return trust


@pytest.fixture
def path(tmp_path: Path) -> Path:
    where = tmp_path / "audit.sqlite3"
    with AuditLog(where, KEY) as audit:
        for n in range(1, N + 1):
            audit.append(
                "forwarded",
                {
                    "message_id": f"00000000-0000-4000-8000-{n:012d}",
                    "origin": "seajust",
                    "to": "ejn",
                },
            )
    return where


def _verify(path: Path, trust: TrustStore | None = None) -> tuple[int | None, str]:
    with AuditLog(path, readonly=True) as audit:
        verdict = verify_audit(audit, trust or _trust(), "casc")
    return verdict.first_bad, verdict.problem


def _sql(path: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    db = sqlite3.connect(path)
    with db:
        for statement, args in statements:
            db.execute(statement, args)
    db.close()


def _row(path: Path, seq: int) -> tuple[str, str, str]:
    db = sqlite3.connect(path)
    row = db.execute("SELECT record, hash, signature FROM journal WHERE seq=?", (seq,)).fetchone()
    db.close()
    return row[0], row[1], row[2]


def test_an_untouched_chain_verifies_and_reports_its_head(path: Path) -> None:
    with AuditLog(path, readonly=True) as audit:
        verdict = verify_audit(audit, _trust(), "casc")
        records = audit.records()
    assert verdict.ok, verdict.problem
    assert verdict.records == N
    assert verdict.head == (N, records[-1].hash)
    assert [record.seq for record in records] == list(range(1, N + 1))
    assert records[0].prev == "0" * 64
    assert all(b.prev == a.hash for a, b in itertools.pairwise(records))


def test_an_edited_record_is_named_by_its_hash(path: Path) -> None:
    record, _, _ = _row(path, 4)
    _sql(path, ("UPDATE journal SET record=? WHERE seq=4", (record.replace("ejn", "gljc"),)))
    assert _verify(path) == (4, "record 4 altered: its content does not match its hash")


def test_an_edited_record_with_a_recomputed_hash_is_named_by_the_chain(path: Path) -> None:
    import hashlib

    record, _, _ = _row(path, 6)
    forged = record.replace("ejn", "gljc")
    digest = hashlib.sha256(forged.encode()).hexdigest()
    _sql(path, ("UPDATE journal SET record=?, hash=? WHERE seq=6", (forged, digest)))
    assert _verify(path) == (
        6,
        "record 6 altered: its hash is not the one record 7 was chained to",
    )


def test_a_rewritten_tail_is_named_by_the_checkpoint_signed_over_it(path: Path) -> None:
    """Every record from 8 on edited and re-chained: only the signatures can tell."""
    import hashlib

    from mlanet.broker.strictjson import canonical_bytes, loads_strict

    db = sqlite3.connect(path)
    with db:
        prev = db.execute("SELECT hash FROM journal WHERE seq=7").fetchone()[0]
        for seq in range(8, N + 1):
            body = loads_strict(_row(path, seq)[0].encode(), max_bytes=10_000)
            body["meta"]["to"], body["prev"] = "gljc", prev
            forged = canonical_bytes(body)
            prev = hashlib.sha256(forged).hexdigest()
            db.execute(
                "UPDATE journal SET record=?, hash=? WHERE seq=?", (forged.decode(), prev, seq)
            )
    db.close()
    assert _verify(path) == (N, "record 10 altered: it does not match the signed head")
    _sql(path, ("UPDATE journal_head SET hash=?", (prev,)))
    assert _verify(path) == (None, "the head is altered: its signature does not verify")


def test_a_checkpoint_covers_its_batch_with_the_key_of_its_time(tmp_path: Path) -> None:
    """One signature per batch: batches written before a key rotation still verify by their
    own checkpoints, and only with the key that signed them."""
    where = tmp_path / "audit.sqlite3"
    newer = SigningKey.from_seed("casc", "ed25519:2", bytes(range(2, 34)))
    for key, numbers in ((KEY, range(3)), (newer, range(3, 6))):
        with AuditLog(where, key) as audit:
            audit.group_commits()
            for n in numbers:
                audit.append("forwarded", {"n": n})
    db = sqlite3.connect(where)
    checkpoints = db.execute("SELECT seq, key_id FROM journal_checkpoint ORDER BY seq").fetchall()
    signatures = {row[0] for row in db.execute("SELECT signature FROM journal")}
    db.close()
    assert checkpoints == [(3, "ed25519:1"), (6, "ed25519:2")]
    assert signatures == {""}  # no record is signed on its own
    assert _verify(where, _trust(KEY, newer)) == (None, "")
    assert _verify(where, _trust(newer)) == (
        3,
        "record 3 is under a checkpoint whose signature does not verify",
    )


def test_a_truncation_to_an_older_head_is_named_by_the_later_checkpoints(path: Path) -> None:
    db = sqlite3.connect(path)
    old_head = db.execute(
        "SELECT seq, hash, key_id, signature FROM journal_checkpoint WHERE seq=7"
    ).fetchone()
    db.close()
    _sql(
        path,
        ("DELETE FROM journal WHERE seq>7", ()),
        ("UPDATE journal_head SET seq=?, hash=?, key_id=?, signature=?", tuple(old_head)),
    )
    assert _verify(path) == (8, "record 8 was removed: a checkpoint was signed over it")


def test_a_record_re_signed_with_another_key_is_refused(path: Path) -> None:
    import hashlib

    record, _, _ = _row(path, 2)
    forged = record.replace("ejn", "gljc")
    digest = hashlib.sha256(forged.encode()).hexdigest()
    signature = b64u_encode(OTHER.sign(AUDIT_CONTEXT + forged.encode()))
    _sql(
        path,
        (
            "UPDATE journal SET record=?, hash=?, signature=? WHERE seq=2",
            (forged, digest, signature),
        ),
    )
    assert _verify(path)[0] == 2


def test_a_deleted_record_is_named(path: Path) -> None:
    _sql(path, ("DELETE FROM journal WHERE seq=5", ()))
    assert _verify(path) == (5, "record 5 was removed (the chain jumps from 4 to 6)")


def test_a_deletion_hidden_by_renumbering_is_still_named(path: Path) -> None:
    _sql(
        path,
        ("DELETE FROM journal WHERE seq=5", ()),
        ("UPDATE journal SET seq=seq-1 WHERE seq>5", ()),
    )
    assert _verify(path) == (5, "record 5 was removed (the chain jumps from 4 to 6)")


def test_two_swapped_records_are_named_at_the_first_place(path: Path) -> None:
    three, eight = _row(path, 3), _row(path, 8)
    update = "UPDATE journal SET record=?, hash=?, signature=? WHERE seq=?"
    _sql(path, (update, (*eight, 3)), (update, (*three, 8)))
    assert _verify(path) == (3, "record 3 was reordered (record 8 is in its place)")


def test_swapped_sequence_numbers_are_named_too(path: Path) -> None:
    _sql(
        path,
        ("UPDATE journal SET seq=-1 WHERE seq=7", ()),
        ("UPDATE journal SET seq=7 WHERE seq=8", ()),
        ("UPDATE journal SET seq=8 WHERE seq=-1", ()),
    )
    assert _verify(path) == (7, "record 7 was reordered (record 8 is in its place)")


def test_a_truncated_log_is_named_at_the_first_missing_record(path: Path) -> None:
    _sql(path, ("DELETE FROM journal WHERE seq>7", ()))
    first_bad, problem = _verify(path)
    assert first_bad == 8
    assert "the log was truncated" in problem


def test_a_truncation_with_a_forged_head_fails_the_head_signature(path: Path) -> None:
    _, digest, _ = _row(path, 7)
    _sql(
        path,
        ("DELETE FROM journal WHERE seq>7", ()),
        ("UPDATE journal_head SET seq=7, hash=?", (digest,)),
    )
    first_bad, problem = _verify(path)
    assert first_bad is None
    assert problem == "the head is altered: its signature does not verify"


def test_a_truncation_to_an_older_signed_head_is_caught_by_an_anchor(tmp_path: Path) -> None:
    where = tmp_path / "audit.sqlite3"
    with AuditLog(where, KEY) as audit:
        for n in range(5):
            audit.append("accepted", {"n": n})
        db = sqlite3.connect(where)
        old_head = db.execute("SELECT seq, hash, key_id, signature FROM journal_head").fetchone()
        db.close()
        for n in range(5, 9):
            audit.append("accepted", {"n": n})
        anchor = audit.head()
    assert anchor is not None
    _sql(
        where,
        ("DELETE FROM journal WHERE seq>5", ()),
        ("DELETE FROM journal_checkpoint WHERE seq>5", ()),
        ("UPDATE journal_head SET seq=?, hash=?, key_id=?, signature=?", tuple(old_head)),
    )
    assert _verify(where) == (None, "")  # an older state put back whole cannot be told apart
    with AuditLog(where, readonly=True) as audit:
        verdict = verify_audit(audit, _trust(), "casc", anchor=anchor)
    assert verdict.first_bad == 9
    assert "anchor" in verdict.problem


def test_a_deleted_head_is_reported(path: Path) -> None:
    _sql(path, ("DELETE FROM journal_head", ()))
    assert _verify(path) == (None, "the signed head is missing")


def test_records_of_another_network_are_refused(path: Path) -> None:
    with AuditLog(path, readonly=True) as audit:
        verdict = verify_audit(audit, _trust(), "seajust")
    assert verdict.first_bad == 1
    assert "names network casc" in verdict.problem


def test_two_writers_keep_one_chain(tmp_path: Path) -> None:
    """The node and an operator's command append from separate connections: one chain."""
    where = tmp_path / "audit.sqlite3"
    with AuditLog(where, KEY) as node, AuditLog(where, KEY) as operator:
        for n in range(20):
            (node if n % 3 else operator).append("accepted", {"n": n})
    with AuditLog(where, readonly=True) as audit:
        verdict = verify_audit(audit, _trust(), "casc")
    assert verdict.ok
    assert verdict.records == 20


def test_empty_values_are_left_out_and_a_reader_cannot_append(tmp_path: Path) -> None:
    where = tmp_path / "audit.sqlite3"
    with AuditLog(where, KEY) as audit:
        audit.append("refused", {"reason": "bad_signature", "message_id": "", "x": None})
        assert audit.records()[-1].meta == {"reason": "bad_signature"}
    with AuditLog(where) as reader, pytest.raises(AuditError):
        reader.append("accepted", {})


FLOW = Flow("00000000-0000-4000-8000-000000000001", "seajust", "facilitation_request", "UZ")
OTHER_FLOW = Flow("00000000-0000-4000-8000-000000000002", "seajust", "facilitation_request", "FR")


def _meta(flow: Flow) -> dict[str, str]:
    return {
        "message_id": flow.message_id,
        "origin": flow.origin,
        "destination": flow.destination,
        "kind": flow.kind,
    }


def test_the_trail_records_every_point_of_the_seam(tmp_path: Path) -> None:
    where = tmp_path / "audit.sqlite3"
    observers = Observers()
    with AuditLog(where, KEY) as audit:
        audit.group_commits()  # as the node does
        observers.add(AuditTrail(audit), required=True)
        observers.received("seajust", FLOW)
        observers.submitted("kh-cp-1", FLOW)
        observers.refused("bad_signature", "mlanet.inbox.from.seajust", None)
        observers.quarantined("q-1", "bad_signature", "sig", "mlanet.inbox.from.seajust", None)
        observers.forwarded("ejn", FLOW)
        observers.delivered(("uz-cp-1",), FLOW)
        observers.receipt(FLOW.message_id, "casc", 1.23456)
        observers.undeliverable(FLOW.message_id)
        observers.received("casc", OTHER_FLOW)  # no outcome by the commit
        audit.commit()
        assert [r.meta.get("message_id") for r in audit.records()][-1] == FLOW.message_id
    with AuditLog(where, readonly=True) as audit:  # closing wrote the waiting acceptance
        events = [(r.event, r.meta) for r in audit.records()]
    assert [event for event, _ in events] == [
        "accepted",
        "refused",
        "forwarded",
        "delivered",
        "receipt",
        "undeliverable",
        "accepted",
    ]
    assert events[0][1]["via"] == "submit"
    assert events[1][1] == {
        "quarantine_id": "q-1",
        "reason": "bad_signature",
        "detail": "sig",
        "via": "mlanet.inbox.from.seajust",
    }
    # accepted from seajust and forwarded: one record of the outcome, naming both peers
    assert events[2][1] == {**_meta(FLOW), "from": "seajust", "to": "ejn"}
    assert events[3][1]["to"] == ["uz-cp-1"]
    assert "from" not in events[3][1]  # its acceptance was recorded with the forward
    assert events[4][1]["waited_s"] == 1.235
    assert events[6][1] == {**_meta(OTHER_FLOW), "from": "casc"}


class _Broken(Observer):
    def forwarded(self, peer: str, flow: Flow) -> None:
        raise AuditError("disk full")


def test_a_required_observer_that_fails_stops_the_node_from_acking() -> None:
    """Its error propagates to the node (which then requeues); an ordinary one is skipped."""
    optional, required = Observers(), Observers()
    optional.add(_Broken())
    required.add(_Broken(), required=True)
    optional.forwarded("ejn", FLOW)
    with pytest.raises(AuditError):
        required.forwarded("ejn", FLOW)
    broken = _Broken()
    required.add(broken, required=True)
    required.remove(broken)


def test_group_commits_show_nothing_until_committed_and_sign_the_head_once(
    tmp_path: Path,
) -> None:
    """The node's mode: records of a batch become visible together, under one signed head;
    an operator's command appends between two batches into the same chain."""
    where = tmp_path / "audit.sqlite3"
    with AuditLog(where, KEY) as node:
        node.group_commits()
        for n in range(3):
            node.append("forwarded", {"n": n})
        with AuditLog(where, readonly=True) as reader:
            assert reader.records() == []
        node.commit()
        with AuditLog(where, KEY) as operator:
            operator.append("quarantine_listed", {"operator": "op"})
        node.append("accepted", {"n": 3})
        node.append("delivered", {"n": 4})
    with AuditLog(where, readonly=True) as audit:  # close() committed the last batch
        verdict = verify_audit(audit, _trust(), "casc")
        events = [record.event for record in audit.records()]
    assert verdict.ok, verdict.problem
    assert events == ["forwarded"] * 3 + ["quarantine_listed", "accepted", "delivered"]


def test_an_uncommitted_batch_is_lost_whole_and_the_chain_stays_valid(tmp_path: Path) -> None:
    """A node process that dies before its commit loses the batch (whose deliveries it had not
    acked, so they come again); what was committed still verifies."""
    where = tmp_path / "audit.sqlite3"
    with AuditLog(where, KEY) as audit:
        audit.append("accepted", {"n": 0})
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from broker import SigningKey\n"
        "from mlanet.nodes.state.audit import AuditLog\n"
        "key = SigningKey.from_seed('casc', 'ed25519:1', bytes(range(32)))\n"
        "node = AuditLog(Path(sys.argv[1]), key)\n"
        "node.group_commits()\n"
        "node.append('forwarded', {'n': 1})\n"
        "os._exit(9)\n"
    )
    died = subprocess.run([sys.executable, "-c", script, str(where)], check=False, timeout=60)
    assert died.returncode == 9
    with AuditLog(where, readonly=True) as audit:
        verdict = verify_audit(audit, _trust(), "casc")
    assert verdict.ok, verdict.problem
    assert verdict.records == 1
