"""Operators are told, not left to find out (no broker needed): a quarantine that is not empty,
own messages that failed and a peer whose broker accepts while nothing comes back are alerts;
the directory expires at one moment for the node and for its status, metrics and alerts, with
the same warning windows; a key at exactly its not_after is expired everywhere; the counters
and the recent flow are read from the audit trail, so a restart loses neither."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlanet.broker import ConfigError, Reason, RefusedMessage, SigningKey, TrustStore
from mlanet.broker.directory_signing import sign_directory
from mlanet.broker.keys import load_signing_key
from mlanet.broker.management import QueueFigures, ShovelState
from mlanet.nodes.config import NodeConfig, load_config
from mlanet.nodes.directory.book import DirectoryBook
from mlanet.nodes.local.federation import Federation, build
from mlanet.nodes.operator.flow import FlowLog
from mlanet.nodes.operator.links import LinkTracker, LinkView
from mlanet.nodes.operator.metrics import NodeMetrics
from mlanet.nodes.operator.status import (
    BrokerView,
    NodeStatus,
    QuarantineView,
    build_status,
    compute_alerts,
    render_text,
)
from mlanet.nodes.runtime.observe import Flow
from mlanet.nodes.state.audit import AuditLog, AuditTrail
from mlanet.nodes.state.store import Store
from mlanet.schemas.directory import Directory

NOW = 1_800_000_000.0
ANSWERED = ("facilitation_request", "status_update")
OWN = Flow("6f1c0e4e-0000-4000-8000-00000000000a", "seajust", "facilitation_request", "UZ")
LATER = Flow("6f1c0e4e-0000-4000-8000-00000000000b", "seajust", "facilitation_request", "UZ")
RELAYED = Flow("6f1c0e4e-0000-4000-8000-00000000000c", "ejn", "facilitation_request", "UZ")
KEY = SigningKey.from_seed("seajust", "ed25519:1", bytes(range(32)))


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


def _directory() -> Directory:
    issued = datetime.fromtimestamp(NOW, UTC) - timedelta(days=1)
    return Directory.model_validate(
        {
            "version": 3,
            "issued_at": issued,
            "valid_until": issued + timedelta(days=30),
            "networks": [
                {
                    "id": network,
                    "name": network.upper(),
                    "members": [country],
                    "contact_points": [{"id": f"{country.lower()}-cp-1", "country": country}],
                    "keys": [{"key_id": "ed25519:1", "public_key": KEY.public_b64()}],
                    "broker": {"host": "127.0.0.1", "vhost": f"v-{network}"},
                }
                for network, country in (("seajust", "KH"), ("casc", "UZ"))
            ],
            "links": [["seajust", "casc"]],
        },
        strict=False,
    )


def _view() -> BrokerView:
    return BrokerView(
        {"mlanet.inbox": QueueFigures("mlanet.inbox", 0, 0, 0, 1, 0.0, 0.0, 0)},
        {"mlanet-link-casc": ShovelState("mlanet-link-casc", "running", None, None)},
        None,
    )


def _link(**changes: object) -> LinkView:
    return replace(
        LinkView("casc", "up", "running", None, 0, NOW - 5, None, False, None), **changes
    )


def _status(
    config: NodeConfig,
    links: list[LinkView],
    *,
    store: Store | None = None,
    now: float = NOW,
    directory: Directory | None = None,
) -> NodeStatus:
    return build_status(config, directory or _directory(), _view(), store, links, now)


def _codes(status: NodeStatus) -> list[tuple[str, str, str]]:
    return [(a.code, a.severity, a.subject) for a in status.alerts]


# --- the quarantine ------------------------------------------------------------------------------
def test_one_quarantined_message_is_an_alert_not_alerts_none(tmp_path: Path) -> None:
    """Today's gap: one refused message waiting, and status said "ALERTS: none". The default
    threshold (quarantine_messages = 1) makes any waiting entry a warning."""
    status = _status(_config(tmp_path), [_link()])
    assert status.alerts == []
    one = replace(status, quarantine=QuarantineView(1, {"bad_signature": 1}, []))
    alerts = compute_alerts(one, _config(tmp_path), NOW)
    assert [(a.code, a.severity) for a in alerts] == [("quarantine_depth", "warning")]
    assert "mlanet quarantine list" in alerts[0].text
    text = render_text(replace(one, alerts=alerts))
    assert "ALERTS: none" not in text
    assert "quarantine_depth" in text
    tolerant = _config(tmp_path, quarantine_messages=5)
    assert compute_alerts(replace(one, quarantine=QuarantineView(4, {}, [])), tolerant, NOW) == []


# --- own messages that failed --------------------------------------------------------------------
def test_own_messages_that_failed_or_were_given_up_on_alert_within_their_window(
    tmp_path: Path,
) -> None:
    """An own message with no route (failed) and one with no receipt in time (undeliverable)
    are counted from the node's state and raise own_failed; outside the window they do not."""
    config = _config(tmp_path, failed_window_seconds=3600)
    store = Store(tmp_path / "state" / "node.sqlite3", key=KEY)
    try:
        for message_id, state in (("m-1", "failed"), ("m-2", "undeliverable")):
            store.outbox_add(
                message_id=message_id,
                kind="facilitation_request",
                sender="kh-cp-1",
                destination="UZ",
                content_sha256="0" * 64,
                wire=b"{}",
                next_attempt=0.0,
            )
            store.outbox_update(
                message_id, state, "no_route" if state == "failed" else "", record=True
            )
        now = time.time()
        status = _status(config, [_link()], store=store, now=now)
        assert status.receipts is not None
        assert status.receipts.failed_recent == 2
        assert ("own_failed", "warning", "") in _codes(status)
        assert "2 own messages failed in the last 60m" in status.alerts[0].text
        assert "2 failed recently" in render_text(status)
        later = _status(config, [_link()], store=store, now=now + 3601)
        assert later.receipts is not None
        assert later.receipts.failed_recent == 0
        assert "own_failed" not in {a.code for a in later.alerts}
    finally:
        store.close()


