"""``mlanet directory ...``, ``mlanet init``, ``mlanet keys rotate`` and ``mlanet keys
rotate-encryption``: the signed federation directory from the operator's and the coordinator's
side (``docs/JOINING.md``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from mlanet.broker.directory_signing import VerifiedDirectory, open_directory, open_request
from mlanet.broker.errors import MlanetError
from mlanet.nodes.cli.common import (
    AdminPasswordFile,
    AdminUser,
    ConfigOption,
    admin_endpoint,
    fail,
    load_or_exit,
)
from mlanet.nodes.cli.journal import record_command
from mlanet.nodes.directory.book import DirectoryBook
from mlanet.nodes.directory.coordinator import (
    HAND_OVER_SECONDS,
    Coordinator,
    approve_join,
    approve_rotation,
    change_membership,
    hand_over,
    next_version,
    publish_directory,
    revoke_key,
)
from mlanet.nodes.directory.joining import init_network, provision_broker, rotation_request
from mlanet.schemas.base import format_timestamp, parse_timestamp
from mlanet.schemas.directory import CaCertificate, Directory, JoinRequest, NetworkEntry

__all__ = [
    "ca_line",
    "directory_app",
    "init_command",
    "issue_directory",
    "keys_rotate",
    "keys_rotate_encryption",
]

directory_app = typer.Typer(
    no_args_is_help=True, help="The signed federation directory (show, approve, revoke, ...)."
)
ValidFor = Annotated[float, typer.Option(help="Days the new version is trusted.")]
Timeout = Annotated[
    float, typer.Option(help="Seconds to wait for the coordinator's node to confirm a version.")
]
Out = Annotated[Path | None, typer.Option(help="Also write the signed directory here.")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    return fail(message, code)


def _when(value: datetime | None) -> str:
    return format_timestamp(value) if value is not None else "-"


# --- what a node trusts ------------------------------------------------------------------------
def ca_line(what: str, ca: CaCertificate, now: datetime) -> str:
    """One CA certificate as ``directory show`` prints it: its state now and its window."""
    return (
        f"{what} {ca.id}: {ca.state(now).value}, from {_when(ca.not_before)} until"
        f" {_when(ca.not_after)}"
        + (f", retired {_when(ca.retire_at)}" if ca.retire_at else "")
        + (f", revoked {_when(ca.revoked_at)}" if ca.revoked_at else "")
    )


def _show_network(network: NetworkEntry, now: datetime) -> list[str]:
    lines = [f"  {network.id}  {network.name}  [{network.role}]"]
    lines.append(f"    members: {', '.join(network.members) or '-'}")
    if network.observers:
        lines.append(f"    observers: {', '.join(network.observers)}")
    for what, key in [("key", k) for k in network.keys] + [
        ("encryption key", k) for k in network.encryption_keys
    ]:
        state = key.state(now).value
        lines.append(
            f"    {what} {key.key_id}: {state}, from {_when(key.not_before)} until"
            f" {_when(key.not_after)}"
            + (f", revoked {_when(key.revoked_at)}" if key.revoked_at else "")
        )
    broker = network.broker
    user = network.link_user.name if network.link_user else "-"
    lines.append(f"    broker: {broker.host}:{broker.port} vhost {broker.vhost}; link user {user}")
    if network.tls is not None:
        for endpoint in network.tls.endpoints:
            lines.append(
                f"    amqps: {endpoint.host}:{endpoint.port}, server name {endpoint.server_name}"
            )
        lines += [f"    {ca_line('broker CA', ca, now)}" for ca in network.tls.cas]
    for cp in network.contact_points:
        text = f"    contact point {cp.id} ({cp.country}, {cp.role})"
        if cp.successor:
            text += f" -> handed over to {cp.successor} since {_when(cp.not_after)}"
        elif cp.not_after:
            text += f" until {_when(cp.not_after)}"
        if cp.alternates:
            text += f"; alternates {', '.join(cp.alternates)}"
        lines.append(text)
    return lines


@directory_app.command("show")
def show(
    config: ConfigOption,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Print what this node trusts right now: the directory version, its signer and expiry,
    networks, keys, contact points (with handovers due now) and links, and any warnings."""
    cfg = load_or_exit(config)
    try:
        book = DirectoryBook.load(cfg, persist=False)
        signing = book.signing_key()
    except MlanetError as exc:
        raise _fail(str(exc)) from None
    now = datetime.now(UTC)
    view = book.view(now)
    closed = book.closed(now)
    status = f"EXPIRED: {closed.reason.value}: {closed.detail}" if closed else "valid"
    warnings = [file.text() for file in book.refused] + [w.text() for w in book.warnings(now)]
    if as_json:
        record: dict[str, Any] = {
            "network": cfg.network,
            "version": book.version,
            "issued_at": _when(view.issued_at),
            "expires_at": _when(book.expires_at()),
            "status": "expired" if closed else "valid",
            "reason": closed.reason.value if closed else None,
            "signer": book.held.signed.signer,
            "key_id": book.held.signed.key_id,
            "signing_key": signing.key_id,
            "warnings": warnings,
            "directory": view.model_dump(mode="json", exclude_none=True),
        }
        typer.echo(json.dumps(record, sort_keys=True))
        return
    typer.echo(
        f"directory version {book.version}, issued {_when(view.issued_at)}, trusted until"
        f" {_when(book.expires_at())}: {status}"
    )
    typer.echo(f"signed by {book.held.signed.signer} {book.held.signed.key_id}")
    typer.echo(f"this node: {cfg.network}, signing with {signing.key_id}")
    typer.echo("networks:")
    for network in view.networks:
        for line in _show_network(network, now):
            typer.echo(line)
    typer.echo("links: " + ", ".join(f"{a}-{b}" for a, b in view.links))
    for ca in view.link_cas or []:
        typer.echo(ca_line("link CA", ca, now))
    for warning in warnings:
        typer.echo(f"warning: {warning}")


