"""Telling the origin: the refusal notice a node sends when it refuses a message a peer handed
it (``docs/PROTOCOL.md`` section 10.1).

A node that refuses a message its origin really signed (the refusal came after the message was
opened: authorisation, provenance, duplicates, routing, the payload) sends the origin one signed
``notice`` naming the message, the reason code, the message's content hash and the hop entries
of the refused copy, so that the origin can check that this network held it. It sends none:

- about a ``receipt`` or a ``directory_update``, or a message whose header names no origin
  contact point (a node's own message, a refusal notice among them): never a notice about a
  node's notice, so two nodes never trade notices;
- about a message this network originated itself;
- when :class:`NoticeGate` says no: one notice per message per :data:`PER_MESSAGE_EVERY`
  seconds, and per origin network at most :data:`PER_ORIGIN_RATE` a second (bursts of
  :data:`PER_ORIGIN_BURST`). Repeated copies of a refused message (the origin resends until it
  hears) do not each produce a notice; the refusal itself is quarantined all the same.

Everything here is metadata: the notice carries no part of the refused header or payload.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from mlanet.broker import RefusedMessage, SignedMessage
from mlanet.schemas import Header
from mlanet.schemas.payloads import Notice, NoticeHop

__all__ = [
    "PER_MESSAGE_EVERY",
    "PER_ORIGIN_BURST",
    "PER_ORIGIN_RATE",
    "TITLE",
    "NoticeGate",
    "deserves_notice",
    "refusal_notice",
]

TITLE = "Message refused"
PER_MESSAGE_EVERY = 60.0  # seconds: at most one notice about one message in this time
PER_ORIGIN_RATE = 10.0  # notices per second to one origin network
PER_ORIGIN_BURST = 100  # notices to one origin network at once
REMEMBERED = 100_000  # messages the gate remembers; the oldest are forgotten first

_NOT_ABOUT = frozenset({"receipt", "directory_update"})


def deserves_notice(header: Header, here: str) -> bool:
    """Is the origin of this (opened, refused) message told of the refusal?"""
    return (
        header.kind not in _NOT_ABOUT
        and header.origin.contact_point is not None
        and header.origin.network != here
    )


def refusal_notice(message: SignedMessage, refused: RefusedMessage) -> Notice:
    """The payload of the notice about ``message``, refused for ``refused.reason``."""
    return Notice(
        topic="delivery",
        title=TITLE,
        regarding=message.header.message_id,
        reason=refused.reason.value,
        content_sha256=message.content_sha256,
        hops=[
            NoticeHop(record=hop.record_b64, signature=hop.signature_b64) for hop in message.hops
        ],
    )


@dataclass
class _Bucket:
    tokens: float
    at: float


class NoticeGate:
    """Which refusals are told: at most one notice per (origin, message id) per
    ``per_message`` seconds, and a token bucket per origin network. Memory is bounded: it
    remembers the last ``remembered`` messages it let through."""

    def __init__(
        self,
        *,
        per_message: float = PER_MESSAGE_EVERY,
        rate: float = PER_ORIGIN_RATE,
        burst: int = PER_ORIGIN_BURST,
        remembered: int = REMEMBERED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._per_message = per_message
        self._rate = rate
        self._burst = float(burst)
        self._remembered = remembered
        self._clock = clock
        self._told: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._buckets: dict[str, _Bucket] = {}

    def allow(self, origin: str, message_id: str) -> bool:
        """True when a notice about this message may go now (and it is then counted)."""
        now = self._clock()
        key = (origin, message_id)
        last = self._told.get(key)
        if last is not None and now - last < self._per_message:
            return False
        bucket = self._buckets.setdefault(origin, _Bucket(self._burst, now))
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.at) * self._rate)
        bucket.at = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        self._told[key] = now
        self._told.move_to_end(key)
        while len(self._told) > self._remembered:
            self._told.popitem(last=False)
        return True

    def forget(self, origin: str, message_id: str) -> None:
        """The notice :meth:`allow` let through could not be sent: the next copy may try."""
        self._told.pop((origin, message_id), None)