# --- a peer whose broker accepts but whose node does not consume ---------------------------------
def test_own_messages_handed_to_a_peers_broker_with_no_receipt_make_it_silent() -> None:
    """The link stays up (the peer's broker takes every message), but the own message it took
    gets no receipt: unanswered_since is the poll that saw it leave the queue. A relayed
    message is not followed (its receipt goes to its origin), and the receipt clears it."""
    tracker = LinkTracker(("casc",), started=NOW - 100, network="seajust", answered=ANSWERED)
    tracker.forwarded("casc", OWN)
    tracker.forwarded("casc", RELAYED)
    now = time.time()
    waiting = tracker.update("casc", shovel="running", reason=None, backlog=2, acked=0, now=now)
    assert (waiting.state, waiting.unanswered_since, waiting.unanswered) == ("up", None, 0)
    taken = tracker.update("casc", shovel="running", reason=None, backlog=0, acked=2, now=now + 5)
    assert (taken.state, taken.unanswered_since, taken.unanswered) == ("up", now + 5, 1)
    still = tracker.update("casc", shovel="running", reason=None, backlog=0, acked=2, now=now + 9)
    assert still.unanswered_since == now + 5
    tracker.receipt(OWN.message_id, "casc", 3.0)
    answered = tracker.update("casc", shovel="running", reason=None, backlog=0, acked=2, now=now)
    assert (answered.unanswered_since, answered.unanswered) == (None, 0)


def test_a_receipt_for_a_later_message_shows_the_peer_consumes() -> None:
    tracker = LinkTracker(("casc",), started=NOW, network="seajust", answered=ANSWERED)
    tracker.forwarded("casc", OWN)
    tracker.forwarded("casc", LATER)
    now = time.time() + 1
    view = tracker.update("casc", shovel="running", reason=None, backlog=0, acked=2, now=now)
    assert view.unanswered == 2
    tracker.receipt(LATER.message_id, "casc", 1.0)
    after = tracker.update("casc", shovel="running", reason=None, backlog=0, acked=2, now=now)
    assert (after.unanswered_since, after.unanswered) == (None, 0)


def test_anything_from_the_peers_node_answers_what_it_was_handed() -> None:
    """A notice about a message the peer refused (or any message of its own) shows its node
    runs; another peer's messages do not."""
    tracker = LinkTracker(("casc", "ejn"), started=NOW, network="seajust", answered=ANSWERED)
    tracker.forwarded("casc", OWN)
    now = time.time() + 1
    tracker.update("casc", shovel="running", reason=None, backlog=0, acked=1, now=now)
    notice = Flow("6f1c0e4e-0000-4000-8000-00000000000d", "ejn", "notice", "KH")
    tracker.received("ejn", notice)
    still = tracker.update("casc", shovel="running", reason=None, backlog=0, acked=1, now=now)
    assert still.unanswered == 1
    tracker.received("casc", replace(notice, origin="casc"))
    after = tracker.update("casc", shovel="running", reason=None, backlog=0, acked=1, now=now)
    assert (after.unanswered_since, after.unanswered) == (None, 0)


