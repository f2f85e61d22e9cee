"""The recent message flow for the dashboard: the last few hundred things that happened to
messages, grouped by the network on the other side. Metadata only (message id, kind, origin,
destination, reason code).

A view of the node's audit trail (``nodes/state/audit.py``), its durable record of every accept,
refusal, forward, delivery and receipt: nothing is kept in memory, so the flow is the same
after a restart. One audit record may give two events: a message accepted from a peer and then
forwarded has one record (``forwarded``, naming the peer it came ``from``), shown as
``received`` from that peer and ``forwarded`` to the next.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from mlanet.broker.topology import peer_of_inbox_exchange
from mlanet.nodes.state.audit import AuditRecord
from mlanet.nodes.state.journal import RECEIVED

__all__ = ["AuditReader", "FlowEvent", "FlowLog", "flow_events"]

LOCAL = "local"  # the node's own contact points
_SUBMIT = "submit"


@dataclass(frozen=True, slots=True)
class FlowEvent:
    at: float
    event: str  # received, submitted, forwarded, delivered, refused, receipt, undeliverable
    network: str  # the peer on the other side, or "local"
    message_id: str
    kind: str
    origin: str
    destination: str
    detail: str = ""


class AuditReader(Protocol):
    """What the flow reads: the latest records of the node's audit trail, in order."""

    def records(self, *, last: int | None = None, event: str | None = None) -> list[AuditRecord]:
        """The last ``last`` records, oldest first."""
        ...


def _text(meta: dict[str, Any], key: str) -> str:
    value = meta.get(key)
    return value if isinstance(value, str) and value else "-"


def _peer_of(via: str) -> str:
    return peer_of_inbox_exchange(via) or LOCAL


def _at(record: AuditRecord) -> float:
    return datetime.fromisoformat(record.at.replace("Z", "+00:00")).timestamp()


def flow_events(record: AuditRecord) -> list[FlowEvent]:
    """The flow events one audit record stands for (none for operator actions)."""
    meta = record.meta
    at = _at(record)

    def event(name: str, network: str, detail: str = "", **override: str) -> FlowEvent:
        fields = {
            "message_id": _text(meta, "message_id"),
            "kind": _text(meta, "kind"),
            "origin": _text(meta, "origin"),
            "destination": _text(meta, "destination"),
            **override,
        }
        return FlowEvent(at, name, network, detail=detail, **fields)

    came_from = meta.get("from")
    via = meta.get("via")
    out: list[FlowEvent] = []
    if record.event == "accepted" and via == _SUBMIT:
        return [event("submitted", LOCAL, f"from {_text(meta, 'from')}")]
    if record.event in RECEIVED and isinstance(came_from, str) and came_from and via != _SUBMIT:
        out.append(event("received", came_from))
    if record.event == "forwarded":
        out.append(event("forwarded", _text(meta, "to")))
    elif record.event == "delivered":
        to = meta.get("to")
        names = [str(cp) for cp in to] if isinstance(to, list) else []
        out.append(event("delivered", LOCAL, ", ".join(names)))
    elif record.event == "refused":
        out.append(event("refused", _peer_of(str(via or "")), _text(meta, "reason")))
    elif record.event == "receipt":
        by = _text(meta, "by")
        waited = meta.get("waited_s")
        detail = f"after {waited:.1f}s" if isinstance(waited, int | float) else ""
        out.append(event("receipt", by, detail, kind="receipt", origin=by, destination="-"))
    elif record.event == "undeliverable":
        out.append(event("undeliverable", LOCAL))
    return out


class FlowLog:
    """The latest message events, read from the audit trail each time they are shown."""

    def __init__(self, audit: AuditReader, keep: int = 500) -> None:
        self._audit = audit
        self._keep = keep

    def _events(self) -> Iterable[FlowEvent]:
        """Newest first."""
        for record in reversed(self._audit.records(last=self._keep)):
            yield from reversed(flow_events(record))

    def recent(self, limit: int = 200) -> list[FlowEvent]:
        """The latest events, newest first."""
        found: list[FlowEvent] = []
        for event in self._events():
            if len(found) >= limit:
                break
            found.append(event)
        return found

    def by_network(self, per_network: int = 15) -> dict[str, list[FlowEvent]]:
        """The latest events for each network on the other side, newest first."""
        grouped: dict[str, list[FlowEvent]] = {}
        for event in self._events():
            bucket = grouped.setdefault(event.network, [])
            if len(bucket) < per_network:
                bucket.append(event)
        return dict(sorted(grouped.items()))
