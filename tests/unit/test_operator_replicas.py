"""The replicas as operators see them, without a broker: the REPLICAS section of ``mlanet
status`` (text and JSON), the ``replica_unhealthy`` alert (a warning while another replica is
healthy, critical when none is; a stopped replica is no alarm), the dashboard's table (escaped;
nothing for a node that runs alone), the ``mlanet_replicas{state}`` gauge, and an unreachable
database as one line."""

from __future__ import annotations

import json
import socket
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from mlanet.broker.management import QueueFigures
from mlanet.nodes.config import DatabaseConfig, NodeConfig
from mlanet.nodes.operator.dashboard import dashboard_page
from mlanet.nodes.operator.metrics import NodeMetrics
from mlanet.nodes.operator.replicas import outside_replicas, running_replicas
from mlanet.nodes.operator.status import BrokerView, NodeStatus, build_status, render_text
from mlanet.nodes.operator.views import ReplicasView
from mlanet.nodes.runtime.replicas import Alone, ReplicaRow
from mlanet.schemas.directory import Directory

NOW = 1_800_000_000.0
LEASE = 15.0


def _config(tmp_path: Path) -> NodeConfig:
    return NodeConfig.model_validate(
        {
            "network": "casc",
            "signing_key": str(tmp_path / "k"),
            "directory": str(tmp_path / "d"),
            "state_dir": str(tmp_path / "state"),
            "broker": {"vhost": "v", "user": "u", "password_file": str(tmp_path / "p")},
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
                    "id": "casc",
                    "name": "CASC",
                    "members": ["UZ"],
                    "contact_points": [{"id": "uz-cp-1", "country": "UZ"}],
                    "keys": [{"key_id": "ed25519:1", "public_key": "A" * 43}],
                    "broker": {"host": "127.0.0.1", "vhost": "v-casc"},
                }
            ],
            "links": [],
        }
    )


def _row(name: str, state: str = "running", age: float = 1.0, host: str = "host-1") -> ReplicaRow:
    return ReplicaRow(name, host, 4242, "1.2.3", NOW - 3600, age, state, LEASE)


def _status(tmp_path: Path, replicas: ReplicasView | None) -> NodeStatus:
    view = BrokerView(
        {"mlanet.inbox": QueueFigures("mlanet.inbox", 0, 0, 0, 2, 0.0, 0.0, 0)}, {}, None
    )
    return build_status(_config(tmp_path), _directory(), view, None, [], NOW, replicas=replicas)


def _replica_alerts(status: NodeStatus) -> list[tuple[str, str]]:
    return [(a.severity, a.subject) for a in status.alerts if a.code == "replica_unhealthy"]


def test_the_status_text_lists_every_replica_with_its_state_heartbeat_and_health(
    tmp_path: Path,
) -> None:
    rows = (
        _row("casc-a"),
        _row("casc-b", age=40.0),
        _row("casc-c", "fenced", 90.0),
        _row("casc-d", "stopped", 7200.0),
    )
    text = render_text(_status(tmp_path, ReplicasView(rows)))
    section = text.split("REPLICAS: ", 1)[1].split("\n\n", 1)[0].splitlines()
    assert section[0] == "1 of 3 healthy, 1 stopped (lease 15 s)"
    lines = {line.split()[0]: line.split() for line in section[2:]}
    assert lines["casc-a"][1:6] == ["host-1", "4242", "1.2.3", "running", "1s"]
    assert lines["casc-a"][-1] == "healthy"
    assert lines["casc-b"][-1] == "UNHEALTHY"  # running by its row, but not beating
    assert lines["casc-c"][4] == "fenced"
    assert lines["casc-c"][-1] == "UNHEALTHY"
    assert lines["casc-d"][4] == "stopped"
    assert lines["casc-d"][-1] == "-"  # stopped: not healthy, and no alarm
    assert lines["casc-d"][5] == "2h"


def test_a_node_that_runs_alone_has_no_replicas_section(tmp_path: Path) -> None:
    status = _status(tmp_path, None)
    assert "REPLICAS" not in render_text(status)
    assert status.to_json()["replicas"] is None
    assert running_replicas(Alone()) is None
    page = dashboard_page(status, _directory(), {}, refresh=5)
    assert 'id="replicas"' not in page


def test_an_unreadable_replicas_table_is_one_line_and_no_alert(tmp_path: Path) -> None:
    status = _status(tmp_path, ReplicasView(problem="the database does not answer (refused)"))
    text = render_text(status)
    assert "REPLICAS: unknown (the database does not answer (refused))\n" in text
    assert _replica_alerts(status) == []
    assert status.to_json()["replicas"] == {
        "replicas": [],
        "lease_seconds": None,
        "problem": "the database does not answer (refused)",
        "exposure": [],
    }


def test_a_database_other_networks_can_reach_is_one_warning_naming_each_finding(
    tmp_path: Path,
) -> None:
    found = (
        "every role on the server may connect to database shared (CONNECT is granted to PUBLIC)",
        "the node's role is a superuser: it can end any session on the server",
    )
    status = _status(tmp_path, ReplicasView((_row("casc-a"),), exposure=found))
    (alert,) = [a for a in status.alerts if a.code == "database_shared"]
    assert (alert.severity, alert.subject) == ("warning", "")
    assert all(finding in alert.text for finding in found)
    assert "a database and a role of its own" in alert.text
    assert status.to_json()["replicas"]["exposure"] == list(found)
    assert [a for a in _status(tmp_path, ReplicasView((_row("casc-a"),))).alerts] == []


