"""The quarantine: what an entry is, and what an operator does with it (list, show, release,
drop).

Every message the node will not accept becomes an *entry*: its metadata (reason code, detail,
way in, time, size, SHA-256, the identifiers it claims) and, within its peer's bound, its body.
Entries live in the node's quarantine store (``nodes/state/quarantine_store.py``), an indexed SQLite
table in its state folder, so that every command is a query and stays quick with a hundred
thousand entries. They come from:

- the node's own refusals (``Node.quarantine``): of a message it could open (its origin
  signature verified), under an id derived from its origin, message id, content hash and reason
  (:func:`refusal_id`, ``rf-...``), so that every copy of it (an origin resends until it hears)
  counts as one more copy of one entry; of anything else, under a fresh UUID;
- what RabbitMQ puts into the queue ``mlanet.quarantine``, which the node takes into the store:
  messages dead-lettered by the delivery limit of an inbox or ``mlanet.submit`` (RabbitMQ's
  ``x-death`` headers): ``delivery_limit``, id ``dl-...``; messages an inbox exchange's
  alternate exchange caught (no binding took them): ``unroutable``, id ``ur-...``; and
  refusals published with ``x-mlanet-*`` headers (a contact point's reader refusing a
  delivery), under the AMQP ``message_id`` they carry. Derived ids come from the bytes and the
  dead-lettering record, so a redelivery to the node is recognised; a byte-identical copy
  counts as one more copy of the entry (``copies``).

A peer's entries keep their bodies up to its bound (``[limits.peer] quarantine_messages`` and
``quarantine_bytes``); beyond it an entry keeps its metadata only (``body_kept`` false): nothing
is silently lost, and one peer's flood cannot fill the node's disk.

An operator's command first *takes* the entry it acts on (a short claim in the store): a second
command on the same entry is told to try again, and no two releases send two copies. A release
republishes the exact bytes through the exchange the message came in by (the pipeline then
sees the same sender) or into ``mlanet.submit``; the entry is removed only after the broker
confirmed the copy. Every command is appended to the audit trail, list and show included.
Nothing here prints or logs a payload; :func:`payload_text` exists for ``show --payload`` only,
which writes to the operator's terminal (through :func:`mlanet.nodes.cli.terminal.visible`)
and nowhere
else.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from mlanet.broker import MlanetError, Reason, RefusedMessage, TransportError, loads_strict
from mlanet.broker.keys import b64u_decode
from mlanet.broker.quarantine_headers import RELEASED_FROM, read_quarantine_headers
from mlanet.broker.quarantine_headers import header_text as _text
from mlanet.broker.submission_signing import signed_inner
from mlanet.broker.topology import peer_of_inbox_exchange
from mlanet.broker.transport import INBOX, SUBMIT
from mlanet.nodes.runtime.observe import Flow
from mlanet.nodes.state.audit import AuditLog
from mlanet.schemas import KINDS, Header
from mlanet.schemas.base import (
    CONTACT_POINT_ID,
    COUNTRY_CODE,
    MESSAGE_ID,
    NETWORK_ID,
    format_timestamp,
)

__all__ = [
    "Claim",
    "Entries",
    "Entry",
    "NotInQuarantine",
    "Page",
    "Publisher",
    "QuarantineAction",
    "QuarantineBusy",
    "QuarantineError",
    "Where",
    "claim",
    "entry_of",
    "log_context",
    "payload_text",
    "peer_of",
    "refusal_id",
]

_MESSAGE_ID = MESSAGE_ID
_NETWORK = NETWORK_ID
_COUNTRY = COUNTRY_CODE
_CONTACT_POINT = CONTACT_POINT_ID
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
    """The case content of a quarantined message, for ``show --payload`` only (never logged).
    Print it through :func:`mlanet.nodes.cli.terminal.visible`: the sender chose every character."""
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


def peer_of(via: str) -> str:
    """The peer network a message came from (its inbox exchange), or ``""`` for a local way
    in (``mlanet.submit``, a delivery queue, anything else)."""
    return peer_of_inbox_exchange(via) or ""


# --- one quarantined message ------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One quarantined message: its metadata, and its body when it was kept and loaded."""

    id: str
    reason: str
    detail: str
    via: str
    at: float  # when it was refused (seconds since the epoch)
    size: int  # bytes of the body as kept: an oversized one only in part
    body_sha256: str  # of those bytes (hex)
    returns: int
    claim: Claim
    body: bytes | None = field(default=None, repr=False)  # None: not kept, or not loaded
    # An oversized body is kept only in part (the node's cap): its full size and SHA-256.
    truncated_from: int | None = None
    full_sha256: str | None = None
    body_kept: bool = True  # False: only this metadata is kept (over its peer's bound, or purged)
    copies: int = 1  # copies of this one message that were refused under this id

    @property
    def peer(self) -> str:
        return peer_of(self.via)

    def metadata(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "reason": self.reason,
            "detail": self.detail,
            "via": self.via,
            "peer": self.peer,
            "at": _iso(self.at),
            "size": self.size,
            "body_sha256": self.body_sha256,
            "body_kept": self.body_kept,
            "copies": self.copies,
            "returns": self.returns,
            "truncated_from": self.truncated_from,
            "claimed": {
                "message_id": self.claim.message_id,
                "origin": self.claim.origin,
                "destination": self.claim.destination,
                "kind": self.claim.kind,
            },
        }


