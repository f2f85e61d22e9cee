"""What every ``mlanet`` command module shares: the ``--config`` option, the way a command
fails (one line on stderr, an exit code), loading a node's configuration or failing, the
broker administrator's account for the commands that provision a broker, and each command's
time limit.

**Time limits.** Every command but ``mlanet node run`` (which runs until SIGTERM or SIGINT)
has a ``--timeout`` option (seconds; ``MLANET_TIMEOUT`` sets it for every command; 0: none)
with a default that fits what it waits for (:data:`LIMITS`). When it runs out, the command
ends with one line on stderr that says what it waited for and what to check, and exit code
124 (as ``timeout(1)``): a watchdog thread ends the process, whatever the command was stuck
in. The broker and its management API are also given up on sooner, per connection and per
request (``broker/transport.py``, ``broker/management.py``), with an error of their own.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import typer

from mlanet.broker import ConfigError
from mlanet.broker.management import ManagementEndpoint
from mlanet.nodes.config import BrokerConfig, NodeConfig, load_config
from mlanet.nodes.logs import error_fields

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_TIMEOUT",
    "EXIT_UNEXPECTED",
    "LIMITS",
    "AdminPasswordFile",
    "AdminUser",
    "ConfigOption",
    "TimeLimit",
    "admin_endpoint",
    "fail",
    "load_or_exit",
    "time_limited",
    "unexpected",
    "watchdog",
]

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="The node's TOML file.")]
AdminUser = Annotated[
    str, typer.Option(help="An administrator of the broker (used by this command only).")
]
AdminPasswordFile = Annotated[
    Path | None,
    typer.Option(
        help="A file holding its password (never given on the command line, where ps shows "
        "it); asked for when omitted."
    ),
]
# RabbitMQ's own default account, which Debian's package creates for localhost only.
LOCAL_DEFAULT = "guest"
EXIT_TIMEOUT = 124  # the command ran out of time (as timeout(1))
EXIT_INTERRUPTED = 130  # SIGINT
EXIT_UNEXPECTED = 70  # a defect (EX_SOFTWARE)


def admin_endpoint(
    url: str, user: str, password_file: Path | None, broker: BrokerConfig | None = None
) -> ManagementEndpoint:
    """The administrator's account: its password from ``password_file``, else asked for on the
    terminal; the local broker's default account ``guest`` needs neither. With ``broker`` (the
    node's config), an https API is checked against its ``[broker.tls]`` CA file."""
    if password_file is not None:
        try:
            password = password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise fail(f"cannot read --admin-password-file ({exc.strerror})") from None
    elif user == LOCAL_DEFAULT:
        password = LOCAL_DEFAULT
    elif sys.stdin.isatty():
        password = typer.prompt(f"password of {user}", hide_input=True)
    else:
        raise fail(f"no password for {user}: give --admin-password-file (or run on a terminal)")
    if broker is not None and broker.tls is not None:
        return replace(broker.management_endpoint(user, password), url=url)
    return ManagementEndpoint(url, user, password)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``mlanet: <message>`` on stderr; raise the returned Exit."""
    typer.echo(f"mlanet: {message}", err=True)
    return typer.Exit(code)


def load_or_exit(path: Path) -> NodeConfig:
    """The node's configuration, or exit 2 with the reason it cannot be loaded."""
    try:
        return load_config(path)
    except ConfigError as exc:
        raise fail(str(exc)) from None


def unexpected(exc: BaseException) -> str:
    """The one line a command ends with after a defect: the error's type and where it was
    raised, never its text (it may hold values)."""
    fields = error_fields(exc)
    where = ""
    if "file" in fields:
        where = f" at {fields['file']}:{fields['line']} in {fields['function']}"
    if "raised_in" in fields:
        where += f" (raised in {fields['raised_in']})"
    return (
        f"mlanet: unexpected {fields['error_type']}{where}; this is a defect in mlanet: report"
        " this line (nothing else about the error is shown)"
    )


