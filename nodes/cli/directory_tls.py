"""``mlanet directory tls ...``: the coordinator publishes each network's AMQPS endpoints and
broker CA certificates, and its own link CA, in the signed directory (``docs/PROTOCOL.md``
section 14.7). Each command signs and publishes the next version, like the other directory
commands, and records what it changed in the coordinator node's journal."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from mlanet.broker.directory_tls import ca_entry
from mlanet.broker.errors import MlanetError
from mlanet.nodes.cli.common import ConfigOption, fail, load_or_exit
from mlanet.nodes.cli.directory import Out, Timeout, ValidFor, issue_directory
from mlanet.nodes.cli.journal import record_command
from mlanet.nodes.directory import certificates
from mlanet.nodes.directory.coordinator import HAND_OVER_SECONDS, next_version
from mlanet.schemas.directory import AmqpsEndpoint, CaCertificate, Directory, NetworkEntry

__all__ = ["tls_app"]

tls_app = typer.Typer(
    no_args_is_help=True,
    help="Networks' AMQPS endpoints and broker CA certificates, and the coordinator's link CA.",
)
Network = Annotated[str, typer.Option(help="The network whose broker it is.")]
CaFile = Annotated[Path, typer.Option("--ca", help="The CA certificate (PEM, public only).")]
CaId = Annotated[str, typer.Option(help="The CA's id in the directory, e.g. seajust-ca-2.")]
Overlap = Annotated[
    float, typer.Option(help="Days the current CA stays trusted beside the new one.")
]


def _read_ca(path: Path, ca_id: str) -> CaCertificate:
    """The directory entry for a CA file; refused (exit 2) with its reason when no node could
    use it (not a CA, a private key in it, a weak key, ...)."""
    try:
        return ca_entry(path.read_text(encoding="ascii"), ca_id)
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot read {path.name}: {exc.__class__.__name__}") from None
    except (MlanetError, ValueError) as exc:
        raise fail(f"refused: {exc}") from None


def _endpoint(text: str) -> AmqpsEndpoint:
    """``host:port`` or ``host:port=server_name`` (the server name defaults to the host)."""
    address, _, server_name = text.partition("=")
    host, _, port = address.rpartition(":")
    try:
        return AmqpsEndpoint(host=host, port=int(port), server_name=server_name or host)
    except ValueError:
        raise fail(f"not an endpoint host:port[=server_name]: {text!r}") from None


def _issue(
    config: Path,
    change: certificates.NetworksChange | None,
    link_cas_change: certificates.LinkCasChange | None,
    valid_for: float,
    out: Path | None,
    timeout: float,
    event: str,
    **fields: str,
) -> None:
    """Sign and publish the next version with ``change`` applied, then record ``event``."""

    def build(base: Directory, now: datetime) -> Directory:
        if link_cas_change is not None:
            base = base.model_copy(update={"link_cas": link_cas_change(base, now)})
        networks: list[NetworkEntry] | None = None if change is None else change(base, now)
        return next_version(base, now, timedelta(days=valid_for), networks=networks)

    verified = issue_directory(config, build, out, timeout)
    record_command(load_or_exit(config), event, version=verified.version, **fields)


@tls_app.command("endpoints")
def endpoints(
    config: ConfigOption,
    network: Network,
    endpoint: Annotated[
        list[str], typer.Option(help="host:port[=server_name] of its AMQPS listener.")
    ],
    ca: Annotated[
        Path | None, typer.Option(help="Its first broker CA certificate, when none is listed.")
    ] = None,
    ca_id: Annotated[str | None, typer.Option(help="That CA's id.")] = None,
    valid_for: ValidFor = 30.0,
    out: Out = None,
    timeout: Timeout = HAND_OVER_SECONDS,
) -> None:
    """Publish where a network's broker takes links over AMQPS (replacing what was listed)."""
    listed = [_endpoint(text) for text in endpoint]
    if (ca is None) != (ca_id is None):
        raise fail("--ca and --ca-id go together")
    first = _read_ca(ca, ca_id) if ca is not None and ca_id is not None else None
    _issue(
        config,
        lambda base, now: certificates.set_broker_endpoints(base, network, listed, first),
        None,
        valid_for,
        out,
        timeout,
        "broker_endpoints_set",
        network=network,
        endpoints=",".join(f"{e.host}:{e.port}" for e in listed),
    )


