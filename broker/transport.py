"""The AMQP edge: the only module that imports aio_pika.

A :class:`Transport` holds one robust connection to a network's own broker, declares the node's
topology idempotently, publishes with publisher confirms and mandatory routing (a message the
broker could not route raises, it is never treated as sent), and consumes with manual acks.
Everything else in mlanet sees :class:`Incoming` and plain bytes.

With ``max_body``, no body above that size is ever assembled in memory on the robust connection
(``broker/amqp_decode.py``): such a delivery arrives as a :class:`CutBody`, its first
``max_body + 1`` bytes with the whole body's size and SHA-256, for the node to refuse as
``oversized``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from pamqp.common import Arguments
from yarl import URL

from broker.amqp_decode import CUT_SHA256, CUT_SIZE, BodyCap, harden
from broker.errors import TransportError

__all__ = [
    "CONTENT_TYPE",
    "CutBody",
    "Held",
    "Incoming",
    "Topology",
    "Transport",
    "body_sha256",
    "body_size",
    "deliver_queue",
    "inbox_exchange",
    "out_queue",
    "peer_inbox",
]

harden()  # a peer's property bytes must never break the connection: broker/amqp_decode.py

_CHANNEL_GONE = (aio_pika.exceptions.AMQPError, aiormq.exceptions.AMQPError, RuntimeError)
CONTENT_TYPE = "application/vnd.mlanet+json; v=1"
INBOX = "mlanet.inbox"
SUBMIT = "mlanet.submit"
QUARANTINE = "mlanet.quarantine"
UNROUTABLE = "mlanet.unroutable"


def inbox_exchange(sender: str) -> str:
    """The exchange a peer network publishes into (the only resource its user may write)."""
    return f"mlanet.inbox.from.{sender}"


def peer_inbox(peer: str) -> str:
    """The queue of one peer's messages (fed by its inbox exchange, bounded, consumed at the
    peer's own rate so that one peer's flood cannot take another peer's share)."""
    return f"mlanet.inbox.{peer}"


def out_queue(peer: str) -> str:
    """The store-and-forward queue towards a peer (drained by the link's shovel)."""
    return f"mlanet.out.{peer}"


def deliver_queue(contact_point: str) -> str:
    return f"mlanet.deliver.{contact_point}"


@dataclass(frozen=True)
class Topology:
    """What a node declares on its own broker."""

    peers: tuple[str, ...]
    contact_points: tuple[str, ...]
    delivery_limit: int = 5

    def queues(self) -> list[str]:
        return [
            INBOX,
            SUBMIT,
            QUARANTINE,
            *(peer_inbox(peer) for peer in self.peers),
            *(out_queue(peer) for peer in self.peers),
            *(deliver_queue(cp) for cp in self.contact_points),
        ]


class CutBody(bytes):
    """The first bytes of a body too large to be read whole: ``size`` is the whole body's size
    and ``sha256`` its digest (see ``broker/amqp_decode.py``). Longer than the cap it was cut
    at, so that every check of the length refuses it."""

    size: int
    sha256: bytes

    def __new__(cls, kept: bytes, size: int, sha256: bytes) -> CutBody:
        body = super().__new__(cls, kept)
        body.size = size
        body.sha256 = sha256
        return body


def body_size(body: bytes) -> int:
    """The size of the whole body (also of one the transport cut)."""
    return body.size if isinstance(body, CutBody) else len(body)


def body_sha256(body: bytes) -> bytes:
    """The SHA-256 of the whole body (also of one the transport cut)."""
    return body.sha256 if isinstance(body, CutBody) else hashlib.sha256(body).digest()


@dataclass
class Incoming:
    """A delivery, transport-agnostic. ``ack``/``reject`` never raise on a dead channel."""

    body: bytes
    exchange: str
    routing_key: str
    redelivered: bool
    delivery_count: int
    headers: Mapping[str, Any]
    content_type: str | None
    _raw: AbstractIncomingMessage = field(repr=False)
    message_id: str | None = None
    content_encoding: str | None = None
    expires: bool = False  # the publisher set an AMQP ``expiration``

    async def ack(self) -> None:
        # If the channel is gone the broker redelivers, and dedupe makes that harmless.
        with contextlib.suppress(*_CHANNEL_GONE):
            await self._raw.ack()

    async def requeue(self) -> None:
        with contextlib.suppress(*_CHANNEL_GONE):
            await self._raw.nack(requeue=True)


Handler = Callable[[Incoming], Awaitable[None]]


