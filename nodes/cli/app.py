"""The ``mlanet`` command: what operators and contact points type."""

from __future__ import annotations

import asyncio
import inspect
import json
import signal
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import structlog
import typer
from pydantic import ValidationError
from typer.core import TyperGroup

from mlanet.broker import ConfigError, KeyRefused, MlanetError, RefusedMessage, generate_key_files
from mlanet.broker.seal import generate_seal_key_files
from mlanet.nodes.cli.cluster import cluster_app
from mlanet.nodes.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_UNEXPECTED,
    AdminPasswordFile,
    AdminUser,
    ConfigOption,
    admin_endpoint,
    fail,
    load_or_exit,
    time_limited,
    unexpected,
    watchdog,
)
from mlanet.nodes.cli.contact_points import (
    CredentialsOption,
    contact_point_app,
    credentials_or_exit,
)
from mlanet.nodes.cli.directory import (
    directory_app,
    init_command,
    keys_rotate,
    keys_rotate_encryption,
)
from mlanet.nodes.cli.directory_tls import tls_app
from mlanet.nodes.cli.operator import operator_app, status_app
from mlanet.nodes.cli.quarantine import audit_app, quarantine_app
from mlanet.nodes.config import NodeConfig, load_config
from mlanet.nodes.logs import configure_logging, failure_fields, log_loop_error, quiet_libraries
from mlanet.schemas import Destination, write_json_schemas
from mlanet.schemas.header import MAX_RETENTION_DAYS, MIN_RETENTION_DAYS
from mlanet.schemas.submission import Submission


class WholeHelpGroup(TyperGroup):
    """A command group whose list of commands shows each one's whole first paragraph (click
    cuts it to fit one line, ending in "...")."""

    # typer's click is private (typer._click): its context and formatter are taken as they come
    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is None or command.hidden:
                continue
            text = command.short_help or (command.help or "").partition("\f")[0]
            first = inspect.cleandoc(text).split("\n\n")[0]
            rows.append((name, " ".join(first.split())))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _whole_help(typer_app: typer.Typer) -> None:
    """Every group of ``typer_app``, nested ones included, lists its commands in whole."""
    typer_app.info.cls = WholeHelpGroup
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _whole_help(group.typer_instance)


# Help texts are plain text, shown in whole: rich markup would swallow "[operator]
# password_file" (every command takes the mode from the app; tests/unit/test_operator_path.py
# checks that no help text loses a word).
app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__, rich_markup_mode=None)
keys_app = typer.Typer(no_args_is_help=True, help="Signing keys and encryption keys.")
schemas_app = typer.Typer(no_args_is_help=True, help="The message catalogue's JSON Schemas.")
node_app = typer.Typer(no_args_is_help=True, help="Run a network's node.")
federation_app = typer.Typer(
    no_args_is_help=True,
    help="A local federation on one RabbitMQ, or each network on a RabbitMQ node of its own "
    "(six nodes: five example networks and the coordinator's), and taking a network that "
    "joined off its broker.",
)
app.add_typer(keys_app, name="keys")
app.add_typer(schemas_app, name="schemas")
app.add_typer(node_app, name="node")
app.add_typer(federation_app, name="federation")
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(audit_app, name="audit")
app.add_typer(status_app, name="status", help="One node at a glance (--json for scripts).")
app.add_typer(operator_app, name="operator")
app.add_typer(directory_app, name="directory")
directory_app.add_typer(tls_app, name="tls")
app.add_typer(contact_point_app, name="contact-point")
app.add_typer(cluster_app, name="cluster")
app.command("init")(init_command)
keys_app.command("rotate")(keys_rotate)
keys_app.command("rotate-encryption")(keys_rotate_encryption)
_whole_help(app)

ManagementUrl = Annotated[str, typer.Option(help="RabbitMQ management API.")]
INTERRUPTED = "mlanet: interrupted; what the command was doing may be unfinished"
DEMO_CLEANUP = 60.0  # seconds the demo's clean-up may take after its time limit


