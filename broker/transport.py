"""The AMQP edge: the only module that imports aio_pika.

A :class:`Transport` holds one robust connection to a network's own broker, declares the node's
topology idempotently, publishes with publisher confirms and mandatory routing (a message the
broker could not route raises, it is never treated as sent), and consumes with manual acks.
Everything else in mlanet sees :class:`Incoming` and plain bytes.

With ``max_body``, no body above that size is ever assembled in memory on the robust connection
(``broker/amqp_decode.py``): such a delivery arrives as a :class:`CutBody`, its first
``max_body + 1`` bytes with the whole body's size and SHA-256, for the node to refuse as
``oversized``.

Nothing here waits without a limit: connecting, and every round trip to the broker, gives up
after ``timeout`` seconds (a broker that accepts TCP connections but never answers, e.g. at
its file-descriptor limit, is a :class:`TransportError` that names the broker's address and
what to check); a publish waits at most :data:`CONFIRM_WAIT` seconds for its confirm (a broker
under a resource alarm holds publishes); closing gives up after :data:`CLOSE_WAIT` seconds.

**TLS.** An ``amqps://`` URL names what the broker is checked against the way a RabbitMQ shovel
URI does (:func:`tls_query`): ``cacertfile`` (required: the broker's certificate must come from
one of the CAs in that file; never the system's store, never unverified), ``certfile`` and
``keyfile`` (a client certificate, presented when given), ``server_name_indication`` (the name
checked in the broker's certificate, default the URL's host) and ``auth_mechanism=external``
(log in by that certificate, no password). A plaintext connection is never tried for such a URL,
and a URL that names TLS files but is not ``amqps`` is refused. A failed handshake is a
:class:`TransportError` whose one line says why (``broker/tls.py``'s reasons: unknown CA, wrong
name, expired, refused); the connections a transport opens for itself (declarations, doors)
use the same context.

**A cluster.** ``cluster=host:port,host:port`` in the URL's query names the other nodes of the
same RabbitMQ cluster (the node's ``[broker] cluster``). Every socket the transport opens goes
to the first node that takes it within ``timeout`` seconds (refused, no answer, or a TLS
handshake refused: the next one), the URL's own ``host:port`` first (:class:`_Failover`). The
robust connection's next socket (after its connection dropped, or a handshake failed) starts at
the node after the one it had: a node that was SIGKILLed, or accepts sockets and never answers,
is tried last. Its short-lived connections (declarations) start at the node the robust
connection is on; a door is a transport of its own that fails over the same way. Connecting
gives up after ``timeout`` seconds per node, plus ``timeout`` for the handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from pamqp.common import Arguments
from yarl import URL

from mlanet.broker.amqp_decode import CUT_SHA256, CUT_SIZE, BodyCap, harden
from mlanet.broker.errors import ConfigError, TransportError
from mlanet.broker.tls import TlsError, client_context, handshake_refusal, load_certificates
from mlanet.broker.topology import (
    CONTENT_TYPE,
    INBOX,
    QUARANTINE,
    SUBMIT,
    SUBMIT_EXCHANGE,
    UNROUTABLE,
    Topology,
    deliver_queue,
    door_vhost,
    inbox_exchange,
    out_queue,
    peer_inbox,
)

__all__ = [
    "CLOSE_WAIT",
    "CONFIRM_WAIT",
    "CONNECT_TIMEOUT",
    "CONTENT_TYPE",
    "INBOX",
    "QUARANTINE",
    "SUBMIT",
    "SUBMIT_EXCHANGE",
    "UNROUTABLE",
    "CutBody",
    "Incoming",
    "Topology",
    "Transport",
    "body_sha256",
    "body_size",
    "broker_address",
    "deliver_queue",
    "door_vhost",
    "inbox_exchange",
    "out_queue",
    "peer_inbox",
    "tls_query",
    "with_vhost",
]

harden()  # a peer's property bytes must never break the connection: broker/amqp_decode.py

_CHANNEL_GONE = (aio_pika.exceptions.AMQPError, aiormq.exceptions.AMQPError, RuntimeError)
# what a broker that is away, slow or closing makes aio-pika raise (TimeoutError is an OSError)
_BROKER_GONE = (OSError, *_CHANNEL_GONE)
CONNECT_TIMEOUT = 10.0  # seconds: connecting, and each round trip to the broker
CONFIRM_WAIT = 30.0  # seconds a publish waits for the broker's confirm
PERSISTENT = int(aio_pika.DeliveryMode.PERSISTENT)
CLOSE_WAIT = 3.0  # seconds closing the connection waits for the broker
_CHECK = "check that RabbitMQ runs there and accepts connections (its log, its open-file limit)"


def broker_address(url: str) -> str:
    """``host:port`` of an AMQP URL: what errors name (never the user or password)."""
    parsed = URL(url)
    return f"{parsed.host or '?'}:{parsed.port or 5672}"


def with_vhost(url: str, vhost: str) -> str:
    """``url`` with another vhost (the same user, password, host and options: its TLS keys
    and heartbeat too, so that a door is opened as the node's own connection is)."""
    parsed = URL(url)
    return str(parsed.with_path("/" + vhost).with_query(parsed.query))


_C = TypeVar("_C", bound=aio_pika.Connection)
_TLS_KEYS = (
    "cacertfile",
    "certfile",
    "keyfile",
    "verify",
    "server_name_indication",
    "auth_mechanism",
)
_TLS_CHECK = "check the CA file (cacertfile) and the broker's name (server_name)"
CLUSTER_KEY = "cluster"  # the query key that names the cluster's other nodes
MAX_CLUSTER = 16


def _cluster(value: str | None) -> tuple[tuple[str, int], ...]:
    """The cluster's other nodes, ``host:port,host:port``; ConfigError for anything else."""
    if not value:
        return ()
    found = []
    for item in value.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError("cluster= in a broker URL takes host:port,host:port")
        found.append((host.strip("[]"), int(port)))
    if len(found) > MAX_CLUSTER:
        raise ConfigError(f"cluster= in a broker URL names more than {MAX_CLUSTER} nodes")
    return tuple(found)


def tls_query(
    cacertfile: Path,
    *,
    certfile: Path | None = None,
    keyfile: Path | None = None,
    server_name: str | None = None,
    external: bool = False,
) -> dict[str, str]:
    """The query of an ``amqps://`` URL that verifies the broker against ``cacertfile``,
    presents ``certfile`` (with ``keyfile``) when given, checks ``server_name`` (default: the
    URL's host) and, with ``external``, logs in by the certificate (RabbitMQ's EXTERNAL)."""
    query = {"cacertfile": str(cacertfile), "verify": "verify_peer"}
    if certfile is not None and keyfile is not None:
        query |= {"certfile": str(certfile), "keyfile": str(keyfile)}
    if server_name is not None:
        query["server_name_indication"] = server_name
    if external:
        query["auth_mechanism"] = "external"
    return query


@dataclass(frozen=True)
class _Tls:
    context: ssl.SSLContext
    server_name: str | None


def _client_url(url: str) -> tuple[URL, _Tls | None]:
    """What aiormq connects to (the TLS keys and the cluster taken out of the query) and the
    TLS context the URL asks for; ConfigError for an ``amqps`` URL without a usable CA file, one
    that would not verify the broker, or TLS files on a plaintext URL."""
    parsed = URL(url)
    query = parsed.query
    rest = {k: v for k, v in query.items() if k not in (*_TLS_KEYS, CLUSTER_KEY)}
    if parsed.scheme != "amqps":
        if any(key in query for key in _TLS_KEYS):
            raise ConfigError("a broker URL that names TLS files must be amqps://")
        return parsed, None
    cafile = query.get("cacertfile")
    if not cafile:
        raise ConfigError("an amqps:// broker URL must name the CA file it trusts (cacertfile)")
    if query.get("verify", "verify_peer") != "verify_peer":
        raise ConfigError("the broker's certificate is always verified (verify=verify_peer)")
    certfile, keyfile = query.get("certfile"), query.get("keyfile")
    if (certfile is None) != (keyfile is None):
        raise ConfigError("a client certificate (certfile) needs its key (keyfile), and back")
    try:
        context = client_context(
            load_certificates(Path(cafile)),
            cert_file=Path(certfile) if certfile else None,
            key_file=Path(keyfile) if keyfile else None,
        )
    except TlsError as exc:
        raise ConfigError(f"TLS to the broker: {exc}") from exc
    if query.get("auth_mechanism", "plain").lower() == "external":
        if certfile is None:
            raise ConfigError("logging in by certificate (EXTERNAL) needs certfile and keyfile")
        rest["auth"] = "external"
    return parsed.with_query(rest), _Tls(context, query.get("server_name_indication"))


class _Named(aiormq.connection.TransportFactory):
    """Opens the TLS socket checking ``server_name`` in the broker's certificate (and sending
    it as SNI) instead of the URL's host, through ``inner`` (e.g. a :class:`BodyCap`)."""

    def __init__(self, server_name: str, inner: aiormq.connection.TransportFactory | None) -> None:
        self._server_name = server_name
        self._inner = inner or aiormq.connection.TLSTransportFactory()

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await self._inner.create(url, server_hostname=self._server_name, **kwargs)


class _Failover(aiormq.connection.TransportFactory):
    """Opens the socket (through ``inner``, or TCP/TLS as the URL's scheme says) to the first of
    ``nodes`` that takes it within ``within`` seconds, trying them in turn from ``first``.
    ``rotate``: the next socket starts at the node after the one this one went to (a new socket
    is asked for only once the last one's connection dropped or its handshake failed)."""

    def __init__(
        self,
        nodes: tuple[tuple[str, int], ...],
        within: float,
        inner: aiormq.connection.TransportFactory | None,
        *,
        first: int = 0,
        rotate: bool = False,
    ) -> None:
        self.nodes = nodes
        self._within = within
        self._inner = inner
        self._first = first
        self._rotate = rotate
        self.current: int | None = None  # the node the last socket went to

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        inner = self._inner
        if inner is None:
            plain = url.scheme != "amqps"
            inner = (
                aiormq.connection.TCPTransportFactory()
                if plain
                else aiormq.connection.TLSTransportFactory()
            )
        failure: BaseException = ConnectionRefusedError(errno.ECONNREFUSED, "no node")
        for step in range(len(self.nodes)):
            at = (self._first + step) % len(self.nodes)
            host, port = self.nodes[at]
            try:
                async with asyncio.timeout(self._within):
                    opened = await inner.create(url.with_host(host).with_port(port), **kwargs)
            except (OSError, aiormq.exceptions.AMQPConnectionError) as exc:  # TimeoutError too
                failure = exc
                continue
            self.current = at
            if self._rotate:
                self._first = (at + 1) % len(self.nodes)
            return opened
        raise failure


def _why(exc: BaseException, timeout: float) -> str:
    """Why the broker could not be used, in a few words (no values from the broker)."""
    refused_tls = handshake_refusal(exc)
    if refused_tls is not None:
        return f"TLS refused ({refused_tls}); {_TLS_CHECK}"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        return "the broker refused the login (check [broker] user and password_file)"
    if isinstance(exc, aiormq.exceptions.ConnectionNotAllowed):
        return "the broker refused access to the vhost (check [broker] vhost)"
    refused = isinstance(exc, ConnectionRefusedError) or (
        bool(exc.args) and exc.args[0] == errno.ECONNREFUSED
    )
    if refused:
        return "connection refused"
    return type(exc).__name__


async def _within(seconds: float, work: Awaitable[Any]) -> Any:
    """``work``, or TimeoutError after ``seconds``."""
    async with asyncio.timeout(seconds):
        return await work


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
    closes the channel) is named in ``mismatched`` and the work goes on on a new channel. Each
    round trip gives up after ``timeout`` seconds (TimeoutError)."""

    def __init__(
        self,
        connection: aio_pika.abc.AbstractConnection,
        record: dict[str, Arguments],
        timeout: float,
    ):
        self._connection = connection
        self._record = record
        self._timeout = timeout
        self._open: aio_pika.abc.AbstractChannel | None = None
        self.mismatched: list[str] = []

    async def _channel(self) -> aio_pika.abc.AbstractChannel:
        if self._open is None or self._open.is_closed:
            self._open = await _within(self._timeout, self._connection.channel())
        return self._open

    async def exchange(self, name: str, arguments: Arguments | None = None) -> str:
        channel = await self._channel()
        await _within(
            self._timeout,
            channel.declare_exchange(
                name, aio_pika.ExchangeType.FANOUT, durable=True, arguments=arguments
            ),
        )
        return name

    async def queue(self, name: str, arguments: Arguments) -> str:
        self._record[name] = arguments
        channel = await self._channel()
        try:
            await _within(
                self._timeout, channel.declare_queue(name, durable=True, arguments=arguments)
            )
        except aiormq.exceptions.ChannelPreconditionFailed:
            self.mismatched.append(name)
        return name

    async def bind(self, queue: str, exchange: str, *, unbind: bool = False) -> None:
        channel = await self._channel()
        declared = await channel.get_queue(queue, ensure=False)
        target = await channel.get_exchange(exchange, ensure=False)
        await _within(self._timeout, declared.unbind(target) if unbind else declared.bind(target))

    async def aclose(self) -> None:
        """Close the channel (the connection may be kept for the next declarations)."""
        channel, self._open = self._open, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(*_BROKER_GONE):
                await _within(self._timeout, channel.close())


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


class Transport:
    """One node's connection to its own broker. Nothing in it waits longer than ``timeout``
    seconds for the broker, except a publish for its confirm (:data:`CONFIRM_WAIT`)."""

    def __init__(
        self, url: str, *, max_body: int | None = None, timeout: float = CONNECT_TIMEOUT
    ) -> None:
        self._url = url  # as given (with_vhost keeps its TLS keys and cluster for a door)
        self._connect_url, self._tls = _client_url(url)  # ConfigError: nothing to retry
        self._max_body = max_body  # no body above it is assembled: broker/amqp_decode.py
        self._timeout = timeout
        own = (self._connect_url.host or "127.0.0.1", self._connect_url.port or 5672)
        self._nodes = (own, *_cluster(URL(url).query.get(CLUSTER_KEY)))
        # a socket per node tried within timeout, then the handshake: within timeout as well
        self._connect_within = timeout * (len(self._nodes) + 1) if self._cluster else timeout
        # the robust connection's sockets: each after a drop starts at the next node
        self._failover = _Failover(self._nodes, timeout, self._factory(capped=True), rotate=True)
        self._connection: AbstractRobustConnection | None = None
        self._publish: aio_pika.abc.AbstractChannel | None = None
        self._lock = asyncio.Lock()
        self._arguments: dict[str, Arguments] = {}  # queue -> what it was declared with
        self._consumers: list[tuple[aio_pika.abc.AbstractQueue, str]] = []
        self._handling: set[asyncio.Task[Any]] = set()  # deliveries being handled
        self._idle = asyncio.Event()
        self._idle.set()
        self._doors: dict[str, Transport] = {}  # vhost -> a connection to a peer's door
        # the topology's declarations: a plain connection, kept between checks (declare())
        self._declarations: aio_pika.abc.AbstractConnection | None = None

    @property
    def _cluster(self) -> bool:
        return len(self._nodes) > 1

    @property
    def address(self) -> str:
        """``host:port`` of the broker (what errors name): each node of a cluster's."""
        if not self._cluster:
            return broker_address(self._url)
        named = [f"{host}:{port}" for host, port in self._nodes]
        return f"{', '.join(named[:-1])} or {named[-1]}"

    @property
    def node(self) -> str | None:
        """``host:port`` of the node the connection's last socket went to (None before it
        connected): one of a cluster's nodes, after a failover another one."""
        if self._connection is None:
            return None
        if not self._cluster:
            return broker_address(self._url)
        at = self._failover.current
        return None if at is None else "{}:{}".format(*self._nodes[at])

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

    @property
    def tls(self) -> bool:
        """Whether this transport speaks TLS to its broker."""
        return self._tls is not None

    def _unreachable(self, exc: BaseException) -> TransportError:
        why = _why(exc, self._timeout)
        if handshake_refusal(exc) is not None:  # its own advice: the CA file, the name
            return TransportError(f"cannot reach the broker at {self.address}: {why}")
        return TransportError(f"cannot reach the broker at {self.address}: {why}; {_CHECK}")

    def _context(self) -> ssl.SSLContext | None:
        return self._tls.context if self._tls is not None else None

    def _factory(self, *, capped: bool) -> aiormq.connection.TransportFactory | None:
        """How a socket is opened: checking the configured server name in the broker's
        certificate, and, when ``capped``, with no body above ``max_body`` assembled."""
        factory: aiormq.connection.TransportFactory | None = None
        if capped and self._max_body is not None:
            factory = BodyCap(self._max_body)
        if self._tls is not None and self._tls.server_name is not None:
            factory = _Named(self._tls.server_name, factory)
        return factory

    def _socket(self, connection: _C, *, capped: bool) -> _C:
        """``connection`` (not yet opened) with its socket made this transport's way
        (:meth:`_factory`, on every reconnection too); on a cluster, to the first node that
        answers: the robust connection (``capped``) rotating after a drop, the others from the
        node the robust connection is on."""
        factory = self._factory(capped=capped)
        if self._cluster:
            factory = (
                self._failover
                if capped
                else _Failover(
                    self._nodes, self._timeout, factory, first=self._failover.current or 0
                )
            )
        if factory is not None:
            connection.kwargs["transport_factory"] = factory
        return connection

    async def _open(self) -> aio_pika.abc.AbstractConnection:
        """A plain (not robust) connection of its own, open, within ``timeout``."""
        connection = self._socket(
            aio_pika.Connection(self._connect_url, ssl_context=self._context()), capped=False
        )
        try:
            await _within(self._connect_within, connection.connect(timeout=self._connect_within))
        except BaseException:
            await _close_quietly(connection, self._timeout)
            raise
        return connection

    async def connect(self) -> None:
        """Connect (the robust connection reconnects by itself afterwards); TransportError
        when the broker does not answer within ``timeout`` seconds, refuses, is not there, or
        is not the broker its TLS settings name."""
        connection = self._socket(
            aio_pika.RobustConnection(
                self._connect_url, ssl_context=self._context(), reconnect_interval=1
            ),
            capped=True,
        )
        try:
            await _within(self._connect_within, connection.connect(timeout=self._connect_within))
            channel = await _within(
                self._timeout,
                connection.channel(publisher_confirms=True, on_return_raises=True),
            )
        except _BROKER_GONE as exc:
            await _close_quietly(connection, self._timeout)  # or it keeps reconnecting
            raise self._unreachable(exc) from exc
        except BaseException:  # cancelled (the node stops while it connects): leave nothing
            await _close_quietly(connection, self._timeout)
            raise
        self._connection, self._publish = connection, channel

    async def aclose(self) -> None:
        """Close the connection; idempotent; gives up after :data:`CLOSE_WAIT` seconds (a
        broker that does not answer any more: the socket goes with the process)."""
        connection, self._connection = self._connection, None
        self._publish = None
        self._consumers.clear()
        doors, self._doors = list(self._doors.values()), {}
        for door in doors:
            await door.aclose()
        if connection is not None:
            await _close_quietly(connection, min(self._timeout, CLOSE_WAIT))
        await self._forget_declaring()

    def _channel(self) -> aio_pika.abc.AbstractChannel:
        if self._publish is None:
            raise TransportError("transport is not connected")
        return self._publish

    @contextlib.asynccontextmanager
    async def _short_lived(self) -> AsyncIterator[aio_pika.abc.AbstractConnection]:
        """A connection of its own for one piece of work, closed at the end."""
        try:
            connection = await self._open()
        except _BROKER_GONE as exc:
            raise self._unreachable(exc) from exc
        try:
            yield connection
        finally:
            await _close_quietly(connection, min(self._timeout, CLOSE_WAIT))

    async def declare(self, topology: Topology) -> list[str]:
        """Declare exchanges, queues and bindings idempotently (durable quorum queues); return
        the queues that exist with other arguments than these (kept as they are).

        Each peer's inbox exchange and queue are in that peer's door vhost, not here
        (:meth:`door`, :meth:`declare_inbox`). Declared over a plain connection of its own (not
        the robust one, so that a reconnection does not declare them again: a queue re-created
        with other arguments meanwhile, as a shovel re-creates its deleted source queue as a
        classic queue, would fail every reconnection), kept from one call to the next. The node
        calls this again every few seconds to put back what an operator deleted.
        """
        for attempt in range(2):
            kept = self._declarations
            reused = kept is not None and not kept.is_closed
            declarer = _Declarer(await self._declaring(), self._arguments, self._timeout)
            try:
                await self._declare_on(declarer, topology)
            except _BROKER_GONE as exc:
                await self._forget_declaring()
                if reused and attempt == 0:  # closed under us since the last call: a new one
                    continue
                raise TransportError(
                    f"cannot declare the topology at {self.address} ({_why(exc, self._timeout)})"
                ) from exc
            finally:
                await declarer.aclose()
            return declarer.mismatched
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _declare_on(self, declarer: _Declarer, topology: Topology) -> None:
        quorum: Arguments = {"x-queue-type": "quorum"}
        # Inboxes and submit: a message that keeps failing is dead-lettered to quarantine.
        poison: Arguments = {
            "x-queue-type": "quorum",
            "x-delivery-limit": topology.delivery_limit,
            "x-dead-letter-exchange": UNROUTABLE,
        }
        unroutable = await declarer.exchange(UNROUTABLE)
        quarantine = await declarer.queue(QUARANTINE, quorum)
        await declarer.bind(quarantine, unroutable)
        await declarer.queue(INBOX, poison)  # drains what an older version left there
        submit = await declarer.queue(SUBMIT, poison)
        await declarer.bind(submit, await declarer.exchange(SUBMIT_EXCHANGE))
        for peer in topology.peers:  # its inbox is in its door vhost (declare_inbox)
            await declarer.queue(out_queue(peer), quorum)
        for contact_point in topology.contact_points:
            await declarer.queue(deliver_queue(contact_point), quorum)

    async def _declaring(self) -> aio_pika.abc.AbstractConnection:
        """The connection the topology is declared on: kept from one check to the next (the
        node checks every few seconds; a new connection each time costs more CPU than the
        declarations), a new one once it is closed."""
        kept = self._declarations
        if kept is not None and not kept.is_closed:
            return kept
        await self._forget_declaring()
        try:
            connection = await self._open()
        except _BROKER_GONE as exc:
            raise self._unreachable(exc) from exc
        self._declarations = connection
        return connection

    async def _forget_declaring(self) -> None:
        connection, self._declarations = self._declarations, None
        if connection is not None:
            await _close_quietly(connection, min(self._timeout, CLOSE_WAIT))

    async def declare_queue(self, queue: str, *, delivery_limit: int = 5) -> bool:
        """Declare one more durable quorum queue of the node's own that it consumes, with a
        delivery limit as the inboxes have: a message that keeps failing is dead-lettered to
        quarantine. Idempotent; True when the queue has exactly these arguments.

        A queue that exists with other arguments (an older version declared it without a
        limit) is kept as it is and False is returned: it is never deleted under a publisher,
        and is consumed as it is. Declared over a short-lived plain connection of its own (a
        refused declaration closes its channel; a reconnection never declares it again).
        """
        arguments: Arguments = {
            "x-queue-type": "quorum",
            "x-delivery-limit": delivery_limit,
            "x-dead-letter-exchange": UNROUTABLE,
        }
        async with self._short_lived() as connection:
            declarer = _Declarer(connection, self._arguments, self._timeout)
            try:
                await declarer.queue(queue, arguments)
            except _BROKER_GONE as exc:
                raise TransportError(
                    f"cannot declare {queue} ({_why(exc, self._timeout)})"
                ) from exc
        if declarer.mismatched:
            self._arguments.pop(queue, None)  # consumed as it is (a passive declaration)
            return False
        return True

    async def door(self, vhost: str) -> Transport:
        """A connection of its own, as this transport's user, to ``vhost`` (a peer's door vhost,
        where that peer's inbox is): consumed with :meth:`consume` like this one, drained and
        closed with it. One AMQP connection per door: a channel cannot leave its vhost."""
        door = self._doors.get(vhost)
        if door is None:
            door = Transport(
                with_vhost(self._url, vhost), max_body=self._max_body, timeout=self._timeout
            )
            try:
                await door.connect()
            except TransportError as exc:
                raise TransportError(f"cannot open the door vhost {vhost}: {exc}") from exc
            self._doors[vhost] = door
        return door

    async def declare_inbox(self, sender: str) -> list[str]:
        """Declare, in this transport's vhost (``sender``'s door), ``sender``'s inbox exchange
        feeding its inbox queue, idempotently; return the queues that exist with other arguments.
        The queue has no delivery limit of the broker's (it would drop what passes it: no
        quarantine in a door to dead-letter into); the node counts deliveries itself."""
        quorum: Arguments = {"x-queue-type": "quorum"}
        async with self._short_lived() as connection:
            try:
                declarer = _Declarer(connection, self._arguments, self._timeout)
                queue = await declarer.queue(peer_inbox(sender), quorum)
                await declarer.bind(queue, await declarer.exchange(inbox_exchange(sender)))
                return declarer.mismatched
            except _BROKER_GONE as exc:
                raise TransportError(
                    f"cannot declare the inbox of {sender} ({_why(exc, self._timeout)})"
                ) from exc

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
        # The frame's properties built once, as aio-pika's Message would build them (the same
        # bytes on the wire), and published on the channel's own aiormq channel: a relay
        # publishes every message, and aio-pika's Message and Exchange cost more per publish
        # than what they add here.
        properties = aiormq.spec.Basic.Properties(
            content_type=CONTENT_TYPE,
            delivery_mode=PERSISTENT,
            headers=dict(headers) if headers else {},
            message_id=message_id,
            message_type=kind,
            priority=0,
            app_id="mlanet",
        )
        try:
            channel = self._channel()
            publishing = self._publish_on(channel, exchange, queue, body, properties)
            if self._connection is not None and self._connection.connected.is_set():
                # connected: the publish itself gives up after CONFIRM_WAIT (aiormq)
                confirmation = await publishing
            else:  # reconnecting: the wait for the channel is bounded too
                confirmation = await _within(CONFIRM_WAIT + 1, publishing)
        except aio_pika.exceptions.DeliveryError as exc:
            if isinstance(exc.frame, aiormq.spec.Basic.Nack):  # not returned: refused
                raise TransportError(
                    f"the broker refused the publish to {queue} (a full queue, or a quorum "
                    "queue electing a new leader after a node was lost); it does not hold it"
                ) from exc
            raise TransportError(f"broker could not route to {queue}") from exc
        except _BROKER_GONE as exc:
            raise TransportError(
                f"publish to {queue} failed ({_why(exc, CONFIRM_WAIT)}); the broker at "
                f"{self.address} may or may not hold it"
            ) from exc
        if not isinstance(confirmation, aiormq.spec.Basic.Ack):
            raise TransportError(f"broker did not confirm the publish to {queue}")

    @staticmethod
    async def _publish_on(
        channel: aio_pika.abc.AbstractChannel,
        exchange: str | None,
        queue: str,
        body: bytes,
        properties: aiormq.spec.Basic.Properties,
    ) -> Any:
        """What ``Exchange.publish`` does: a closed channel raises, a robust one that is
        reconnecting is waited for, then the publish waits for its confirm (a return, a nack or
        a reject raises DeliveryError)."""
        if channel.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError("the publishing channel is closed")
        underlay = await channel.get_underlay_channel()
        return await underlay.basic_publish(
            body,
            exchange=exchange or "",
            routing_key=queue if exchange is None else "",
            properties=properties,
            mandatory=True,
            timeout=CONFIRM_WAIT,
        )

    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> None:
        """Start consuming ``queue`` on a channel of its own; ``handler`` runs per delivery."""
        if self._connection is None:
            raise TransportError("transport is not connected")
        connection = self._connection
        capped = self._max_body is not None

        async def on_message(raw: AbstractIncomingMessage) -> None:
            task = asyncio.current_task()
            if task is not None:
                self._handling.add(task)
            self._idle.clear()
            try:
                await handler(_incoming(raw, capped=capped))
            finally:
                if task is not None:
                    self._handling.discard(task)
                if not self._handling:
                    self._idle.set()

        async def start() -> tuple[aio_pika.abc.AbstractQueue, str]:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=prefetch)
            # Declared through the robust channel, which registers the queue so that the
            # consumer is restored after a reconnection (get_queue would not be), and with the
            # arguments the node declared it with, so that a queue deleted under the node is
            # declared again when the consumer is restored (a passive declare would fail on
            # every attempt, forever).
            arguments = self._arguments.get(queue)
            if arguments is None:
                declared = await channel.declare_queue(queue, passive=True)
            else:
                declared = await channel.declare_queue(queue, durable=True, arguments=arguments)
            return declared, await declared.consume(on_message, no_ack=False)

        try:
            self._consumers.append(await _within(self._timeout, start()))
        except _BROKER_GONE as exc:
            raise TransportError(
                f"cannot consume {queue} at {self.address} ({_why(exc, self._timeout)})"
            ) from exc

    async def drain(self, within: float, hurry: asyncio.Event | None = None) -> int:
        """Stop every consumer (no new deliveries), wait up to ``within`` seconds (or until
        ``hurry`` is set) for the deliveries being handled to finish, then cancel those still
        being handled; return how many that was. Nothing is lost: what is not acked goes back
        to its queue when the connection closes, and is handled again (deduplicated)."""
        if self._doors:  # every door's deliveries, alongside this connection's
            counts = await asyncio.gather(
                self._drain(within, hurry),
                *(door.drain(within, hurry) for door in self._doors.values()),
            )
            return sum(counts)
        return await self._drain(within, hurry)

    async def _drain(self, within: float, hurry: asyncio.Event | None) -> int:
        consumers, self._consumers = self._consumers, []

        async def cancel(declared: aio_pika.abc.AbstractQueue, tag: str) -> None:
            with contextlib.suppress(*_BROKER_GONE):
                await declared.cancel(tag)

        with contextlib.suppress(TimeoutError):  # a broker that does not answer: the close
            await _within(min(self._timeout, 2.0), asyncio.gather(*(cancel(*c) for c in consumers)))
        waits = [asyncio.ensure_future(self._idle.wait())]
        if hurry is not None:
            waits.append(asyncio.ensure_future(hurry.wait()))
        try:
            await asyncio.wait(waits, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        unfinished = list(self._handling)
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.wait(unfinished, timeout=1.0)
        return len(unfinished)

    async def get(self, queue: str) -> Incoming | None:
        """Fetch one message (for CLI readers); None when the queue is empty."""
        channel = self._channel()
        try:
            declared = await channel.get_queue(queue, ensure=False)
            raw = await _within(self._timeout, declared.get(no_ack=False, fail=False))
        except _BROKER_GONE as exc:
            raise TransportError(
                f"cannot read {queue} at {self.address} ({_why(exc, self._timeout)})"
            ) from exc
        if raw is None:
            return None
        return _incoming(raw, capped=self._max_body is not None)

    async def _passive(self, queue: str) -> tuple[int, int]:
        """(messages ready, consumers) of a queue; TransportError if it does not exist."""
        if self._connection is None:
            raise TransportError("transport is not connected")
        connection = self._connection

        async def passive() -> aio_pika.abc.AbstractQueue:
            async with connection.channel() as channel:
                return await channel.declare_queue(queue, passive=True)

        try:
            declared = await _within(self._timeout, passive())
        except OSError as exc:
            raise self._unreachable(exc) from exc
        except _BROKER_GONE as exc:
            raise TransportError(f"queue {queue} is not there") from exc
        result = declared.declaration_result
        return int(result.message_count or 0), int(result.consumer_count or 0)

    async def queue_depth(self, queue: str) -> int:
        return (await self._passive(queue))[0]

    async def consumer_count(self, queue: str) -> int:
        return (await self._passive(queue))[1]


async def _close_quietly(connection: aio_pika.abc.AbstractConnection, within: float) -> None:
    """Close ``connection``, giving up after ``within`` seconds; never raises (but a
    cancellation of the caller goes on)."""
    with contextlib.suppress(*_BROKER_GONE):
        await _within(within, connection.close())
