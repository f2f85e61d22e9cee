"""A peer's AMQP property bytes never make frame decoding raise (broker/amqp_decode.py).

Before the hardening, each of these made pamqp raise while the node's connection read the
frame: the connection closed, every consumer stopped, and the message came back after the
reconnection to break it again (the integration battery shows the node now unharmed).
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import tracemalloc
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiormq.connection
import aiormq.exceptions
import pamqp.frame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import commands, frame, header
from pamqp.body import ContentBody
from pamqp.heartbeat import Heartbeat
from yarl import URL

import mlanet.broker.transport  # importing the transport installs the hardening
from mlanet.broker.amqp_decode import CUT_SHA256, CUT_SIZE, MAX_NESTING, BodyCap
from mlanet.broker.transport import CutBody, body_sha256, body_size

_SETTINGS = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

# Property flag bits of Basic.Properties, in wire order.
_FLAG = {
    "content_type": 1 << 15,
    "headers": 1 << 13,
    "message_id": 1 << 7,
    "timestamp": 1 << 6,
    "type": 1 << 5,
}


def _short(raw: bytes) -> bytes:
    return struct.pack(">B", len(raw)) + raw


def _table(entries: bytes) -> bytes:
    return struct.pack(">I", len(entries)) + entries


def _header_frame(flags: int, properties: bytes, body_size: int = 42) -> bytes:
    payload = struct.pack(">HHQ", 60, 0, body_size) + struct.pack(">H", flags) + properties
    return struct.pack(">BHI", 2, 1, len(payload)) + payload + b"\xce"


def _properties(data: bytes) -> tuple[header.ContentHeader, commands.Basic.Properties]:
    _, channel, content = frame.unmarshal(data)
    assert channel == 1
    assert isinstance(content, header.ContentHeader)
    return content, content.properties


def test_a_message_id_that_is_not_utf8_decodes_with_replacement_characters() -> None:
    content, props = _properties(_header_frame(_FLAG["message_id"], _short(b"id-\xff\xfe")))
    assert props.message_id == "id-\ufffd\ufffd"
    assert content.body_size == 42


def test_a_content_type_that_is_not_utf8_never_equals_the_mlanet_content_type() -> None:
    raw = b"application/vnd.mlanet+json; v=1\xff"
    _, props = _properties(_header_frame(_FLAG["content_type"], _short(raw)))
    assert props.content_type == "application/vnd.mlanet+json; v=1\ufffd"
    assert props.content_type != mlanet.broker.transport.CONTENT_TYPE


def test_a_timestamp_beyond_the_year_9999_decodes_as_none() -> None:
    _, props = _properties(_header_frame(_FLAG["timestamp"], struct.pack(">Q", 2**63)))
    assert props.timestamp is None


def test_an_ordinary_timestamp_still_decodes() -> None:
    _, props = _properties(_header_frame(_FLAG["timestamp"], struct.pack(">Q", 1_700_000_000)))
    assert props.timestamp == datetime.fromtimestamp(1_700_000_000, tz=UTC)


def test_a_header_name_that_is_not_utf8_decodes_with_a_replacement_character() -> None:
    entries = _short(b"x-\xc3\x28") + b"I" + struct.pack(">i", 7) + _short(b"ok") + b"t\x01"
    _, props = _properties(_header_frame(_FLAG["headers"], _table(entries)))
    assert props.headers == {"x-\ufffd(": 7, "ok": True}


def test_a_timestamp_inside_the_headers_beyond_the_year_9999_is_none() -> None:
    entries = _short(b"when") + b"T" + struct.pack(">Q", 2**64 - 1) + _short(b"n") + b"b\x05"
    _, props = _properties(_header_frame(_FLAG["headers"], _table(entries)))
    assert props.headers == {"when": None, "n": 5}


def _nested_table(depth: int) -> bytes:
    inner = _table(_short(b"leaf") + b"I" + struct.pack(">i", 1))
    for _ in range(depth):
        inner = _table(_short(b"n") + b"F" + inner)
    return inner


def test_tables_nested_thousands_deep_are_cut_at_the_nesting_cap() -> None:
    content, props = _properties(
        _header_frame(_FLAG["headers"] | _FLAG["type"], _nested_table(5000) + _short(b"after"))
    )
    depth, value = 0, props.headers
    while isinstance(value, dict) and value:
        value = value["n"]
        depth += 1
    assert depth == MAX_NESTING
    assert props.message_type == "after"  # the bytes after the deep table are read exactly
    assert content.body_size == 42


def test_arrays_nested_thousands_deep_are_cut_at_the_nesting_cap() -> None:
    inner = struct.pack(">I", 0)
    for _ in range(5000):
        element = b"A" + inner
        inner = struct.pack(">I", len(element)) + element
    _, props = _properties(_header_frame(_FLAG["headers"], _table(_short(b"a") + b"A" + inner)))
    depth, value = 0, props.headers["a"]
    while isinstance(value, list) and value:
        value = value[0]
        depth += 1
    assert depth == MAX_NESTING - 1


def test_a_value_of_unknown_type_ends_its_table_and_the_frame_goes_on() -> None:
    entries = _short(b"a") + b"b\x01" + _short(b"b") + b"Z\x00\x00" + _short(b"c") + b"b\x02"
    _, props = _properties(
        _header_frame(_FLAG["headers"] | _FLAG["type"], _table(entries) + _short(b"kind"))
    )
    assert props.headers == {"a": 1}
    assert props.message_type == "kind"


def test_properties_that_cannot_be_read_at_all_become_empty_and_keep_the_body_size() -> None:
    # The flags promise a content type and headers; the bytes end after two of them.
    content, props = _properties(
        _header_frame(_FLAG["content_type"] | _FLAG["headers"], b"\x05ab", 1234)
    )
    assert content.body_size == 1234
    assert props.content_type is None
    assert props.headers is None


@_SETTINGS
@given(flags=st.integers(min_value=0, max_value=0xFFFE), properties=st.binary(max_size=300))
def test_any_property_bytes_decode_without_raising(flags: int, properties: bytes) -> None:
    content, _ = _properties(_header_frame(flags & 0xFFFE, properties, 99))
    assert content.body_size == 99


_FIELD = st.recursive(
    st.one_of(
        st.builds(lambda v: b"I" + struct.pack(">i", v), st.integers(-(2**31), 2**31 - 1)),
        st.builds(lambda v: b"T" + struct.pack(">Q", v), st.integers(0, 2**64 - 1)),
        st.builds(lambda v: b"S" + struct.pack(">I", len(v)) + v, st.binary(max_size=12)),
        st.builds(lambda v: b"D" + v, st.binary(min_size=5, max_size=5)),
        st.sampled_from([b"t\x01", b"V", b"d" + b"\x7f\xf8" + b"\x00" * 6, b"Q\x01"]),
    ),
    lambda children: st.one_of(
        st.builds(lambda items: b"A" + _table(b"".join(items)), st.lists(children, max_size=4)),
        st.builds(
            lambda pairs: b"F" + _table(b"".join(_short(k) + v for k, v in pairs)),
            st.lists(st.tuples(st.binary(max_size=6), children), max_size=4),
        ),
    ),
    max_leaves=25,
)


@_SETTINGS
@given(
    pairs=st.lists(st.tuples(st.binary(max_size=8), _FIELD), max_size=6),
    tail=st.binary(max_size=10),
)
def test_any_header_table_decodes_and_the_next_property_is_read_exactly(
    pairs: list[tuple[bytes, bytes]], tail: bytes
) -> None:
    entries = b"".join(_short(k) + v for k, v in pairs)
    _, props = _properties(
        _header_frame(_FLAG["headers"] | _FLAG["type"], _table(entries) + _short(tail))
    )
    assert isinstance(props.headers, dict)
    assert props.message_type == tail.decode("utf-8", "replace")


# --- a body above a BodyCap connection's cap is never assembled ----------------------------------
_CHUNK = bytes(range(256)) * 512  # one 128 KiB body frame, sent again and again


def _frame(frame: Any, channel: int) -> bytes:
    return pamqp.frame.marshal(frame, channel)


def _deliver(tag: int) -> commands.Basic.Deliver:
    return commands.Basic.Deliver(consumer_tag="c", delivery_tag=tag, exchange="x", routing_key="")


def _content(size: int, headers: dict[str, Any] | None = None) -> header.ContentHeader:
    return header.ContentHeader(0, size, commands.Basic.Properties(headers=headers))


async def _frames_from(
    stream: Callable[[], AsyncIterator[bytes]], *, cap: int | None
) -> AsyncIterator[tuple[int, object]]:
    """What aiormq's frame reader hands on, for the bytes a server writes (with backpressure)
    over a real socket opened by BodyCap(cap), or by aiormq's own TCP factory."""

    async def serve(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for data in stream():
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = URL(f"amqp://127.0.0.1:{port}/")
    factory = BodyCap(cap) if cap is not None else aiormq.connection.TCPTransportFactory()
    reader, writer = await factory.create(url)
    receiver = aiormq.connection.FrameReceiver(reader)
    try:
        while True:
            try:
                _, channel, frame = await receiver.get_frame()
            except (StopAsyncIteration, aiormq.exceptions.AMQPConnectionError):
                return
            if not isinstance(frame, Heartbeat):
                yield channel, frame
    finally:
        writer.close()
        server.close()


async def test_a_body_above_the_cap_is_read_past_not_assembled() -> None:
    """A 64 MiB body on a connection capped at 1024 bytes: handed on as its first 1025 bytes
    with the whole size and SHA-256, while Python's memory never holds more than a few frames
    of it; a delivery on another channel in the middle of it and the next one on its own
    channel come through whole."""
    frames = 512
    whole = hashlib.sha256()
    for _ in range(frames):
        whole.update(_CHUNK)

    async def stream() -> AsyncIterator[bytes]:
        yield _frame(_deliver(1), 1)
        yield _frame(_content(frames * len(_CHUNK), {"x-peer": "kept"}), 1)
        for i in range(frames):
            yield _frame(ContentBody(_CHUNK), 1)
            if i == 7:
                yield (
                    _frame(_deliver(1), 2) + _frame(_content(3), 2) + _frame(ContentBody(b"abc"), 2)
                )
        yield _frame(_deliver(2), 1) + _frame(_content(5), 1) + _frame(ContentBody(b"after"), 1)

    tracemalloc.start()
    try:
        seen = [item async for item in _frames_from(stream, cap=1024)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, f"{peak} bytes held for a 64 MiB body"
    kinds = [(channel, type(frame).__name__) for channel, frame in seen]
    assert kinds == [
        (1, "Deliver"),
        (2, "Deliver"), (2, "ContentHeader"), (2, "ContentBody"),
        (1, "ContentHeader"), (1, "ContentBody"),
        (1, "Deliver"), (1, "ContentHeader"), (1, "ContentBody"),
    ]  # fmt: skip
    cut_header, cut_body = seen[4][1], seen[5][1]
    assert isinstance(cut_header, header.ContentHeader)
    assert isinstance(cut_body, ContentBody)
    assert cut_header.body_size == 1025
    assert cut_body.value == _CHUNK[:1025]
    assert cut_header.properties.headers == {
        "x-peer": "kept",
        CUT_SIZE: frames * len(_CHUNK),
        CUT_SHA256: whole.hexdigest(),
    }
    assert [f.value for _, f in seen if isinstance(f, ContentBody)] == [
        b"abc", _CHUNK[:1025], b"after"
    ]  # fmt: skip


async def test_a_peer_cannot_set_the_cut_headers_and_an_uncapped_connection_cuts_nothing() -> None:
    forged = {CUT_SIZE: 5, CUT_SHA256: "00" * 32, "x-other": 1}

    async def stream() -> AsyncIterator[bytes]:
        yield _frame(_deliver(1), 1) + _frame(_content(5, forged), 1)
        yield _frame(ContentBody(b"small"), 1)
        yield _frame(_deliver(2), 1) + _frame(_content(len(_CHUNK)), 1)
        yield _frame(ContentBody(_CHUNK), 1)

    capped = [frame async for _, frame in _frames_from(stream, cap=1024)]
    assert isinstance(capped[1], header.ContentHeader)
    assert capped[1].properties.headers == {"x-other": 1}  # the peer's cut headers are gone
    assert isinstance(capped[4], header.ContentHeader)
    assert capped[4].body_size == 1025

    plain = [frame async for _, frame in _frames_from(stream, cap=None)]
    assert isinstance(plain[4], header.ContentHeader)
    assert plain[4].body_size == len(_CHUNK)
    assert isinstance(plain[5], ContentBody)
    assert plain[5].value == _CHUNK


def test_a_cut_body_reports_the_whole_size_and_digest() -> None:
    cut = CutBody(b"x" * 1025, 64 * 1024 * 1024, b"\x01" * 32)
    assert len(cut) == 1025
    assert cut[:4] == b"xxxx"
    assert (body_size(cut), body_sha256(cut)) == (64 * 1024 * 1024, b"\x01" * 32)
    assert (body_size(b"abc"), body_sha256(b"abc")) == (3, hashlib.sha256(b"abc").digest())
