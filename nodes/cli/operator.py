"""``mlanet status`` (one node at a glance) and ``mlanet operator password`` (the dashboard's
login). Registered in ``nodes/cli/app.py``."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import asdict
from getpass import getpass
from typing import Annotated

import typer

from mlanet.broker import MlanetError
from mlanet.nodes.cli.common import ConfigOption, load_or_exit

__all__ = ["operator_app", "status_app"]

status_app = typer.Typer(add_completion=False)
operator_app = typer.Typer(no_args_is_help=True, help="The operator's dashboard login.")


@status_app.callback(invoke_without_command=True)
def status(
    config: ConfigOption,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON document, for scripts.")
    ] = False,
) -> None:
    """One node at a glance: queues, links, quarantine, receipts, expiry and alerts.

    Exit status: 0 without alerts, 1 with warnings only, 3 with a critical alert."""
    from mlanet.nodes.operator.status import collect, render_text
    from mlanet.nodes.runtime.lifecycle import read_lifecycle

    cfg = load_or_exit(config)
    # the node process's own word on its phase (nodes/runtime/lifecycle.py), e.g. retrying its
    # broker
    process = read_lifecycle(cfg.state_dir)
    if process is not None and not process.alive():
        process = None
    said = f"node process {process.pid}: {process.describe(time.time())}" if process else None
    try:
        found = asyncio.run(collect(cfg, time.time()))
    except MlanetError as exc:
        typer.echo(f"mlanet: {exc}" + (f" ({said})" if said else ""), err=True)
        raise typer.Exit(2) from None
    if as_json:
        document = found.to_json()
        document["node_process"] = asdict(process) if process is not None else None
        typer.echo(json.dumps(document, indent=2, sort_keys=True))
    else:
        typer.echo(render_text(found), nl=False)
        if said:
            typer.echo(said)
    severities = {alert.severity for alert in found.alerts}
    raise typer.Exit(3 if "critical" in severities else 1 if severities else 0)


@operator_app.command("password")
def password(
    config: ConfigOption,
    stdin: Annotated[
        bool, typer.Option("--stdin", help="Read the password from standard input.")
    ] = False,
) -> None:
    """Set the dashboard's operator password: writes its scrypt hash to [operator]
    password_file (mode 0600). The running node reads it at the next login."""
    from mlanet.nodes.operator.auth import hash_password

    cfg = load_or_exit(config)
    target = cfg.operator.password_file
    if target is None:
        typer.echo("mlanet: set [operator] password_file in the config first", err=True)
        raise typer.Exit(2)
    if stdin:
        secret = sys.stdin.readline().rstrip("\n")
    else:
        secret = getpass("New operator password: ")
        if getpass("Again: ") != secret:
            typer.echo("mlanet: the two passwords differ", err=True)
            raise typer.Exit(2)
    if len(secret) < 12:
        typer.echo("mlanet: refused: use at least 12 characters", err=True)
        raise typer.Exit(2)
    line = hash_password(secret)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(line + "\n")
    temporary.replace(target)
    typer.echo(f"operator password hash written to {target}")
