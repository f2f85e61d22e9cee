"""The history of a battery run: what every process of the test saw, in the order it saw it.

Each process (a client submitting for one network, a reader archiving one network's deliveries,
the collector that reads the quarantines, the fault injector) appends operations. The checker
(``checker.py``) reads them after the faults have healed and a drain period has passed.

Operation types:

- ``submitted``: a client is about to hand a submission to its node (first attempt only). It
  names the message, the origin network and contact point, the contact point that must receive
  it, and what the test expects: ``deliver`` or ``quarantine:<reason>``.
- ``accepted``: the origin's broker confirmed the submission (durably stored at the origin).
- ``submit_failed``: one attempt was not confirmed (the client retries with the same id).
- ``delivered``: a reader archived the message for a contact point (``Store.inbox_add`` said it
  was new: the same transaction is the dedupe record).
- ``repeat``: a reader took the message from the delivery queue again, and the archive already
  held it (a raw duplicate the node published; information only).
- ``quarantined``: the collector found the message in a node's quarantine, with its reason.
- ``fault``: the fault injector started or healed a fault (information for the report).

The history is also written to a JSON-lines file so a failed run can be read afterwards.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

__all__ = ["History", "Op", "OpType"]

OpType = Literal[
    "submitted", "accepted", "submit_failed", "delivered", "repeat", "quarantined", "fault"
]


@dataclass(frozen=True, slots=True)
class Op:
    type: OpType
    process: str
    at: float
    message_id: str | None = None
    origin: str | None = None  # origin network
    sender: str | None = None  # origin contact point (None: the node itself signed it)
    contact_point: str | None = None  # the receiving contact point
    network: str | None = None  # where it was delivered or quarantined
    kind: str | None = None
    expect: str | None = None  # submitted: "deliver" or "quarantine:<reason>"
    reason: str | None = None  # quarantined: reason code; submit_failed, fault: what happened


class History:
    """An append-only list of operations, mirrored to a JSON-lines file."""

    def __init__(self, path: Path | None = None) -> None:
        self.ops: list[Op] = []
        self._path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("", encoding="utf-8")

    def add(
        self, op_type: OpType, process: str, *, at: float | None = None, **fields: str | None
    ) -> Op:
        op = Op(op_type, process, time.time() if at is None else at, **fields)
        self.ops.append(op)
        if self._path is not None:
            with self._path.open("a", encoding="utf-8") as out:
                out.write(json.dumps(asdict(op), sort_keys=True) + "\n")
        return op

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def of(self, op_type: OpType) -> list[Op]:
        return [op for op in self.ops if op.type == op_type]

    @classmethod
    def load(cls, path: Path) -> History:
        history = cls()
        for line in path.read_text(encoding="utf-8").splitlines():
            history.ops.append(Op(**json.loads(line)))
        return history
