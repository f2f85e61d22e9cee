"""Logging set-up, done once by the entry point: structured JSON lines on stderr.

Modules call ``structlog.get_logger()`` and bind ``message_id``, ``origin`` and ``destination``
per message; case content is never logged (tests plant canaries to prove it).

Every line on stderr is one JSON object, the libraries' lines too (``library_log``). An
exception is never logged with its text or a traceback (either can hold values, i.e. case
content): :func:`error_fields` gives its type and where it happened (file, line, function),
as the fields of one event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog
from structlog.contextvars import bind_contextvars, reset_contextvars

__all__ = [
    "bound",
    "configure_logging",
    "error_fields",
    "failure_fields",
    "first_error",
    "log_loop_error",
    "quiet_libraries",
    "withhold_messages",
]

# broker/, nodes/ and schemas/ sit side by side: frames in them are mlanet's own code
_ROOT = Path(__file__).resolve().parent.parent
_OWN = ("broker", "nodes", "schemas")


def bound(**fields: Any) -> _Bound:
    """``with bound(message_id=...):`` binds ``fields`` to every log line of this context (task)
    while the block runs, and puts back exactly what was bound before on exit. What
    ``structlog.contextvars.bound_contextvars`` does, at a fraction of its cost on the relay
    path (it reads the whole context first, and is a generator)."""
    return _Bound(fields)


class _Bound:
    __slots__ = ("_fields", "_tokens")

    def __init__(self, fields: dict[str, Any]) -> None:
        self._fields = fields
        self._tokens: Mapping[str, Any] = {}

    def __enter__(self) -> None:
        self._tokens = bind_contextvars(**self._fields)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        reset_contextvars(**self._tokens)


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
    _library_handler(logging.WARNING)


def quiet_libraries() -> None:
    """For a command (not the node): the libraries' lines stay off the terminal (the command
    ends with one line of its own, e.g. when the broker cannot be reached), but for asyncio's
    errors (a defect: as JSON lines, without values)."""
    _library_handler(logging.CRITICAL)
    logging.getLogger("asyncio").setLevel(logging.ERROR)


def _library_handler(level: int) -> None:
    logging.raiseExceptions = False  # a bad log call never prints a traceback of its own
    root = logging.getLogger()
    if not any(getattr(h, "_mlanet", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.addFilter(withhold_messages)
        handler.setFormatter(_JsonLines())
        handler._mlanet = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)


class _JsonLines(logging.Formatter):
    """A library's log record as one JSON line (``library_log``); an exception it carries as
    its type and location only."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the format: the format alone
            message = str(record.msg)
        event: dict[str, Any] = {
            "event": "library_log",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
        }
        if record.exc_info and record.exc_info[1] is not None:
            event.update(error_fields(record.exc_info[1]))
        return json.dumps(event, sort_keys=True, default=str)


def first_error(exc: BaseException) -> BaseException:
    """The first exception of an exception group (a TaskGroup's), else ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _short(filename: str) -> str:
    """A frame's file as a path inside its package (never the machine's folders)."""
    path = Path(filename)
    parts = path.parts
    if "site-packages" in parts:
        return "/".join(parts[parts.index("site-packages") + 1 :])
    try:
        return path.resolve().relative_to(_ROOT).as_posix()
    except ValueError:
        return path.name


def _own(filename: str) -> bool:
    try:
        relative = Path(filename).resolve().relative_to(_ROOT)
    except ValueError:
        return False
    return bool(relative.parts) and relative.parts[0] in _OWN


def error_fields(exc: BaseException) -> dict[str, Any]:
    """An unexpected exception as log fields: ``error_type``, and ``file``, ``line`` and
    ``function`` of the innermost frame in mlanet's own code (else of the innermost frame);
    ``raised_in`` names the library frame that raised it, when that is another one. Never the
    exception's text, arguments or local values."""
    exc = first_error(exc)
    frames = traceback.extract_tb(exc.__traceback__)
    fields: dict[str, Any] = {"error_type": type(exc).__name__}
    if not frames:
        return fields
    own = [frame for frame in frames if _own(frame.filename)]
    where = own[-1] if own else frames[-1]
    fields.update(file=_short(where.filename), line=where.lineno, function=where.name)
    raised = frames[-1]
    if raised is not where:
        fields["raised_in"] = f"{_short(raised.filename)}:{raised.lineno} {raised.name}"
    return fields


def failure_fields(exc: BaseException) -> dict[str, Any]:
    """Why a process (the node) fails, as log fields: mlanet's own errors by their text (built
    from metadata only, ``broker/errors.py``), anything else by :func:`error_fields`."""
    from mlanet.broker.errors import MlanetError

    error = first_error(exc)
    if isinstance(error, MlanetError):
        return {"error": str(error), "error_type": type(error).__name__}
    return {"error": type(error).__name__, **error_fields(error)}


def log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """An event loop's exception handler: what asyncio would print with a traceback (a task's
    exception nobody retrieved, a failing callback) as one JSON event, without values."""
    fields: dict[str, Any] = {"what": str(context.get("message", ""))[:200]}
    exc = context.get("exception")
    if isinstance(exc, BaseException):
        fields.update(error_fields(exc))
    structlog.get_logger("mlanet.loop").error("unexpected_error", **fields)


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