class _Declarer:
    """Declarations on one connection. A queue that exists with other arguments (the broker
    closes the channel) is named in ``mismatched`` and the work goes on on a new channel."""

    def __init__(self, connection: aio_pika.abc.AbstractConnection, record: dict[str, Arguments]):
        self._connection = connection
        self._record = record
        self._open: aio_pika.abc.AbstractChannel | None = None
        self.mismatched: list[str] = []

    async def _channel(self) -> aio_pika.abc.AbstractChannel:
        if self._open is None or self._open.is_closed:
            self._open = await self._connection.channel()
        return self._open

    async def exchange(self, name: str, arguments: Arguments | None = None) -> str:
        channel = await self._channel()
        await channel.declare_exchange(
            name, aio_pika.ExchangeType.FANOUT, durable=True, arguments=arguments
        )
        return name

    async def queue(self, name: str, arguments: Arguments) -> str:
        self._record[name] = arguments
        try:
            await (await self._channel()).declare_queue(name, durable=True, arguments=arguments)
        except aiormq.exceptions.ChannelPreconditionFailed:
            self.mismatched.append(name)
        return name

    async def bind(self, queue: str, exchange: str, *, unbind: bool = False) -> None:
        channel = await self._channel()
        declared = await channel.get_queue(queue, ensure=False)
        target = await channel.get_exchange(exchange, ensure=False)
        await (declared.unbind(target) if unbind else declared.bind(target))


def _incoming(raw: AbstractIncomingMessage, *, capped: bool = False) -> Incoming:
    """``capped``: read on a BodyCap connection, where only amqp_decode sets the cut headers."""
    headers = dict(raw.headers or {})
    count = headers.get("x-delivery-count", 0)
    body = raw.body
    size, digest = headers.pop(CUT_SIZE, None), headers.pop(CUT_SHA256, None)
    if capped and isinstance(size, int) and isinstance(digest, str):
        body = CutBody(body, size, bytes.fromhex(digest))
    return Incoming(
        body=body,
        exchange=raw.exchange or "",
        routing_key=raw.routing_key or "",
        redelivered=bool(raw.redelivered),
        delivery_count=count if isinstance(count, int) else 0,
        headers=headers,
        content_type=raw.content_type,
        _raw=raw,
        message_id=raw.message_id,
        content_encoding=raw.content_encoding,
        expires=raw.expiration is not None,
    )


@dataclass
class Held:
    """Every message of a queue, held unacked by one consumer (see :meth:`Transport.holding`)."""

    messages: list[Incoming]
    taken: list[Incoming] = field(default_factory=list)

    async def take(self, incoming: Incoming) -> None:
        """Ack one held message: it leaves the queue (confirmed when the holding ends)."""
        try:
            await incoming._raw.ack()
        except _CHANNEL_GONE as exc:
            raise TransportError(f"could not remove the message ({type(exc).__name__})") from exc
        self.taken.append(incoming)


