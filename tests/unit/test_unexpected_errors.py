"""Unexpected exceptions reach no one as a traceback or with their values: the node logs one
JSON event with the error's type and where it was raised (file, line, function); a command ends
with one line that says the same; a library's log line with an exception is one JSON line too.
Commands give up at their time limit with one line, and Ctrl-C is one line."""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from mlanet.nodes.cli.common import EXIT_TIMEOUT, EXIT_UNEXPECTED
from mlanet.nodes.logs import _JsonLines, error_fields, failure_fields, log_loop_error

CANARY = "CANARY-CASE-CONTENT-5e1d"


def _raise_with_values() -> None:
    case = {"summary": CANARY}
    raise KeyError(case["summary"])


def test_error_fields_name_the_place_never_the_values() -> None:
    """file, line and function of the frame that raised, and the type; no message, no locals."""
    try:
        _raise_with_values()
    except KeyError as exc:
        fields = error_fields(exc)
    assert fields["error_type"] == "KeyError"
    assert fields["file"] == "tests/unit/test_unexpected_errors.py"
    assert fields["function"] == "_raise_with_values"
    assert isinstance(fields["line"], int)
    assert fields["line"] > 0
    assert CANARY not in json.dumps(fields)


def test_error_fields_point_into_mlanet_and_name_the_library_frame_that_raised() -> None:
    """Raised inside a library called from mlanet's code: the place is mlanet's own frame, the
    library's frame is named as raised_in."""
    from mlanet.broker.transport import broker_address

    try:
        broker_address(f"amqp://[{CANARY}")
    except ValueError as exc:
        fields = error_fields(exc)
    assert (fields["file"], fields["function"]) == ("broker/transport.py", "broker_address")
    assert fields["raised_in"].startswith("yarl/")
    assert CANARY not in json.dumps(fields)


def test_a_task_group_failure_is_located_at_its_first_error() -> None:
    async def fail() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(asyncio.to_thread(_raise_with_values))

    with pytest.raises(ExceptionGroup) as caught:
        asyncio.run(fail())
    fields = failure_fields(caught.value)
    assert fields["error_type"] == "KeyError"
    assert fields["error"] == "KeyError"  # a defect: its type, never its text
    assert fields["function"] == "_raise_with_values"


def test_mlanet_errors_keep_their_metadata_text() -> None:
    from mlanet.broker.errors import TransportError

    fields = failure_fields(TransportError("cannot reach the broker at 127.0.0.1:1"))
    assert fields == {
        "error": "cannot reach the broker at 127.0.0.1:1",
        "error_type": "TransportError",
    }


def test_a_library_log_record_with_an_exception_is_one_json_line_without_values() -> None:
    try:
        _raise_with_values()
    except KeyError:
        record = logging.LogRecord(
            "aiormq.connection", logging.ERROR, __file__, 1, "failed: %s", ("x",), sys.exc_info()
        )
    line = _JsonLines().format(record)
    assert "\n" not in line
    event = json.loads(line)
    assert event["event"] == "library_log"
    assert event["message"] == "failed: x"
    assert event["function"] == "_raise_with_values"
    assert CANARY not in line
    assert "Traceback" not in line


def test_an_exception_nobody_retrieved_is_logged_as_one_event_without_values() -> None:
    try:
        _raise_with_values()
    except KeyError as exc:
        error = exc
    loop = asyncio.new_event_loop()
    try:
        with capture_logs() as logs:
            log_loop_error(
                loop, {"message": "Task exception was never retrieved", "exception": error}
            )
    finally:
        loop.close()
    assert logs == [
        {
            "event": "unexpected_error",
            "log_level": "error",
            "what": "Task exception was never retrieved",
            "error_type": "KeyError",
            "file": "tests/unit/test_unexpected_errors.py",
            "line": logs[0]["line"],
            "function": "_raise_with_values",
        }
    ]


def _run(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_a_defect_in_a_command_ends_in_one_line_naming_its_place() -> None:
    """The entry point turns any exception into one line (type, file, line, function) and exit
    code 70: no traceback, nothing of the error's text."""
    result = _run(
        f"""
        import sys
        from mlanet.nodes.cli import app as cli

        @cli.app.command("explode")
        def explode() -> None:
            case = {{"summary": "{CANARY}"}}
            raise KeyError(case["summary"])

        sys.argv = ["mlanet", "explode"]
        cli.main()
        """
    )
    assert result.returncode == EXIT_UNEXPECTED
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mlanet: unexpected KeyError at nodes/cli/app.py:")
    assert "(raised in <string>:" in lines[0]
    assert " explode)" in lines[0]
    assert CANARY not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_a_command_stuck_past_its_time_limit_ends_in_one_line() -> None:
    """A command blocked where no timeout of its own reaches (here: a sleep) is ended by the
    watchdog at --timeout, with one line naming the command and what it waited for."""
    result = _run(
        """
        import sys, time
        from mlanet.nodes.cli import app as cli
        from mlanet.nodes.cli.common import time_limited

        def stuck() -> None:
            time.sleep(120)  # the hang under test: only the watchdog ends it

        cli.app.command("stuck")(time_limited("send", stuck))
        sys.argv = ["mlanet", "stuck", "--timeout", "1"]
        cli.main()
        """
    )
    assert result.returncode == EXIT_TIMEOUT
    assert result.stderr.splitlines() == [
        "mlanet: send gave up after 1 s waiting for the broker at [broker] host:port of the "
        "config; check that "
        "RabbitMQ runs there and accepts connections (its log, its open-file limit)"
    ]


def _broad(handler: ast.ExceptHandler) -> bool:
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return handler.type is None or any(
        isinstance(name, ast.Name) and name.id in {"Exception", "BaseException"} for name in names
    )


def _logs(handler: ast.ExceptHandler) -> bool:
    levels = {"debug", "info", "warning", "error", "exception", "critical", "enter"}
    return any(
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in levels
        for node in ast.walk(handler)
    )


def test_every_handler_of_unexpected_exceptions_logs_their_place_only() -> None:
    """Wherever mlanet catches any exception and logs it, it logs ``error_fields`` or
    ``failure_fields`` (type, file, line, function), never the exception's text."""
    root = Path(__file__).resolve().parents[2]
    found = []
    for package in ("schemas", "broker", "nodes"):
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for handler in ast.walk(tree):
                if not (isinstance(handler, ast.ExceptHandler) and _broad(handler)):
                    continue
                if not _logs(handler):
                    continue
                text = ast.unparse(handler)
                if "error_fields(" not in text and "failure_fields(" not in text:
                    found.append(f"{path.relative_to(root)}:{handler.lineno}")
                if handler.name and re.search(rf"\b(?:str|repr)\({handler.name}\)", text):
                    found.append(f"{path.relative_to(root)}:{handler.lineno} (its text)")
    assert found == []
