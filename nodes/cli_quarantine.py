"""``mlanet quarantine`` and ``mlanet audit``: what an operator does with refused messages, and
how the node's audit trail is read and checked. Registered in ``nodes/cli.py``."""

from __future__ import annotations

import asyncio
import getpass
import json
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer

from broker import MlanetError, load_signing_key
from nodes.audit import AUDIT_FILE, AuditLog, verify_audit
from nodes.cli_common import ConfigOption, fail, load_or_exit
from nodes.config import NodeConfig

__all__ = ["audit_app", "quarantine_app"]

quarantine_app = typer.Typer(
    no_args_is_help=True,
    help="Messages the node refused: list them, show one, release or drop it (all audited).",
)
audit_app = typer.Typer(
    no_args_is_help=True, help="The node's signed, hash-chained audit trail: show and verify."
)

EntryId = Annotated[str, typer.Argument(help="The quarantine id that list printed.")]
Operator = Annotated[
    str | None, typer.Option(help="Who is acting, for the audit trail (default: login name).")
]
AsJson = Annotated[bool, typer.Option("--json", help="JSON output.")]
T = TypeVar("T")


def _with_quarantine(
    config: NodeConfig, operator: str | None, act: Callable[[Any], Awaitable[T]]
) -> T:
    """Run one audited operation; every error becomes a short message and exit status 1."""
    from broker.transport import Transport
    from nodes.quarantine import QuarantineAction

    async def main() -> T:
        with AuditLog(config.state_dir / AUDIT_FILE, load_signing_key(config.signing_key)) as log:
            async with Transport(config.amqp_url()) as transport:
                action = QuarantineAction(transport, log, operator or getpass.getuser())
                return await act(action)

    try:
        return asyncio.run(main())
    except MlanetError as exc:
        raise fail(str(exc), 1) from None


def _claimed(meta: dict[str, Any]) -> str:
    claimed = meta["claimed"]
    if not claimed["message_id"]:
        return "(unreadable)"
    return (
        f"{claimed['kind'] or '?'} {claimed['message_id']} "
        f"{claimed['origin'] or '?'} -> {claimed['destination'] or '?'}"
    )


@quarantine_app.command("list")
def quarantine_list(
    config: ConfigOption, operator: Operator = None, as_json: AsJson = False
) -> None:
    """Every quarantined message with its reason, oldest first (metadata only)."""
    cfg = load_or_exit(config)
    entries = _with_quarantine(cfg, operator, lambda action: action.entries())
    if as_json:
        for entry in entries:
            typer.echo(json.dumps(entry.metadata(), sort_keys=True))
        return
    if not entries:
        typer.echo(f"the quarantine of {cfg.network} is empty")
        return
    for entry in entries:
        meta = entry.metadata()
        typer.echo(
            f"{entry.id}  {entry.at or '-':<32}  {entry.reason:<18}  {entry.via or '-'}  "
            f"{_claimed(meta)}"
        )
        typer.echo(f"    {entry.detail}")
    typer.echo(f"{len(entries)} quarantined message(s) at {cfg.network}")


@quarantine_app.command("show")
def quarantine_show(
    entry_id: EntryId,
    config: ConfigOption,
    payload: Annotated[
        bool,
        typer.Option(
            "--payload",
            help="Also print the case content (to this terminal only; the access is audited).",
        ),
    ] = False,
    operator: Operator = None,
    as_json: AsJson = False,
) -> None:
    """One quarantined message's metadata and audit history; its content only with --payload."""
    from nodes.quarantine import payload_text

    cfg = load_or_exit(config)
    entry, history = _with_quarantine(
        cfg, operator, lambda action: action.show(entry_id, payload=payload)
    )
    meta = entry.metadata() | {"history": history}
    if as_json:
        if payload:
            meta["payload"] = payload_text(entry.body)
        typer.echo(json.dumps(meta, sort_keys=True))
        return
    for key in ("id", "reason", "detail", "via", "at", "size", "body_sha256", "returns"):
        typer.echo(f"{key + ':':<13} {meta[key]}")
    if entry.truncated_from is not None:
        typer.echo(f"{'kept:':<13} only the first {entry.size} of {entry.truncated_from} bytes")
    typer.echo(f"{'claimed:':<13} {_claimed(meta)} (unverified)")
    typer.echo(f"{'history:':<13} {', '.join(history) or '-'}")
    if payload:
        typer.echo("payload:")
        typer.echo(payload_text(entry.body))


