"""What operators see of the quarantine without a broker: text a sender chose is printed with
its control and bidi characters escaped, every reason code shows as itself, the status counts
each peer's entries, and the alerts fire on a peer's refusal rate, its bound, a full delivery
queue and receipts for messages the node has no record of. The contact points' queues are
bounded by a policy of the node's own."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from mlanet.broker.management import QueueFigures, ShovelState
from mlanet.nodes.cli.terminal import visible
from mlanet.nodes.config import NodeConfig
from mlanet.nodes.operator.status import (
    BrokerView,
    ReceiptView,
    build_status,
    compute_alerts,
    render_text,
)
from mlanet.nodes.runtime.fairness import deliver_policy, node_policies
from mlanet.nodes.state.quarantine import Claim, Entry, entry_of
from mlanet.nodes.state.quarantine_store import QUARANTINE_FILE, Bound, QuarantineStore
from mlanet.schemas.base import format_timestamp
from mlanet.schemas.directory import Directory

NOW = 1_800_000_000.0
ESC = "\x1b"


def test_control_bidi_and_invisible_characters_are_escaped_and_text_stays_readable() -> None:
    hostile = f"ok {ESC}[2J{ESC}]0;title\x07 \x9b31m \u202eevil\u202c a\u200bb \ufeff\r\u2028"
    shown = visible(hostile)
    for char in (ESC, "\x07", "\x9b", "\u202e", "\u202c", "\u200b", "\ufeff", "\r", "\u2028"):
        assert char not in shown
    assert "\\x1b[2J" in shown
    assert "\\u202eevil\\u202c" in shown
    assert "\\x9b31m" in shown
    readable = "Réquisition 中文 ✓ émoji 🙂\n\ttab"
    assert visible(readable) == readable


def test_reason_codes_with_digits_show_as_themselves() -> None:
    for reason in ("bad_base64", "not_utf8", "invalid_json"):
        entry = entry_of(b"x", "", None, {"x-mlanet-reason": reason})
        assert entry.reason == reason
    assert entry_of(b"x", "", None, {"x-mlanet-reason": "Not A Code!"}).reason == "unknown"


def test_the_delivery_queues_are_bounded_by_a_policy_the_node_owns(tmp_path: Path) -> None:
    config = _config(tmp_path, limits={"deliver_queue_messages": 7, "deliver_queue_bytes": 2**21})
    name, pattern, definition = deliver_policy(config)
    assert (name, pattern) == ("mlanet-deliver", r"^mlanet\.deliver\.")
    assert definition == {
        "max-length": 7,
        "max-length-bytes": 2**21,
        "overflow": "reject-publish",  # never drop-head: nothing delivered is ever dropped
    }
    assert "mlanet-deliver" in {policy.name for policy in node_policies(config)}


def _config(tmp_path: Path, **more: object) -> NodeConfig:
    return NodeConfig.model_validate(
        {
            "network": "seajust",
            "signing_key": str(tmp_path / "k"),
            "directory": str(tmp_path / "d"),
            "state_dir": str(tmp_path / "state"),
            "broker": {"vhost": "v", "user": "u", "password_file": str(tmp_path / "p")},
            "peers": [{"network": "casc", "user": "u", "password_file": str(tmp_path / "p")}],
            "operator": {"alerts": {"refusals_per_minute": 5}},
            **more,
        }
    )


def _directory() -> Directory:
    key = {"key_id": "ed25519:1", "public_key": "A" * 43}
    networks = [
        {
            "id": network,
            "name": network.upper(),
            "members": [country],
            "contact_points": [{"id": f"{country.lower()}-cp-1", "country": country}],
            "keys": [key],
            "broker": {"host": "127.0.0.1", "vhost": f"v-{network}"},
        }
        for network, country in (("seajust", "KH"), ("casc", "UZ"))
    ]
    raw = {
        "version": 1,
        "issued_at": format_timestamp(_utc(NOW - 3600)),
        "networks": networks,
        "links": [["seajust", "casc"]],
    }
    return Directory.model_validate(raw, strict=False)


def _utc(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC)


def _refused(n: int, peer: str, at: float) -> Entry:
    body = b"junk %d" % n
    return Entry(
        id=f"00000000-0000-4000-8000-{n:012d}",
        reason="invalid_json",
        detail="line 1, column 1",
        via=f"mlanet.inbox.from.{peer}" if peer else "mlanet.submit",
        at=at,
        size=len(body),
        body_sha256=hashlib.sha256(body).hexdigest(),
        returns=0,
        claim=Claim(),
    )


def _view(deliver_depth: int) -> BrokerView:
    queues = {
        "mlanet.inbox": QueueFigures("mlanet.inbox", 0, 0, 0, 1, 0.0, 0.0, 0),
        "mlanet.deliver.kh-cp-1": QueueFigures(
            "mlanet.deliver.kh-cp-1", deliver_depth, deliver_depth, 0, 0, 0.0, 0.0, 0
        ),
    }
    shovels = {"mlanet-link-casc": ShovelState("mlanet-link-casc", "running", None, None)}
    return BrokerView(queues, shovels, None)


def test_the_status_counts_each_peers_entries_and_alerts_on_rate_and_bound(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, limits={"deliver_queue_messages": 10})
    with QuarantineStore(config.state_dir / QUARANTINE_FILE) as store:
        bound = Bound(messages=4, bytes=2**30)
        for n in range(8):  # casc: 8 refusals in the last minute, 4 over its bound
            store.add(_refused(n, "casc", NOW - 10), b"junk", bound, now=NOW)
        for n in range(8, 10):  # local: 2, an hour ago
            store.add(_refused(n, "", NOW - 3600), b"junk", bound, now=NOW)
        store.commit()
    status = build_status(config, _directory(), _view(8), None, [], NOW)
    peers = status.quarantine.peers
    assert (peers["casc"].waiting, peers["casc"].without_body, peers["casc"].last_minute) == (
        8,
        4,
        8,
    )
    assert (peers["local"].waiting, peers["local"].last_minute) == (2, 0)
    assert status.quarantine.depth == 10
    found = {(a.code, a.severity, a.subject) for a in status.alerts}
    assert ("quarantine_rate", "warning", "casc") in found
    assert ("quarantine_bound", "warning", "casc") in found
    assert ("delivery_queue", "warning", "kh-cp-1") in found  # 8 of 10
    assert not {alert for alert in found if alert[2] == "local"}
    text = render_text(status)
    assert "QUARANTINE: 10 messages waiting" in text
    full = build_status(config, _directory(), _view(10), None, [], NOW)
    assert ("delivery_queue", "critical", "kh-cp-1") in {
        (a.code, a.severity, a.subject) for a in full.alerts
    }


def test_receipts_for_messages_the_node_has_no_record_of_raise_an_alert(tmp_path: Path) -> None:
    config = _config(tmp_path)
    status = build_status(config, _directory(), _view(0), None, [], NOW)
    assert not [a for a in status.alerts if a.code == "receipts_unmatched"]
    unmatched = replace(status, receipts=ReceiptView(0, None, 0, {}, unmatched=3))
    (alert,) = [a for a in compute_alerts(unmatched, config, NOW) if a.code == "receipts_unmatched"]
    assert alert.severity == "warning"
    assert alert.text.startswith("3 receipts")
