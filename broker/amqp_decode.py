"""Total decoding of AMQP frames: a peer's bytes must never break the node's connection.

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
"""

from __future__ import annotations

import datetime
import struct

from pamqp import commands, common, decode, header

__all__ = ["MAX_NESTING", "harden"]

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


_hardened = False


def harden() -> None:
    """Install the total decoders into pamqp (idempotent)."""
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
    _hardened = True
