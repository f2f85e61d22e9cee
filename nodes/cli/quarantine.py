"""``mlanet quarantine`` and ``mlanet audit``: what an operator does with refused messages, and
how the node's audit trail is read and checked. Registered in ``nodes/cli/app.py``."""

from __future__ import annotations

import asyncio
import getpass
import json
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer

from mlanet.broker import MlanetError, load_signing_key
from mlanet.nodes.cli.common import ConfigOption, fail, load_or_exit
from mlanet.nodes.cli.terminal import visible
from mlanet.nodes.config import NodeConfig
from mlanet.nodes.state.audit import AuditLog, verify_audit

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
Reasons = Annotated[
    list[str] | None, typer.Option("--reason", help="Only this reason code (repeatable).")
]
Peer = Annotated[str | None, typer.Option(help="Only what came from this peer network.")]
Local = Annotated[
    bool, typer.Option("--local", help="Only what came in locally (submissions, deliveries).")
]
Since = Annotated[
    str | None,
    typer.Option(
        help="Refused at or after: ISO 8601 (UTC unless it says) or an age: 90s, 15m, 2h."
    ),
]
Until = Annotated[str | None, typer.Option(help="Refused before: the same forms as --since.")]
T = TypeVar("T")

_AGE = re.compile(r"^([0-9]{1,9})([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _moment(option: str, text: str | None) -> float | None:
    """A time given as ISO 8601 or as an age (``15m`` ago), in epoch seconds."""
    if text is None:
        return None
    age = _AGE.fullmatch(text.strip())
    if age:
        return time.time() - int(age[1]) * _UNIT[age[2]]
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise fail(
            f"{option} must be ISO 8601 (2026-03-02T09:30) or an age (90s, 15m, 2h, 3d)"
        ) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _where(
    reasons: list[str] | None, peer: str | None, local: bool, since: str | None, until: str | None
) -> Any:
    from mlanet.nodes.state.quarantine import Where

    if peer is not None and local:
        raise fail("--peer and --local exclude each other")
    return Where(
        reasons=tuple(reasons or ()),
        peer="" if local else peer,
        since=_moment("--since", since),
        until=_moment("--until", until),
    )


def _with_quarantine(
    config: NodeConfig,
    operator: str | None,
    act: Callable[[Any], Awaitable[T]],
    *,
    broker: bool = False,
) -> T:
    """Run one audited operation on the node's quarantine store (and, for ``broker``, with a
    connection to the node's broker); every error becomes a short message and exit status 1."""
    from mlanet.broker.transport import Transport
    from mlanet.nodes.runtime.doors import DoorPublisher
    from mlanet.nodes.state.quarantine import QuarantineAction
    from mlanet.nodes.state.quarantine_store import open_quarantine, quarantine_exists

    if not quarantine_exists(config):
        raise fail(f"the node of {config.network} has no quarantine yet", 1)

    async def main() -> T:
        key = load_signing_key(config.signing_key)
        with (
            AuditLog.of(config, key) as log,
            open_quarantine(config) as entries,
        ):
            who = operator or getpass.getuser()
            if not broker:
                return await act(QuarantineAction(entries, log, None, who))
            async with Transport(config.amqp_url()) as transport:  # and a peer's door
                publisher = DoorPublisher(transport, config.broker.vhost)
                return await act(QuarantineAction(entries, log, publisher, who))

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
    config: ConfigOption,
    reason: Reasons = None,
    peer: Peer = None,
    local: Local = False,
    since: Since = None,
    until: Until = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="Entries per page.")] = 1000,
    after: Annotated[
        str | None, typer.Option(help="The last id of the previous page: list the next one.")
    ] = None,
    operator: Operator = None,
    as_json: AsJson = False,
) -> None:
    """Quarantined messages with their reasons, oldest first (metadata only), a page at a
    time; --reason, --peer/--local, --since and --until narrow it."""
    from mlanet.nodes.state.quarantine_store import quarantine_exists

    cfg = load_or_exit(config)
    where = _where(reason, peer, local, since, until)
    if not quarantine_exists(cfg):  # the node never refused anything yet
        if not as_json:
            typer.echo(f"the quarantine of {cfg.network} is empty")
        return
    page = _with_quarantine(
        cfg, operator, lambda action: action.entries_page(where, after=after, limit=limit)
    )
    last = page.entries[-1].id if page.entries else None
    more = f"; next page: --after {last}" if page.more else ""
    if as_json:
        for entry in page.entries:
            typer.echo(json.dumps(entry.metadata(), sort_keys=True))
        if page.more:
            typer.echo(f"{len(page.entries)} of {page.total}{more}", err=True)
        return
    if not page.total:
        typer.echo(f"the quarantine of {cfg.network} has nothing that matches")
        return
    for entry in page.entries:
        meta = entry.metadata()
        kept = "" if entry.body_kept else "  (metadata only)"
        typer.echo(
            f"{entry.id}  {meta['at']}  {entry.reason:<18}  {visible(entry.via) or '-'}  "
            f"{_claimed(meta)}{kept}"
        )
        typer.echo(f"    {visible(entry.detail)}")
    typer.echo(f"{len(page.entries)} of {page.total} quarantined message(s) at {cfg.network}{more}")


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
    from mlanet.nodes.state.quarantine import payload_text

    cfg = load_or_exit(config)
    entry, history = _with_quarantine(
        cfg, operator, lambda action: action.show(entry_id, payload=payload)
    )
    meta = entry.metadata() | {"history": history}
    content = None
    if payload and entry.body is not None:
        content = _opened(entry.body, cfg) or payload_text(entry.body)
    if as_json:
        if payload:
            meta["payload"] = content  # JSON escapes every control character
        typer.echo(json.dumps(meta, sort_keys=True))
        return
    for key in ("id", "reason", "detail", "via", "at", "size", "body_sha256", "copies"):
        typer.echo(f"{key + ':':<13} {visible(str(meta[key]))}")
    typer.echo(f"{'from:':<13} {entry.peer or 'local'}")
    if entry.truncated_from is not None:
        typer.echo(f"{'kept:':<13} only the first {entry.size} of {entry.truncated_from} bytes")
    if not entry.body_kept:
        typer.echo(
            f"{'kept:':<13} metadata only (over the quarantine bound of its peer, or purged"
            " when its retention period ended)"
        )
    typer.echo(f"{'claimed:':<13} {_claimed(meta)} (unverified)")
    typer.echo(f"{'history:':<13} {', '.join(history) or '-'}")
    if payload:
        typer.echo("payload:")
        typer.echo(visible(content) if content is not None else "(the body was not kept)")