def test_peer_silent_alerts_after_its_threshold_and_only_while_the_link_is_up(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, peer_silent_seconds=600)
    early = _status(config, [_link(unanswered_since=NOW - 599, unanswered=2)])
    assert early.alerts == []
    silent = _status(config, [_link(unanswered_since=NOW - 600, unanswered=2)])
    assert _codes(silent) == [("peer_silent", "warning", "casc")]
    assert "casc's broker accepted 2 own messages" in silent.alerts[0].text
    assert "is casc's node (or a network behind it) consuming?" in silent.alerts[0].text
    assert "no receipt through it for 10m" in render_text(silent)
    down = _status(
        config,
        [_link(state="down", down_since=NOW - 900, unanswered_since=NOW - 900, unanswered=2)],
    )
    assert [code for code, _, _ in _codes(down)] == ["link_down"]  # said once, as link_down
    assert silent.to_json()["links"][0]["unanswered_since"].endswith("Z")


# --- one directory expiry, one set of warning windows -----------------------------------------
@pytest.fixture
def fed(tmp_path: Path) -> Federation:
    return build(tmp_path / "federation", prefix="unit")


def _metric(status: NodeStatus, name: str) -> float:
    metrics = NodeMetrics("casc", ("seajust",))
    metrics.update(status)
    exposition = metrics.exposition().decode()
    return next(
        s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
        if s.name == name
    )


@pytest.mark.parametrize("signed_expiry", [True, False])
def test_status_metrics_alerts_and_the_node_share_one_directory_expiry(
    fed: Federation, signed_expiry: bool
) -> None:
    """With valid_until and without it ([coordinator] max_directory_age_seconds: the node's
    90 days, not the 180 the alerts used to assume), the moment status shows, the metric
    exposes and the alert turns critical at is the moment the node fails closed."""
    path = fed.config_path("casc")
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("keys = [", "max_directory_age_seconds = 864000\nkeys = [", 1))
    config = load_config(path)
    book = DirectoryBook.load(config)
    if not signed_expiry:
        undated = book.held.directory.model_copy(update={"version": 2, "valid_until": None})
        key = load_signing_key(fed.coordinator_key())
        book.consider(sign_directory(undated, key).to_bytes())
    expires = book.expires_at()
    if not signed_expiry:
        assert expires == book.held.directory.issued_at + timedelta(days=10)
    directory = book.held.directory
    at = expires.timestamp()
    before = build_status(config, directory, _view(), None, [], at - 1)
    assert before.expiry.directory_expires == at
    assert _metric(before, "mlanet_directory_stale_timestamp_seconds") == at
    assert book.closed(expires - timedelta(seconds=1)) is None
    assert [a.severity for a in before.alerts if a.code == "directory_expiry"] == ["warning"]
    closed = book.closed(expires)
    assert closed is not None
    assert closed.reason is Reason.DIRECTORY_EXPIRED
    after = build_status(config, directory, _view(), None, [], at)
    assert [a.severity for a in after.alerts if a.code == "directory_expiry"] == ["critical"]


def test_the_nodes_expiry_warnings_use_the_alerts_windows(fed: Federation) -> None:
    """The node's expiry_warning and the directory_expiry alert start at the same moment
    ([operator.alerts] directory_expiry_days; there is no second window)."""
    path = fed.config_path("casc")
    path.write_text(
        path.read_text(encoding="utf-8") + "\n[operator.alerts]\ndirectory_expiry_days = 3\n"
    )
    config = load_config(path)
    book = DirectoryBook.load(config)
    expires = book.expires_at()
    for days_left, warned in ((3.5, False), (2.5, True)):
        now = expires - timedelta(days=days_left)
        logged = any("directory version" in w.text() for w in book.warnings(now))
        status = build_status(config, book.held.directory, _view(), None, [], now.timestamp())
        alerted = any(a.code == "directory_expiry" for a in status.alerts)
        assert logged is warned
        assert alerted is warned


