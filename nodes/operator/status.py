"""One node's status as operators see it, gathered: queues, links, quarantine, receipts, expiry
and, from ``nodes/operator/alerts.py``, its alerts; and its terminal rendering.

The same :class:`~mlanet.nodes.operator.views.NodeStatus` feeds ``mlanet status`` (text or
``--json``), the metrics and the dashboard. Sources, and what is shown when one is missing:

- the RabbitMQ **management API** (queue depths, rates, consumers, shovel states; each peer's
  inbox queue is read in that peer's door vhost, ``nodes/runtime/doors.py``). Without it,
  depths and consumers of the node's own queues come from AMQP passive declares and the status
  says plainly that rates, unacknowledged counts and link states cannot be shown;
- the node's **SQLite state** (messages awaiting a receipt, quarantine reasons) and its
  **quarantine store** (entries per peer, those kept without their body, the last minute's
  refusals: ``nodes/state/quarantine_store.py``), read-only;
- the **directory** (key and directory expiry: when the node itself stops trusting them,
  ``nodes/directory/config.py`` ``directory_expiry``);
- the **running node's link tracker** (last success, oldest waiting message; see
  ``nodes/operator/links.py``), which the node writes to ``<state_dir>/operator.json`` each poll;
- with ``[database]``, the **replicas** of the node as the database lists them
  (``nodes/operator/replicas.py``): a short-lived read-only connection with a time limit; an
  unreachable database is one line there, and the rest shows as always.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlanet.broker.errors import TransportError
from mlanet.broker.management import (
    Management,
    ManagementEndpoint,
    QueueFigures,
    ShovelState,
    shovel_states,
)
from mlanet.broker.tls import TlsError, handshake_refusal, load_certificates, not_after
from mlanet.broker.topology import link_name, peer_of_out_queue
from mlanet.broker.transport import INBOX, QUARANTINE, SUBMIT, Transport, out_queue
from mlanet.nodes.config import Alerts, NodeConfig
from mlanet.nodes.directory.book import DirectoryBook, effective_config
from mlanet.nodes.directory.config import directory_expiry
from mlanet.nodes.operator.alerts import compute_alerts
from mlanet.nodes.operator.links import LinkDiagnosis, LinkView
from mlanet.nodes.operator.replicas import outside_replicas, replica_lines
from mlanet.nodes.operator.views import (
    Alert,
    ExpiryView,
    KeyView,
    NodeStatus,
    PeerQuarantine,
    QuarantineEntry,
    QuarantineView,
    ReceiptView,
    ReplicasView,
    human_duration,
    iso,
)
from mlanet.nodes.runtime.reconcile import doors as door_vhosts
from mlanet.nodes.runtime.reconcile import foreign
from mlanet.nodes.state.journal import JournalError
from mlanet.nodes.state.quarantine_store import QuarantineStore, open_quarantine, quarantine_exists
from mlanet.nodes.state.store import Store, node_store_exists, open_node_store
from mlanet.schemas.directory import CaCertificate, Directory, NetworkKey
from mlanet.schemas.sealing import EncryptionKey

__all__ = [
    "SNAPSHOT",
    "Alert",
    "BrokerView",
    "ExpiryView",
    "NodeStatus",
    "PeerQuarantine",
    "QuarantineEntry",
    "QuarantineView",
    "ReceiptView",
    "ReplicasView",
    "broker_view",
    "build_status",
    "collect",
    "compute_alerts",
    "human_duration",
    "link_name",
    "read_snapshot",
    "render_text",
    "write_snapshot",
]

SNAPSHOT = "operator.json"


# --- the broker -------------------------------------------------------------------------------
@dataclass(frozen=True)
class BrokerView:
    queues: dict[str, QueueFigures]
    shovels: dict[str, ShovelState] | None  # None: the management API did not answer
    problem: str | None  # why the management API did not answer
    foreign: list[str] = field(default_factory=list)  # mlanet.nodes.runtime.reconcile.foreign
    tls_refused: bool = False  # the API is not the one [broker.tls] names (CA, name, expiry)


def management_endpoint(config: NodeConfig) -> ManagementEndpoint:
    """The node's user at its broker's management API (HTTPS checked against [broker.tls])."""
    return config.management_endpoint()


def core_queues(config: NodeConfig) -> list[str]:
    return [INBOX, SUBMIT, QUARANTINE, *(out_queue(peer.network) for peer in config.peers)]


async def broker_view(config: NodeConfig, transport: Transport | None = None) -> BrokerView:
    """Figures from the management API; depths from AMQP where it has none (yet)."""
    queues: dict[str, QueueFigures] = {}
    shovels: dict[str, ShovelState] | None = None
    problem: str | None = None
    tls_refused = False
    found: list[str] = []
    definitions: dict[str, dict[str, Any]] | None = None
    try:
        async with Management(management_endpoint(config), timeout=5.0) as management:
            # the node's vhost and its doors (each peer's inbox queue is in the peer's door)
            figures = await management.queue_figures(None)
            everywhere = await management.shovels_everywhere()
        vhost, doors = config.broker.vhost, set(door_vhosts(config).values())
        mine = [q for q in figures if q.vhost in (None, vhost) or q.vhost in doors]
        queues = {q.name: q for q in sorted(mine, key=lambda q: q.vhost in doors)}  # doors win
        definitions = {name: value for (at, name), value in everywhere.items() if at == vhost}
        found = foreign(config, mine, everywhere)
    except TransportError as exc:
        problem = str(exc)
        queues = {}
        tls_refused = handshake_refusal(exc) is not None
    missing = [name for name in core_queues(config) if queues.get(name, _EMPTY).messages is None]
    for name, exact in (await _passive(config, transport, missing)).items() if missing else ():
        known = queues.get(name, _EMPTY)  # keep what the management API did say (acks, rates)
        queues[name] = replace(
            exact, rate_in=known.rate_in, rate_out=known.rate_out, acked=known.acked
        )
    if definitions is not None:  # a shovel runs while it consumes its source (an out queue)
        shovels = shovel_states(definitions, queues)
    return BrokerView(queues, shovels, problem, found, tls_refused)


_EMPTY = QueueFigures("", None, None, None, None, None, None, None)


async def _passive(
    config: NodeConfig, transport: Transport | None, names: list[str]
) -> dict[str, QueueFigures]:
    """Ready messages and consumers by AMQP passive declare (exact, but no rates)."""
    found: dict[str, QueueFigures] = {}

    async def each(t: Transport) -> None:
        for name in names:
            try:
                ready = await t.queue_depth(name)
                consumers = await t.consumer_count(name)
            except TransportError:
                continue
            found[name] = QueueFigures(name, ready, ready, None, consumers, None, None, None)

    try:
        if transport is not None:
            await each(transport)
        else:
            async with Transport(config.amqp_url()) as own:
                await each(own)
    except TransportError:
        pass  # the broker itself is unreachable: the status says so
    return found


# --- the node's state and the directory -----------------------------------------------------
UNMATCHED_WINDOW = 86400.0  # seconds: receipts for messages this node did not send, counted


FAILED_EVENTS = ("failed", "undeliverable")  # an own message's end without its receipt


def receipt_view(store: Store, alerts: Alerts, now: float) -> ReceiptView:
    awaiting, oldest, overdue = store.outbox_awaiting(now - alerts.receipt_overdue_seconds)
    since = now - alerts.failed_window_seconds
    return ReceiptView(
        awaiting=awaiting,
        oldest_age=None if oldest is None else max(0.0, now - oldest),
        overdue=overdue,
        states=store.outbox_states(),
        unmatched=store.count_events("receipt_unmatched", now - UNMATCHED_WINDOW),
        failed_recent=sum(store.count_events(event, since) for event in FAILED_EVENTS),
    )


def quarantine_view(
    store: Store | None,
    depth: int | None,
    recent: int = 20,
    *,
    quarantined: QuarantineStore | None = None,
    now: float = 0.0,
) -> QuarantineView:
    """The quarantine at a glance. ``depth``: messages still in ``mlanet.quarantine`` (None:
    unknown); the entries of the store ``quarantined`` are added to it."""
    peers: dict[str, PeerQuarantine] = {}
    if quarantined is not None:
        counts = quarantined.by_peer(now - 60.0)
        peers = {
            peer or "local": PeerQuarantine(c.waiting, c.without_body, c.recent)
            for peer, c in sorted(counts.items())
        }
        depth = (depth or 0) + sum(c.waiting for c in counts.values())
    if store is None:
        return QuarantineView(depth, {}, [], peers)
    entries = []
    for at, reason, detail in store.recent_events("refused", recent):  # journal columns
        entries.append(QuarantineEntry(at, reason, detail))
    return QuarantineView(depth, store.quarantine_reasons(), entries, peers)


def _open_quarantine(config: NodeConfig) -> QuarantineStore | None:
    return open_quarantine(config, readonly=True) if quarantine_exists(config) else None


def _key_end(key: NetworkKey | EncryptionKey) -> float | None:
    ends = [at.timestamp() for at in (key.not_after, key.revoked_at) if at is not None]
    return min(ends) if ends else None


def _cas_end(cas: Sequence[CaCertificate]) -> float:
    """When the last of ``cas`` stops being trusted (expiry, the end of a rotation's overlap,
    or revocation), as a key's end (:func:`_key_end`)."""
    return max(
        min(ca.ends, ca.revoked_at).timestamp() if ca.revoked_at else ca.ends.timestamp()
        for ca in cas
    )