class Transport:
    """One node's connection to its own broker."""

    def __init__(self, url: str, *, max_body: int | None = None) -> None:
        self._url = url
        self._max_body = max_body  # no body above it is assembled: broker/amqp_decode.py
        self._connection: AbstractRobustConnection | None = None
        self._publish: aio_pika.abc.AbstractChannel | None = None
        self._lock = asyncio.Lock()
        self._arguments: dict[str, Arguments] = {}  # queue -> what it was declared with

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def connect(self) -> None:
        try:
            connection = aio_pika.RobustConnection(URL(self._url), reconnect_interval=1)
            if self._max_body is not None:  # aiormq's socket, also on every reconnection
                connection.kwargs["transport_factory"] = BodyCap(self._max_body)
            try:
                await connection.connect()
            except asyncio.CancelledError:  # a caller's deadline: no reconnecting after it
                await connection.close()
                raise
            self._connection = connection
            self._publish = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
        except (OSError, aio_pika.exceptions.AMQPError, aiormq.exceptions.AMQPError) as exc:
            raise TransportError(f"cannot connect to the broker ({type(exc).__name__})") from exc

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()

    def _channel(self) -> aio_pika.abc.AbstractChannel:
        if self._publish is None:
            raise TransportError("transport is not connected")
        return self._publish

    async def declare(self, topology: Topology) -> list[str]:
        """Declare exchanges, queues and bindings idempotently (durable quorum queues); return
        the queues that exist with other arguments than these (kept as they are).

        Declared over a short-lived connection of its own, so that a reconnection does not
        declare them again: a queue re-created with other arguments meanwhile (a shovel
        re-creates its deleted source queue as a classic queue) would fail every reconnection.
        The node calls this again now and then to put back what an operator deleted.
        """
        quorum: Arguments = {"x-queue-type": "quorum"}
        # Inboxes and submit: a message that keeps failing is dead-lettered to quarantine.
        poison: Arguments = {
            "x-queue-type": "quorum",
            "x-delivery-limit": topology.delivery_limit,
            "x-dead-letter-exchange": UNROUTABLE,
        }
        try:
            connection = await aio_pika.connect(self._url)
        except (OSError, aio_pika.exceptions.AMQPError, aiormq.exceptions.AMQPError) as exc:
            raise TransportError(f"cannot connect to the broker ({type(exc).__name__})") from exc
        try:
            async with connection:
                declarer = _Declarer(connection, self._arguments)
                unroutable = await declarer.exchange(UNROUTABLE)
                quarantine = await declarer.queue(QUARANTINE, quorum)
                await declarer.bind(quarantine, unroutable)
                inbox = await declarer.queue(INBOX, poison)
                await declarer.queue(SUBMIT, poison)
                for peer in topology.peers:
                    exchange = await declarer.exchange(
                        inbox_exchange(peer), arguments={"alternate-exchange": UNROUTABLE}
                    )
                    # Each peer's exchange feeds that peer's own inbox queue (bounded by a
                    # policy the node puts, nodes/fairness.py); mlanet.inbox only drains what an
                    # older version of the node left there, so its binding is removed.
                    queue = await declarer.queue(peer_inbox(peer), poison)
                    await declarer.bind(queue, exchange)
                    await declarer.bind(inbox, exchange, unbind=True)
                    await declarer.queue(out_queue(peer), quorum)
                for contact_point in topology.contact_points:
                    await declarer.queue(deliver_queue(contact_point), quorum)
                return declarer.mismatched
        except (aio_pika.exceptions.AMQPError, aiormq.exceptions.AMQPError) as exc:
            raise TransportError(f"cannot declare the topology ({type(exc).__name__})") from exc

    async def declare_queue(self, queue: str, *, delivery_limit: int = 5) -> bool:
        """Declare one more durable quorum queue of the node's own that it consumes, with a
        delivery limit as the inboxes have: a message that keeps failing is dead-lettered to
        quarantine. Idempotent; True when the queue has exactly these arguments.

        A queue that exists with other arguments (an older version declared it without a
        limit) is kept as it is and False is returned: it is never deleted under a publisher,
        and is consumed as it is. Declared over a short-lived connection of its own, as
        :meth:`declare` is (a refused declaration closes its channel).
        """
        arguments: Arguments = {
            "x-queue-type": "quorum",
            "x-delivery-limit": delivery_limit,
            "x-dead-letter-exchange": UNROUTABLE,
        }
        try:
            connection = await aio_pika.connect(self._url)
        except (OSError, aio_pika.exceptions.AMQPError, aiormq.exceptions.AMQPError) as exc:
            raise TransportError(f"cannot connect to the broker ({type(exc).__name__})") from exc
        try:
            async with connection:
                declarer = _Declarer(connection, self._arguments)
                await declarer.queue(queue, arguments)
        except (aio_pika.exceptions.AMQPError, aiormq.exceptions.AMQPError) as exc:
            raise TransportError(f"cannot declare {queue} ({type(exc).__name__})") from exc
        if declarer.mismatched:
            self._arguments.pop(queue, None)  # consumed as it is (a passive declaration)
            return False
        return True

    async def publish(
        self,
        queue: str,
        body: bytes,
        *,
        message_id: str,
        kind: str,
        headers: Mapping[str, str] | None = None,
        exchange: str | None = None,
    ) -> None:
        """Publish persistently to ``queue``; return only once the broker confirmed it.

        With ``exchange``, publish through that exchange instead (``queue`` is then only named
        in errors), e.g. a peer's inbox exchange so that the receiving pipeline sees the sender.
        """
        message = aio_pika.Message(
            body,
            content_type=CONTENT_TYPE,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            type=kind,
            app_id="mlanet",
            headers=dict(headers or {}),
        )
        try:
            channel = self._channel()
            target = (
                channel.default_exchange
                if exchange is None
                else await channel.get_exchange(exchange, ensure=False)
            )
            confirmation = await target.publish(
                message, routing_key=queue if exchange is None else "", mandatory=True, timeout=30
            )
        except aio_pika.exceptions.DeliveryError as exc:
            raise TransportError(f"broker could not route to {queue}") from exc
        except (
            TimeoutError,
            aio_pika.exceptions.AMQPError,
            aiormq.exceptions.AMQPError,
            RuntimeError,
        ) as exc:
            raise TransportError(f"publish to {queue} failed ({type(exc).__name__})") from exc
        if not isinstance(confirmation, aiormq.spec.Basic.Ack):
            raise TransportError(f"broker did not confirm the publish to {queue}")

    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> None:
        """Start consuming ``queue`` on a channel of its own; ``handler`` runs per delivery."""
        if self._connection is None:
            raise TransportError("transport is not connected")
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        # Declared through the robust channel, which registers the queue so that the consumer
        # is restored after a reconnection (get_queue would not be), and with the arguments the
        # node declared it with, so that a queue deleted under the node is declared again when
        # the consumer is restored (a passive declare would fail on every attempt, forever).
        arguments = self._arguments.get(queue)
        if arguments is None:
            declared = await channel.declare_queue(queue, passive=True)
        else:
            declared = await channel.declare_queue(queue, durable=True, arguments=arguments)

        capped = self._max_body is not None

        async def on_message(raw: AbstractIncomingMessage) -> None:
            await handler(_incoming(raw, capped=capped))

        await declared.consume(on_message, no_ack=False)

    async def get(self, queue: str) -> Incoming | None:
        """Fetch one message (for CLI readers); None when the queue is empty."""
        channel = self._channel()
        declared = await channel.get_queue(queue, ensure=False)
        raw = await declared.get(no_ack=False, fail=False)
        if raw is None:
            return None
        return _incoming(raw, capped=self._max_body is not None)

    @contextlib.asynccontextmanager
    async def holding(self, queue: str, *, lock: str, within: float = 30.0) -> AsyncIterator[Held]:
        """Hold every message of ``queue`` unacked, on a connection of its own, while the
        caller takes (acks) some of them; the rest go back in their order when the block ends.

        ``lock`` names an exclusive queue declared on that connection first: a second holder
        fails with TransportError instead of seeing only part of the queue, and the lock goes
        with the connection if the process dies (unacked messages go back to the queue then).
        Nothing is lost or duplicated: a message is either taken (acked) or returned.
        """
        try:
            connection = await aio_pika.connect(self._url)
        except (OSError, aio_pika.exceptions.AMQPError, aiormq.exceptions.AMQPError) as exc:
            raise TransportError(f"cannot connect to the broker ({type(exc).__name__})") from exc
        async with connection:
            try:
                locking = await connection.channel()
                await locking.declare_queue(lock, exclusive=True, auto_delete=True)
            except _CHANNEL_GONE as exc:
                raise TransportError(f"{queue} is being worked on elsewhere; try again") from exc
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=0)
            try:
                declared = await channel.declare_queue(queue, passive=True)
            except _CHANNEL_GONE as exc:
                raise TransportError(f"queue {queue} is not there") from exc
            ready = int(declared.declaration_result.message_count or 0)
            received: list[Incoming] = []
            arrived = asyncio.Event()

            async def on_message(raw: AbstractIncomingMessage) -> None:
                received.append(_incoming(raw))
                arrived.set()

            tag = await declared.consume(on_message, no_ack=False)
            try:
                while len(received) < ready:
                    arrived.clear()
                    await asyncio.wait_for(arrived.wait(), within)
            except TimeoutError as exc:
                raise TransportError(f"could not read all of {queue} in time") from exc
            finally:
                await declared.cancel(tag)
            held = Held(list(received))
            try:
                yield held
            finally:
                with contextlib.suppress(*_CHANNEL_GONE):
                    # back in their order; anything delivered after the count goes back too
                    for incoming in received:
                        if not any(incoming is taken for taken in held.taken):
                            await incoming._raw.nack(requeue=True)
            # A clean channel close means the broker processed every ack sent before it.
            confirmed = not channel.is_closed
            try:
                await channel.close()
            except _CHANNEL_GONE:
                confirmed = False
            if held.taken and not confirmed:
                raise TransportError("could not confirm that the message was removed")

    async def _passive(self, queue: str) -> tuple[int, int]:
        """(messages ready, consumers) of a queue; TransportError if it does not exist."""
        if self._connection is None:
            raise TransportError("transport is not connected")
        try:
            async with self._connection.channel() as channel:
                declared = await channel.declare_queue(queue, passive=True)
        except (aio_pika.exceptions.AMQPError, aiormq.exceptions.AMQPError) as exc:
            raise TransportError(f"queue {queue} is not there") from exc
        result = declared.declaration_result
        return int(result.message_count or 0), int(result.consumer_count or 0)

    async def queue_depth(self, queue: str) -> int:
        return (await self._passive(queue))[0]

    async def consumer_count(self, queue: str) -> int:
        return (await self._passive(queue))[1]