@pytest.mark.parametrize(
    ("setting", "table", "says"),
    [
        ("directory_max_age_days = 180", "[operator.alerts]", "max_directory_age_seconds"),
        ("warn_before_seconds = 1209600", "[coordinator]", "directory_expiry_days"),
    ],
)
def test_a_second_expiry_setting_is_refused_with_the_one_to_use(
    fed: Federation, setting: str, table: str, says: str
) -> None:
    path = fed.config_path("casc")
    text = path.read_text(encoding="utf-8")
    if table == "[coordinator]":
        text = text.replace("keys = [", f"{setting}\nkeys = [", 1)
    else:
        text += f"\n{table}\n{setting}\n"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="no longer read") as refused:
        load_config(path)
    assert says in str(refused.value)


def test_a_key_at_exactly_its_not_after_is_expired_for_messages_the_node_and_status(
    tmp_path: Path,
) -> None:
    """One rule: valid from not_before up to, not including, not_after."""
    end = datetime.fromtimestamp(NOW, UTC)
    trust = TrustStore()
    trust.add("seajust", "ed25519:1", KEY.public_b64(), not_after=end)
    signature = KEY.sign(b"data")
    trust.verify(
        "seajust",
        "ed25519:1",
        signature,
        b"data",
        reason=Reason.BAD_SIGNATURE,
        at=end - timedelta(milliseconds=1),
    )
    with pytest.raises(RefusedMessage) as refused:
        trust.verify(
            "seajust", "ed25519:1", signature, b"data", reason=Reason.BAD_SIGNATURE, at=end
        )
    assert refused.value.reason is Reason.EXPIRED
    directory = _directory()
    ending = [
        network.model_copy(
            update={"keys": [key.model_copy(update={"not_after": end}) for key in network.keys]}
        )
        for network in directory.networks
    ]
    dated = directory.model_copy(update={"networks": ending})
    status = _status(_config(tmp_path), [_link()], now=NOW, directory=dated)
    assert {(a.code, a.text) for a in status.alerts} >= {("key_expiry", "our signing key expired")}
    just_before = _status(_config(tmp_path), [_link()], now=NOW - 0.001, directory=dated)
    assert "our signing key expired" not in {a.text for a in just_before.alerts}


# --- the counters and the recent flow come from the audit trail --------------------------------
def test_counters_and_flow_read_from_the_audit_trail_are_the_same_after_a_restart(
    tmp_path: Path,
) -> None:
    """A node's audit observer writes its records; a fresh NodeMetrics and FlowLog (a node
    that restarted) read the same counts and the same flow from them."""
    path = tmp_path / "audit.sqlite3"
    with AuditLog(path, KEY) as audit:
        trail = AuditTrail(audit)
        trail.submitted("kh-cp-1", OWN)
        trail.forwarded("casc", OWN)
        trail.received("casc", RELAYED)
        trail.forwarded("ejn", RELAYED)
        trail.quarantined("q-1", "bad_signature", "detail", "mlanet.inbox.from.casc", None)
        trail.receipt(OWN.message_id, "casc", 2.5)
        audit.commit()

    def read() -> tuple[dict[tuple[str, tuple[tuple[str, str], ...]], float], list[str]]:
        with AuditLog(path, readonly=True) as audit:
            metrics = NodeMetrics("seajust", ("casc", "ejn"))
            for record in audit.records_after(0, 100):
                metrics.count(record)
            flow = FlowLog(audit)
            events = [f"{e.event} {e.network} {e.message_id[-1]}" for e in flow.recent()]
        counted = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(metrics.exposition().decode())
            for s in family.samples
            if s.name.startswith("mlanet_")
            and (s.name.endswith("_total") or s.name.startswith("mlanet_receipt_wait"))
            and not s.name.endswith("_created")  # when this process made the counter
        }
        return counted, events

    counted, events = read()
    assert counted[("mlanet_messages_submitted_total", (("kind", "facilitation_request"),))] == 1
    assert counted[("mlanet_messages_forwarded_total", (("peer", "casc"),))] == 1
    assert counted[("mlanet_messages_forwarded_total", (("peer", "ejn"),))] == 1
    assert counted[("mlanet_messages_received_total", (("peer", "casc"),))] == 1
    assert counted[("mlanet_messages_quarantined_total", (("reason", "bad_signature"),))] == 1
    assert counted[("mlanet_receipts_received_total", ())] == 1
    assert counted[("mlanet_receipt_wait_seconds_count", ())] == 1
    assert events == [  # newest first; the relayed message's one record is two events
        "receipt casc a",
        "refused casc -",
        "forwarded ejn c",
        "received casc c",
        "forwarded casc a",
        "submitted local a",
    ]
    assert read() == (counted, events)  # restarted: the same