def own_certificates(config: NodeConfig) -> dict[str, float]:
    """When this node's own certificates expire, by what they are: its links' certificate
    (``[link.tls]``) and its client certificate at its broker (``[broker.tls]``); one that
    cannot be read is left out (the shovel or the connection says why)."""
    files = {
        "our link certificate": config.link.tls.cert_file
        if config.link is not None and config.link.tls is not None
        else None,
        "our broker client certificate": config.broker.tls.cert_file
        if config.broker.tls is not None
        else None,
    }
    found = {}
    for what, path in files.items():
        if path is None:
            continue
        try:
            found[what] = not_after(load_certificates(path)[0]).timestamp()
        except TlsError:
            continue
    return found


def expiry_view(
    directory: Directory, config: NodeConfig, now: datetime | None = None
) -> ExpiryView:
    """When each network's last key stops being valid (expiry or revocation: a key is no longer
    valid at its ``not_after``), when its last broker CA and the coordinator's last link CA
    stop being trusted, when the node stops trusting the directory (the coordinator's
    ``valid_until``, else ``[coordinator] max_directory_age_seconds``), and this network's
    encryption keys with their state at ``now`` and their end."""
    now = now or datetime.now(UTC)
    keys: dict[str, float | None] = {}
    for network in directory.networks:
        ends = [_key_end(key) for key in network.keys]
        keys[network.id] = None if any(end is None for end in ends) else max(e for e in ends if e)
    me = directory.network(config.network)
    sealing = tuple(
        KeyView(key.key_id, key.state(now).value, _key_end(key))
        for key in (me.encryption_keys if me is not None else [])
    )
    return ExpiryView(
        encryption_keys=sealing,
        certificates=own_certificates(config),
        network_cas={n.id: _cas_end(n.tls.cas) for n in directory.networks if n.tls is not None},
        link_ca=_cas_end(directory.link_cas) if directory.link_cas else None,
        network_keys=keys,
        directory_version=directory.version,
        directory_issued=directory.issued_at.timestamp(),
        directory_expires=directory_expiry(directory, config.coordinator).timestamp(),
        directory_expiry_signed=directory.valid_until is not None,
    )


