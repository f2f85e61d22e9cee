"""Operator surfaces without a broker: link tracking, alerts, login, rendering, metrics."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from mlanet.broker import SigningKey
from mlanet.broker.management import QueueFigures, ShovelState, shovel_states
from mlanet.broker.topology import link_name
from mlanet.nodes.cli.app import app
from mlanet.nodes.config import NodeConfig, load_config
from mlanet.nodes.directory.config import CoordinatorConfig, LinkConfig
from mlanet.nodes.operator.auth import (
    Devices,
    LoginLimiter,
    Sessions,
    hash_password,
    verify_password,
)
from mlanet.nodes.operator.dashboard import dashboard_page, login_page
from mlanet.nodes.operator.flow import FlowEvent
from mlanet.nodes.operator.links import STALL_SECONDS, LinkTracker, LinkView
from mlanet.nodes.operator.metrics import NodeMetrics
from mlanet.nodes.operator.status import (
    BrokerView,
    NodeStatus,
    QuarantineEntry,
    QuarantineView,
    ReceiptView,
    build_status,
    compute_alerts,
    outside_links,
    render_text,
)
from mlanet.nodes.runtime.observe import Flow
from mlanet.nodes.state.audit import AuditLog, AuditTrail
from mlanet.schemas.base import format_timestamp
from mlanet.schemas.directory import Directory

AUDIT_KEY = SigningKey.from_seed("seajust", "ed25519:1", bytes(range(32)))
FLOW = Flow("6f1c0e4e-0000-4000-8000-000000000001", "seajust", "facilitation_request", "UZ")
NOW = 1_800_000_000.0


def _config(tmp_path: Path, **alerts: float) -> NodeConfig:
    return NodeConfig.model_validate(
        {
            "network": "seajust",
            "signing_key": str(tmp_path / "k"),
            "directory": str(tmp_path / "d"),
            "state_dir": str(tmp_path / "state"),
            "broker": {"vhost": "v", "user": "u", "password_file": str(tmp_path / "p")},
            "peers": [{"network": "casc", "user": "u", "password_file": str(tmp_path / "p")}],
            "operator": {"alerts": alerts},
        }
    )


def _directory(valid_until: datetime | None = None, key_end: datetime | None = None) -> Directory:
    issued = datetime.fromtimestamp(NOW, UTC) - timedelta(days=1)
    key = {"key_id": "ed25519:1", "public_key": "A" * 43}
    if key_end is not None:
        key["not_after"] = format_timestamp(key_end)
    networks = [
        {
            "id": network,
            "name": network.upper(),
            "members": [country],
            "contact_points": [{"id": f"{country.lower()}-cp-1", "country": country}],
            "keys": [key],
            "broker": {"host": "127.0.0.1", "vhost": f"v-{network}"},
        }
        for network, country in (("seajust", "KH"), ("casc", "UZ"), ("ejn", "FR"))
    ]
    raw = {
        "version": 3,
        "issued_at": format_timestamp(issued),
        "networks": networks,
        "links": [["seajust", "casc"], ["casc", "ejn"]],
    }
    if valid_until is not None:
        raw["valid_until"] = format_timestamp(valid_until)
    return Directory.model_validate(raw, strict=False)


def _link(**changes: object) -> LinkView:
    base = LinkView("casc", "up", "running", None, 0, NOW - 5, None, False, None)
    return replace(base, **changes)


def _status(config: NodeConfig, links: list[LinkView], **kwargs: object) -> NodeStatus:
    view = BrokerView(
        {"mlanet.inbox": QueueFigures("mlanet.inbox", 0, 0, 0, 1, 0.0, 0.0, 0)},
        {"mlanet-link-casc": ShovelState("mlanet-link-casc", "running", None, None)},
        None,
    )
    status = build_status(config, kwargs.pop("directory", _directory()), view, None, links, NOW)
    return replace(status, **kwargs)


# --- link tracking ------------------------------------------------------------------------------
def test_link_is_up_while_the_shovel_runs_and_hands_messages_over() -> None:
    tracker = LinkTracker(("casc",), started=NOW - 100)
    first = tracker.update("casc", shovel="running", reason=None, backlog=0, acked=10, now=NOW)
    assert first.state == "up"
    assert first.last_success is None  # no progress seen yet
    later = tracker.update("casc", shovel="running", reason=None, backlog=0, acked=12, now=NOW + 5)
    assert later.last_success == NOW + 5
    assert later.oldest_waiting is None


def test_the_brokers_first_figures_count_a_hand_over_of_what_this_node_sent() -> None:
    """Queue statistics appear seconds after a queue is declared, acks already counted."""
    tracker = LinkTracker(("casc", "ejn"), started=NOW)
    tracker.forwarded("casc", FLOW)
    sent = tracker.update("casc", shovel="running", reason=None, backlog=0, acked=2, now=NOW)
    assert sent.last_success == NOW
    before_start = tracker.update("ejn", shovel="running", reason=None, backlog=0, acked=5, now=NOW)
    assert before_start.last_success is None  # those were handed over before this node started


def test_a_queue_declared_again_restarts_the_acknowledgement_counter() -> None:
    tracker = LinkTracker(("casc",), started=NOW)
    tracker.forwarded("casc", FLOW)
    tracker.update("casc", shovel="running", reason=None, backlog=1, acked=40, now=NOW)
    again = tracker.update("casc", shovel="running", reason=None, backlog=0, acked=1, now=NOW + 5)
    assert again.last_success == NOW + 5
    later = tracker.update("casc", shovel="running", reason=None, backlog=0, acked=1, now=NOW + 9)
    assert later.last_success == NOW + 5


def test_link_is_down_when_the_shovel_does_not_run_and_says_since_when() -> None:
    tracker = LinkTracker(("casc",), started=NOW)
    view = tracker.update(
        "casc", shovel="terminated", reason="refused", backlog=3, acked=0, now=NOW
    )
    assert (view.state, view.down_since, view.reason) == ("down", NOW, "refused")
    again = tracker.update("casc", shovel="starting", reason=None, backlog=3, acked=0, now=NOW + 9)
    assert again.down_since == NOW
    back = tracker.update("casc", shovel="running", reason=None, backlog=0, acked=3, now=NOW + 20)
    assert (back.state, back.down_since, back.last_success) == ("up", None, NOW + 20)


def test_link_stalls_when_messages_wait_and_nothing_is_handed_over() -> None:
    tracker = LinkTracker(("casc",), started=NOW)
    tracker.update("casc", shovel="running", reason=None, backlog=2, acked=0, now=NOW)
    early = tracker.update("casc", shovel="running", reason=None, backlog=2, acked=0, now=NOW + 10)
    assert early.state == "up"
    stalled = tracker.update(
        "casc", shovel="running", reason=None, backlog=2, acked=0, now=NOW + STALL_SECONDS
    )
    assert (stalled.state, stalled.down_since) == ("stalled", NOW)


def test_oldest_waiting_is_the_nth_newest_send_or_a_lower_bound_before_start() -> None:
    tracker = LinkTracker(("casc",), started=time.time() - 50)
    for _ in range(3):
        tracker.forwarded("casc", FLOW)
    now = time.time() + 7
    two = tracker.update("casc", shovel="running", reason=None, backlog=2, acked=0, now=now)
    assert two.oldest_waiting is not None
    assert 6.5 < two.oldest_waiting < 9
    assert two.oldest_at_least is False
    more = tracker.update("casc", shovel="running", reason=None, backlog=5, acked=0, now=now)
    assert more.oldest_at_least is True
    assert more.oldest_waiting is not None
    assert more.oldest_waiting >= 6.5
    none = tracker.update("casc", shovel="running", reason=None, backlog=0, acked=5, now=now)
    assert none.oldest_waiting is None


def test_link_state_is_unknown_without_the_management_api() -> None:
    tracker = LinkTracker(("casc",), started=NOW)
    view = tracker.update("casc", shovel=None, reason=None, backlog=4, acked=None, now=NOW)
    assert view.state == "unknown"
    assert view.backlog == 4


# --- alerts -------------------------------------------------------------------------------------
def test_no_alert_for_a_healthy_node(tmp_path: Path) -> None:
    status = _status(_config(tmp_path), [_link()])
    assert status.alerts == []


def test_link_down_alerts_only_after_the_threshold(tmp_path: Path) -> None:
    config = _config(tmp_path, link_down_seconds=60)
    recent = _status(config, [_link(state="down", shovel="terminated", down_since=NOW - 30)])
    assert recent.alerts == []
    old = _status(config, [_link(state="down", shovel="terminated", down_since=NOW - 61)])
    assert [(a.code, a.severity, a.subject) for a in old.alerts] == [
        ("link_down", "critical", "casc")
    ]
    assert "for 61s" in old.alerts[0].text


async def test_a_shovel_the_node_last_saw_up_is_down_since_that_poll_not_for_unknown_time(
    tmp_path: Path,
) -> None:
    """``mlanet status`` joins the running node's snapshot with the broker's word now: a shovel
    restarting under load between the node's poll and the command's is down since that poll at
    most, so it alerts only once down past link_down_seconds (it used to alert at once)."""
    config = _config(tmp_path, link_down_seconds=60)
    plaintext = LinkConfig(user="u", password_file=tmp_path / "p", allow_plaintext=True)
    config = config.model_copy(update={"link": plaintext})
    written = NOW - 5
    snapshot = {"written_at": written, "status": {"links": [{"peer": "casc", "state": "up"}]}}
    view = BrokerView({}, {link_name("casc"): ShovelState(link_name("casc"), "stopped")}, None)
    (link,), _ = await outside_links(config, _directory(), view, snapshot, NOW)
    assert (link.state, link.down_since) == ("down", written)
    assert _status(config, [link]).alerts == []
    later = replace(link, down_since=NOW - 61)
    assert [a.code for a in _status(config, [later]).alerts] == ["link_down"]


def test_backlog_and_oldest_waiting_past_thresholds_alert(tmp_path: Path) -> None:
    config = _config(tmp_path, backlog_messages=100, oldest_waiting_seconds=60)
    deep = _status(config, [_link(backlog=100)])
    assert [a.code for a in deep.alerts] == ["link_backlog"]
    slow = _status(config, [_link(backlog=3, oldest_waiting=61.0, oldest_at_least=True)])
    assert [a.code for a in slow.alerts] == ["link_backlog"]
    assert "at least" in slow.alerts[0].text
    fine = _status(config, [_link(backlog=3, oldest_waiting=59.0)])
    assert fine.alerts == []


def test_overdue_receipts_alert(tmp_path: Path) -> None:
    config = _config(tmp_path, receipt_overdue_seconds=600)
    status = _status(config, [_link()], receipts=ReceiptView(4, 900.0, 2, {"forwarded": 4}))
    alerts = compute_alerts(status, config, NOW)
    assert [(a.code, a.severity) for a in alerts] == [("receipts_overdue", "warning")]
    assert alerts[0].text.startswith("2 messages")


def test_key_expiry_alerts_for_our_key_and_a_peers_key(tmp_path: Path) -> None:
    config = _config(tmp_path, key_expiry_days=30)
    soon = datetime.fromtimestamp(NOW, UTC) + timedelta(days=10)
    status = _status(config, [_link()], directory=_directory(key_end=soon))
    found = {(a.code, a.subject, a.severity) for a in status.alerts}
    assert found == {("key_expiry", "seajust", "critical"), ("key_expiry", "casc", "warning")}
    later = datetime.fromtimestamp(NOW, UTC) + timedelta(days=40)
    assert _status(config, [_link()], directory=_directory(key_end=later)).alerts == []
    past = datetime.fromtimestamp(NOW, UTC) - timedelta(minutes=1)
    expired = _status(config, [_link()], directory=_directory(key_end=past))
    assert {a.text for a in expired.alerts} == {"our signing key expired", "casc's keys expired"}


def test_directory_expiry_from_valid_until_or_the_coordinators_maximum_age(tmp_path: Path) -> None:
    """The directory expires when the node stops trusting it: its valid_until, else issued_at
    plus [coordinator] max_directory_age_seconds (the directory here was issued a day ago)."""
    config = _config(tmp_path, directory_expiry_days=14)
    near = datetime.fromtimestamp(NOW, UTC) + timedelta(days=3)
    signed = _status(config, [_link()], directory=_directory(valid_until=near))
    assert [(a.code, a.severity) for a in signed.alerts] == [("directory_expiry", "warning")]
    assert "expires in 3d" in signed.alerts[0].text
    pinned = {"keys": [{"key_id": "ed25519:1", "public_key": "A" * 43}]}
    young = config.model_copy(update={"coordinator": CoordinatorConfig.model_validate(pinned)})
    assert _status(young, [_link()]).alerts == []  # 90 days by default, one gone
    old = CoordinatorConfig.model_validate({**pinned, "max_directory_age_seconds": 43200})
    stale = _status(config.model_copy(update={"coordinator": old}), [_link()])
    assert [(a.code, a.severity) for a in stale.alerts] == [("directory_expiry", "critical")]
    assert "refuses new messages (directory_expired)" in stale.alerts[0].text


def test_a_node_nobody_runs_is_a_critical_alert(tmp_path: Path) -> None:
    config = _config(tmp_path)
    view = BrokerView(
        {"mlanet.inbox": QueueFigures("mlanet.inbox", 0, 0, 0, 0, None, None, None)}, {}, None
    )
    status = build_status(config, _directory(), view, None, [], NOW)
    assert status.node_running is False
    assert status.alerts[0].code == "node_down"


def test_without_the_management_api_the_status_says_what_it_cannot_show(tmp_path: Path) -> None:
    view = BrokerView({}, None, "management API unreachable (ConnectError)")
    status = build_status(_config(tmp_path), _directory(), view, None, [], NOW)
    text = render_text(status)
    assert "NOT SHOWN" in text
    assert "management API not available" in text
    assert "state database cannot be read" in text


# --- login ---------------------------------------------------------------------------------------
def test_password_hash_verifies_only_the_right_password() -> None:
    line = hash_password("correct horse battery")
    assert line.startswith("scrypt$")
    assert "correct horse" not in line
    assert verify_password("correct horse battery", line)
    assert not verify_password("correct horse batterY", line)
    assert hash_password("correct horse battery") != line  # salted


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "correct horse battery",  # a plain password in the file logs nobody in
        "scrypt$16384$8$1$c2FsdA$",
        "scrypt$99999999$8$1$c2FsdA$" + "A" * 43,  # absurd cost refused, not computed
        "scrypt$x$8$1$c2FsdA$AAAA",
        "bcrypt$whatever",
    ],
)
def test_malformed_password_lines_log_nobody_in(stored: str) -> None:
    assert not verify_password("correct horse battery", stored)


def test_sessions_expire_and_close() -> None:
    sessions = Sessions(lifetime_seconds=60)
    token = sessions.open()
    assert sessions.valid(token)
    assert not sessions.valid(token + "x")
    assert not sessions.valid(None)
    sessions.close(token)
    assert not sessions.valid(token)
    short = Sessions(lifetime_seconds=-1)
    assert not short.valid(short.open())


def test_sessions_are_bounded() -> None:
    sessions = Sessions(lifetime_seconds=60, limit=3)
    tokens = [sessions.open() for _ in range(5)]
    assert [sessions.valid(t) for t in tokens] == [False, False, True, True, True]


class _Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fail(limiter: LoginLimiter, address: str, device: str | None = None) -> int:
    """One wrong password: 401 when the limiter let it be tried, else 429."""
    attempt = limiter.admit(address, device)
    if not attempt.admitted:
        return 429
    limiter.settle(attempt, ok=False)
    return 401


def test_parallel_attempts_are_counted_before_any_password_is_checked() -> None:
    """Sixty attempts arriving together (none checked yet): only the free ones are let
    through to the password hash, the rest are told to wait."""
    limiter = LoginLimiter(per_minute=5, clock=_Clock())
    attempts = [limiter.admit("10.0.0.1") for _ in range(60)]
    assert [a.admitted for a in attempts] == [True] * 5 + [False] * 55
    assert all(0 < a.wait <= 60 for a in attempts[5:])
    for attempt in attempts:
        limiter.settle(attempt, ok=False)
    assert not limiter.admit("10.0.0.1").admitted


def test_failures_back_off_per_address_doubling_up_to_a_minute() -> None:
    clock = _Clock()
    limiter = LoginLimiter(per_minute=3, clock=clock)
    assert [_fail(limiter, "10.0.0.1") for _ in range(4)] == [401, 401, 401, 429]
    assert limiter.admit("10.0.0.2").admitted  # another address is not held up
    waits = []
    for _ in range(5):
        attempt = limiter.admit("10.0.0.1")
        waits.append(attempt.wait)
        clock.now += attempt.wait
        assert _fail(limiter, "10.0.0.1") == 401
    assert waits == [20.0, 40.0, 60.0, 60.0, 60.0]
    clock.now += 120  # two quiet minutes: forgotten
    assert limiter.admit("10.0.0.1").admitted


def test_the_account_backs_off_when_many_addresses_fail() -> None:
    """Guessing from many addresses: after ten times the per-address allowance the account
    itself backs off, for every address that is not a known device."""
    limiter = LoginLimiter(per_minute=3, clock=_Clock())
    codes = [_fail(limiter, f"10.0.1.{i}") for i in range(40)]
    assert codes == [401] * 30 + [429] * 10
    assert not limiter.admit("10.0.0.3").admitted
    assert limiter.admit("10.0.0.3", device="known-browser").admitted


def test_someone_elses_failures_on_a_shared_address_never_lock_out_a_known_device() -> None:
    limiter = LoginLimiter(per_minute=3, clock=_Clock())
    assert [_fail(limiter, "192.0.2.7") for _ in range(40)] == [401] * 3 + [429] * 37
    mine = limiter.admit("192.0.2.7", device="operator-browser")
    assert mine.admitted
    limiter.settle(mine, ok=True)
    assert not limiter.admit("192.0.2.7").admitted  # the address stays limited for the others
    # a known device is limited on its own
    codes = [_fail(limiter, "192.0.2.7", device="stolen-cookie") for _ in range(4)]
    assert codes == [401, 401, 401, 429]


def test_a_success_forgives_and_a_form_that_was_not_read_does_not_count() -> None:
    limiter = LoginLimiter(per_minute=2, clock=_Clock())
    assert _fail(limiter, "10.0.0.1") == 401
    ok = limiter.admit("10.0.0.1")
    limiter.settle(ok, ok=True)
    for _ in range(5):
        unread = limiter.admit("10.0.0.1")
        assert unread.admitted
        limiter.release(unread)
    assert [_fail(limiter, "10.0.0.1") for _ in range(3)] == [401, 401, 429]


def test_device_cookies_are_known_only_as_issued() -> None:
    devices = Devices()
    cookie = devices.issue()
    device = devices.known(cookie)
    assert device is not None
    assert cookie.startswith(device + ".")
    assert devices.known(cookie + "x") is None
    assert devices.known(device + "." + "A" * 43) is None
    assert devices.known(None) is None
    assert devices.known("no-dot") is None
    assert devices.known("a.b.c") is None
    assert Devices().known(cookie) is None  # another process (a restart) forgets it


# --- rendering and metrics ---------------------------------------------------------------------
def test_dashboard_escapes_everything_it_shows(tmp_path: Path) -> None:
    hostile = '<script>alert("x")</script>'
    status = _status(
        _config(tmp_path),
        [_link(reason=hostile)],
        quarantine=QuarantineView(1, {hostile: 1}, [QuarantineEntry(NOW, "invalid_json", hostile)]),
    )
    flow = {
        "casc": [FlowEvent(NOW, "refused", "casc", hostile, hostile, hostile, hostile, hostile)]
    }
    page = dashboard_page(status, _directory(), flow, refresh=5)
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert "<script>" not in login_page(hostile, error=hostile)


def test_status_json_is_plain_json_with_iso_timestamps(tmp_path: Path) -> None:
    status = _status(_config(tmp_path), [_link()])
    raw = json.loads(json.dumps(status.to_json()))
    assert raw["network"] == "seajust"
    assert raw["links"][0]["last_success"].endswith("Z")
    assert raw["expiry"]["directory_expires"].endswith("Z")


def test_metrics_count_audit_records_and_timings_with_bounded_labels(tmp_path: Path) -> None:
    """The message counters are counts of the audit trail's records (what the node's audit
    observer writes); step timings come from the observer seam; labels stay bounded."""
    with AuditLog(tmp_path / "audit.sqlite3", AUDIT_KEY) as audit:
        trail = AuditTrail(audit)
        trail.received("casc", FLOW)
        trail.forwarded("ejn", FLOW)
        trail.quarantined("q-1", "bad_signature", "detail", "mlanet.inbox.from.casc", None)
        trail.receipt(FLOW.message_id, "casc", 2.0)
        audit.commit()
        records = audit.records()
    metrics = NodeMetrics("seajust", ("casc",))
    for record in [*records, *records]:  # a record is counted once, however often it is read
        metrics.count(record)
    metrics.timing("verify", 0.0002)
    metrics.timing("not-a-step", 1.0)  # ignored: labels stay bounded
    metrics.update(_status(_config(tmp_path), [_link(backlog=7)]))
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for s in family.samples
    }
    assert samples[("mlanet_messages_received_total", (("peer", "casc"),))] == 1
    assert samples[("mlanet_messages_forwarded_total", (("peer", "ejn"),))] == 1
    assert samples[("mlanet_receipts_received_total", ())] == 1
    assert samples[("mlanet_messages_quarantined_total", (("reason", "bad_signature"),))] == 1
    assert samples[("mlanet_messages_quarantined_total", (("reason", "invalid_json"),))] == 0
    assert samples[("mlanet_step_seconds_count", (("step", "verify"),))] == 1
    assert samples[("mlanet_receipt_wait_seconds_count", ())] == 1
    assert samples[("mlanet_link_backlog_messages", (("peer", "casc"),))] == 7
    assert samples[("mlanet_link_up", (("peer", "casc"),))] == 1
    assert not any("not-a-step" in str(key) for key in samples)
    assert not any(FLOW.message_id in str(key) for key in samples)


def test_queue_figures_and_shovel_states_from_the_management_api() -> None:
    figures = QueueFigures.from_api(
        {
            "name": "mlanet.out.casc",
            "messages": 3,
            "messages_ready": 1,
            "messages_unacknowledged": 2,
            "consumers": 1,
            "message_stats": {"ack": 9, "publish_details": {"rate": 2.5}},
        }
    )
    assert figures == QueueFigures("mlanet.out.casc", 3, 1, 2, 1, 2.5, None, 9)
    assert QueueFigures.from_api({"name": "q"}).messages is None
    counted = QueueFigures.from_api({"name": "q", "message_stats": {"publish": 2}})
    assert counted.acked == 0  # statistics collected, nothing handed over yet
    policed = QueueFigures.from_api({"name": "q", "policy": "p", "operator_policy": ""})
    assert (policed.policy, policed.operator_policy) == ("p", None)
    # a shovel runs while it consumes its source queue (no monitoring tag needed to tell)
    definitions = {
        "mlanet-link-casc": {"src-queue": "mlanet.out.casc"},
        "mlanet-link-ejn": {"src-queue": "mlanet.out.ejn"},
    }
    states = shovel_states(definitions, {"mlanet.out.casc": figures})
    assert states["mlanet-link-casc"].state == "running"
    assert states["mlanet-link-ejn"].state == "stopped"


def test_the_example_config_documents_the_operator_table() -> None:
    example = load_config(Path(__file__).parents[2] / "nodes" / "examples" / "node.toml")
    assert example.operator.host == "127.0.0.1"
    assert example.operator.password_file is not None
    assert example.operator.password_file.is_absolute()
    assert example.operator.alerts == type(example.operator.alerts)()  # the documented defaults


def test_operator_password_writes_an_owner_only_scrypt_hash(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        'network = "seajust"\nsigning_key = "k"\ndirectory = "d"\nstate_dir = "state"\n'
        '[broker]\nvhost = "v"\nuser = "u"\npassword_file = "p"\n'
        '[operator]\npassword_file = "secrets/operator.password"\n',
        encoding="utf-8",
    )
    runner = CliRunner()
    short = runner.invoke(
        app, ["operator", "password", "-c", str(path), "--stdin"], input="short\n"
    )
    assert short.exit_code == 2
    assert not (tmp_path / "secrets" / "operator.password").exists()
    done = runner.invoke(
        app, ["operator", "password", "-c", str(path), "--stdin"], input="a long passphrase\n"
    )
    assert done.exit_code == 0, done.output
    written = tmp_path / "secrets" / "operator.password"
    assert written.stat().st_mode & 0o777 == 0o600
    line = written.read_text(encoding="ascii")
    assert verify_password("a long passphrase", line)
    assert "a long passphrase" not in line + done.output