# --- time limits ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TimeLimit:
    """A command's default time limit, what it waits for and what to check when it runs out
    (``{broker}``, ``{management}`` and ``{state_dir}`` come from its ``--config``, or its
    ``--management-url``)."""

    seconds: float
    waits_for: str
    check: str

    def line(self, command: str, seconds: float, params: Mapping[str, Any]) -> str:
        return (
            f"mlanet: {command} gave up after {seconds:g} s waiting for "
            f"{self.waits_for.format_map(_places(params))}; check {self.check}"
        )


_BROKER = TimeLimit(
    60.0,
    "the broker at {broker}",
    "that RabbitMQ runs there and accepts connections (its log, its open-file limit)",
)
_MANAGEMENT = TimeLimit(
    120.0,
    "the RabbitMQ management API at {management}",
    "that RabbitMQ runs there with its management plugin",
)
_LOCAL = TimeLimit(
    300.0,
    "the node's state in {state_dir}",
    "that no other process holds its databases, and the disk",
)
_FEDERATION = TimeLimit(
    300.0,
    "the RabbitMQ management API at {management}, or (--own-brokers) the federation's own "
    "brokers to start or stop",
    "that RabbitMQ runs there with its management plugin; own brokers: their logs in "
    "<dir>/<network>/broker/log, and mlanet federation down removes what was started",
)
LIMITS: dict[str, TimeLimit] = {
    "send": _BROKER,
    "inbox": _BROKER,
    "status": TimeLimit(
        60.0,
        "the broker at {broker} and its management API at {management}",
        "that RabbitMQ runs there and accepts connections (mlanet node run's log says more)",
    ),
    "quarantine release": _BROKER,
    **{
        f"directory {name}": _BROKER
        for name in ("approve", "revoke", "handover", "membership", "renew", "publish")
    },
    "directory provision": _MANAGEMENT,
    "federation init": _FEDERATION,
    "federation down": _FEDERATION,
}
UNLIMITED = frozenset({"node run"})  # runs until SIGTERM or SIGINT


class _Places(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return {"broker": "[broker] host:port", "state_dir": "state_dir"}.get(
            key, "[broker] management_url"
        ) + " of the config"


def _places(params: Mapping[str, Any]) -> _Places:
    """Where a command's broker, management API and state are (never a password)."""
    places = _Places()
    config = params.get("config")
    if isinstance(config, Path):
        with contextlib.suppress(ConfigError):  # the command says why itself
            loaded = load_config(config)
            places["broker"] = f"{loaded.broker.host}:{loaded.broker.port}"
            places["management"] = _no_credentials(loaded.broker.management_url)
            places["state_dir"] = str(loaded.state_dir)
    if isinstance(params.get("management_url"), str):
        places["management"] = _no_credentials(params["management_url"])
    return places


def _no_credentials(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}" if rest else url


@contextlib.contextmanager
def watchdog(seconds: float, line: Callable[[], str]) -> Iterator[None]:
    """After ``seconds`` (0: never), print ``line()`` on stderr and end the process with exit
    code 124, whatever the main thread is stuck in (a thread of its own does it). The line is
    made when the watchdog is set."""
    if seconds <= 0:
        yield
        return
    timer = threading.Timer(seconds, _give_up, (line(),))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _give_up(line: str) -> None:
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    with contextlib.suppress(Exception):
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    os._exit(EXIT_TIMEOUT)


def time_limited(command: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` (a command) with a ``--timeout`` option and a :func:`watchdog` around it;
    as it is when it has a ``timeout`` parameter of its own or runs until stopped."""
    signature = inspect.signature(function, eval_str=True)
    if command in UNLIMITED or "timeout" in signature.parameters:
        return function
    limit = LIMITS.get(command, _LOCAL)
    option = inspect.Parameter(
        "timeout",
        inspect.Parameter.KEYWORD_ONLY,
        default=limit.seconds,
        annotation=Annotated[
            float,
            typer.Option(
                envvar="MLANET_TIMEOUT",
                min=0,
                help="Give up after this many seconds, with one line that says what the "
                "command waited for (0: no limit).",
            ),
        ],
    )

    @functools.wraps(function)
    def limited(*args: Any, timeout: float, **kwargs: Any) -> Any:
        with watchdog(timeout, lambda: limit.line(command, timeout, kwargs)):
            return function(*args, **kwargs)

    limited.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), option]
    )
    return limited
