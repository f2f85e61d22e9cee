"""What mlanet imports from aiormq and pamqp directly, and patches (``broker/amqp_decode.py``), is
still there in the installed versions, with the shape the patches assume. pyproject.toml pins
both to a minor version; a newer one comes in only once this test passes on it (a rename there
would otherwise leave the node's decoding unhardened without a single error)."""

from __future__ import annotations

import inspect
import struct
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import aiormq
import aiormq.connection
import aiormq.exceptions
import pytest
from pamqp import body, commands, common, decode, header, heartbeat

import mlanet.broker.amqp_decode as amqp_decode
import mlanet.broker.transport  # noqa: F401  # importing the transport installs the hardening


def _parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_the_installed_versions_are_the_pinned_ones() -> None:
    assert version("aiormq").startswith("7.2.")
    assert version("pamqp").startswith("4.0.")


@pytest.mark.parametrize(
    ("name", "method", "table"),
    [
        ("short_str", "shortstr", None),
        ("timestamp", "timestamp", b"T"),
        ("field_table", "table", b"F"),
        ("field_array", "array", b"A"),
    ],
)
def test_each_patched_decoder_is_where_pamqp_dispatches_from(
    name: str, method: str, table: bytes | None
) -> None:
    """pamqp finds its decoders by module attribute, in ``METHODS`` (for properties and method
    arguments) and in ``TABLE_MAPPING`` (for table values): the hardened ones are in all three,
    and the originals they wrap took one bytes argument, as the replacements do."""
    ours = getattr(amqp_decode, name)
    assert getattr(decode, name) is ours
    assert decode.METHODS[method] is ours
    if table is not None:
        assert decode.TABLE_MAPPING[table] is ours
    assert _parameters(ours) == ["value"]
    original = getattr(amqp_decode, f"_original_{name}", None)
    if original is not None:
        assert _parameters(original) == ["value"]


def test_the_originals_still_raise_where_the_hardening_steps_in() -> None:
    """What the wrappers catch is what pamqp raises: without it a wrapper would do nothing."""
    with pytest.raises(UnicodeDecodeError):
        amqp_decode._original_short_str(b"\x01\xff")
    with pytest.raises((ValueError, OverflowError, OSError)):
        amqp_decode._original_timestamp(struct.pack(">Q", 2**63))
    assert decode.short_str(b"\x01\xff") == (2, "\ufffd")


def test_the_table_helpers_used_are_there() -> None:
    assert callable(decode.embedded_value)
    assert _parameters(decode.embedded_value) == ["value"]
    assert isinstance(common.Struct.integer, struct.Struct)
    assert common.Struct.integer.format == ">I"


def test_the_content_header_patch_fits_pamqp() -> None:
    assert header.ContentHeader.unmarshal is amqp_decode._header_unmarshal
    assert _parameters(amqp_decode._original_header_unmarshal) == ["self", "data"]
    content = header.ContentHeader(0, 10, commands.Basic.Properties())
    for attribute in ("class_id", "weight", "body_size", "properties"):
        assert hasattr(content, attribute)
    assert isinstance(commands.Basic.Properties().headers, dict | None)
    assert body.ContentBody(b"x").value == b"x"
    assert heartbeat.Heartbeat() is not None


def test_aiormq_builds_its_frame_reader_through_the_patched_name() -> None:
    """aiormq's connection makes ``FrameReceiver(reader)`` by module attribute (so the patch
    reaches it), and the reader's shape is what the subclass overrides."""
    assert aiormq.connection.FrameReceiver is amqp_decode._Receiver
    source = inspect.getsource(aiormq.connection.Connection)
    assert "FrameReceiver(reader)" in source
    original = amqp_decode._Receiver.__mro__[1]
    assert original.__name__ == "FrameReceiver"
    assert _parameters(original.__init__) == ["self", "reader"]
    assert inspect.iscoroutinefunction(original.get_frame)
    assert _parameters(original.get_frame) == ["self"]
    assert aiormq.connection.ReceivedFrame is not None


def test_the_transport_factories_have_the_shape_body_cap_uses() -> None:
    factories = (
        aiormq.connection.TransportFactory,
        aiormq.connection.TCPTransportFactory,
        aiormq.connection.TLSTransportFactory,
    )
    for factory in factories:
        assert inspect.iscoroutinefunction(factory.create)
        assert _parameters(factory.create) == ["self", "url", "kwargs"]
    assert "transport_factory" in inspect.signature(aiormq.connection.Connection).parameters


@pytest.mark.parametrize(
    "name",
    [
        "AMQPError",
        "ProbableAuthenticationError",
        "ConnectionNotAllowed",
        "ChannelPreconditionFailed",
        "ChannelAccessRefused",
    ],
)
def test_the_aiormq_errors_the_transport_tells_apart_exist(name: str) -> None:
    error = getattr(aiormq.exceptions, name)
    assert issubclass(error, aiormq.exceptions.AMQPError)


def test_the_publisher_confirm_type_exists() -> None:
    """``aiormq.spec`` is pamqp's commands: a confirm is a ``Basic.Ack``."""
    assert aiormq.spec is commands
    assert isinstance(aiormq.spec.Basic.Ack, type)
