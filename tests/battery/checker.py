"""The checker: reads a run's history after the faults healed and the drain period passed, and
says whether anything was lost, duplicated, forged or wrongly refused. In the manner of Jepsen's
total-queue checker, but for a store-and-forward federation with a quarantine.

Definitions (a message is known by its origin network and message id):

- **lost**: accepted at the origin, meant to be delivered, and neither delivered nor
  quarantined anywhere; also a message meant to be quarantined that is in no quarantine and was
  not delivered either.
- **duplicated**: archived as new for a contact point more than once (the archive is the dedupe
  record, so this counts a broken dedupe, or a message reaching two contact points or networks).
- **unexpected**: delivered although no authorised sender submitted it: an unknown id, an id
  submitted by another origin or contact point, a message delivered to a contact point other
  than its destination, or one the test expected to be refused. A notice a node signed itself
  about a submitted message is not unexpected (it is counted as ``node_notices``).
- **misquarantined**: a message meant to be delivered that sits in a quarantine and was never
  delivered, or one quarantined for another reason than the one expected, or a copy of a
  delivered message refused as ``equivocation`` (the test's origins are honest: a second,
  different signature under one id is the node's defect, and its receipt cannot match).

Information only: ``indeterminate`` (submitted, never confirmed: it may or may not arrive),
``repeats`` (raw duplicates taken from ``mlanet.deliver.<cp>`` that the archive absorbed),
``quarantine_copies`` (quarantined copies of messages that were also delivered, e.g. a resend
that met a missing binding), ``justly_quarantined``, delivery latency (first submission attempt
to the archive) and throughput.

A run passes only when lost, duplicated, unexpected and misquarantined are all zero.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from tests.battery.history import Op

__all__ = ["Verdict", "check", "percentile"]

Key = tuple[str, str]  # (origin network, message id)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


@dataclass
class Verdict:
    scenario: str
    submitted: int = 0
    accepted: int = 0
    indeterminate: int = 0
    delivered: int = 0
    justly_quarantined: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    misquarantined: list[str] = field(default_factory=list)
    repeats: int = 0
    quarantine_copies: Counter[str] = field(default_factory=Counter)  # reason -> copies
    node_notices: int = 0
    submit_failures: int = 0
    latencies: list[float] = field(default_factory=list)
    window: float = 0.0  # first submission to last delivery, seconds
    faults: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the run observed besides the history
    unreceipted: int = 0  # submitted messages whose origin holds no receipt (set by the run)

    @property
    def passed(self) -> bool:
        return not (self.lost or self.duplicated or self.unexpected or self.misquarantined)

    @property
    def throughput(self) -> float:
        return self.delivered / self.window if self.window > 0 else 0.0

    def table(self) -> str:
        """The summary a human reads: the four verdict counts first, then the information."""
        p50, p99 = percentile(self.latencies, 0.50), percentile(self.latencies, 0.99)
        top = max(self.latencies, default=0.0)
        lines = [
            f"scenario: {self.scenario}  ->  {'PASS' if self.passed else 'FAIL'}",
            f"  lost {len(self.lost)}   duplicated {len(self.duplicated)}   unexpected "
            f"{len(self.unexpected)}   misquarantined {len(self.misquarantined)}",
            f"  submitted {self.submitted}   accepted {self.accepted}   indeterminate "
            f"{self.indeterminate}   delivered {self.delivered}   justly quarantined "
            f"{self.justly_quarantined}",
            f"  raw repeats in delivery queues {self.repeats}   quarantined copies of delivered "
            f"{_counts(self.quarantine_copies)}   node notices {self.node_notices}   submit "
            f"attempts failed {self.submit_failures}",
            f"  latency p50 {p50 * 1000:.0f} ms   p99 {p99 * 1000:.0f} ms   max {top * 1000:.0f} ms"
            f"   throughput {self.throughput:.1f} msg/s over {self.window:.1f} s",
        ]
        if self.faults:
            lines.append("  faults: " + "; ".join(self.faults))
        lines.extend(f"  {note}" for note in self.notes)
        for name in ("lost", "duplicated", "unexpected", "misquarantined"):
            found: list[str] = getattr(self, name)
            if found:
                shown = ", ".join(found[:5]) + (" ..." if len(found) > 5 else "")
                lines.append(f"  {name}: {shown}")
        return "\n".join(lines)


def _counts(counter: Counter[str]) -> str:
    if not counter:
        return "0"
    return ", ".join(f"{n} {reason}" for reason, n in sorted(counter.items()))


@dataclass
class _Submission:
    op: Op
    accepted: bool = False


def check(scenario: str, ops: list[Op]) -> Verdict:
    """Judge a history. Pure: the same operations always give the same verdict."""
    verdict = Verdict(scenario)
    submissions: dict[Key, _Submission] = {}
    by_id: dict[str, Key] = {}
    delivered: dict[Key, list[Op]] = defaultdict(list)
    quarantined: dict[Key, list[Op]] = defaultdict(list)
    unknown_quarantined = 0
    first_submit = min((op.at for op in ops if op.type == "submitted"), default=0.0)

    for op in ops:
        if op.type == "submitted" and op.message_id and op.origin:
            key = (op.origin, op.message_id)
            if key not in submissions:
                submissions[key] = _Submission(op)
                by_id[op.message_id] = key
    for op in ops:
        if op.type == "accepted" and op.message_id in by_id:
            submissions[by_id[op.message_id]].accepted = True
        elif op.type == "submit_failed":
            verdict.submit_failures += 1
        elif op.type == "delivered" and op.message_id and op.origin:
            delivered[(op.origin, op.message_id)].append(op)
        elif op.type == "repeat":
            verdict.repeats += 1
        elif op.type == "quarantined":
            if op.message_id is not None and op.origin is not None:
                quarantined[(op.origin, op.message_id)].append(op)
            else:
                unknown_quarantined += 1
        elif op.type == "fault" and op.reason:
            verdict.faults.append(f"{op.at - first_submit:+.1f}s {op.reason}")

    verdict.submitted = len(submissions)
    verdict.accepted = sum(1 for s in submissions.values() if s.accepted)
    verdict.indeterminate = verdict.submitted - verdict.accepted

    # deliveries: duplicated, unexpected, latency
    for key, arrivals in delivered.items():
        first = min(arrivals, key=lambda op: op.at)
        name = f"{key[0]}/{key[1]}"
        if len(arrivals) > 1:
            verdict.duplicated.append(f"{name} x{len(arrivals)}")
        submission = submissions.get(key)
        if submission is None:
            if first.kind == "notice" and first.sender is None:
                verdict.node_notices += 1
                continue
            verdict.unexpected.append(f"{name} (never submitted)")
            continue
        sent = submission.op
        verdict.delivered += 1
        if first.sender != sent.sender:
            verdict.unexpected.append(f"{name} (signed for {first.sender}, sent by {sent.sender})")
        elif first.contact_point != sent.contact_point:
            verdict.unexpected.append(f"{name} (delivered to {first.contact_point})")
        elif sent.expect != "deliver":
            verdict.unexpected.append(f"{name} (expected {sent.expect}, delivered)")
        verdict.latencies.append(first.at - sent.at)
        verdict.window = max(verdict.window, first.at - first_submit)

    # what became of each submission that was not delivered
    for key, submission in submissions.items():
        sent, name = submission.op, f"{key[0]}/{key[1]}"
        refused = quarantined.get(key, [])
        reasons = sorted({op.reason or "?" for op in refused})
        if key in delivered:
            if refused and sent.expect == "deliver":
                verdict.quarantine_copies.update(op.reason or "?" for op in refused)
                if "equivocation" in reasons:  # its honest origin signed it twice, differently
                    verdict.misquarantined.append(f"{name} (a copy refused as equivocation)")
            continue
        if sent.expect == "deliver":
            if refused:
                verdict.misquarantined.append(f"{name} ({', '.join(reasons)})")
            elif submission.accepted:
                verdict.lost.append(name)
            continue
        wanted = (sent.expect or "").removeprefix("quarantine:")
        if refused and reasons == [wanted]:
            verdict.justly_quarantined += 1
        elif refused:
            verdict.misquarantined.append(f"{name} ({', '.join(reasons)}, expected {wanted})")
        elif submission.accepted:
            verdict.lost.append(f"{name} (expected in quarantine: {wanted})")
    if unknown_quarantined:
        verdict.faults.append(f"{unknown_quarantined} quarantined bodies without a message id")
    return verdict
