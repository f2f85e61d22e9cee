"""The checker finds each kind of failure in a history, and only those (pure, no broker)."""

from __future__ import annotations

from tests.battery.checker import check, percentile
from tests.battery.history import History, Op

ORIGIN, SENDER, TO = "seajust", "kh-cp-1", "uz-cp-1"


def _submit(history: History, message_id: str, *, expect: str = "deliver") -> None:
    history.add(
        "submitted",
        "client:seajust",
        message_id=message_id,
        origin=ORIGIN,
        sender=SENDER,
        contact_point=TO,
        kind="facilitation_request",
        expect=expect,
    )
    history.add("accepted", "client:seajust", message_id=message_id, origin=ORIGIN)


def _deliver(history: History, message_id: str, **fields: str | None) -> None:
    values: dict[str, str | None] = {
        "origin": ORIGIN,
        "sender": SENDER,
        "contact_point": TO,
        "network": "casc",
        "kind": "facilitation_request",
        **fields,
    }
    history.add("delivered", "reader:casc", message_id=message_id, **values)


def _quarantine(history: History, message_id: str, reason: str) -> None:
    history.add(
        "quarantined",
        "collector",
        message_id=message_id,
        origin=ORIGIN,
        network="casc",
        reason=reason,
    )


def test_a_clean_history_passes_with_its_figures() -> None:
    history = History()
    for n in range(3):
        _submit(history, f"m{n}")
    for n in range(3):
        _deliver(history, f"m{n}")
    history.add("repeat", "reader:casc", message_id="m1", origin=ORIGIN, contact_point=TO)
    verdict = check("clean", history.ops)
    assert verdict.passed, verdict.table()
    assert (verdict.submitted, verdict.accepted, verdict.delivered) == (3, 3, 3)
    assert verdict.repeats == 1
    assert len(verdict.latencies) == 3
    assert "PASS" in verdict.table()


def test_an_accepted_message_never_delivered_is_lost() -> None:
    history = History()
    _submit(history, "m1")
    _submit(history, "m2")
    _deliver(history, "m1")
    verdict = check("lost", history.ops)
    assert verdict.lost == ["seajust/m2"]
    assert not verdict.passed
    assert "FAIL" in verdict.table()


def test_a_submission_never_confirmed_is_indeterminate_not_lost() -> None:
    history = History()
    history.add(
        "submitted",
        "client:seajust",
        message_id="m1",
        origin=ORIGIN,
        sender=SENDER,
        contact_point=TO,
        expect="deliver",
    )
    history.add("submit_failed", "client:seajust", message_id="m1", reason="TransportError")
    verdict = check("indeterminate", history.ops)
    assert verdict.passed
    assert (verdict.indeterminate, verdict.submit_failures) == (1, 1)


def test_a_message_archived_twice_is_duplicated() -> None:
    history = History()
    _submit(history, "m1")
    _deliver(history, "m1")
    _deliver(history, "m1", contact_point="uz-cp-1")
    verdict = check("duplicated", history.ops)
    assert verdict.duplicated == ["seajust/m1 x2"]
    assert verdict.delivered == 1


def test_forged_misdelivered_and_unrequested_deliveries_are_unexpected() -> None:
    history = History()
    _submit(history, "m1")
    _submit(history, "m2")
    _submit(history, "m3", expect="quarantine:clock_skew")
    _deliver(history, "m1", sender="th-cp-1")  # someone else's name on it
    _deliver(history, "m2", contact_point="kz-cp-1")  # the wrong contact point
    _deliver(history, "m3")  # should have been refused
    _deliver(history, "m4")  # never submitted
    _deliver(history, "n1", sender=None, kind="notice")  # a node's own notice
    verdict = check("unexpected", history.ops)
    assert len(verdict.unexpected) == 4, verdict.unexpected
    assert verdict.node_notices == 1


def test_a_valid_message_in_quarantine_is_misquarantined() -> None:
    history = History()
    _submit(history, "m1")
    _submit(history, "m2", expect="quarantine:clock_skew")
    _quarantine(history, "m1", "delivery_limit")
    _quarantine(history, "m2", "expired")
    verdict = check("misquarantined", history.ops)
    assert verdict.misquarantined == [
        "seajust/m1 (delivery_limit)",
        "seajust/m2 (expired, expected clock_skew)",
    ]
    assert not verdict.lost


def test_the_expected_refusal_is_just_and_a_copy_of_a_delivered_message_is_information() -> None:
    history = History()
    _submit(history, "m1", expect="quarantine:clock_skew")
    _quarantine(history, "m1", "clock_skew")
    _quarantine(history, "m1", "clock_skew")  # each resend refused again
    _submit(history, "m2")
    _quarantine(history, "m2", "unroutable")
    _deliver(history, "m2")
    _submit(history, "m3", expect="quarantine:clock_skew")  # refused by nobody, delivered nowhere
    verdict = check("just", history.ops)
    assert verdict.justly_quarantined == 1
    assert verdict.quarantine_copies == {"unroutable": 1}
    assert verdict.lost == ["seajust/m3 (expected in quarantine: clock_skew)"]
    assert not verdict.misquarantined


def test_a_delivered_message_whose_copy_is_refused_as_equivocation_is_misquarantined() -> None:
    """An honest origin that signs one id twice with different contents (e.g. re-signing after
    a crash) is a defect even when the first copy was delivered."""
    history = History()
    _submit(history, "m1")
    _deliver(history, "m1")
    _quarantine(history, "m1", "equivocation")
    verdict = check("equivocation", history.ops)
    assert verdict.misquarantined == ["seajust/m1 (a copy refused as equivocation)"]
    assert verdict.quarantine_copies == {"equivocation": 1}


def test_the_history_file_reads_back_to_the_same_verdict(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    history = History(tmp_path / "history.jsonl")
    _submit(history, "m1")
    _submit(history, "m2")
    _deliver(history, "m1")
    history.add("fault", "faults", reason="casc killed")
    again = History.load(tmp_path / "history.jsonl")
    assert again.ops == history.ops
    assert all(isinstance(op, Op) for op in again)
    assert check("file", again.ops).table() == check("file", history.ops).table()


def test_percentiles_are_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([], 0.5) == 0.0
    assert percentile([7.0], 0.99) == 7.0
