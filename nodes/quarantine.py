"""The quarantine: what it holds, and what an operator does with it (list, show, release, drop).

The quarantine is the durable quorum queue ``mlanet.quarantine`` in the node's vhost. It
receives three kinds of message:

- refused by the node, with the headers ``x-mlanet-reason``, ``x-mlanet-detail``,
  ``x-mlanet-via`` (the inbox exchange or ``mlanet.submit`` it came through) and
  ``x-mlanet-at``; the node sets a fresh UUID as the AMQP ``message_id``: that is the entry's id;
- dead-lettered by the delivery limit of ``mlanet.inbox`` or ``mlanet.submit`` (RabbitMQ's
  ``x-death`` headers, no ``x-mlanet-*``): shown as ``delivery_limit``;
- routed by an inbox exchange's alternate exchange (no binding took it): shown as
  ``unroutable``.

The last two get an id derived from their bytes and their dead-lettering record (``dl-...``,
``ur-...``): stable while the message waits, and the same for byte-identical copies (an
operation then acts on one copy at a time).

Every operation holds the *whole* queue unacked on one connection, under a broker-side lock
(:meth:`broker.transport.Transport.holding`), acks only the message it acts on and returns all
the others in their order: nothing is lost or duplicated by looking, and two operators never
see half a queue each. A release republishes the exact bytes through the exchange the message
came in by (the pipeline then sees the same sender), or into ``mlanet.submit``; the original
is acked only after the broker confirmed the copy. Every operation is appended to the audit
trail. Nothing here prints or logs a payload; :func:`payload_text` exists for ``show
--payload`` only, which writes to the operator's terminal and nowhere else.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from broker import MlanetError, Reason, RefusedMessage, TransportError, loads_strict
from broker.keys import b64u_decode
from broker.submission_signing import signed_inner
from broker.transport import INBOX, QUARANTINE, SUBMIT, Held, Incoming, Transport
from nodes.audit import AuditLog
from nodes.observe import Flow
from schemas import KINDS

__all__ = [
    "Claim",
    "Entry",
    "NotInQuarantine",
    "QuarantineAction",
    "QuarantineError",
    "claim",
    "entry_of",
    "log_context",
    "payload_text",
]

LOCK = "mlanet.quarantine.lock"
_INBOX_EXCHANGE = re.compile(r"^mlanet\.inbox\.from\.[a-z][a-z0-9-]{1,31}$")
_MESSAGE_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_NETWORK = re.compile(r"^[a-z][a-z0-9-]{1,31}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_CONTACT_POINT = re.compile(r"^[a-z]{2}-[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
_REASON = re.compile(r"^[a-z][a-z_]{1,39}$")
_MAX_CLAIM_BYTES = 16 * 1024 * 1024


# --- what a refused message claims to be (unverified, identifiers only) ----------------------
@dataclass(frozen=True, slots=True)
class Claim:
    """Identifiers a message *claims* (nothing verified): each one passed its grammar or is
    empty. Never free text, so safe for logs, headers and the audit trail."""

    message_id: str = ""
    origin: str = ""
    destination: str = ""
    kind: str = ""

    def flow(self, *, origin: str | None = None) -> Flow | None:
        """As a :class:`Flow` (``origin`` overrides the claimed one); None without an id."""
        if not self.message_id:
            return None
        return Flow(
            self.message_id, origin or self.origin or "?", self.kind or "?", self.destination or "?"
        )


def log_context(flow: Flow | None) -> dict[str, str]:
    """What every log line about a message binds, also when nothing could be read from it."""
    if flow is None:
        return {"message_id": "unknown", "origin": "unknown", "destination": "unknown"}
    return {
        "message_id": flow.message_id,
        "origin": flow.origin,
        "destination": flow.destination,
        "kind": flow.kind,
    }


def _ok(pattern: re.Pattern[str], value: object) -> str:
    return value if isinstance(value, str) and pattern.fullmatch(value) else ""


def _destination(value: object) -> str:
    if not isinstance(value, dict):
        return ""
    return (
        _ok(_CONTACT_POINT, value.get("contact_point"))
        or _ok(_COUNTRY, value.get("country"))
        or _ok(_NETWORK, value.get("network"))
    )


def claim(body: bytes, *, max_bytes: int = _MAX_CLAIM_BYTES) -> Claim:
    """The identifiers an envelope's header (origin network) or a local submission (sending
    contact point) claims; empty fields for whatever does not parse or fit its grammar."""
    try:
        frame = loads_strict(body, max_bytes=max_bytes)
        if not isinstance(frame, dict):
            return Claim()
        if (inner := signed_inner(frame)) is not None:  # signed by a contact point
            return claim(inner, max_bytes=max_bytes)
        if not isinstance(frame.get("header"), str):  # a submission from a contact point
            fields, origin = frame, _ok(_CONTACT_POINT, frame.get("sender"))
        else:  # a signed envelope: the header's fields
            if len(frame["header"]) > 64 * 1024:
                return Claim()
            header = loads_strict(b64u_decode(frame["header"]), max_bytes=48 * 1024, max_depth=4)
            if not isinstance(header, dict):
                return Claim()
            fields, origin = header, ""
            if isinstance(header.get("origin"), dict):
                origin = _ok(_NETWORK, header["origin"].get("network"))
    except RefusedMessage:
        return Claim()
    kind = fields.get("kind")
    return Claim(
        _ok(_MESSAGE_ID, fields.get("message_id")),
        origin,
        _destination(fields.get("destination")),
        kind if isinstance(kind, str) and kind in KINDS else "",
    )


def payload_text(body: bytes) -> str:
    """The case content of a quarantined message, for ``show --payload`` only (never logged)."""
    try:
        frame = loads_strict(body, max_bytes=_MAX_CLAIM_BYTES)
    except RefusedMessage:
        return body.decode("utf-8", errors="backslashreplace")
    if (inner := signed_inner(frame)) is not None:  # signed by a contact point
        return payload_text(inner)
    if isinstance(frame, dict) and isinstance(frame.get("payload"), str):
        try:
            raw = b64u_decode(frame["payload"])
        except RefusedMessage:
            return str(frame["payload"])
        return raw.decode("utf-8", errors="backslashreplace")
    if isinstance(frame, dict) and "payload" in frame:
        return json.dumps(frame["payload"], ensure_ascii=False, indent=2)
    return body.decode("utf-8", errors="backslashreplace")


# --- one quarantined message ------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """Metadata of one quarantined message (no payload)."""

    id: str
    reason: str
    detail: str
    via: str
    at: str
    size: int
    body_sha256: str
    returns: int
    claim: Claim
    body: bytes = field(repr=False)
    # An oversized body is kept only in part (the node's cap): its full size, else None.
    truncated_from: int | None = None

    def metadata(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "reason": self.reason,
            "detail": self.detail,
            "via": self.via,
            "at": self.at,
            "size": self.size,
            "body_sha256": self.body_sha256,
            "returns": self.returns,
            "truncated_from": self.truncated_from,
            "claimed": {
                "message_id": self.claim.message_id,
                "origin": self.claim.origin,
                "destination": self.claim.destination,
                "kind": self.claim.kind,
            },
        }


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, datetime):
        return value.isoformat()
    return value if isinstance(value, str) else ""


def _derived(prefix: str, *parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        raw = part.encode("utf-8") if isinstance(part, str) else part
        digest.update(len(raw).to_bytes(8, "big") + raw)
    return f"{prefix}-{digest.hexdigest()[:24]}"


def entry_of(
    body: bytes, exchange: str, message_id: str | None, headers: Mapping[str, Any]
) -> Entry:
    """Interpret one quarantined message's AMQP metadata (see the module docstring)."""
    returns = headers.get("x-delivery-count", 0)
    size = _text(headers.get("x-mlanet-size"))
    truncated = _text(headers.get("x-mlanet-truncated")) == "true" and size.isdigit()

    def entry(entry_id: str, reason: str, detail: str, via: str, at: str) -> Entry:
        return Entry(
            id=entry_id,
            reason=reason,
            detail=detail,
            via=via,
            at=at,
            size=len(body),
            body_sha256=hashlib.sha256(body).hexdigest(),
            returns=returns if isinstance(returns, int) else 0,
            claim=claim(body),
            body=body,
            truncated_from=int(size) if truncated else None,
        )

    reason = _text(headers.get("x-mlanet-reason"))
    if reason:
        via, at = _text(headers.get("x-mlanet-via")), _text(headers.get("x-mlanet-at"))
        if not (message_id and _MESSAGE_ID.fullmatch(message_id)):
            message_id = _derived("nq", body, via, at)
        return entry(
            message_id,
            reason if _REASON.fullmatch(reason) else "unknown",
            _text(headers.get("x-mlanet-detail"))[:500],
            via,
            at,
        )
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        last = deaths[0]  # RabbitMQ puts the latest dead-lettering first
        queue, why = _text(last.get("queue")), _text(last.get("reason")) or "dead_lettered"
        # through the default exchange (a submission), the queue itself is the way in
        via = _text(last.get("exchange")) or queue
        count, at = last.get("count", 1), _text(last.get("time"))
        return entry(
            _derived("dl", body, via, queue, why, at, str(count)),
            Reason.DELIVERY_LIMIT.value,
            f"dead-lettered from {queue} ({why}, {count} time(s))",
            via,
            at,
        )
    return entry(
        _derived("ur", body, exchange, message_id or ""),
        Reason.UNROUTABLE.value,
        f"no queue took it from {exchange or 'the default exchange'}",
        exchange,
        "",
    )