def build_status(
    config: NodeConfig,
    directory: Directory,
    view: BrokerView,
    store: Store | None,
    links: Iterable[LinkView],
    now: float,
    unavailable: Iterable[str] = (),
    *,
    running: bool | None = None,
    dashboard: str | None = None,
    replicas: ReplicasView | None = None,
) -> NodeStatus:
    """Assemble the status and its alerts from what was gathered. ``running`` is given by the
    node itself; from outside, the node runs when its inbox has a consumer. ``replicas``: as
    the database lists them (None: the node runs alone)."""
    thresholds = config.operator.alerts
    notes = list(unavailable)
    if view.shovels is None:
        notes.append(
            f"RabbitMQ management API not available ({view.problem}): queue rates, "
            "unacknowledged counts, delivery-queue depths and link states cannot be shown; "
            "depths and consumers of the node's own queues come from AMQP"
        )
    inbox = view.queues.get(INBOX)
    if running is None and inbox is not None and inbox.consumers is not None:
        running = inbox.consumers > 0
    receipts = receipt_view(store, thresholds, now) if store is not None else None
    if store is None:
        notes.append("the node's state database cannot be read: receipts and quarantine reasons")
    quarantine = view.queues.get(QUARANTINE)
    try:
        quarantined = _open_quarantine(config)
    except JournalError as exc:  # [database] out of reach: the rest still shows
        quarantined = None
        notes.append(f"the node's quarantine store cannot be read ({exc})")
    try:
        quarantine_now = quarantine_view(
            store,
            quarantine.messages if quarantine else None,
            quarantined=quarantined,
            now=now,
        )
    finally:
        if quarantined is not None:
            quarantined.close()
    queues = sorted(view.queues.values(), key=lambda q: (_queue_rank(q.name), q.name))
    linked = sorted(links, key=lambda link: link.peer)
    expiry = expiry_view(directory, config, datetime.fromtimestamp(now, UTC))
    status = NodeStatus(
        network=config.network,
        at=now,
        node_running=running,
        management=view.shovels is not None,
        queues=queues,
        links=linked,
        quarantine=quarantine_now,
        receipts=receipts,
        expiry=expiry,
        alerts=[],
        unavailable=notes,
        dashboard=dashboard,
        foreign=view.foreign,
        replicas=replicas,
    )
    return replace(status, alerts=compute_alerts(status, config, now))


