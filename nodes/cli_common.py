"""What every ``mlanet`` command module shares: the ``--config`` option, the way a command
fails (one line on stderr, an exit code), and loading a node's configuration or failing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from broker import ConfigError
from nodes.config import NodeConfig, load_config

__all__ = ["ConfigOption", "fail", "load_or_exit"]

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="The node's TOML file.")]


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