# --- keys and schemas ------------------------------------------------------------------------
@keys_app.command("generate")
def keys_generate(
    network: Annotated[str, typer.Option(help="Network id, e.g. seajust.")],
    out: Annotated[Path, typer.Option(help="Directory for the key files.")] = Path("keys"),
    key_id: Annotated[str, typer.Option(help="Key id, ed25519:<n>.")] = "ed25519:1",
) -> None:
    """Generate an Ed25519 key pair: a private key file (0600) and a public key file."""
    _write_key_pair(lambda: generate_key_files(out, network, key_id))


def _write_key_pair(write: Callable[[], tuple[Path, Path]]) -> None:
    """Write a key pair's files and say where, or one line why not."""
    try:
        key_path, pub_path = write()
    except KeyRefused as exc:
        raise fail(f"refused: {exc}") from None
    except FileExistsError:
        raise fail("refused: a key file with that id exists; choose another --key-id") from None
    typer.echo(f"private key: {key_path} (owner-only)")
    typer.echo(f"public key:  {pub_path}")


@keys_app.command("generate-encryption")
def keys_generate_encryption(
    network: Annotated[str, typer.Option(help="Network id, e.g. seajust.")],
    out: Annotated[Path, typer.Option(help="Directory for the key files.")] = Path("keys"),
    key_id: Annotated[str, typer.Option(help="Key id, hpke:<n>.")] = "hpke:1",
) -> None:
    """Generate an encryption key pair (HPKE, ML-KEM-768 + X25519): <network>.seal.<n>.key
    (0600) and its public file .pub, whose public_key the directory lists."""
    _write_key_pair(lambda: generate_seal_key_files(out, network, key_id))


@schemas_app.command("write")
def schemas_write(
    out: Annotated[Path | None, typer.Option(help="Directory (default: schemas/json).")] = None,
) -> None:
    """Regenerate the JSON Schema files from the models."""
    for path in write_json_schemas(out) if out else write_json_schemas():
        typer.echo(str(path))


# --- the node --------------------------------------------------------------------------------
@node_app.command("run")
def node_run(
    config: ConfigOption,
    replica: Annotated[
        str | None,
        typer.Option(
            envvar="MLANET_REPLICA",
            help="this process's name among the network's replicas (needs [database]); its "
            "own files go to <state_dir>/replicas/<name>",
        ),
    ] = None,
) -> None:
    """Run the node until SIGTERM or SIGINT (a second one: without waiting for the deliveries
    being handled). A broker that cannot be reached at start is retried with backoff; every
    phase (starting, retrying, running, draining, stopped) is logged and written to
    lifecycle.json in the state folder. Logs are JSON lines on stderr, errors included."""
    from mlanet.nodes.runtime.replicas import replica_config

    cfg = load_or_exit(config)
    if replica is not None:
        try:
            cfg = replica_config(cfg, replica)
        except MlanetError as exc:
            raise fail(str(exc), 2) from None
    configure_logging(cfg.log_level)
    raise typer.Exit(asyncio.run(_run_node(cfg, replica)))


async def _run_node(cfg: NodeConfig, replica: str | None = None) -> int:
    """The node's process: 0 when it stopped on a signal, 1 when it failed (logged)."""
    from mlanet.nodes.runtime import crashpoints
    from mlanet.nodes.runtime.node import Node

    loop = asyncio.get_running_loop()
    loop.set_exception_handler(log_loop_error)  # as JSON, never a traceback
    node: Node | None = None
    asked = False

    def on_signal() -> None:
        nonlocal asked
        asked = True
        if node is not None:
            node.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        # test hooks (crash points, clock offset): off unless their environment variables are set
        node = Node(cfg, clock=crashpoints.from_environment(), replica=replica)
    except MlanetError as exc:  # refused before it runs (its state folder, its key): what to fix
        typer.echo(f"mlanet: {exc}", err=True)
        return 1
    except Exception as exc:
        structlog.get_logger("mlanet.node").error(
            "node_failed", network=cfg.network, **failure_fields(exc)
        )
        return 1
    if asked:
        node.stop()
    try:
        await node.run()
    except Exception:
        return 1  # logged as node_failed by the node
    return 0


