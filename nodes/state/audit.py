"""The node's audit trail: the journal (``nodes/state/journal.py``) read as a signed, hash-chained
log, and the observer that records the node's message facts in it.

The trail is the ``journal`` table of the node's state database, ``node.sqlite3`` (WAL,
``synchronous=NORMAL``: a committed row survives the death of the process; owner-only like
the rest of the state, ``nodes/state/state_dir.py``). The node writes it in its group commits, in
the same transaction as its dedupe and outbox rows, before any delivery they are about is
acked. The ``mlanet quarantine`` commands append operator actions from another process, one
committed row at a time (``BEGIN IMMEDIATE`` serialises the writers; each holds the lock only
while it writes).

:func:`verify_audit` walks the chain and names the first row that was altered, removed or
reordered (also a row whose indexed columns say other than its record); :class:`AuditTrail`
is the observer (``nodes/runtime/observe.py``) that writes the node's rows. Trails written by the
release before the journal (``audit.sqlite3``, every record signed on its own at first) are
taken over verbatim when the node upgrades its state (``nodes/state/schema.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from mlanet.broker import RefusedMessage, SigningKey, TrustStore, canonical_bytes
from mlanet.broker.errors import Reason
from mlanet.broker.keys import b64u_decode
from mlanet.broker.strictjson import loads_strict
from mlanet.nodes.config import DatabaseConfig, NodeConfig
from mlanet.nodes.runtime.observe import Flow, Observer
from mlanet.nodes.state.journal import (
    GENESIS,
    HEAD_CONTEXT,
    JOURNAL_FILE,
    MAX_RECORD_BYTES,
    Journal,
    JournalError,
    JournalRecord,
    MetaValue,
    columns_of,
    digest_of,
    head_input,
)
from mlanet.nodes.state.schema import open_postgres, open_state

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

AUDIT_FILE = JOURNAL_FILE  # the trail is the journal of the node's state database
AUDIT_CONTEXT = b"mlanet-v1:audit:"  # records signed one by one (trails of early releases)
AuditError = JournalError
AuditRecord = JournalRecord


class AuditLog(Journal):
    """The journal opened on a connection of its own (operator commands, the dashboard's
    readers, tests). ``key`` is needed to append (and to upgrade an earlier version's state),
    not to read."""

    def __init__(
        self,
        path: Path,
        key: SigningKey | None = None,
        *,
        readonly: bool = False,
        database: DatabaseConfig | None = None,
    ):
        """``database``: the network's PostgreSQL schema instead of ``path``."""
        self.path = path
        self._readonly = readonly
        db = (
            open_state(path, readonly=readonly, key=key, busy_ms=10000)
            if database is None
            else open_postgres(database, purpose="journal reader", readonly=readonly)
        )
        super().__init__(db, key, emit=False)  # a command prints what it did

    @classmethod
    def of(
        cls, config: NodeConfig, key: SigningKey | None = None, *, readonly: bool = False
    ) -> AuditLog:
        """The journal of the node ``config`` describes, wherever its state is."""
        return cls(config.state_dir / AUDIT_FILE, key, readonly=readonly, database=config.database)

    @staticmethod
    def exists(config: NodeConfig) -> bool:
        return config.database is not None or (config.state_dir / AUDIT_FILE).exists()

    def close(self) -> None:
        try:
            if not self._readonly and self.writable:
                self.commit(everything=True)
        finally:
            self._db.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    if digest_of(raw) != digest:
        return None, "altered: its content does not match its hash"
    try:
        body = loads_strict(raw, max_bytes=MAX_RECORD_BYTES, max_depth=4)
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


def _indexed_as_recorded(body: dict[str, Any], columns: list[Any]) -> bool:
    """Do the indexed columns (what the views read) say what the signed record says?"""
    meta = body["meta"]
    return isinstance(meta, dict) and columns_of(meta) == tuple(
        None if value is None else str(value) for value in columns
    )


def _signed_by(
    trust: TrustStore, network: str, key_id: object, signature: object, seq: int, digest: str
) -> bool:
    try:
        trust.verify(
            network,
            str(key_id),
            b64u_decode(str(signature)),
            head_input(network, seq, digest),
            reason=Reason.BAD_SIGNATURE,
        )
    except RefusedMessage:
        return False
    return True


def _claimed_seq(record: object) -> int | None:
    try:
        seq = loads_strict(str(record).encode("utf-8"), max_bytes=MAX_RECORD_BYTES)["seq"]
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
    misindexed: int | None = None

    def bad(seq: int, problem: str) -> Verdict:
        return Verdict(len(hashes), head, seq, f"record {seq} {problem}")

    for row_seq, record, digest, signature, *columns in rows:
        body, problem = _check_record(str(record), str(digest), str(signature), trust, network)
        if body is None:
            return bad(min(int(row_seq), expected), problem)
        if not _indexed_as_recorded(body, columns) and misindexed is None:
            misindexed = expected  # named once the chain itself is known to be whole
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
    if misindexed is not None:
        return bad(misindexed, "altered: its indexed columns do not say what its record says")
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
    """Records a journal row for every accept, refusal, forward, delivery and receipt.

    A message accepted from a peer and then forwarded, delivered, refused or found a
    duplicate gets one row, of its outcome, naming the peer it came from (``from``); one whose
    outcome is not known by the next commit (or that has none: a receipt) gets an ``accepted``
    row of its own then (``Journal.accepted``).

    Registered as a *required* observer: a row that cannot be written raises, so the node
    does not ack the delivery it is about (it is redelivered and the row written then).
    """

    def __init__(self, audit: Journal) -> None:
        self.audit = audit

    def _outcome(self, flow: Flow | None) -> dict[str, MetaValue]:
        return flow_meta(flow)

    def received(self, sender: str, flow: Flow) -> None:
        self.audit.accepted({**flow_meta(flow), "from": sender})

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
