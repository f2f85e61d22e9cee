"""The dashboard's pages, rendered on the server: plain HTML and one stylesheet, no scripts
(the page refreshes itself with a meta refresh). Every value is escaped. Only metadata is
shown: network ids, queue names, counts, reason codes, message ids and kinds, and the node's
replicas (names, hosts, process ids, versions)."""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape

from mlanet.nodes.operator.flow import FlowEvent
from mlanet.nodes.operator.views import NodeStatus, ReplicasView, human_duration
from mlanet.schemas.directory import Directory

__all__ = ["STYLESHEET", "dashboard_page", "login_page"]

STYLESHEET = """
body { font-family: system-ui, sans-serif; margin: 0; color: #1d2329; background: #f4f6f8; }
header { background: #1f3a5f; color: #fff; padding: 0.8rem 1.5rem; display: flex;
  align-items: center; gap: 1rem; }
header h1 { font-size: 1.25rem; margin: 0; flex: 1; }
header form { margin: 0; }
main { padding: 1rem 1.5rem; display: grid; gap: 1rem;
  grid-template-columns: repeat(auto-fit, minmax(30rem, 1fr)); }
section { background: #fff; border-radius: 6px; padding: 0.8rem 1rem;
  box-shadow: 0 1px 2px rgba(0,0,0,.12); }
section.wide { grid-column: 1 / -1; }
h2 { font-size: 1.05rem; margin: 0 0 0.6rem; }
h3 { font-size: 0.95rem; margin: 0.8rem 0 0.3rem; }
table { border-collapse: collapse; width: 100%; font-size: 0.88rem; }
th, td { text-align: left; padding: 0.25rem 0.5rem; border-bottom: 1px solid #e3e7eb; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.badge { display: inline-block; padding: 0.05rem 0.5rem; border-radius: 999px; font-size: 0.8rem;
  font-weight: 600; }
.up, .running, .healthy { background: #d8f3dc; color: #1b5e20; }
.down, .stalled, .critical, .NOT-RUNNING, .fenced, .unhealthy { background: #fde2e1;
  color: #9b1c1c; }
.stopped { background: #e3e7eb; color: #3d4650; }
.warning, .unknown { background: #fff3cd; color: #7a5200; }
.alerts li { margin: 0.3rem 0; }
.muted { color: #66707a; }
.login { max-width: 22rem; margin: 12vh auto; background: #fff; padding: 1.5rem;
  border-radius: 6px; box-shadow: 0 1px 3px rgba(0,0,0,.2); }
.login input { width: 100%; box-sizing: border-box; margin: 0.3rem 0 0.8rem; padding: 0.4rem; }
.error { color: #9b1c1c; }
code { font-size: 0.85rem; }
td code { white-space: nowrap; }
"""


def _page(title: str, body: str, refresh: int | None = None) -> str:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'{meta}<title>{escape(title)}</title><link rel="stylesheet" href="/dashboard.css">'
        f"</head><body>{body}</body></html>"
    )


def login_page(
    network: str, *, error: str | None = None, enabled: bool = True, password_set: bool = True
) -> str:
    """The login form; without a password file configured (``enabled``), or before a password
    was set (``password_set``), the reason the dashboard is closed and what opens it."""
    if not enabled:
        form = (
            '<p class="error">The dashboard is closed: no operator password file is configured '
            "(<code>[operator] password_file</code>, written by "
            "<code>mlanet operator password</code>).</p>"
        )
    elif not password_set:
        form = (
            '<p class="error">The dashboard is closed: no operator password is set yet. Set '
            "one with <code>mlanet operator password --config node.toml</code>; it takes "
            "effect at once, the node need not restart.</p>"
        )
    else:
        problem = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
        form = (
            f'{problem}<form method="post" action="/login">'
            '<label for="password">Operator password</label>'
            '<input id="password" name="password" type="password" autocomplete="current-password"'
            ' required autofocus><button type="submit">Log in</button></form>'
        )
    body = f'<div class="login"><h1>mlanet · {escape(network)}</h1>{form}</div>'
    return _page(f"mlanet {network}: log in", body)


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(at: float | None, now: float) -> str:
    return "never seen" if at is None else f"{human_duration(now - at)} ago"