# --- contact points --------------------------------------------------------------------------
@app.command("send")
def send(
    config: ConfigOption,
    credentials: CredentialsOption,
    sender: Annotated[
        str | None, typer.Option("--from", help="Sending contact point (the credentials').")
    ] = None,
    to_country: Annotated[str | None, typer.Option(help="Destination country (ISO 3166).")] = None,
    to_contact_point: Annotated[str | None, typer.Option(help="Destination contact point.")] = None,
    to_network: Annotated[str | None, typer.Option(help="Destination network.")] = None,
    kind: Annotated[str, typer.Option(help="Message kind.")] = "facilitation_request",
    file: Annotated[Path | None, typer.Option(help="Payload JSON file for the kind.")] = None,
    case_ref: Annotated[str | None, typer.Option(help="Case reference.")] = None,
    offence: Annotated[list[str] | None, typer.Option(help="Offence category.")] = None,
    measure: Annotated[list[str] | None, typer.Option(help="Measure sought.")] = None,
    language: Annotated[list[str] | None, typer.Option(help="Working language.")] = None,
    summary: Annotated[str | None, typer.Option(help="Summary of the matter.")] = None,
    urgency: Annotated[str, typer.Option(help="normal or urgent.")] = "normal",
    in_reply_to: Annotated[str | None, typer.Option(help="Message this one answers.")] = None,
    members_only: Annotated[
        bool, typer.Option(help="Never to, or through, an observer country or network.")
    ] = False,
    direct_only: Annotated[
        bool, typer.Option(help="Never through a third network: only over a direct link.")
    ] = False,
    retention_days: Annotated[
        int | None,
        typer.Option(
            min=MIN_RETENTION_DAYS,
            max=MAX_RETENTION_DAYS,
            help="The destination purges the content this many days after it was sent.",
        ),
    ] = None,
) -> None:
    """Send a message (a facilitation request by default) from a file or from flags."""
    from mlanet.nodes.cli.contact import submit
    from mlanet.nodes.cli.precheck import check_route

    cfg = load_or_exit(config)
    signer = credentials_or_exit(credentials, sender)
    sender = signer.contact_point
    country = to_country or (to_contact_point[:2].upper() if to_contact_point else None)
    payload: dict[str, Any]
    if file is not None:
        payload = json.loads(file.read_text(encoding="utf-8"))
    elif kind == "facilitation_request":
        sender_country = sender[:2].upper()
        payload = {
            "case_ref": case_ref,
            "requesting_country": sender_country,
            "requested_country": country,
            "offence_categories": offence or ["other"],
            "measures_sought": measure or ["evidence"],
            "languages": language or ["en"],
            "summary": summary,
            "urgency": urgency,
        }
    else:
        raise fail(f"--file is needed for a {kind}")
    try:
        submission = Submission.model_validate(
            {
                "message_id": str(uuid.uuid4()),
                "kind": kind,
                "sender": sender,
                "destination": Destination(
                    network=to_network, country=country, contact_point=to_contact_point
                ),
                "urgency": urgency,
                "in_reply_to": in_reply_to,
                "members_only": True if members_only else None,
                "direct_only": True if direct_only else None,
                "retention_days": retention_days,
                "payload": payload,
            }
        )
        check_route(cfg, submission)  # what the node would refuse to route: said at once
        message_id = asyncio.run(submit(cfg, signer, submission))
    except RefusedMessage as exc:
        raise fail(
            f"not sent: {exc.detail} ({exc.reason.value}); nothing was submitted", 1
        ) from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        )
        raise fail(f"invalid message: {problems}") from None
    except MlanetError as exc:
        raise fail(str(exc), 1) from None
    typer.echo(message_id)