def _iso(at: float) -> str:
    return format_timestamp(datetime.fromtimestamp(at, UTC))


def _when(value: object, default: float) -> float:
    """A header's time (an AMQP timestamp or ISO 8601 text) in epoch seconds, else ``default``."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    text = _text(value)
    if not text:
        return default
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return default
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _derived(prefix: str, *parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        raw = part.encode("utf-8") if isinstance(part, str) else part
        digest.update(len(raw).to_bytes(8, "big") + raw)
    return f"{prefix}-{digest.hexdigest()[:24]}"


def refusal_id(header: Header, content_sha256: str, reason: str) -> str:
    """The entry id of the node's own refusal of an opened message: every copy of one message
    (origin, message id, content) refused for one reason is one entry, ``rf-...``, whatever
    hop records each copy carries."""
    return _derived("rf", header.origin.network, header.message_id, content_sha256, reason)


def entry_of(
    body: bytes,
    exchange: str,
    message_id: str | None,
    headers: Mapping[str, Any],
    *,
    now: float | None = None,
) -> Entry:
    """Interpret a message found in ``mlanet.quarantine`` by its AMQP metadata (see the module
    docstring). ``now`` is its time when its headers name none (an unroutable message)."""
    received = time.time() if now is None else now
    returns = headers.get("x-delivery-count", 0)
    told = read_quarantine_headers(headers)

    def entry(entry_id: str, reason: str, detail: str, via: str, at: float) -> Entry:
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
            truncated_from=told.whole_size,
            full_sha256=told.whole_sha256,
        )

    if told.reason:
        if not (message_id and _MESSAGE_ID.fullmatch(message_id)):
            message_id = _derived("nq", body, told.via, told.at)
        return entry(message_id, told.reason, told.detail, told.via, _when(told.at, received))
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
            _when(last.get("time"), received),
        )
    return entry(
        _derived("ur", body, exchange, message_id or ""),
        Reason.UNROUTABLE.value,
        f"no queue took it from {exchange or 'the default exchange'}",
        exchange,
        received,
    )


# --- finding entries -------------------------------------------------------------------------
@dataclass(frozen=True)
class Where:
    """Which entries: every field narrows (an empty one does not)."""

    reasons: tuple[str, ...] = ()
    peer: str | None = None  # a peer network, "" for the local ways in, None for any
    since: float | None = None  # refused at or after (epoch seconds)
    until: float | None = None  # refused before

    def describe(self) -> dict[str, str | list[str]]:
        """For the audit trail: the filter as metadata."""
        found: dict[str, str | list[str]] = {}
        if self.reasons:
            found["reasons"] = list(self.reasons)
        if self.peer is not None:
            found["peer"] = self.peer or "local"
        if self.since is not None:
            found["since"] = _iso(self.since)
        if self.until is not None:
            found["until"] = _iso(self.until)
        return found


@dataclass(frozen=True)
class Page:
    """One page of entries, oldest first (metadata only, no body loaded)."""

    entries: tuple[Entry, ...]
    total: int  # entries that match, on every page
    more: bool  # another page follows the last entry of this one


class Entries(Protocol):
    """The quarantine store as the operator's commands use it (``nodes/state/quarantine_store.py``).

    ``take`` claims an entry for one command (``token``); another command's claim younger than
    the store's staleness limit makes it raise :class:`QuarantineBusy`, a missing entry
    :class:`NotInQuarantine`. ``remove`` and ``let_go`` act only on what ``token`` holds."""

    def page(self, where: Where, *, after: str | None, limit: int) -> Page: ...

    def get(self, entry_id: str) -> Entry | None: ...

    def take(self, entry_id: str, token: str, now: float) -> Entry: ...

    def take_matching(self, where: Where, token: str, now: float, limit: int) -> list[Entry]: ...

    def remove(self, token: str) -> int: ...

    def let_go(self, token: str) -> None: ...


class Publisher(Protocol):
    """What a release needs of the broker (``mlanet.broker.transport.Transport``)."""

    async def publish(
        self,
        queue: str,
        body: bytes,
        *,
        message_id: str,
        kind: str,
        headers: Mapping[str, str] | None = None,
        exchange: str | None = None,
    ) -> None: ...


# --- operations -----------------------------------------------------------------------------
class QuarantineError(MlanetError):
    """An operation on the quarantine cannot be done as asked."""


class NotInQuarantine(QuarantineError):
    """No quarantined message has that id."""

    def __init__(self, entry_id: str) -> None:
        super().__init__(f"no quarantined message has the id {entry_id}")


class QuarantineBusy(QuarantineError):
    """Another command is working on that entry right now."""

    def __init__(self, entry_id: str) -> None:
        super().__init__(f"{entry_id} is being worked on elsewhere; try again")


BULK = 2000  # entries one bulk drop takes, records in the audit trail and removes at a time


@dataclass
class QuarantineAction:
    """An operator's session with the quarantine of one node: every call is audited."""

    entries: Entries
    audit: AuditLog
    publisher: Publisher | None = None  # the node's broker, for release only
    operator: str = field(default_factory=getpass.getuser)
    clock: Callable[[], float] = time.time

    def _meta(self, entry: Entry) -> dict[str, str | int | bool]:
        return {
            "operator": self.operator,
            "quarantine_id": entry.id,
            "reason": entry.reason,
            "via": entry.via,
            "body_sha256": entry.body_sha256,
            "message_id": entry.claim.message_id,
            "origin": entry.claim.origin,
            "destination": entry.claim.destination,
            "kind": entry.claim.kind,
        }

    def _note(self, event: str, entry: Entry | None = None, /, **meta: Any) -> None:
        """Append one record and commit it before going on."""
        base: dict[str, Any] = {"operator": self.operator}
        if entry is not None:
            base = self._meta(entry)
        self.audit.append(event, base | meta)
        self.audit.commit()

    def _history(self, entry_id: str) -> list[str]:
        return [record.event for record in self.audit.about_quarantine(entry_id)]

    async def entries_page(
        self, where: Where | None = None, *, after: str | None = None, limit: int = 1000
    ) -> Page:
        """One page of entries, oldest first (metadata only); ``after``: the last id of the
        previous page."""
        where = where or Where()
        page = self.entries.page(where, after=after, limit=limit)  # NotInQuarantine: no after
        self._note(
            "quarantine_listed", count=len(page.entries), matching=page.total, **where.describe()
        )
        return page

    async def show(self, entry_id: str, *, payload: bool = False) -> tuple[Entry, list[str]]:
        """One entry (with its body, if kept) and what the audit trail recorded about it;
        ``payload`` is audited."""
        entry = self.entries.get(entry_id)
        if entry is None:
            raise NotInQuarantine(entry_id)
        self._note("quarantine_shown", entry, payload=payload)
        return entry, self._history(entry_id)

    async def release(self, entry_id: str) -> Entry:
        """Republish through the way it came in, then remove it from the quarantine."""
        token = uuid.uuid4().hex
        entry = self.entries.take(entry_id, token, self.clock())
        removed = False
        try:
            if "quarantine_released" in self._history(entry_id):
                # An earlier release was confirmed but its removal was not: only remove it.
                self._note("quarantine_leftover_removed", entry)
                removed = self.entries.remove(token) > 0
                return entry
            exchange, queue = _way_in(entry)
            if self.publisher is None or entry.body is None:
                raise QuarantineError("release needs the broker and the kept body")
            self._note("quarantine_release", entry, to=exchange or queue)
            try:
                await self.publisher.publish(
                    queue,
                    entry.body,
                    message_id=entry.claim.message_id or entry.id,
                    kind=entry.claim.kind or "released",
                    headers={RELEASED_FROM: entry.id},
                    exchange=exchange,
                )
            except TransportError as exc:
                self._note("quarantine_release_failed", entry, error=str(exc))
                raise
            self._note("quarantine_released", entry, to=exchange or queue)
            removed = self.entries.remove(token) > 0
            return entry
        finally:
            if not removed:
                self.entries.let_go(token)

    async def drop(self, entry_id: str) -> Entry:
        """Remove the message for good (its metadata and hash stay in the audit trail)."""
        token = uuid.uuid4().hex
        entry = self.entries.take(entry_id, token, self.clock())
        removed = False
        try:
            self._note("quarantine_dropped", entry)
            removed = self.entries.remove(token) > 0
        finally:
            if not removed:
                self.entries.let_go(token)
        return entry

    async def drop_matching(self, where: Where) -> int:
        """Drop every entry that matches ``where`` and was refused before the command started
        (one audit record each, committed before the entries go), :data:`BULK` at a time;
        entries another command holds are left. Returns how many were dropped."""
        dropped = 0
        started = self.clock()
        if where.until is None or where.until > started:
            where = replace(where, until=started)
        while True:
            token = uuid.uuid4().hex
            taken = self.entries.take_matching(where, token, self.clock(), BULK)
            if not taken:
                self._note("quarantine_dropped_matching", count=dropped, **where.describe())
                return dropped
            removed = False
            try:
                for entry in taken:
                    self.audit.append("quarantine_dropped", self._meta(entry) | {"bulk": True})
                self.audit.commit()
                dropped += self.entries.remove(token)
                removed = True
            finally:
                if not removed:
                    self.entries.let_go(token)


def _way_in(entry: Entry) -> tuple[str | None, str]:
    """(exchange, queue) to republish through: the peer's inbox exchange, or the submit queue."""
    if not entry.body_kept:
        raise QuarantineError(
            f"{entry.id}: only its metadata was kept (refused over its peer's quarantine bound,"
            " or its body purged when its retention period ended), so it cannot be released;"
            " drop it instead"
        )
    if entry.truncated_from is not None:
        raise QuarantineError(
            f"{entry.id} was kept only in part ({entry.size} of {entry.truncated_from} bytes,"
            " over the size cap), so it cannot be released; drop it instead"
        )
    if peer_of(entry.via):
        return entry.via, INBOX
    if entry.via == SUBMIT:
        return None, SUBMIT
    raise QuarantineError(
        f"{entry.id} did not come through a peer's inbox exchange or {SUBMIT}, so it cannot be"
        " released with its sender; drop it instead"
    )
