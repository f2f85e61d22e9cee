"""The node's observer seam: what happens to messages, told to whoever watches the node.

The node calls one :class:`Observers` fan-out at fixed points; operator surfaces (metrics, the
dashboard's recent flow, the audit trail) subclass :class:`Observer` and override the points
they need. Observers get metadata only (:class:`Flow`: ids, networks, kind), never a payload.
An observer that raises is logged and skipped: watching must never stop the node or change
what it does with a message. The one exception is an observer added with ``required=True``
(the audit trail): its error propagates, so the node does not ack a delivery whose record could
not be written (the delivery is retried instead).

The points, with stable names (the node and its parts call them)::

    received(sender, flow)           a peer's message passed the receiving pipeline
    submitted(contact_point, flow)   a local submission was signed and queued for sending
    refused(reason, via, flow)       a message was quarantined with a reason code
    quarantined(id, reason, detail, via, flow)  the same, with the quarantine entry's id
    forwarded(peer, flow)            a message was broker-confirmed into the link to ``peer``
    delivered(contact_points, flow)  a message was broker-confirmed into contact points' queues
    receipt(for_id, by, waited)      a receipt for one of our messages arrived (``waited`` s)
    undeliverable(for_id)            no receipt came in time; the message is given up on
    timing(step, seconds)            one step of handling a message took this long
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog

from mlanet.nodes.logs import error_fields
from mlanet.schemas import Destination, Header

__all__ = ["Flow", "Observer", "Observers"]

log = structlog.get_logger("mlanet.observe")


def describe(destination: Destination) -> str:
    """The most specific part of a destination: contact point, else country, else network."""
    return destination.contact_point or destination.country or destination.network or "?"


@dataclass(frozen=True, slots=True)
class Flow:
    """The metadata of one message that observers may see (never case content)."""

    message_id: str
    origin: str
    kind: str
    destination: str

    @classmethod
    def of(cls, header: Header) -> Flow:
        return cls(
            header.message_id, header.origin.network, header.kind, describe(header.destination)
        )


class Observer:
    """Something that watches the node. Every point does nothing unless overridden."""

    def received(self, sender: str, flow: Flow) -> None:
        """A message from peer ``sender`` passed verification, validation and authorisation."""

    def submitted(self, contact_point: str, flow: Flow) -> None:
        """A local contact point's submission was signed and stored for sending."""

    def refused(self, reason: str, via: str, flow: Flow | None) -> None:
        """A message was published to quarantine; ``flow`` is None when it could not be read."""

    def quarantined(
        self, quarantine_id: str, reason: str, detail: str, via: str, flow: Flow | None
    ) -> None:
        """Called with ``refused``: the quarantine entry's id and its metadata-only detail.

        ``flow`` is what the message claims (unverified) when it was refused before its
        signature could be checked; None when not even that could be read."""

    def forwarded(self, peer: str, flow: Flow) -> None:
        """A message was confirmed into the store-and-forward queue towards ``peer``."""

    def delivered(self, contact_points: tuple[str, ...], flow: Flow) -> None:
        """A message was confirmed into the delivery queues of local contact points."""

    def receipt(self, for_id: str, by: str, waited: float) -> None:
        """Network ``by`` acknowledged our message ``for_id``, ``waited`` seconds after sending."""

    def undeliverable(self, for_id: str) -> None:
        """Our message ``for_id`` got no receipt in time and is marked undeliverable."""

    def timing(self, step: str, seconds: float) -> None:
        """One named step (verify, unseal, validate, authorise, route, handle, submit) took
        ``seconds``."""


class Observers(Observer):
    """The fan-out the node calls: passes each point to every added observer, in order."""

    def __init__(self) -> None:
        self._observers: list[Observer] = []
        self._required: list[Observer] = []
        # per point, the bound methods of the observers that override it (a message passes
        # several points: calling every observer's do-nothing method for each would cost more
        # than the watching)
        self._watching: dict[str, tuple[tuple[Observer, Callable[..., None]], ...]] = {}

    def add(self, observer: Observer, *, required: bool = False) -> None:
        """Add an observer; a ``required`` one's errors propagate to the node (see above)."""
        self._observers.append(observer)
        if required:
            self._required.append(observer)
        self._watching = {}

    def remove(self, observer: Observer) -> None:
        if observer in self._observers:
            self._observers.remove(observer)
        self._required = [kept for kept in self._required if kept is not observer]
        self._watching = {}

    def _each(self, point: str, *args: object) -> None:
        watching = self._watching.get(point)
        if watching is None:
            base = getattr(Observer, point)
            watching = tuple(
                (o, getattr(o, point))
                for o in self._observers
                if getattr(type(o), point, base) is not base
            )
            self._watching[point] = watching
        for observer, method in watching:
            try:
                method(*args)
            except Exception as exc:  # watching must never break the node
                log.error(
                    "observer_failed",
                    observer=type(observer).__name__,
                    point=point,
                    **error_fields(exc),
                )
                if any(observer is required for required in self._required):
                    raise

    def received(self, sender: str, flow: Flow) -> None:
        self._each("received", sender, flow)

    def submitted(self, contact_point: str, flow: Flow) -> None:
        self._each("submitted", contact_point, flow)

    def refused(self, reason: str, via: str, flow: Flow | None) -> None:
        self._each("refused", reason, via, flow)

    def quarantined(
        self, quarantine_id: str, reason: str, detail: str, via: str, flow: Flow | None
    ) -> None:
        self._each("quarantined", quarantine_id, reason, detail, via, flow)

    def forwarded(self, peer: str, flow: Flow) -> None:
        self._each("forwarded", peer, flow)

    def delivered(self, contact_points: tuple[str, ...], flow: Flow) -> None:
        self._each("delivered", contact_points, flow)

    def receipt(self, for_id: str, by: str, waited: float) -> None:
        self._each("receipt", for_id, by, waited)

    def undeliverable(self, for_id: str) -> None:
        self._each("undeliverable", for_id)

    def timing(self, step: str, seconds: float) -> None:
        self._each("timing", step, seconds)