# --- the coordinator ---------------------------------------------------------------------------
def _issue(
    config: Path,
    change: Any,
    valid_for: float,
    out: Path | None,
    timeout: float = HAND_OVER_SECONDS,
) -> VerifiedDirectory:
    """Build the next version with ``change(base, now)`` (the networks and links it changes),
    sign and publish it (see :func:`issue_directory`)."""

    def build(base: Directory, now: datetime) -> Directory:
        networks, links = change(base, now)
        return next_version(base, now, timedelta(days=valid_for), networks=networks, links=links)

    return issue_directory(config, build, out, timeout)


def issue_directory(
    config: Path,
    build: Callable[[Directory, datetime], Directory],
    out: Path | None,
    timeout: float = HAND_OVER_SECONDS,
) -> VerifiedDirectory:
    """Build the next version with ``build(base, now)``, sign and publish it; a version is used
    up only once the coordinator's node confirmed it (``nodes/directory/coordinator.py``)."""
    cfg = load_or_exit(config)

    async def run(coordinator: Coordinator) -> VerifiedDirectory:
        completed = await coordinator.complete_pending(within=timeout)
        if completed is not None:
            typer.echo(
                f"directory version {completed.version}, left pending by an earlier command,"
                " is published now"
            )
        return await coordinator.issue(build, within=timeout)

    try:
        verified = asyncio.run(run(Coordinator.open(cfg)))
    except MlanetError as exc:
        raise _fail(str(exc)) from None
    if out is not None:
        out.write_bytes(verified.to_bytes())
    record_command(cfg, "directory_issued", version=verified.version)
    typer.echo(
        f"directory version {verified.version} signed and published (valid until"
        f" {_when(verified.directory.valid_until)})"
    )
    return verified


