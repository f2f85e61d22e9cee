"""Status and alerts warn before a CA certificate the directory lists stops being trusted
(docs/OPERATIONS.md, ``tls_ca_expiry``): this network's broker CA, a peer's, and the
coordinator's link CA, within ``key_expiry_days`` (warning) and once ended (critical); the node's
expiry warnings (its log, ``directory show``) name them too."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from prometheus_client.parser import text_string_to_metric_families

from mlanet.broker.management import QueueFigures
from mlanet.broker.tls import generate_ca
from mlanet.nodes.config import NodeConfig
from mlanet.nodes.operator.metrics import NodeMetrics
from mlanet.nodes.operator.status import BrokerView, build_status, render_text
from mlanet.schemas.directory import Directory

NOW = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)
ISSUED = NOW - timedelta(days=1)
PUBLIC = "A6EHv_POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg"


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


def _ca(ca_id: str, ends: datetime, **fields: Any) -> dict[str, Any]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ca = generate_ca(ca_id, not_before=start, not_after=ends)
    pem = ca.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
    return {"id": ca_id, "pem": pem, "not_before": start, "not_after": ends, **fields}


def _directory(cas: dict[str, list[dict[str, Any]]], link_cas: list[dict[str, Any]]) -> Directory:
    return Directory.model_validate(
        {
            "version": 3,
            "issued_at": ISSUED,
            "valid_until": ISSUED + timedelta(days=30),
            "networks": [
                {
                    "id": network,
                    "name": network.upper(),
                    "members": [country],
                    "contact_points": [{"id": f"{country.lower()}-cp-1", "country": country}],
                    "keys": [{"key_id": "ed25519:1", "public_key": PUBLIC}],
                    "broker": {"host": "127.0.0.1", "vhost": f"v-{network}"},
                    **(
                        {
                            "tls": {
                                "endpoints": [
                                    {"host": "127.0.0.1", "port": 5671, "server_name": "localhost"}
                                ],
                                "cas": cas[network],
                            }
                        }
                        if network in cas
                        else {}
                    ),
                }
                for network, country in (("seajust", "KH"), ("casc", "UZ"), ("ejn", "DE"))
            ],
            "links": [["seajust", "casc"]],
            "link_cas": link_cas or None,
        },
        strict=False,
    )


def _view() -> BrokerView:
    return BrokerView(
        {"mlanet.inbox": QueueFigures("mlanet.inbox", 0, 0, 0, 1, 0.0, 0.0, 0)}, {}, None
    )


def _alerts(config: NodeConfig, directory: Directory) -> list[tuple[str, str, str]]:
    status = build_status(config, directory, _view(), None, [], NOW.timestamp())
    return [(a.code, a.severity, a.subject) for a in status.alerts if a.code == "tls_ca_expiry"]


def test_cas_far_from_their_end_raise_nothing(tmp_path: Path) -> None:
    later = NOW + timedelta(days=400)
    directory = _directory(
        {"seajust": [_ca("s-1", later)], "casc": [_ca("c-1", later)]}, [_ca("l-1", later)]
    )
    assert _alerts(_config(tmp_path), directory) == []


def test_a_ca_ending_within_the_warning_period_is_a_warning_and_an_ended_one_critical(
    tmp_path: Path,
) -> None:
    """Ours within key_expiry_days (a warning), the peer's expired since the version was issued
    (critical), the link CA retired by a rotation whose overlap ended (critical); a network
    that is not a peer (ejn) is not this node's concern."""
    soon, far = NOW + timedelta(days=10), NOW + timedelta(days=400)
    directory = _directory(
        {
            "seajust": [_ca("s-1", soon)],
            "casc": [_ca("c-1", NOW + timedelta(hours=1))],
            "ejn": [_ca("e-1", NOW + timedelta(days=2))],
        },
        [_ca("l-1", far, retire_at=NOW - timedelta(hours=1))],
    )
    config = _config(tmp_path, key_expiry_days=14)
    later = NOW + timedelta(hours=2)
    status = build_status(config, directory, _view(), None, [], later.timestamp())
    found = sorted(
        (a.code, a.severity, a.subject) for a in status.alerts if a.code == "tls_ca_expiry"
    )
    assert found == [
        ("tls_ca_expiry", "critical", ""),
        ("tls_ca_expiry", "critical", "casc"),
        ("tls_ca_expiry", "warning", "seajust"),
    ]
    text = render_text(status)
    assert "our broker CA: trusted until" in text
    assert "the coordinator's link CA: ended" in text
    # at NOW, with a 5-day window: ours (10 days) is not yet due, the peer's (an hour) is
    assert _alerts(_config(tmp_path, key_expiry_days=5), directory) == [
        ("tls_ca_expiry", "critical", ""),
        ("tls_ca_expiry", "warning", "casc"),
    ]


def test_the_last_ca_counts_so_a_rotation_in_progress_raises_nothing(tmp_path: Path) -> None:
    """The old CA ending while its successor is listed is the rotation working, not an alert."""
    directory = _directory(
        {
            "seajust": [
                _ca("s-1", NOW + timedelta(days=400), retire_at=NOW + timedelta(days=3)),
                _ca("s-2", NOW + timedelta(days=800)),
            ]
        },
        [],
    )
    assert _alerts(_config(tmp_path), directory) == []
    json_view = build_status(
        _config(tmp_path),
        directory,
        BrokerView({}, {}, None),
        None,
        [],
        NOW.timestamp(),
    ).to_json()
    assert json_view["expiry"]["network_cas"] == {"seajust": "2029-03-25T12:00:00Z"}
    assert json_view["expiry"]["link_ca"] is None


def test_the_metrics_give_when_each_watched_ca_stops_being_trusted(tmp_path: Path) -> None:
    """``mlanet_tls_ca_expiry_timestamp_seconds``: ours and each peer's broker CA, and the link
    CA; a network that is not a peer is left out, as for keys."""
    ours, peers, link = (NOW + timedelta(days=d) for d in (100, 200, 300))
    directory = _directory(
        {"seajust": [_ca("s-1", ours)], "casc": [_ca("c-1", peers)], "ejn": [_ca("e-1", peers)]},
        [_ca("l-1", link)],
    )
    status = build_status(_config(tmp_path), directory, _view(), None, [], NOW.timestamp())
    metrics = NodeMetrics("seajust", ("casc",))
    metrics.update(status)
    samples = {
        sample.labels["network"]: sample.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for sample in family.samples
        if sample.name == "mlanet_tls_ca_expiry_timestamp_seconds"
    }
    assert samples == {
        "seajust": ours.timestamp(),
        "casc": peers.timestamp(),
        "link": link.timestamp(),
    }