def _queue_rank(name: str) -> int:
    order = {INBOX: 0, SUBMIT: 1, QUARANTINE: 2}
    if name in order:
        return order[name]
    return 3 if peer_of_out_queue(name) is not None else 4


# --- the running node's snapshot ---------------------------------------------------------------
def write_snapshot(state_dir: Path, status: NodeStatus, url: str | None) -> None:
    """Write the status where ``mlanet status`` finds it (atomically: write, then rename)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    target = state_dir / SNAPSHOT
    temporary = state_dir / f".{SNAPSHOT}.{os.getpid()}"
    temporary.write_text(
        json.dumps({"url": url, "written_at": status.at, "status": status.to_json()}),
        encoding="utf-8",
    )
    temporary.chmod(0o600)  # owner-only like the rest of the state (nodes/state/state_dir.py)
    temporary.replace(target)


def read_snapshot(state_dir: Path) -> dict[str, Any] | None:
    try:
        raw = json.loads((state_dir / SNAPSHOT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


# --- from outside the node (mlanet status) -------------------------------------------------------
def _fresh(snapshot: dict[str, Any] | None, now: float, poll: float) -> bool:
    """The running node wrote the snapshot within its last three polls."""
    written = None if snapshot is None else snapshot.get("written_at")
    return isinstance(written, int | float) and now - written <= max(3 * poll, 15.0)


def _snapshot_links(snapshot: dict[str, Any] | None, now: float, poll: float) -> dict[str, Any]:
    """The running node's link views, if its snapshot is fresh."""
    if snapshot is None or not _fresh(snapshot, now, poll):
        return {}
    links = snapshot.get("status", {}).get("links", [])
    return {link["peer"]: link for link in links if isinstance(link, dict) and "peer" in link}