@directory_app.command("approve")
def approve(
    request: Annotated[Path, typer.Argument(help="A join or key rotation request file.")],
    config: ConfigOption,
    link: Annotated[
        list[str] | None, typer.Option(help="Link the new network to this one (default: asked).")
    ] = None,
    activate_in: Annotated[
        float, typer.Option(help="Seconds before a rotated key becomes valid (propagation).")
    ] = 600.0,
    overlap: Annotated[
        float, typer.Option(help="Seconds the previous key stays valid after that.")
    ] = 7 * 86400.0,
    emergency: Annotated[
        bool, typer.Option(help="Rotation: revoke the current key now, new key valid now.")
    ] = False,
    valid_for: ValidFor = 30.0,
    out: Out = None,
    timeout: Timeout = HAND_OVER_SECONDS,
) -> None:
    """Approve a network's join request or key rotation request (a signing key, an encryption
    key, or both): sign the next directory version and publish it through the coordinator's
    node."""
    try:
        parsed, signed = open_request(request.read_bytes())
    except (OSError, MlanetError) as exc:
        raise _fail(f"cannot read the request: {exc}") from None

    def change(base: Directory, now: datetime) -> tuple[list[NetworkEntry], Any]:
        if isinstance(parsed, JoinRequest):
            return approve_join(base, parsed, signed, list(link or parsed.links), now)
        networks = approve_rotation(
            base,
            parsed,
            signed,
            now,
            activate_in=timedelta(seconds=activate_in),
            overlap=timedelta(seconds=overlap),
            emergency=emergency,
        )
        return networks, None

    _issue(config, change, valid_for, out, timeout)


@directory_app.command("revoke")
def revoke(
    config: ConfigOption,
    network: Annotated[str, typer.Option(help="Whose key.")],
    key_id: Annotated[
        str, typer.Option(help="The key: ed25519:<n> (signing) or hpke:<n> (encryption).")
    ],
    valid_for: ValidFor = 30.0,
    out: Out = None,
    timeout: Timeout = HAND_OVER_SECONDS,
) -> None:
    """Emergency revocation of a network's key, effective at each node when the update arrives
    (also for messages already waiting in a queue): nothing signed with a revoked signing key
    is accepted, nothing sealed with a revoked encryption key opens."""
    _issue(
        config,
        lambda base, now: (revoke_key(base, network, key_id, now), None),
        valid_for,
        out,
        timeout,
    )


@directory_app.command("handover")
def handover(
    config: ConfigOption,
    network: Annotated[str, typer.Option(help="The contact point's network.")],
    previous: Annotated[str, typer.Option("--from", help="The contact point replaced.")],
    successor: Annotated[str, typer.Option("--to", help="Its successor (appointed if new).")],
    role: Annotated[str | None, typer.Option(help="The successor's role, if new.")] = None,
    at: Annotated[str | None, typer.Option(help="When, e.g. 2026-05-01T00:00:00.000Z.")] = None,
    valid_for: ValidFor = 30.0,
    out: Out = None,
    timeout: Timeout = HAND_OVER_SECONDS,
) -> None:
    """Replace a contact point: what is addressed to it, and what waits for it, goes to the
    successor from then on."""
    when = parse_timestamp(at) if at else None

    def change(base: Directory, now: datetime) -> tuple[list[NetworkEntry], None]:
        return hand_over(base, network, previous, successor, when or now, role), None

    _issue(config, change, valid_for, out, timeout)


