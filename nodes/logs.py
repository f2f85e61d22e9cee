"""Logging set-up, done once by the entry point: structured JSON lines on stderr.

Modules call ``structlog.get_logger()`` and bind ``message_id``, ``origin`` and ``destination``
per message; case content is never logged (tests plant canaries to prove it).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping

import structlog

__all__ = ["configure_logging", "withhold_messages"]


def configure_logging(level: str = "info") -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # aio-pika and aiormq log through the standard library, and a few of their error paths
    # print a whole AMQP message, body and all (case content): e.g. "Unhandled message ...
    # returning" when the broker returns a publish. Their lines keep coming, without it.
    root = logging.getLogger()
    if not any(getattr(h, "_mlanet", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.addFilter(withhold_messages)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler._mlanet = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.setLevel(logging.WARNING)


class _Withheld:
    """Formats the same with %s and %r."""

    def __init__(self, text: str) -> None:
        self._text = text

    def __repr__(self) -> str:
        return self._text

    __str__ = __repr__


def _withheld(value: object) -> object:
    if isinstance(value, bytes | bytearray | memoryview):
        return _Withheld(f"<{len(value)} bytes withheld>")
    if hasattr(value, "body"):  # an AMQP message (aiormq DeliveredMessage, aio-pika Message)
        return _Withheld(f"<{type(value).__name__} withheld>")
    return value


def withhold_messages(record: logging.LogRecord) -> bool:
    """A logging filter: a record keeps its text, but no argument that is an AMQP message or
    raw bytes is ever formatted into it."""
    if isinstance(record.args, Mapping):
        record.args = {key: _withheld(value) for key, value in record.args.items()}
    elif record.args:
        record.args = tuple(_withheld(value) for value in record.args)
    return True
