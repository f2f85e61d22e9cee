"""The recent message flow for the dashboard: the last few hundred things that happened to
messages, grouped by the network on the other side. Metadata only (message id, kind, origin,
destination, reason code); kept in memory, so it starts empty when the node starts."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from nodes.observe import Flow, Observer

__all__ = ["FlowEvent", "FlowLog"]

LOCAL = "local"  # the node's own contact points


@dataclass(slots=True)  # not frozen: cheaper to create, on the hot path
class FlowEvent:
    at: float
    event: str  # received, submitted, forwarded, delivered, refused, receipt, undeliverable
    network: str  # the peer on the other side, or "local"
    message_id: str
    kind: str
    origin: str
    destination: str
    detail: str = ""


def _peer_of(via: str) -> str:
    prefix = "mlanet.inbox.from."
    return via.removeprefix(prefix) if via.startswith(prefix) else LOCAL


class FlowLog(Observer):
    """A bounded, newest-last record of message metadata events."""

    def __init__(self, keep: int = 500) -> None:
        self._events: deque[FlowEvent] = deque(maxlen=keep)

    def _add(self, event: str, network: str, flow: Flow | None, detail: str = "") -> None:
        self._events.append(
            FlowEvent(
                at=time.time(),
                event=event,
                network=network,
                message_id=flow.message_id if flow else "-",
                kind=flow.kind if flow else "-",
                origin=flow.origin if flow else "-",
                destination=flow.destination if flow else "-",
                detail=detail,
            )
        )

    def received(self, sender: str, flow: Flow) -> None:
        self._add("received", sender, flow)

    def submitted(self, contact_point: str, flow: Flow) -> None:
        self._add("submitted", LOCAL, flow, f"from {contact_point}")

    def refused(self, reason: str, via: str, flow: Flow | None) -> None:
        self._add("refused", _peer_of(via), flow, reason)

    def forwarded(self, peer: str, flow: Flow) -> None:
        self._add("forwarded", peer, flow)

    def delivered(self, contact_points: tuple[str, ...], flow: Flow) -> None:
        self._add("delivered", LOCAL, flow, ", ".join(contact_points))

    def receipt(self, for_id: str, by: str, waited: float) -> None:
        self._events.append(
            FlowEvent(
                time.time(), "receipt", by, for_id, "receipt", by, "-", f"after {waited:.1f}s"
            )
        )

    def undeliverable(self, for_id: str) -> None:
        self._events.append(FlowEvent(time.time(), "undeliverable", LOCAL, for_id, "-", "-", "-"))

    def recent(self, limit: int = 200) -> list[FlowEvent]:
        """The latest events, newest first."""
        return list(reversed(self._events))[:limit]

    def by_network(self, per_network: int = 15) -> dict[str, list[FlowEvent]]:
        """The latest events for each network on the other side, newest first."""
        grouped: dict[str, list[FlowEvent]] = {}
        for event in reversed(self._events):
            bucket = grouped.setdefault(event.network, [])
            if len(bucket) < per_network:
                bucket.append(event)
        return dict(sorted(grouped.items()))
