"""A misbehaving peer's publisher: its own broker user, any exchange, any AMQP property bytes.

aio-pika and pamqp encode properties from Python values and refuse what is not valid; a hostile
peer is not so polite. ``RawText`` is a string that encodes to any bytes, ``FarTimestamp`` a
datetime whose timestamp no calendar holds, so that the frames on the wire carry exactly what a
hostile peer would put there. Publishing goes through aiormq with publisher confirms, so that a
refusal by the broker (permissions, a forged ``user_id``, a full queue) is seen here.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiormq
from pamqp.commands import Basic

from mlanet.broker.transport import CONTENT_TYPE

__all__ = [
    "BrokerRefusal",
    "FarTimestamp",
    "Publication",
    "RawText",
    "amqp_url",
    "publish",
    "publish_all",
]


class RawText(str):
    """A string that goes on the wire as ``raw`` (not UTF-8, if the peer wants)."""

    raw: bytes = b""

    @classmethod
    def of(cls, raw: bytes) -> RawText:
        text = cls(raw.decode("utf-8", "replace"))
        text.raw = raw
        return text

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


class FarTimestamp(datetime.datetime):
    """A timestamp property of 2**63 seconds: beyond any calendar."""

    def timestamp(self) -> float:
        return float(2**63)


@dataclass(frozen=True)
class Publication:
    """One message as a peer publishes it: through ``exchange`` (default: its own inbox
    exchange at the receiver) with these AMQP properties (the envelope's content type and
    persistence unless they are given, ``None`` included)."""

    body: bytes
    exchange: str | None = None
    routing_key: str = ""
    properties: Mapping[str, Any] = field(default_factory=dict)
    as_network: str | None = None  # whose credentials; default: the hostile peer


class BrokerRefusal(Exception):
    """The broker refused the publish: the channel was closed with ``code``, or it nacked."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code}: {text}")
        self.code = code


NACKED = 0  # BrokerRefusal.code when the broker nacked the message (a full queue)
_CODES = (
    (aiormq.exceptions.ChannelAccessRefused, 403),
    (aiormq.exceptions.ChannelNotFoundEntity, 404),
    (aiormq.exceptions.ChannelLockedResource, 405),
    (aiormq.exceptions.ChannelPreconditionFailed, 406),
)


def _reply_code(exc: aiormq.exceptions.ChannelClosed) -> int:
    """The AMQP reply code the broker closed the channel with (-1 when it is not one of these)."""
    return next((code for kind, code in _CODES if isinstance(exc, kind)), -1)


async def publish(url: str, sender: str, publication: Publication) -> None:
    """Publish as ``sender``'s user (``url`` carries its credentials) and wait for the confirm."""
    properties: dict[str, Any] = {"content_type": CONTENT_TYPE, "delivery_mode": 2}
    properties.update(publication.properties)
    properties = {k: v for k, v in properties.items() if v is not None}
    exchange = publication.exchange
    if exchange is None:
        exchange = f"mlanet.inbox.from.{sender}"
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        try:
            confirmation = await channel.basic_publish(
                publication.body,
                exchange=exchange,
                routing_key=publication.routing_key,
                properties=Basic.Properties(**properties),
            )
        except aiormq.exceptions.ChannelClosed as exc:
            raise BrokerRefusal(_reply_code(exc), str(exc)) from None
        if isinstance(confirmation, Basic.Nack):
            raise BrokerRefusal(NACKED, "nacked")
    finally:
        await connection.close()


async def publish_all(url: str, sender: str, bodies: list[bytes]) -> None:
    """Publish valid envelopes back to back on one channel (all confirms awaited together)."""
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        properties = Basic.Properties(content_type=CONTENT_TYPE, delivery_mode=2)
        confirmations = await asyncio.gather(
            *(
                channel.basic_publish(
                    body, exchange=f"mlanet.inbox.from.{sender}", properties=properties
                )
                for body in bodies
            )
        )
        if not all(isinstance(c, Basic.Ack) for c in confirmations):
            raise BrokerRefusal(NACKED, "nacked")
    finally:
        await connection.close()


def amqp_url(
    user: str, password: str, vhost: str, host: str = "127.0.0.1", port: int = 5672
) -> str:
    return f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/" + quote(
        vhost, safe=""
    )