def test_every_unhealthy_replica_is_a_warning_while_another_is_healthy(tmp_path: Path) -> None:
    rows = (_row("casc-a"), _row("casc-b", age=40.0), _row("casc-c", "fenced", 90.0))
    status = _status(tmp_path, ReplicasView(rows))
    assert _replica_alerts(status) == [("warning", "casc-b"), ("warning", "casc-c")]
    stale = next(a for a in status.alerts if a.subject == "casc-b")
    assert "40s ago, lease 15 s" in stale.text
    assert "host-1 (pid 4242)" in stale.text
    assert "the other replicas fence it" in stale.text


def test_no_replica_alert_when_all_are_healthy_or_stopped(tmp_path: Path) -> None:
    rows = (_row("casc-a"), _row("casc-b", age=14.0), _row("casc-old", "stopped", 99999.0))
    assert _replica_alerts(_status(tmp_path, ReplicasView(rows))) == []


def test_no_healthy_replica_left_is_critical(tmp_path: Path) -> None:
    rows = (_row("casc-a", age=30.0), _row("casc-b", "fenced", 60.0), _row("casc-c", "stopped"))
    status = _status(tmp_path, ReplicasView(rows))
    assert _replica_alerts(status) == [("critical", "casc-a"), ("critical", "casc-b")]
    assert "fence it" not in next(a for a in status.alerts if a.subject == "casc-a").text


def test_the_status_json_lists_the_replicas_with_iso_start_and_health(tmp_path: Path) -> None:
    rows = (_row("casc-a"), _row("casc-b", "stopped", 100.0))
    raw = json.loads(json.dumps(_status(tmp_path, ReplicasView(rows)).to_json()))
    assert raw["replicas"]["lease_seconds"] == LEASE
    assert raw["replicas"]["problem"] is None
    first, second = raw["replicas"]["replicas"]
    assert first == {
        "name": "casc-a",
        "host": "host-1",
        "pid": 4242,
        "version": "1.2.3",
        "started_at": "2027-01-15T07:00:00Z",
        "heartbeat_age_seconds": 1.0,
        "state": "running",
        "healthy": True,
    }
    assert (second["state"], second["healthy"]) == ("stopped", False)


def test_the_dashboard_shows_the_replicas_table_escaped(tmp_path: Path) -> None:
    hostile = '<script>alert("x")</script>'
    rows = (_row("casc-a"), _row("casc-b", "fenced", 90.0, host=hostile))
    page = dashboard_page(_status(tmp_path, ReplicasView(rows)), _directory(), {}, refresh=5)
    section = page.split('<section class="wide" id="replicas">', 1)[1].split("</section>", 1)[0]
    assert "<td>casc-a</td>" in section
    assert '<span class="badge fenced">fenced</span>' in section
    assert '<span class="badge unhealthy">unhealthy</span>' in section
    assert '<span class="badge healthy">healthy</span>' in section
    assert "<script>" not in page
    assert "&lt;script&gt;" in section
    problem = ReplicasView(problem="the database does not answer")
    page = dashboard_page(_status(tmp_path, problem), _directory(), {}, refresh=5)
    assert "Cannot be read: the database does not answer" in page


def _gauge(metrics: NodeMetrics) -> dict[str, float]:
    return {
        sample.labels["state"]: sample.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for sample in family.samples
        if sample.name == "mlanet_replicas"
    }


def test_the_replicas_gauge_counts_them_by_state_and_says_nothing_when_unknown(
    tmp_path: Path,
) -> None:
    metrics = NodeMetrics("casc", ())
    rows = (
        _row("casc-a"),
        _row("casc-b"),
        _row("casc-c", age=40.0),
        _row("casc-d", "fenced", 90.0),
        _row("casc-e", "stopped", 900.0),
    )
    metrics.update(_status(tmp_path, ReplicasView(rows)))
    assert _gauge(metrics) == {"running": 2, "stale": 1, "fenced": 1, "stopped": 1}
    metrics.update(_status(tmp_path, ReplicasView(problem="the database does not answer")))
    assert _gauge(metrics) == {}  # unknown is not zero
    metrics.update(_status(tmp_path, None))
    assert _gauge(metrics) == {}


async def test_a_refused_database_connection_is_one_line(tmp_path: Path) -> None:
    """Nothing listens on port 1: the read gives up at once with libpq's reason, no
    traceback; a database that does not answer in time is given up on the same way."""
    refused = DatabaseConfig(url="postgresql://mlanet@127.0.0.1:1/mlanet")
    view = await outside_replicas(refused)
    assert view is not None
    assert view.rows == ()
    assert view.problem is not None
    assert view.problem.startswith("the database does not answer (")
    assert "\n" not in view.problem
    assert await outside_replicas(None) is None


async def test_a_database_that_never_answers_is_given_up_on_in_one_line(tmp_path: Path) -> None:
    """A listener that accepts and says nothing: the connect timeout ends the read (the
    test's own time limit fails it if it hangs)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    silent = DatabaseConfig(
        url=f"postgresql://mlanet@127.0.0.1:{port}/mlanet", connect_timeout_seconds=1.0
    )
    try:
        view = await outside_replicas(silent)
    finally:
        listener.close()
    assert view is not None
    assert view.rows == ()
    assert view.problem is not None
    assert view.problem.startswith("the database does not answer (")
    assert "\n" not in view.problem


def test_a_state_the_gauge_does_not_know_is_no_new_label_value(tmp_path: Path) -> None:
    """Labels stay bounded: a state the gauge does not know is not a new label value."""
    metrics = NodeMetrics("casc", ())
    metrics.update(_status(tmp_path, ReplicasView((replace(_row("casc-a"), state="leaving"),))))
    assert set(_gauge(metrics)) == {"running", "stale", "fenced", "stopped"}