@quarantine_app.command("release")
def quarantine_release(entry_id: EntryId, config: ConfigOption, operator: Operator = None) -> None:
    """Send a message through the receiving pipeline again, the way it came in (same sender)."""
    cfg = load_or_exit(config)
    entry = _with_quarantine(cfg, operator, lambda action: action.release(entry_id))
    typer.echo(f"released {entry.id} through {entry.via}")


@quarantine_app.command("drop")
def quarantine_drop(
    entry_id: EntryId,
    config: ConfigOption,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    operator: Operator = None,
) -> None:
    """Remove a message for good (its metadata and hash stay in the audit trail)."""
    cfg = load_or_exit(config)
    if not yes and not typer.confirm(f"drop {entry_id} from the quarantine for good?"):
        raise fail("not dropped", 1)
    entry = _with_quarantine(cfg, operator, lambda action: action.drop(entry_id))
    typer.echo(f"dropped {entry.id} ({entry.reason})")


# --- the audit trail -------------------------------------------------------------------------
def _audit(config: NodeConfig) -> AuditLog:
    try:
        return AuditLog(config.state_dir / AUDIT_FILE, readonly=True)
    except MlanetError as exc:
        raise fail(str(exc), 1) from None


@audit_app.command("show")
def audit_show(
    config: ConfigOption,
    last: Annotated[int, typer.Option(min=1, help="How many of the latest records.")] = 50,
    event: Annotated[str | None, typer.Option(help="Only records of this event.")] = None,
    as_json: AsJson = False,
) -> None:
    """The latest records of the audit trail (not verified: use ``audit verify``)."""
    cfg = load_or_exit(config)
    with _audit(cfg) as log:
        records = log.records(last=last, event=event)
    for record in records:
        if as_json:
            typer.echo(json.dumps(record.to_json(), sort_keys=True))
        else:
            meta = " ".join(f"{k}={_short(v)}" for k, v in sorted(record.meta.items()))
            typer.echo(f"{record.seq:>8}  {record.at}  {record.event:<26} {meta}")


def _short(value: object) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _anchor(value: str | None) -> tuple[int, str] | None:
    if value is None:
        return None
    found = re.fullmatch(r"([1-9][0-9]{0,17}):([0-9a-f]{64})", value)
    if found is None:
        raise fail("--anchor must look like SEQ:HASH, as verify printed it")
    return int(found[1]), found[2]


@audit_app.command("verify")
def audit_verify(
    config: ConfigOption,
    anchor: Annotated[
        str | None,
        typer.Option(help="SEQ:HASH of a head kept elsewhere: it must still be in the chain."),
    ] = None,
) -> None:
    """Check every record's hash, signature, order and link, and the signed head; name the
    first record that was altered, removed or reordered (exit status 1)."""
    from nodes.directory import message_trust

    cfg = load_or_exit(config)
    expected = _anchor(anchor)
    try:
        trust = message_trust(cfg.load_directory())
    except MlanetError as exc:
        raise fail(str(exc), 1) from None
    with _audit(cfg) as log:
        verdict = verify_audit(log, trust, cfg.network, anchor=expected)
    if not verdict.ok:
        typer.echo(f"audit trail of {cfg.network} FAILED: {verdict.problem}")
        raise typer.Exit(1)
    head = f"{verdict.head[0]}:{verdict.head[1]}" if verdict.head else "empty"
    typer.echo(f"audit trail of {cfg.network} ok: {verdict.records} records, head {head}")