def _n(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _badge(text: str) -> str:
    return f'<span class="badge {escape(text.replace(" ", "-"))}">{escape(text)}</span>'


def _table(head: list[str], rows: list[list[str]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    cells = "".join(
        f'<th{" class=n" if i in numeric else ""} scope="col">{escape(h)}</th>'
        for i, h in enumerate(head)
    )
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=n' if i in numeric else ''}>{c}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _replicas(view: ReplicasView | None) -> str:
    """The replicas of this network's node (nothing when it runs alone)."""
    if view is None or (not view.rows and view.problem is None):
        return ""
    if view.problem is not None:
        body = f'<p class="error">Cannot be read: {escape(view.problem)}</p>'
    else:
        rows = [
            [
                escape(row.name),
                escape(row.host),
                str(row.pid),
                escape(row.version),
                _badge(row.state),
                escape(f"{human_duration(row.heartbeat_age)} ago"),
                "-"
                if row.state == "stopped"
                else _badge("healthy" if row.healthy else "unhealthy"),
            ]
            for row in view.rows
        ]
        body = (
            _table(["replica", "host", "pid", "version", "state", "heartbeat", "health"], rows, {2})
            + f'<p class="muted">A replica whose heartbeat is older than '
            f"{view.rows[0].lease:g} s is fenced by the others.</p>"
        )
    return f'<section class="wide" id="replicas"><h2>Replicas of this node</h2>{body}</section>'


def dashboard_page(
    status: NodeStatus,
    directory: Directory,
    flow: dict[str, list[FlowEvent]],
    refresh: int,
) -> str:
    now = status.at
    running = {True: "running", False: "NOT RUNNING", None: "unknown"}[status.node_running]
    parts = [
        f"<header><h1>mlanet · {escape(status.network)} node</h1>{_badge(running)}"
        f'<span class="muted">as of {escape(_when(now))}</span>'
        '<form method="post" action="/logout"><button type="submit">Log out</button></form>'
        "</header><main>"
    ]
    # alerts
    if status.alerts:
        items = "".join(
            f"<li>{_badge(a.severity)} <strong>{escape(a.code)}</strong> "
            f"{escape(a.subject + ': ' if a.subject else '')}{escape(a.text)}</li>"
            for a in status.alerts
        )
        alerts = f'<ul class="alerts">{items}</ul>'
    else:
        alerts = "<p>No alerts.</p>"
    parts.append(f'<section class="wide" id="alerts"><h2>Alerts</h2>{alerts}</section>')
    parts.append(_replicas(status.replicas))
    # links
    link_rows = []
    for link in status.links:
        oldest = "-"
        if link.oldest_waiting is not None:
            oldest = ("≥ " if link.oldest_at_least else "") + human_duration(link.oldest_waiting)
        link_rows.append(
            [
                escape(link.peer),
                _badge(link.state),
                escape(link.shovel or "?")
                + (f"<br><small>{escape(link.reason)}</small>" if link.reason else ""),
                _n(link.backlog),
                escape(_ago(link.last_success, now)),
                escape(oldest),
                escape(
                    "-"
                    if link.unanswered_since is None
                    else f"{link.unanswered} for {human_duration(now - link.unanswered_since)}"
                ),
            ]
        )
    ours = {link.peer: link.state for link in status.links}
    federation_rows = []
    for a, b in sorted(directory.links):
        if status.network in (a, b):
            other = b if a == status.network else a
            state = _badge(ours.get(other, "unknown"))
        else:
            state = '<span class="muted">not visible from this node</span>'
        federation_rows.append([escape(f"{a} — {b}"), state])
    parts.append(
        '<section id="links"><h2>Links of this node</h2>'
        + (
            _table(
                [
                    "peer",
                    "state",
                    "shovel",
                    "backlog",
                    "last success",
                    "oldest waiting",
                    "no receipt through it",
                ],
                link_rows,
                {3},
            )
            if link_rows
            else "<p>No peers configured.</p>"
        )
        + "<h3>The federation's links (directory)</h3>"
        + _table(["link", "state"], federation_rows)
        + "</section>"
    )
    # queues
    queue_rows = [
        [
            f"<code>{escape(q.name)}</code>",
            _n(q.messages),
            _n(q.ready),
            _n(q.unacked),
            _n(q.rate_in, 1),
            _n(q.rate_out, 1),
            _n(q.consumers),
        ]
        for q in status.queues
    ]
    parts.append(
        '<section id="queues"><h2>Queues</h2>'
        + _table(
            ["queue", "depth", "ready", "unacked", "in/s", "out/s", "consumers"],
            queue_rows,
            {1, 2, 3, 4, 5, 6},
        )
        + "</section>"
    )
    # quarantine
    quarantine = status.quarantine
    reasons = [
        [f"<code>{escape(reason)}</code>", str(count)]
        for reason, count in sorted(quarantine.by_reason.items(), key=lambda kv: -kv[1])
    ]
    recent = [
        [escape(_when(entry.at)), f"<code>{escape(entry.reason)}</code>", escape(entry.detail)]
        for entry in quarantine.recent
    ]
    parts.append(
        '<section id="quarantine"><h2>Quarantine</h2>'
        f"<p><strong>{escape(_n(quarantine.depth))}</strong> messages waiting in the "
        "quarantine (<code>mlanet quarantine list</code>).</p>"
        + (
            "<h3>Refused by this node, by reason</h3>"
            + _table(["reason", "messages"], reasons, {1})
            if reasons
            else "<p>Nothing refused by this node.</p>"
        )
        + (
            "<h3>Latest refusals</h3>" + _table(["at", "reason", "detail"], recent)
            if recent
            else ""
        )
        + "</section>"
    )
    # receipts, keys and directory
    receipts = status.receipts
    if receipts is None:
        receipt_html = "<p>The node's state cannot be read.</p>"
    else:
        states = ", ".join(f"{escape(k)} {v}" for k, v in sorted(receipts.states.items())) or "none"
        oldest = (
            ""
            if receipts.oldest_age is None
            else f" (oldest {human_duration(receipts.oldest_age)})"
        )
        receipt_html = (
            f"<p><strong>{receipts.awaiting}</strong> own messages awaiting a receipt"
            f"{escape(oldest)}; <strong>{receipts.overdue}</strong> overdue; "
            f"<strong>{receipts.failed_recent}</strong> failed recently.</p>"
            f"<p class=muted>Own messages by state: {states}</p>"
        )
    expiry = status.expiry
    key_rows = [
        [escape(network), escape("no expiry" if end is None else _when(end))]
        for network, end in sorted(expiry.network_keys.items())
    ]
    key_rows += [  # ours: what origins seal our payloads for
        [
            escape(f"{status.network}: encryption key {key.key_id} ({key.state})"),
            escape("no expiry" if key.ends is None else _when(key.ends)),
        ]
        for key in expiry.encryption_keys
    ]
    parts.append(
        '<section id="receipts"><h2>Receipts</h2>' + receipt_html + "<h2>Keys and directory</h2>"
        f"<p>Directory version {expiry.directory_version}, issued "
        f"{escape(_when(expiry.directory_issued))}, "
        + ("valid until " if expiry.directory_expiry_signed else "trusted until ")
        + f"{escape(_when(expiry.directory_expires))}.</p>"
        + _table(["network", "keys valid until"], key_rows)
        + "</section>"
    )
    # flow
    if flow:
        tables = "".join(
            f"<h3>{escape(network)}</h3>"
            + _table(
                ["at", "event", "kind", "message", "origin → destination", "detail"],
                [
                    [
                        escape(_when(e.at)),
                        escape(e.event),
                        escape(e.kind),
                        f"<code>{escape(e.message_id[:8])}</code>",
                        escape(f"{e.origin} → {e.destination}"),
                        escape(e.detail),
                    ]
                    for e in events
                ],
            )
            for network, events in flow.items()
        )
    else:
        tables = "<p>No messages in the node's audit trail yet.</p>"
    parts.append(
        '<section class="wide" id="flow"><h2>Recent message flow by network</h2>'
        '<p class="muted">Metadata only, from the node\'s audit trail (the same after a '
        "restart).</p>" + tables + "</section>"
    )
    if status.unavailable:
        notes = "".join(f"<li>{escape(note)}</li>" for note in status.unavailable)
        parts.append(
            f'<section class="wide" id="unavailable"><h2>Not shown</h2><ul>{notes}</ul></section>'
        )
    parts.append("</main>")
    return _page(f"mlanet {status.network}", "".join(parts), refresh=refresh)