def _entry(incoming: Incoming) -> Entry:
    return entry_of(incoming.body, incoming.exchange, incoming.message_id, incoming.headers)


# --- operations -----------------------------------------------------------------------------
class QuarantineError(MlanetError):
    """An operation on the quarantine cannot be done as asked."""


class NotInQuarantine(QuarantineError):
    """No quarantined message has that id."""

    def __init__(self, entry_id: str) -> None:
        super().__init__(f"no quarantined message has the id {entry_id}")


@dataclass
class QuarantineAction:
    """An operator's session with the quarantine of one node: every call is audited."""

    transport: Transport
    audit: AuditLog
    operator: str = field(default_factory=getpass.getuser)

    def _note(self, event: str, entry: Entry | None = None, **meta: str | int | bool) -> None:
        base: dict[str, str | int | bool] = {"operator": self.operator}
        if entry is not None:
            base |= {
                "quarantine_id": entry.id,
                "reason": entry.reason,
                "via": entry.via,
                "body_sha256": entry.body_sha256,
                "message_id": entry.claim.message_id,
                "origin": entry.claim.origin,
                "destination": entry.claim.destination,
                "kind": entry.claim.kind,
            }
        self.audit.append(event, base | meta)

    def _history(self, entry_id: str) -> list[str]:
        return [record.event for record in self.audit.about_quarantine(entry_id)]

    async def entries(self) -> list[Entry]:
        """Every quarantined message, oldest first (metadata only)."""
        async with self.transport.holding(QUARANTINE, lock=LOCK) as held:
            entries = [_entry(incoming) for incoming in held.messages]
        self._note("quarantine_listed", count=len(entries))
        return sorted(entries, key=lambda entry: (entry.at, entry.id))

    async def show(self, entry_id: str, *, payload: bool = False) -> tuple[Entry, list[str]]:
        """One entry and what the audit trail recorded about it; ``payload`` is audited."""
        async with self.transport.holding(QUARANTINE, lock=LOCK) as held:
            found = _find(held, entry_id)
            entry = _entry(found)
        self._note("quarantine_shown", entry, payload=payload)
        return entry, self._history(entry_id)

    async def release(self, entry_id: str) -> Entry:
        """Republish through the way it came in, then remove it from the quarantine."""
        async with self.transport.holding(QUARANTINE, lock=LOCK) as held:
            found = _find(held, entry_id)
            entry = _entry(found)
            if "quarantine_released" in self._history(entry_id):
                # An earlier release was confirmed but its removal was not: only remove it.
                self._note("quarantine_leftover_removed", entry)
                await held.take(found)
                return entry
            exchange, queue = _way_in(entry)
            self._note("quarantine_release", entry, to=exchange or queue)
            try:
                await self.transport.publish(
                    queue,
                    entry.body,
                    message_id=entry.claim.message_id or entry.id,
                    kind=entry.claim.kind or "released",
                    headers={"x-mlanet-released-from": entry.id},
                    exchange=exchange,
                )
            except TransportError as exc:
                self._note("quarantine_release_failed", entry, error=str(exc))
                raise
            self._note("quarantine_released", entry, to=exchange or queue)
            await held.take(found)
        return entry

    async def drop(self, entry_id: str) -> Entry:
        """Remove the message for good (its metadata and hash stay in the audit trail)."""
        async with self.transport.holding(QUARANTINE, lock=LOCK) as held:
            found = _find(held, entry_id)
            entry = _entry(found)
            self._note("quarantine_dropped", entry)
            await held.take(found)
        return entry


def _find(held: Held, entry_id: str) -> Incoming:
    for incoming in held.messages:
        if _entry(incoming).id == entry_id:
            return incoming
    raise NotInQuarantine(entry_id)


def _way_in(entry: Entry) -> tuple[str | None, str]:
    """(exchange, queue) to republish through: the peer's inbox exchange, or the submit queue."""
    if entry.truncated_from is not None:
        raise QuarantineError(
            f"{entry.id} was kept only in part ({entry.size} of {entry.truncated_from} bytes,"
            " over the size cap), so it cannot be released; drop it instead"
        )
    if _INBOX_EXCHANGE.fullmatch(entry.via):
        return entry.via, INBOX
    if entry.via == SUBMIT:
        return None, SUBMIT
    raise QuarantineError(
        f"{entry.id} did not come through a peer's inbox exchange or {SUBMIT}, so it cannot be"
        " released with its sender; drop it instead"
    )
