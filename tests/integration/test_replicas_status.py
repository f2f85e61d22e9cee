"""Every replica of a node, and its health, as operators see it, against the real RabbitMQ and
PostgreSQL: ``mlanet status`` (run as operators run it) lists two running replicas as healthy,
one that stopped as stopped, and one that died without saying so as unhealthy with the
``replica_unhealthy`` alert naming it; the dashboard (its page and its JSON, logged in) and
``/metrics`` (``mlanet_replicas{state}``) show the same; a database out of reach is one line in
the status, and the rest of it still shows."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from mlanet.nodes.local.federation import Federation
from mlanet.nodes.runtime.node import Node
from tests.integration.kit import config, running
from tests.integration.test_operator import operator_url, status_cli, tune
from tests.polling import eventually
from tests.stores import POSTGRES_URL


def _replicas(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    section = document["replicas"]
    assert section is not None, "no replicas section"
    return {row["name"]: row for row in section["replicas"]}


def _unhealthy_alerts(document: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (alert["severity"], alert["subject"])
        for alert in document["alerts"]
        if alert["code"] == "replica_unhealthy"
    ]


def _replica_gauge(exposition: str) -> dict[str, float]:
    return {
        sample.labels["state"]: sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "mlanet_replicas"
    }


def _die_without_a_word(fed: Federation, name: str) -> None:
    """What the table holds of a replica killed while it ran: still ``running``, its heartbeat
    an hour old (no backends listed: nobody's session is ended for it)."""
    database = config(fed, "casc").database
    assert database is not None
    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as conn:
        statement = sql.SQL(
            "UPDATE {}.replicas SET state='running', heartbeat_at=heartbeat_at - 3600,"
            " backends='' WHERE name=%s"
        ).format(sql.Identifier(database.schema_name))
        updated = conn.execute(statement, (name,)).rowcount
    assert updated == 1


async def _log_in(fed: Federation, client: httpx.AsyncClient, url: str) -> None:
    secret = (fed.root / "operator.secret").read_text(encoding="ascii").strip()
    reply = await client.post(
        "/login", data={"password": secret}, headers={"Origin": url.rstrip("/")}
    )
    assert reply.status_code == 303


async def test_status_dashboard_and_metrics_show_each_replica_and_its_health(
    fed_pg: Federation,
) -> None:
    fed = fed_pg
    tune(fed, "casc", "poll_seconds = 0.5\n")
    path = fed.config_path("casc")
    async with running(fed) as nodes:
        first: Node = await nodes.start_replica("casc", "casc-a")
        await nodes.start_replica("casc", "casc-b")

        # --- both running: healthy, no alert -------------------------------------------------
        code, document = await status_cli(path)
        rows = _replicas(document)
        assert set(rows) == {"casc-a", "casc-b"}
        for row in rows.values():
            assert (row["state"], row["healthy"]) == ("running", True)
            assert row["pid"] > 0
            assert row["host"]
            assert row["heartbeat_age_seconds"] <= document["replicas"]["lease_seconds"]
        assert document["replicas"]["problem"] is None
        assert _unhealthy_alerts(document) == []
        # the local federation keeps its networks in one database every role may connect to,
        # as its superuser: the operator is told another network could reach these claims
        exposure = document["replicas"]["exposure"]
        assert any("(CONNECT is granted to PUBLIC)" in finding for finding in exposure), exposure
        assert any("superuser" in finding for finding in exposure), exposure
        assert [a["severity"] for a in document["alerts"] if a["code"] == "database_shared"] == [
            "warning"
        ]

        # --- the dashboard of one of them shows both, and so do its gauges ------------------
        url = operator_url(first)
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:

            async def both_running() -> bool:
                gauge = _replica_gauge((await client.get("/metrics")).text)
                return gauge.get("running") == 2

            await eventually(both_running, within=30, what="mlanet_replicas{state=running} 2")
            gauge = _replica_gauge((await client.get("/metrics")).text)
            assert gauge == {"running": 2, "stale": 0, "fenced": 0, "stopped": 0}
            await _log_in(fed, client, url)
            shown = (await client.get("/status.json")).json()
            assert {name: row["healthy"] for name, row in _replicas(shown).items()} == {
                "casc-a": True,
                "casc-b": True,
            }
            assert "database_shared" in {alert["code"] for alert in shown["alerts"]}
            page = (await client.get("/")).text
            section = page.split('id="replicas">', 1)[1].split("</section>", 1)[0]
            assert "<td>casc-a</td>" in section
            assert "<td>casc-b</td>" in section
            assert section.count('<span class="badge healthy">healthy</span>') == 2

            # --- one stops: stopped, not an alarm ---------------------------------------------
            await nodes.stop("casc/casc-b")
            code, document = await status_cli(path)
            rows = _replicas(document)
            assert (rows["casc-b"]["state"], rows["casc-b"]["healthy"]) == ("stopped", False)
            assert (rows["casc-a"]["state"], rows["casc-a"]["healthy"]) == ("running", True)
            assert _unhealthy_alerts(document) == []

            # --- it died without a word instead: unhealthy, and the alert names it -----------
            _die_without_a_word(fed, "casc-b")
            code, document = await status_cli(path)
            rows = _replicas(document)
            # running by its row until casc-a's next heartbeat fences it
            assert rows["casc-b"]["state"] in ("running", "fenced")
            assert rows["casc-b"]["healthy"] is False
            assert rows["casc-b"]["heartbeat_age_seconds"] >= 3600
            assert rows["casc-a"]["healthy"] is True
            assert _unhealthy_alerts(document) == [("warning", "casc-b")]
            assert code != 0  # a warning at least: a monitoring check sees it

            async def gauge_unhealthy() -> bool:
                gauge = _replica_gauge((await client.get("/metrics")).text)
                return gauge.get("stale", 0) + gauge.get("fenced", 0) == 1

            await eventually(gauge_unhealthy, within=30, what="casc-b stale or fenced")
            shown = (await client.get("/status.json")).json()
            assert ("warning", "casc-b") in _unhealthy_alerts(shown)

        # the text says it too
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mlanet",
            "status",
            "--config",
            str(path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        text = out.decode()
        assert "REPLICAS: 1 of 2 healthy, 0 stopped" in text, text + err.decode()
        assert "replica_unhealthy" in text
        assert "Traceback" not in text + err.decode()


async def test_a_database_out_of_reach_is_one_line_and_the_rest_of_the_status_shows(
    fed_pg: Federation,
) -> None:
    fed = fed_pg
    text = fed.config_path("casc").read_text(encoding="utf-8")
    assert "127.0.0.1:5432/" in text
    nowhere = fed.config_path("casc").with_name("casc-nowhere.toml")  # its relative paths hold
    nowhere.write_text(text.replace("127.0.0.1:5432/", "127.0.0.1:1/"), encoding="utf-8")
    async with running(fed) as nodes:
        await nodes.start_replica("casc", "casc-a")  # its queues are there, and consumed
        _, document = await status_cli(nowhere)
    assert document["replicas"]["replicas"] == []
    problem = document["replicas"]["problem"]
    assert problem.startswith("the database does not answer ("), problem
    assert "\n" not in problem
    # the broker's side of the status is all there
    assert {queue["name"] for queue in document["queues"]} >= {"mlanet.submit"}
    assert document["node_running"] is True
    assert {link["peer"] for link in document["links"]} == set(fed.peers("casc"))
    assert document["expiry"]["directory_version"] >= 1
    assert any("state" in note for note in document["unavailable"])  # what cannot be read