def _opened(body: bytes, config: NodeConfig) -> str | None:
    """The payload of a message sealed for this network, opened with its key (the destination's
    operator may read what its node would have delivered); None when it is not one, or does not
    open (then ``show`` prints the payload as it came)."""
    from pydantic import ValidationError

    from mlanet.broker import loads_strict
    from mlanet.broker.keys import b64u_decode
    from mlanet.broker.seal import SealKeyring
    from mlanet.nodes.directory.book import load_directory
    from mlanet.schemas import Header

    try:
        frame = loads_strict(body, max_bytes=config.limits.max_message_bytes, max_depth=4)
        if not isinstance(frame, dict):
            return None
        header_b64, payload_b64 = frame.get("header"), frame.get("payload")
        if not isinstance(header_b64, str) or not isinstance(payload_b64, str):
            return None  # the sender chose these: anything at all
        sealed = b64u_decode(payload_b64)
        header = Header.model_validate_json(b64u_decode(header_b64))
        me = load_directory(config).network(config.network)
        if header.sealed is None or header.sealed.network != config.network or me is None:
            return None
        keyring = SealKeyring.load(config.signing_key.parent, config.network)
        plaintext = keyring.open(header, header_b64, sealed, me.encryption_keys)
    except (MlanetError, ValidationError):  # KeyRefused, RefusedMessage among the first
        return None
    return f"(opened: sealed for {config.network} with {header.sealed.key_id})\n" + (
        plaintext.decode("utf-8", errors="backslashreplace")
    )


@quarantine_app.command("release")
def quarantine_release(entry_id: EntryId, config: ConfigOption, operator: Operator = None) -> None:
    """Send a message through the receiving pipeline again, the way it came in (same sender)."""
    cfg = load_or_exit(config)
    entry = _with_quarantine(cfg, operator, lambda action: action.release(entry_id), broker=True)
    typer.echo(f"released {entry.id} through {entry.via}")


@quarantine_app.command("drop")
def quarantine_drop(
    config: ConfigOption,
    entry_id: Annotated[
        str | None, typer.Argument(help="The quarantine id that list printed.")
    ] = None,
    all_matching: Annotated[
        bool,
        typer.Option(
            "--all-matching",
            help="Drop every entry that --reason, --peer/--local, --since and --until select.",
        ),
    ] = False,
    reason: Reasons = None,
    peer: Peer = None,
    local: Local = False,
    since: Since = None,
    until: Until = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    operator: Operator = None,
) -> None:
    """Remove a message for good, or with --all-matching every one that matches (their
    metadata and hashes stay in the audit trail)."""
    cfg = load_or_exit(config)
    if all_matching == (entry_id is not None):
        raise fail("name one quarantine id, or use --all-matching (with its filters)")
    if entry_id is not None:
        if not yes and not typer.confirm(f"drop {entry_id} from the quarantine for good?"):
            raise fail("not dropped", 1)
        entry = _with_quarantine(cfg, operator, lambda action: action.drop(entry_id))
        typer.echo(f"dropped {entry.id} ({entry.reason})")
        return
    where = _where(reason, peer, local, since, until)
    if not yes:
        from mlanet.nodes.state.quarantine_store import open_quarantine, quarantine_exists

        matching = 0
        if quarantine_exists(cfg):
            with open_quarantine(cfg, readonly=True) as entries:
                matching = entries.count(where)
        if not typer.confirm(f"drop {matching} quarantined message(s) for good?"):
            raise fail("not dropped", 1)
    count = _with_quarantine(cfg, operator, lambda action: action.drop_matching(where))
    typer.echo(f"dropped {count} quarantined message(s) at {cfg.network}")


# --- the audit trail -------------------------------------------------------------------------
def _audit(config: NodeConfig) -> AuditLog:
    try:
        return AuditLog.of(config, readonly=True)
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
    from mlanet.nodes.directory.book import load_directory, message_trust

    cfg = load_or_exit(config)
    expected = _anchor(anchor)
    try:
        trust = message_trust(load_directory(cfg))
    except MlanetError as exc:
        raise fail(str(exc), 1) from None
    with _audit(cfg) as log:
        verdict = verify_audit(log, trust, cfg.network, anchor=expected)
    if not verdict.ok:
        typer.echo(f"audit trail of {cfg.network} FAILED: {verdict.problem}")
        raise typer.Exit(1)
    head = f"{verdict.head[0]}:{verdict.head[1]}" if verdict.head else "empty"
    typer.echo(f"audit trail of {cfg.network} ok: {verdict.records} records, head {head}")
