"""``mlanet contact-point``: credentials for a network's contact points, and the
``--credentials`` option with which ``mlanet send`` and ``mlanet inbox`` act as one of them."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from mlanet.broker import ConfigError, MlanetError
from mlanet.nodes.cli.common import ConfigOption, fail, load_or_exit
from mlanet.nodes.cli.journal import record_command
from mlanet.nodes.directory.book import load_directory
from mlanet.nodes.directory.contact_points import Credentials, add_contact_point

__all__ = ["CredentialsOption", "contact_point_app", "credentials_or_exit"]

contact_point_app = typer.Typer(
    no_args_is_help=True, help="A contact point's own key and broker user."
)

CredentialsOption = Annotated[
    Path,
    typer.Option(
        "--credentials",
        help="The contact point's credentials folder (mlanet contact-point add): its key and "
        "broker password. Nobody sends or reads as a contact point without them.",
    ),
]


def credentials_or_exit(folder: Path, contact_point: str | None) -> Credentials:
    """The contact point's credentials, or exit 2 saying why they cannot be used; when a
    contact point is named as well, it must be theirs."""
    try:
        credentials = Credentials.load(folder)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    if contact_point is not None and contact_point != credentials.contact_point:
        raise fail(
            f"these credentials are {credentials.contact_point}'s, not {contact_point}'s: "
            "a contact point acts only with its own"
        )
    return credentials


@contact_point_app.command("add")
def add(
    config: ConfigOption,
    contact_point: Annotated[str, typer.Option("--id", help="The contact point, e.g. kh-cp-1.")],
    out: Annotated[Path, typer.Option(help="Its credentials folder (to hand over to it).")],
) -> None:
    """Create a contact point's key and broker password in --out, and put its public key and
    broker user (a password hash) in the node's [contact_points] folder."""
    cfg = load_or_exit(config)
    try:
        added = add_contact_point(cfg, contact_point, out)
    except ConfigError as exc:
        raise fail(f"refused: {exc}") from None
    except FileExistsError as exc:
        raise fail(f"refused: {exc} exists; {contact_point} has credentials already") from None
    with contextlib.suppress(MlanetError):  # a node without a directory yet: nothing to say
        entry = load_directory(cfg).network(cfg.network)
        if entry is not None and contact_point not in {cp.id for cp in entry.contact_points}:
            typer.echo(
                f"note: the directory lists no {contact_point} at {cfg.network}; the node refuses"
                " its submissions until it does",
                err=True,
            )
    record_command(cfg, "contact_point_added", to=contact_point)
    typer.echo(f"credentials: {added.credentials} (key and broker password, owner-only)")
    typer.echo(f"public key:  {added.public_key}")
    typer.echo(f"broker user: {added.user} ({added.user_file})")
    typer.echo(
        "next: mlanet directory provision --config ... creates the broker user; then hand the "
        "credentials folder to the contact point"
    )