def _epoch(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def outside_links(
    config: NodeConfig,
    directory: Directory,
    view: BrokerView,
    snapshot: dict[str, Any] | None,
    now: float,
) -> tuple[list[LinkView], list[str]]:
    tracked = _snapshot_links(snapshot, now, config.operator.poll_seconds)
    notes = []
    if config.peers and not tracked:
        notes.append(
            "last success and the oldest waiting message of each link are tracked by the "
            f"running node; there is no fresh snapshot of it in {SNAPSHOT} in the state folder"
        )
    links = []
    diagnosis = LinkDiagnosis()
    for peer in config.peers:
        shovel_state = None if view.shovels is None else view.shovels.get(link_name(peer.network))
        shovel = (
            None if view.shovels is None else (shovel_state.state if shovel_state else "missing")
        )
        figures = view.queues.get(out_queue(peer.network))
        backlog = figures.messages if figures else None
        known = tracked.get(peer.network)
        transport, why = await diagnosis.note(config, directory, peer, shovel)
        reason = why or (shovel_state.reason if shovel_state else None)
        if known is not None:
            state = str(known.get("state", "unknown"))
            down_since = _epoch(known.get("down_since"))
            if state == "up" and shovel not in (None, "running"):
                # the node saw it up at its last poll and the broker says otherwise now: down
                # since then at most, not for a time nobody knows (a shovel restarting under
                # load is not yet an outage; link_down_seconds decides when it is one)
                assert snapshot is not None  # tracked: the snapshot is fresh
                state, down_since = "down", float(snapshot["written_at"])
            links.append(
                LinkView(
                    peer=peer.network,
                    state=state,
                    shovel=shovel,
                    reason=reason,
                    transport=transport,
                    backlog=backlog,
                    last_success=_epoch(known.get("last_success")),
                    oldest_waiting=known.get("oldest_waiting"),
                    oldest_at_least=bool(known.get("oldest_at_least")),
                    down_since=down_since,
                    unanswered_since=_epoch(known.get("unanswered_since")),
                    unanswered=int(known.get("unanswered") or 0),
                )
            )
            continue
        state = "unknown" if shovel is None else ("up" if shovel == "running" else "down")
        links.append(
            LinkView(
                peer=peer.network,
                state=state,
                shovel=shovel,
                reason=reason,
                transport=transport,
                backlog=backlog,
                last_success=None,
                oldest_waiting=None,
                oldest_at_least=False,
                down_since=None,
            )
        )
    return links, notes


async def collect(config: NodeConfig, now: float) -> NodeStatus:
    """Everything ``mlanet status`` shows, gathered from outside the node process."""
    book = DirectoryBook.load(config, persist=False)  # read-only: the node owns its state
    directory = book.view(datetime.fromtimestamp(now, UTC))
    config = effective_config(config, directory)  # peers are the directory's links
    view = await broker_view(config)
    if view.tls_refused and view.problem is not None:
        # not an outage: this config does not trust that broker; nothing it shows is sure
        raise TransportError(view.problem)
    replicas = await outside_replicas(config.database)
    try:
        store = open_node_store(config, readonly=True) if node_store_exists(config) else None
    except JournalError:  # not upgraded yet (the node does it at start): said in the notes
        store = None
    try:
        snapshot = read_snapshot(config.state_dir)
        links, notes = await outside_links(config, directory, view, snapshot, now)
        fresh = _fresh(snapshot, now, config.operator.poll_seconds)
        url = snapshot.get("url") if snapshot is not None and fresh else None
        return build_status(
            config,
            directory,
            view,
            store,
            links,
            now,
            notes,
            dashboard=url if isinstance(url, str) else None,
            replicas=replicas,
        )
    finally:
        if store is not None:
            store.close()


# --- text ----------------------------------------------------------------------------------------
def _ago(at: float | None, now: float) -> str:
    return "never seen" if at is None else f"{human_duration(now - at)} ago"


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def render_text(status: NodeStatus) -> str:
    """The terminal view of ``mlanet status``."""
    now = status.at
    running = {True: "running", False: "NOT RUNNING", None: "unknown"}[status.node_running]
    lines = [f"mlanet node {status.network}: {running}   ({iso(now)})"]
    if status.dashboard:
        lines.append(f"dashboard and /metrics: {status.dashboard}")
    lines.append("")
    lines.append("ALERTS" if status.alerts else "ALERTS: none")
    for alert in status.alerts:
        subject = f"{alert.subject}: " if alert.subject else ""
        lines.append(f"  {alert.severity.upper():<8} {alert.code:<17} {subject}{alert.text}")
    lines += replica_lines(status.replicas)
    lines += ["", "LINKS"]
    if not status.links:
        lines.append("  (no peers configured)")
    else:
        lines.append(
            f"  {'peer':<16} {'state':<8} {'shovel':<11} {'over':<9} {'backlog':>7}  "
            f"{'last success':<14} oldest waiting"
        )
    for link in status.links:
        oldest = "-"
        if link.oldest_waiting is not None:
            oldest = ("≥ " if link.oldest_at_least else "") + human_duration(link.oldest_waiting)
        lines.append(
            f"  {link.peer:<16} {link.state:<8} {link.shovel or '?':<11} "
            f"{link.transport or '?':<9} "
            f"{_num(link.backlog):>7}  {_ago(link.last_success, now):<14} {oldest}"
        )
        if link.transport == "plaintext":
            lines.append("      PLAINTEXT link ([link] allow_plaintext: local development only)")
        if link.reason:
            lines.append(f"      reason: {link.reason}")
        if link.unanswered_since is not None:
            lines.append(
                f"      {link.unanswered} own messages handed over, no receipt through it for "
                f"{human_duration(now - link.unanswered_since)}"
            )
    lines += ["", "QUEUES"]
    lines.append(
        f"  {'queue':<34} {'depth':>7} {'ready':>7} {'unacked':>7} {'in/s':>7} {'out/s':>7} "
        f"{'consumers':>9}"
    )
    for queue in status.queues:
        lines.append(
            f"  {queue.name:<34} {_num(queue.messages):>7} {_num(queue.ready):>7} "
            f"{_num(queue.unacked):>7} {_num(queue.rate_in, 1):>7} {_num(queue.rate_out, 1):>7} "
            f"{_num(queue.consumers):>9}"
        )
    quarantine = status.quarantine
    lines += ["", f"QUARANTINE: {_num(quarantine.depth)} messages waiting"]
    if quarantine.peers:
        lines.append(f"  {'from':<16} {'waiting':>8} {'no body':>8} {'last min':>8}")
        for peer, counts in quarantine.peers.items():
            lines.append(
                f"  {peer:<16} {counts.waiting:>8} {counts.without_body:>8} {counts.last_minute:>8}"
            )
    if quarantine.by_reason:
        lines.append("  refused by this node, by reason (all recorded):")
        for reason, count in sorted(quarantine.by_reason.items(), key=lambda kv: -kv[1]):
            lines.append(f"    {reason:<24} {count}")
    lines.append("")
    if status.receipts is None:
        lines.append("RECEIPTS: unknown (the node's state cannot be read)")
    else:
        receipts = status.receipts
        oldest = (
            "" if receipts.oldest_age is None else f", oldest {human_duration(receipts.oldest_age)}"
        )
        lines.append(
            f"RECEIPTS: {receipts.awaiting} messages awaiting a receipt{oldest}; "
            f"{receipts.overdue} overdue; {receipts.failed_recent} failed recently"
        )
        if receipts.states:
            states = ", ".join(f"{k} {v}" for k, v in sorted(receipts.states.items()))
            lines.append(f"  own messages by state: {states}")
    expiry = status.expiry
    lines += ["", "KEYS AND DIRECTORY"]
    mine = expiry.network_keys.get(status.network)
    lines.append(
        "  our signing key: "
        + (
            "no expiry set"
            if mine is None
            else f"expires {iso(mine)} (in {human_duration(mine - now)})"
        )
    )
    for key in expiry.encryption_keys:
        if key.ends is None:
            until = "no expiry set"
        elif key.ends <= now:
            until = f"ended {iso(key.ends)}"
        else:
            until = f"until {iso(key.ends)} (in {human_duration(key.ends - now)})"
        lines.append(f"  our encryption key {key.key_id}: {key.state}, {until}")
    if not expiry.encryption_keys:
        lines.append("  our encryption key: none listed (payloads for us are not sealed)")
    for subject, ends in (
        ("our broker CA", expiry.network_cas.get(status.network)),
        ("the coordinator's link CA", expiry.link_ca),
    ):
        if ends is not None and ends <= now:
            lines.append(f"  {subject}: ended {iso(ends)}")
        elif ends is not None:
            lines.append(
                f"  {subject}: trusted until {iso(ends)} (in {human_duration(ends - now)})"
            )
    for subject, ends in sorted(expiry.certificates.items()):
        state = "expired" if ends <= now else f"in {human_duration(ends - now)}"
        lines.append(f"  {subject}: expires {iso(ends)} ({state})")
    lines.append(
        f"  directory version {expiry.directory_version}, issued {iso(expiry.directory_issued)}, "
        + ("valid until " if expiry.directory_expiry_signed else "trusted until ")
        + f"{iso(expiry.directory_expires)} (in {human_duration(expiry.directory_expires - now)})"
    )
    if status.unavailable:
        lines += ["", "NOT SHOWN"]
        lines += [f"  - {note}" for note in status.unavailable]
    return "\n".join(lines) + "\n"