@directory_app.command("membership")
def membership(
    config: ConfigOption,
    network: Annotated[str, typer.Option(help="The network whose membership changes.")],
    add_member: Annotated[list[str] | None, typer.Option(help="A country joins.")] = None,
    remove_member: Annotated[list[str] | None, typer.Option(help="A country leaves.")] = None,
    add_observer: Annotated[list[str] | None, typer.Option(help="An observer country.")] = None,
    remove_observer: Annotated[list[str] | None, typer.Option(help="An observer leaves.")] = None,
    contact_point: Annotated[
        list[str] | None, typer.Option(help="Appoint id[=role] (its country must be listed).")
    ] = None,
    valid_for: ValidFor = 30.0,
    out: Out = None,
    timeout: Timeout = HAND_OVER_SECONDS,
) -> None:
    """Change a network's member and observer countries and appoint their contact points."""
    points = [
        (cp, role or "contact point")
        for cp, _, role in (text.partition("=") for text in contact_point or [])
    ]

    def change(base: Directory, now: datetime) -> tuple[list[NetworkEntry], None]:
        networks = change_membership(
            base,
            network,
            add_members=add_member or [],
            remove_members=remove_member or [],
            add_observers=add_observer or [],
            remove_observers=remove_observer or [],
            contact_points=points,
        )
        return networks, None

    _issue(config, change, valid_for, out, timeout)


@directory_app.command("renew")
def renew(
    config: ConfigOption,
    valid_for: ValidFor = 30.0,
    out: Out = None,
    timeout: Timeout = HAND_OVER_SECONDS,
) -> None:
    """Issue the same directory as a new version with a new validity (nodes fail closed for
    new messages once the version they hold has expired)."""
    _issue(config, lambda base, now: (None, None), valid_for, out, timeout)


@directory_app.command("publish")
def publish(
    file: Annotated[Path, typer.Argument(help="A signed directory file.")],
    config: ConfigOption,
) -> None:
    """Hand a signed directory to this node: it applies it when it is newer and passes it on to
    its peers (one it refuses goes to quarantine with its reason). A file that no node could
    accept (unsigned, forged, not the coordinator's key, a weak or malformed key, invalid) is
    refused here, with its reason, and nothing is published."""
    cfg = load_or_exit(config)
    try:
        data = file.read_bytes()
        trust = DirectoryBook.load(cfg, persist=False).coordinator_trust()
    except (OSError, MlanetError) as exc:
        raise _fail(str(exc)) from None
    try:
        open_directory(data, trust, now=datetime.now(UTC))
    except MlanetError as exc:
        raise _fail(f"refused, nothing published: {exc}") from None
    try:
        asyncio.run(publish_directory(cfg, data))
    except MlanetError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"handed to the {cfg.network} node")


@directory_app.command("provision")
def provision(
    config: ConfigOption,
    admin_user: AdminUser,
    admin_password_file: AdminPasswordFile = None,
    management_url: Annotated[
        str | None, typer.Option(help="Management API (default: the config's).")
    ] = None,
) -> None:
    """Prepare your own broker: the node's vhost and user, write access for each peer the
    directory links to you, none for a former peer. Run it at set-up and whenever the node logs
    peer_access_needs_operator (the node never holds the administrator's password)."""
    cfg = load_or_exit(config)
    endpoint = admin_endpoint(
        management_url or cfg.broker.management_url, admin_user, admin_password_file, cfg.broker
    )
    try:
        for line in asyncio.run(provision_broker(cfg, endpoint)):
            typer.echo(line)
    except MlanetError as exc:
        raise _fail(str(exc)) from None


