"""Total, bounded decoding of AMQP frames: a peer's bytes must never break the node's
connection, nor fill its memory.

A peer controls every byte of its messages' properties and routing key, and RabbitMQ passes them
on unchanged. pamqp (under aio-pika) raises on some of them: a short string that is not UTF-8
(``message_id``, ``type``, the routing key...), a ``timestamp`` beyond the year 9999, a header
name that is not UTF-8, and tables or arrays nested deeper than Python's recursion limit. An
exception while a frame is unmarshalled closes the whole connection: every consumer of the node
stops, the message is redelivered after the reconnection and breaks it again, until the queue's
delivery limit dead-letters it, together with every good message that was in flight with it.

:func:`harden` makes these decoders total, once per process, before any frame is read:

- text that is not UTF-8 is decoded with U+FFFD replacement characters;
- a timestamp outside what :class:`datetime.datetime` can hold decodes as ``None``;
- a table or array nested deeper than :data:`MAX_NESTING` decodes as an empty one, and a value
  of an unknown type ends its table or array (both are length-prefixed, so the rest of the
  frame is still read exactly).

As a last resort, a content header whose properties cannot be read at all (inconsistent
lengths, flags for properties that are not there) keeps its body size and gets empty
properties, so the delivery still reaches the node, which refuses it for its missing content
type. Other frames that cannot be read still raise: those are framing errors of the broker. The
node never trusts properties (``docs/PROTOCOL.md`` section 12); the pipeline compares the few it
checks (``content_type``, ``content_encoding``) with exact values, which a replaced value
never equals.

A peer's bytes must not exhaust the node's memory either. aiormq assembles a message body from
its frames in memory before anyone sees it, up to RabbitMQ's ``max_message_size`` (128 MiB by
default), ``prefetch`` times at once. A connection opened with :class:`BodyCap` never does that
for a body above its cap: the content header announces the body's size, and from there on the
body frames of that channel are read one at a time and only hashed, keeping the first
``max_body + 1`` bytes (over the cap for every check that reads the length). The delivery then
arrives with that prefix as its body and two headers only this module sets (the same names
sent by a peer are removed): :data:`CUT_SIZE`, the whole size, and :data:`CUT_SHA256`, the
SHA-256 of the whole body, so that the node refuses it as ``oversized`` and quarantines what it
keeps of it. Nothing is lost and the connection stays open.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import struct
import weakref
from collections import deque
from typing import Any

import aiormq.connection
from aiormq.connection import FrameReceiver, TCPTransportFactory, TLSTransportFactory
from pamqp import commands, common, decode, header
from pamqp.body import ContentBody
from pamqp.heartbeat import Heartbeat
from yarl import URL

__all__ = ["CUT_SHA256", "CUT_SIZE", "MAX_NESTING", "BodyCap", "harden"]

MAX_NESTING = 16

_original_short_str = decode.short_str
_original_timestamp = decode.timestamp
_original_header_unmarshal = header.ContentHeader.unmarshal
_depth = 0


def short_str(value: bytes) -> tuple[int, str]:
    """A short string; invalid UTF-8 becomes U+FFFD instead of an exception."""
    try:
        return _original_short_str(value)
    except UnicodeDecodeError:
        length = value[0]
        return length + 1, value[1 : length + 1].decode("utf-8", "replace")


def timestamp(value: bytes) -> tuple[int, datetime.datetime | None]:
    """A timestamp; one that no datetime can hold is ``None``."""
    if len(value) < 8:
        return _original_timestamp(value)  # truncated: a framing error, raised as before
    try:
        return _original_timestamp(value)
    except (ValueError, OverflowError, OSError):
        return 8, None


def _length(value: bytes) -> int:
    """The length prefix of a table or array, checked against the bytes available."""
    try:
        length: int = common.Struct.integer.unpack(value[0:4])[0]
    except struct.error as err:
        raise ValueError("Could not unpack a table or array length") from err
    if 4 + length > len(value):
        raise ValueError("Table or array length exceeds available data")
    return length


_FIXED = {
    b"t": 1, b"b": 1, b"B": 1, b"s": 2, b"u": 2, b"I": 4, b"i": 4, b"l": 8, b"L": 8,
    b"f": 4, b"d": 8, b"D": 5, b"T": 8, b"V": 0,
}  # fmt: skip
_PREFIXED = {b"S", b"x", b"F", b"A"}


def _extent(value: bytes, offset: int, end: int) -> int:
    """Where the embedded value at ``offset`` ends, or -1 when it cannot be read.

    Each value is sliced to its own extent before decoding: slicing the rest of the table for
    every entry, as pamqp does, makes a table of many small entries cost quadratic time.
    """
    kind = value[offset : offset + 1]
    if kind in _FIXED:
        stop = offset + 1 + _FIXED[kind]
    elif kind in _PREFIXED and offset + 5 <= end:
        stop = offset + 5 + common.Struct.integer.unpack(value[offset + 1 : offset + 5])[0]
    else:
        return -1
    return stop if stop <= end else -1


def _values(value: bytes, keyed: bool) -> tuple[int, list[tuple[str, common.FieldValue]]]:
    """Decode a length-prefixed table (``keyed``) or array, leniently and to a bounded depth.

    A value of an unknown or malformed type ends the decoding of this table or array (what was
    read so far is kept); the length prefix still says where the enclosing value goes on.
    """
    global _depth
    end = 4 + _length(value)
    pairs: list[tuple[str, common.FieldValue]] = []
    if _depth >= MAX_NESTING:
        return end, pairs
    _depth += 1
    try:
        offset = 4
        while offset < end:
            key = ""
            if keyed:
                key_length = value[offset]
                offset += 1
                if offset + key_length > end:
                    break
                key = value[offset : offset + key_length].decode("utf-8", "replace")
                offset += key_length
            stop = _extent(value, offset, end)
            if stop < 0:
                break
            try:
                _, result = decode.embedded_value(value[offset:stop])
            except (ValueError, struct.error, IndexError, ArithmeticError):
                break
            offset = stop
            pairs.append((key, result))
    finally:
        _depth -= 1
    return end, pairs


def field_table(value: bytes) -> tuple[int, common.FieldTable]:
    """A field table: keys that are not UTF-8 get U+FFFD; see :func:`_values` for the rest."""
    end, pairs = _values(value, keyed=True)
    return end, dict(pairs)


def field_array(value: bytes) -> tuple[int, common.FieldArray]:
    """A field array; see :func:`_values`."""
    end, pairs = _values(value, keyed=False)
    return end, [item for _, item in pairs]


def _header_unmarshal(self: header.ContentHeader, data: bytes) -> None:
    """A content header whose properties cannot be read at all keeps its body size and gets
    empty properties (the pipeline then refuses it for its missing content type)."""
    try:
        _original_header_unmarshal(self, data)
    except (ValueError, struct.error, TypeError, IndexError, ArithmeticError, RecursionError):
        if len(data) < 12:
            raise
        self.class_id, self.weight, self.body_size = struct.unpack(">HHQ", data[0:12])
        self.properties = commands.Basic.Properties()


# --- bodies above the cap are never assembled -------------------------------------------------
CUT_SIZE = "x-mlanet-cut-size"  # the whole body's size, on a delivery whose body was cut
CUT_SHA256 = "x-mlanet-cut-sha256"  # the SHA-256 of the whole body (hex)
_CUT_HEADERS = (CUT_SIZE, CUT_SHA256)
_caps: weakref.WeakKeyDictionary[asyncio.StreamReader, int] = weakref.WeakKeyDictionary()


class BodyCap(aiormq.connection.TransportFactory):
    """Opens aiormq's socket (TCP, or TLS for ``amqps``) for a connection on which no body above
    ``max_body`` bytes is assembled (pass it as aiormq's ``transport_factory``)."""

    def __init__(self, max_body: int) -> None:
        if max_body < 1:
            raise ValueError("max_body must be positive")
        self.max_body = max_body

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        plain = TLSTransportFactory() if url.scheme == "amqps" else TCPTransportFactory()
        reader, writer = await plain.create(url, **kwargs)
        _caps[reader] = self.max_body
        return reader, writer


class _Cut:
    """A body being read past: hashed whole, its first ``keep`` bytes kept."""

    def __init__(self, content: header.ContentHeader, keep: int) -> None:
        self.header = content
        self.keep = keep
        self.kept = bytearray()
        self.read = 0
        self.digest = hashlib.sha256()

    def feed(self, value: bytes) -> bool:
        """Take one body frame; True once the whole body has been read."""
        self.digest.update(value)
        self.read += len(value)
        if len(self.kept) < self.keep:
            self.kept += value[: self.keep - len(self.kept)]
        return self.read >= self.header.body_size

    def frames(self) -> tuple[header.ContentHeader, ContentBody]:
        """The header and the one body frame the channel gets instead."""
        headers = dict(self.header.properties.headers or {})
        headers[CUT_SIZE] = self.header.body_size
        headers[CUT_SHA256] = self.digest.hexdigest()
        self.header.properties.headers = headers
        self.header.body_size = len(self.kept)
        return self.header, ContentBody(bytes(self.kept))


def _without_cut_headers(content: header.ContentHeader) -> None:
    headers = content.properties.headers
    if headers and any(name in headers for name in _CUT_HEADERS):
        content.properties.headers = {k: v for k, v in headers.items() if k not in _CUT_HEADERS}


class _Receiver(FrameReceiver):
    """aiormq's frame reader; on a :class:`BodyCap` connection, a body above the cap is read
    frame by frame and handed on cut (see the module docstring). Frames read past are handed
    on as heartbeats (the connection sees traffic, no channel sees them)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        super().__init__(reader)
        self._cap = _caps.get(reader)
        self._cutting: dict[int, _Cut] = {}
        self._ready: deque[aiormq.connection.ReceivedFrame] = deque()

    async def get_frame(self) -> aiormq.connection.ReceivedFrame:
        if self._ready:
            return self._ready.popleft()
        weight, channel, frame = await super().get_frame()
        if self._cap is None:
            return weight, channel, frame
        cut = self._cutting.get(channel)
        if cut is not None:
            if not isinstance(frame, ContentBody):  # not a body frame: a framing error
                del self._cutting[channel]
                return weight, channel, frame
            if not cut.feed(frame.value):
                return weight, 0, Heartbeat()
            del self._cutting[channel]
            content, body = cut.frames()
            self._ready.append((0, channel, body))
            return weight, channel, content
        if isinstance(frame, header.ContentHeader):
            _without_cut_headers(frame)
            if frame.body_size > self._cap:
                self._cutting[channel] = _Cut(frame, self._cap + 1)
                return weight, 0, Heartbeat()
        return weight, channel, frame


_hardened = False


def harden() -> None:
    """Install the total decoders into pamqp, and the frame reader that cuts a
    :class:`BodyCap` connection's bodies into aiormq (idempotent)."""
    global _hardened
    if _hardened:
        return
    decode.short_str = short_str
    decode.timestamp = timestamp  # type: ignore[assignment]  # None for an impossible time
    decode.field_table = field_table
    decode.field_array = field_array
    decode.METHODS["shortstr"] = short_str
    decode.METHODS["timestamp"] = timestamp
    decode.METHODS["table"] = field_table
    decode.METHODS["array"] = field_array
    decode.TABLE_MAPPING[b"T"] = timestamp
    decode.TABLE_MAPPING[b"F"] = field_table
    decode.TABLE_MAPPING[b"A"] = field_array
    header.ContentHeader.unmarshal = _header_unmarshal  # type: ignore[method-assign]
    aiormq.connection.FrameReceiver = _Receiver  # type: ignore[misc]  # a BodyCap's bodies
    _hardened = True
