"""The ``mlanet`` command: what operators and contact points type."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from broker import KeyRefused, generate_key_files
from schemas import write_json_schemas

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
keys_app = typer.Typer(no_args_is_help=True, help="Signing keys.")
schemas_app = typer.Typer(no_args_is_help=True, help="The message catalogue's JSON Schemas.")
app.add_typer(keys_app, name="keys")
app.add_typer(schemas_app, name="schemas")


@keys_app.command("generate")
def keys_generate(
    network: Annotated[str, typer.Option(help="Network id, e.g. seajust.")],
    out: Annotated[Path, typer.Option(help="Directory for the key files.")] = Path("keys"),
    key_id: Annotated[str, typer.Option(help="Key id, ed25519:<n>.")] = "ed25519:1",
) -> None:
    """Generate an Ed25519 key pair: a private key file (0600) and a public key file."""
    try:
        key_path, pub_path = generate_key_files(out, network, key_id)
    except KeyRefused as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(2) from None
    except FileExistsError:
        typer.echo("refused: a key file with that id exists; choose another --key-id", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"private key: {key_path} (owner-only)")
    typer.echo(f"public key:  {pub_path}")


@schemas_app.command("write")
def schemas_write(
    out: Annotated[Path | None, typer.Option(help="Directory (default: schemas/json).")] = None,
) -> None:
    """Regenerate the JSON Schema files from the models."""
    paths = write_json_schemas(out) if out else write_json_schemas()
    for path in paths:
        typer.echo(str(path))


@app.command("demo")
def demo() -> None:
    """Sign a facilitation request, verify it, and show it refused once tampered with."""
    from nodes.demo import run_signing_demo

    run_signing_demo(typer.echo)


def main() -> None:
    app()
