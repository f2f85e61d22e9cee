"""What every ``mlanet`` command module shares: the ``--config`` option, the way a command
fails (one line on stderr, an exit code), loading a node's configuration or failing, and the
broker administrator's account for the commands that provision a broker."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from broker import ConfigError
from broker.management import ManagementEndpoint
from nodes.config import NodeConfig, load_config

__all__ = [
    "AdminPasswordFile",
    "AdminUser",
    "ConfigOption",
    "admin_endpoint",
    "fail",
    "load_or_exit",
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


def admin_endpoint(url: str, user: str, password_file: Path | None) -> ManagementEndpoint:
    """The administrator's account: its password from ``password_file``, else asked for on the
    terminal; the local broker's default account ``guest`` needs neither."""
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