@tls_app.command("add-ca")
def add_ca(
    config: ConfigOption,
    network: Network,
    ca: CaFile,
    ca_id: CaId,
    valid_for: ValidFor = 30.0,
    out: Out = None,
    timeout: Timeout = HAND_OVER_SECONDS,
) -> None:
    """List one more CA for a network's broker, trusted beside the ones listed."""
    entry = _read_ca(ca, ca_id)
    _issue(
        config,
        lambda base, now: certificates.add_broker_ca(base, network, entry),
        None,
        valid_for,
        out,
        timeout,
        "broker_ca_added",
        network=network,
        ca_id=ca_id,
    )


@tls_app.command("rotate-ca")
def rotate_ca(
    config: ConfigOption,
    network: Network,
    ca: CaFile,
    ca_id: CaId,
    overlap: Overlap = 7.0,
    valid_for: ValidFor = 30.0,
    out: Out = None,
    timeout: Timeout = HAND_OVER_SECONDS,
) -> None:
    """A new CA for a network's broker: trusted from now; the current ones stay trusted for
    --overlap days, within which the broker switches to a server certificate it issued."""
    entry = _read_ca(ca, ca_id)
    _issue(
        config,
        lambda base, now: certificates.rotate_broker_ca(
            base, network, entry, now, timedelta(days=overlap)
        ),
        None,
        valid_for,
        out,
        timeout,
        "broker_ca_rotated",
        network=network,
        ca_id=ca_id,
    )


@tls_app.command("revoke-ca")
def revoke_ca(
    config: ConfigOption,
    network: Network,
    ca_id: CaId,
    valid_for: ValidFor = 30.0,
    out: Out = None,
    timeout: Timeout = HAND_OVER_SECONDS,
) -> None:
    """Emergency revocation of a network's broker CA, effective at each node when the update
    arrives."""
    _issue(
        config,
        lambda base, now: certificates.revoke_broker_ca(base, network, ca_id, now),
        None,
        valid_for,
        out,
        timeout,
        "broker_ca_revoked",
        network=network,
        ca_id=ca_id,
    )


@tls_app.command("link-ca")
def link_ca(
    config: ConfigOption,
    ca: CaFile,
    ca_id: CaId,
    overlap: Overlap = 7.0,
    valid_for: ValidFor = 30.0,
    out: Out = None,
    timeout: Timeout = HAND_OVER_SECONDS,
) -> None:
    """Set the coordinator's link CA (the issuer of every network's link certificate): the
    first one, or a new one while the current ones stay trusted for --overlap days."""
    entry = _read_ca(ca, ca_id)
    _issue(
        config,
        None,
        lambda base, now: certificates.set_link_ca(base, entry, now, timedelta(days=overlap)),
        valid_for,
        out,
        timeout,
        "link_ca_set",
        ca_id=ca_id,
    )


@tls_app.command("revoke-link-ca")
def revoke_link_ca(
    config: ConfigOption,
    ca_id: CaId,
    valid_for: ValidFor = 30.0,
    out: Out = None,
    timeout: Timeout = HAND_OVER_SECONDS,
) -> None:
    """Emergency revocation of a link CA: no broker accepts a link certificate it issued once
    it holds this version."""
    _issue(
        config,
        None,
        lambda base, now: certificates.revoke_link_ca(base, ca_id, now),
        valid_for,
        out,
        timeout,
        "link_ca_revoked",
        ca_id=ca_id,
    )