@app.command("inbox")
def inbox(
    config: ConfigOption,
    credentials: CredentialsOption,
    contact_point: Annotated[
        str | None, typer.Option(help="Whose delivered messages (the credentials').")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Read a contact point's delivered messages (verified end to end, deduplicated); those
    whose retention has passed are listed by their metadata, their content purged."""
    from mlanet.nodes.cli.contact import read_inbox, read_purged
    from mlanet.nodes.cli.terminal import visible

    cfg = load_or_exit(config)
    reader = credentials_or_exit(credentials, contact_point)
    try:
        items = asyncio.run(read_inbox(cfg, reader))
        purged = read_purged(cfg, reader)
    except MlanetError as exc:
        raise fail(str(exc), 1) from None
    for gone in purged:
        created = gone.created_at if gone.created_at is not None else gone.received_at
        kept = {
            "message_id": gone.message_id,
            "kind": gone.kind,
            "from": gone.origin,
            "created_at": datetime.fromtimestamp(created, UTC).isoformat(),
            "purged_at": datetime.fromtimestamp(gone.purged_at, UTC).isoformat(),
            "content_sha256": gone.content_sha256,
        }
        if as_json:
            typer.echo(json.dumps(kept, sort_keys=True))
        else:
            typer.echo(
                f"  {gone.message_id} {gone.kind} from {gone.origin}: content purged at "
                f"{kept['purged_at']} (retention period over)"
            )
    for item in items:
        header = item.message.header
        record = {
            "message_id": header.message_id,
            "kind": header.kind,
            "from": header.origin.contact_point or header.origin.network,
            "path": list(item.message.path),
            "created_at": header.created_at.isoformat(),
            "new": item.new,
            "payload": item.payload.model_dump(mode="json", exclude_none=True),
        }
        if as_json:
            typer.echo(json.dumps(record, sort_keys=True))
        else:
            mark = "*" if item.new else " "
            typer.echo(
                visible(
                    f"{mark} {header.message_id} {header.kind} from {record['from']} "
                    f"via {' > '.join(item.message.path)}"
                )
            )
            # the sender chose this text: control and bidi characters are shown, never obeyed
            typer.echo("    " + visible(json.dumps(record["payload"], ensure_ascii=False)))


@app.command("track")
def track(
    message_id: Annotated[str, typer.Argument(help="The message id that send printed.")],
    config: ConfigOption,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Where a message is: its state at this node and the history of what happened to it."""
    from mlanet.nodes.cli.contact import track as track_message

    cfg = load_or_exit(config)
    try:
        found = track_message(cfg, message_id)
    except MlanetError as exc:  # no state yet, or one the node has not upgraded yet
        raise fail(str(exc), 1) from None
    if found.entry is None and not found.events:
        raise fail(f"{message_id} is not known at {cfg.network}", 1)
    state = found.entry.state if found.entry else "relayed"
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "message_id": message_id,
                    "state": state,
                    "attempts": found.entry.attempts if found.entry else 0,
                    "events": [
                        {"at": e.at, "event": e.event, "detail": e.detail} for e in found.events
                    ],
                }
            )
        )
        return
    typer.echo(f"{message_id}: {state}")
    for event in found.events:
        at = datetime.fromtimestamp(event.at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        typer.echo(f"  {at}  {event.event:<13} {event.detail}")


# --- the local federation --------------------------------------------------------------------
@federation_app.command("init")
def federation_init(
    directory: Annotated[Path, typer.Option("--dir", help="Where to write it.")] = Path(
        "federation"
    ),
    prefix: Annotated[
        str,
        typer.Option(
            help="Prefix of its vhosts and users (recorded in the folder's federation.json, "
            "where federation down reads it)."
        ),
    ] = "mlanet",
    admin_user: AdminUser = "guest",
    admin_password_file: AdminPasswordFile = None,
    management_url: ManagementUrl = "http://127.0.0.1:15672",
    operator_port: Annotated[
        int, typer.Option(help="First node's dashboard and /metrics port; 0: any free port.")
    ] = 9471,
    own_brokers: Annotated[
        bool,
        typer.Option(
            "--own-brokers",
            help="Start a RabbitMQ node of its own for each network (TLS only, own ports and "
            "folders under --dir), linked over AMQPS with mutual TLS; they keep running until "
            "federation down. The admin options are then not used.",
        ),
    ] = False,
    database: Annotated[
        str | None,
        typer.Option(
            help="Keep every node's state in this PostgreSQL database (a URL without password; "
            "a schema per network), so that each can run as replicas (--replica).",
        ),
    ] = None,
) -> None:
    """Write keys, a signed directory and node configs for six networks (the five example
    networks and the coordinator, UNODC, whose node publishes directory updates), and each
    contact point's credentials; provision their vhosts and users on the broker (or, with
    --own-brokers, start each network's own broker and provision it)."""
    from mlanet.nodes.config import DatabaseConfig
    from mlanet.nodes.local import federation
    from mlanet.nodes.local import own_brokers as separate

    if database is not None:
        try:  # the same check the node's config makes: no password in it
            DatabaseConfig(url=database)
        except ValidationError:
            raise fail(
                "--database: a URL postgresql://user@host:port/dbname, without a password "
                "(PGPASSWORD or ~/.pgpass give it)",
                2,
            ) from None
    # the administrator is used here, once: no node config holds its password
    try:
        if own_brokers:
            fed = separate.prepare(
                directory, prefix=prefix, operator_port=operator_port, database_url=database
            )
            try:
                asyncio.run(separate.up(fed))
            except MlanetError as exc:
                raise fail(
                    f"{exc}; remove what was made: mlanet federation down --dir {directory}", 1
                ) from None
        else:
            admin = admin_endpoint(management_url, admin_user, admin_password_file)
            fed = federation.build(
                directory,
                prefix=prefix,
                management_url=management_url,
                operator_port=operator_port,
                database_url=database,
            )
            asyncio.run(federation.provision(fed, admin))
    except MlanetError as exc:
        raise fail(str(exc), 1) from None
    for network in fed.nodes:  # the coordinator runs a node too
        port = load_config(fed.config_path(network)).operator.port
        dashboard = f"   (dashboard http://127.0.0.1:{port}/)" if port else ""
        replica = " --replica <name>" if database else ""
        typer.echo(
            f"{network}: mlanet node run --config {fed.config_path(network)}{replica}{dashboard}"
        )
    for record in fed.brokers:
        typer.echo(
            f"{record.spec.network}'s broker: {record.nodename}, AMQPS 127.0.0.1:"
            f"{record.ports.amqps}, management https://127.0.0.1:{record.ports.management}/ "
            f"(mlanet-admin, password in {record.spec.root / 'admin.password'})"
        )
    typer.echo(f"operator password for the dashboards: {directory / 'operator.secret'}")
    typer.echo(
        f"contact points' credentials (send/inbox --credentials): "
        f"{directory / '<network>' / 'credentials' / '<contact point>'}"
    )
    typer.echo(f"a joining network pins the coordinator's directory key: {fed.coordinator_pub()}")
    typer.echo(f"remove it all again with: mlanet federation down --dir {directory}")


@federation_app.command("down")
def federation_down(
    directory: Annotated[Path, typer.Option("--dir", help="The federation's folder.")] = Path(
        "federation"
    ),
    prefix: Annotated[
        str | None,
        typer.Option(
            help="Only for a folder an older version wrote (without federation.json): the "
            "prefix it was made with. Otherwise it must match the folder's, or nothing is "
            "removed."
        ),
    ] = None,
    admin_user: AdminUser = "guest",
    admin_password_file: AdminPasswordFile = None,
    management_url: ManagementUrl = "http://127.0.0.1:15672",
) -> None:
    """Remove the federation's vhosts, queues, links and users from the broker: those of the
    prefix that federation init recorded in the folder (federation.json). Without that record
    it refuses to guess: nothing of anyone else's is removed. A federation on brokers of its
    own (init --own-brokers): its brokers are stopped and their folders removed."""
    from mlanet.nodes.local import federation
    from mlanet.nodes.local import own_brokers as separate

    try:
        fed = federation.Federation.load(directory)
    except ConfigError as exc:
        if prefix is None:
            raise fail(f"{exc}; nothing removed (name its --prefix if you know it)") from None
        fed = federation.Federation(
            directory, prefix, tuple(federation.EXAMPLE_NETWORKS), tuple(federation.EXAMPLE_LINKS)
        )
    if prefix is not None and prefix != fed.prefix:
        raise fail(
            f"{directory} holds the federation with prefix {fed.prefix}, not {prefix}; nothing "
            "removed"
        )
    try:
        if fed.brokers:
            stopped = asyncio.run(separate.down(fed))
        else:
            asyncio.run(
                federation.teardown(
                    fed, admin_endpoint(management_url, admin_user, admin_password_file)
                )
            )
    except MlanetError as exc:
        raise fail(str(exc), 1) from None
    if fed.brokers and not stopped:
        typer.echo(f"the brokers of the federation with prefix {fed.prefix} were already removed")
        return
    if fed.brokers:
        typer.echo(
            f"stopped the brokers of the federation with prefix {fed.prefix} and removed their "
            f"folders: {', '.join(stopped)}"
        )
        return
    typer.echo(f"removed the federation with prefix {fed.prefix}: {', '.join(fed.nodes)}")


@federation_app.command("remove")
def federation_remove(
    config: ConfigOption,
    admin_user: AdminUser = "guest",
    admin_password_file: AdminPasswordFile = None,
    management_url: Annotated[
        str | None, typer.Option(help="Management API (default: the config's).")
    ] = None,
) -> None:
    """Take a network that joined (docs/JOINING.md) off its broker: its vhost with its queues,
    exchanges and links, its node user, and its link user where the broker holds the one a
    directory made. Stop its node first. Its folder (keys, state) is left as it is."""
    from mlanet.nodes.directory.joining import remove_from_broker

    cfg = load_or_exit(config)
    endpoint = admin_endpoint(
        management_url or cfg.broker.management_url, admin_user, admin_password_file, cfg.broker
    )
    try:
        for line in asyncio.run(remove_from_broker(cfg, endpoint)):
            typer.echo(line)
    except MlanetError as exc:
        raise fail(str(exc), 1) from None


@app.command("demo")
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Federation folder.")] = Path(
        "federation"
    ),
    keep: Annotated[bool, typer.Option(help="Leave the federation on the broker.")] = False,
    timeout: Annotated[
        float,
        typer.Option(
            envvar="MLANET_TIMEOUT",
            min=1,
            help="Give up after this many seconds, naming what the demo waited for (the "
            "federation is removed and the nodes stopped first).",
        ),
    ] = 300.0,
    own_brokers: Annotated[
        bool,
        typer.Option(
            "--own-brokers",
            help="Each network on a RabbitMQ node of its own, linked over AMQPS with mutual "
            "TLS (stopped and removed at the end, unless --keep).",
        ),
    ] = False,
) -> None:
    """Start the five example networks and send the Cambodia -> Uzbekistan journey."""
    from mlanet.nodes.local.demo import demo_prefix, fresh_folder, run_demo

    fresh_folder(directory)
    # the demo stops its nodes and removes its federation when it gives up (within timeout);
    # the watchdog is for a clean-up that hangs itself (the nodes stop with the demo)
    line = (
        f"mlanet: demo did not end within {timeout + DEMO_CLEANUP:g} s; remove what is left"
        f" with: mlanet federation down --dir {directory}"
    )
    prefix = demo_prefix()  # its own vhosts and users, recorded in the folder (federation.json)
    with watchdog(timeout + DEMO_CLEANUP, lambda: line):
        try:
            asyncio.run(
                run_demo(
                    directory,
                    say=typer.echo,
                    keep=keep,
                    within=timeout,
                    prefix=prefix,
                    own_brokers=own_brokers,
                )
            )
        except MlanetError as exc:
            raise fail(str(exc), 1) from None