# --- a network's operator ----------------------------------------------------------------------
def init_command(
    network: Annotated[str, typer.Option(help="The new network's id, e.g. pilon.")],
    name: Annotated[str, typer.Option(help="Its name.")],
    member: Annotated[list[str], typer.Option(help="A member country (ISO 3166).")],
    coordinator_key: Annotated[
        Path,
        typer.Option(
            help="The coordinator's directory key file to pin (in a local federation "
            "unodc/coordinator/unodc-directory.1.pub, not unodc/unodc.1.pub: that is the key "
            "its node signs messages with)."
        ),
    ],
    vhost: Annotated[str, typer.Option(help="Your node's vhost on your broker.")],
    user: Annotated[str, typer.Option(help="Your node's user on your broker.")],
    folder: Annotated[Path, typer.Option("--dir", help="Where to write.")] = Path("."),
    observer: Annotated[list[str] | None, typer.Option(help="An observer country.")] = None,
    contact_point: Annotated[
        list[str] | None,
        typer.Option(help="id[=role], e.g. fj-ago-1=Central authority (default <cc>-cp-1)."),
    ] = None,
    role: Annotated[str, typer.Option(help="member, or observer for an observer network.")] = (
        "member"
    ),
    broker_host: Annotated[str, typer.Option(help="How peers reach your broker.")] = "127.0.0.1",
    broker_port: Annotated[int, typer.Option(help="Its AMQP port.")] = 5672,
    management_url: Annotated[str, typer.Option(help="Its management API.")] = (
        "http://127.0.0.1:15672"
    ),
    link: Annotated[list[str] | None, typer.Option(help="A network to be linked to.")] = None,
    link_user: Annotated[
        str | None,
        typer.Option(help="Your links' user at peers' brokers (default: <user>-link)."),
    ] = None,
    allow_plaintext_links: Annotated[
        bool,
        typer.Option(
            help="Link in plaintext to peers whose broker has no TLS (a federation on one "
            "local broker, for development; refused otherwise)."
        ),
    ] = False,
) -> None:
    """Start a new network: keys, a node config skeleton and a signed join request."""
    points: list[tuple[str, str]] = []
    for text in contact_point or [f"{country.lower()}-cp-1" for country in member]:
        cp, _, cp_role = text.partition("=")
        points.append((cp, cp_role or "contact point"))
    try:
        files = init_network(
            folder,
            network=network,
            name=name,
            members=member,
            observers=observer or [],
            contact_points=points,
            role=role,
            allow_plaintext_links=allow_plaintext_links,
            broker_host=broker_host,
            broker_port=broker_port,
            vhost=vhost,
            user=user,
            management_url=management_url,
            coordinator_key=coordinator_key,
            links=link or [],
            link_user=link_user,
        )
    except (MlanetError, ValueError) as exc:
        raise _fail(f"refused: {exc}", 2) from None
    typer.echo(f"config:         {files.config}")
    typer.echo(f"signing key:    {files.key} (owner-only)")
    typer.echo(f"encryption key: {files.encryption_key} (owner-only)")
    typer.echo(f"join request:   {files.request} (send it to the coordinator)")


def _rotate(config: Path, *, signing: bool, encryption: bool) -> None:
    cfg = load_or_exit(config)
    try:
        files = rotation_request(cfg, signing=signing, encryption=encryption)
    except MlanetError as exc:
        raise _fail(str(exc)) from None
    except FileExistsError as exc:
        raise _fail(f"refused: {Path(str(exc.filename)).name} exists") from None
    written = [path for path in (files.key, files.encryption_key) if path is not None]
    record_command(cfg, "key_rotation_requested", detail=", ".join(p.name for p in written))
    if files.key is not None:
        typer.echo(f"new key:            {files.key} (owner-only)")
    if files.encryption_key is not None:
        typer.echo(f"new encryption key: {files.encryption_key} (owner-only)")
    typer.echo(f"rotation request:   {files.request} (send it to the coordinator)")


def keys_rotate(
    config: ConfigOption,
    encryption: Annotated[
        bool, typer.Option(help="Also the next encryption key, in the same request.")
    ] = False,
) -> None:
    """Generate the next signing key and a rotation request (signed by the current key and the
    new one) for the coordinator; the node switches to the new key by itself once the
    directory lists it as valid."""
    _rotate(config, signing=True, encryption=encryption)


def keys_rotate_encryption(config: ConfigOption) -> None:
    """Generate the next encryption key (<network>.seal.<n>.key beside the signing key) and a
    rotation request signed by the current key for the coordinator. Origins seal with the new
    key once the directory lists it as valid; what was sealed with the previous one, also what
    waits in a queue, still opens during the overlap the coordinator grants."""
    _rotate(config, signing=False, encryption=True)