# Every command has a time limit (nodes/cli/common.py); set here, once all are registered.
def _limit(typer_app: typer.Typer, path: tuple[str, ...] = ()) -> None:
    for command in typer_app.registered_commands:
        if command.callback is not None:
            name = command.name or command.callback.__name__.replace("_", "-")
            command.callback = time_limited(" ".join((*path, name)), command.callback)
    for group in typer_app.registered_groups:
        sub, group_name = group.typer_instance, group.name
        if sub is None or not isinstance(group_name, str):
            continue
        info = sub.registered_callback
        if info is not None and info.callback is not None and info.invoke_without_command:
            info.callback = time_limited(" ".join((*path, group_name)), info.callback)
        _limit(sub, (*path, group_name))


_limit(app)


def main() -> None:
    """The ``mlanet`` entry point. Whatever happens, the user sees the command's own output
    or one line on stderr, never a traceback: a defect is named by its type and place only."""
    quiet_libraries()
    try:
        app()
    except SystemExit as exit_:
        if exit_.code == EXIT_INTERRUPTED:
            typer.echo(
                "mlanet: interrupted; what the command was doing may be unfinished", err=True
            )
        raise
    except (KeyboardInterrupt, asyncio.CancelledError):
        typer.echo("mlanet: interrupted; what the command was doing may be unfinished", err=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except Exception as exc:
        typer.echo(unexpected(exc), err=True)
        raise SystemExit(EXIT_UNEXPECTED) from None
