"""What operators see of a running node, on the real RabbitMQ: ``mlanet status`` (text and
JSON, with and without the management API), the Prometheus metrics against the Grafana
dashboard, the dashboard's login rules, and the alerts for a link down with a backlog and for
messages stuck awaiting a receipt."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from mlanet.broker.management import Management
from mlanet.nodes.cli.contact import facilitation_request, submit
from mlanet.nodes.local.federation import Federation
from mlanet.nodes.operator.server import COOKIE
from mlanet.nodes.runtime.node import Node
from mlanet.schemas.submission import Submission
from tests.integration.kit import (
    ADMIN,
    config,
    credentials,
    eventually,
    inject,
    outbox_state,
    running,
)

GRAFANA = Path(__file__).parents[2] / "deploy" / "grafana" / "mlanet-node.json"


def tune(fed: Federation, network: str, operator: str = "", alerts: str = "") -> None:
    """Change a node's [operator] settings and alert thresholds in its config file."""
    path = fed.config_path(network)
    text = path.read_text(encoding="utf-8")
    assert "[operator]\n" in text
    text = text.replace("[operator]\n", f"[operator]\n{operator}", 1)
    if alerts:
        text += f"\n[operator.alerts]\n{alerts}"
    path.write_text(text, encoding="utf-8")


def request(
    sender: str, country: str, summary: str = "Test request: no real case content."
) -> Submission:
    return facilitation_request(sender, country, summary=summary)


async def status_cli(config_path: Path) -> tuple[int, dict[str, Any]]:
    """Run ``mlanet status --json`` as an operator would; (exit code, document)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mlanet",
        "status",
        "--config",
        str(config_path),
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    assert process.returncode in (0, 1, 3), err.decode(errors="replace")
    return process.returncode, json.loads(out)


async def until(check: Any, seen: dict[str, Any], within: float) -> None:
    """``eventually`` for CLI checks, saying what the status showed last when it fails."""
    try:
        await eventually(check, within=within, every=1.0)
    except AssertionError:
        document = seen.get("document", {})
        raise AssertionError(
            f"last status: links={document.get('links')} alerts={document.get('alerts')} "
            f"receipts={document.get('receipts')}"
        ) from None


def samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def operator_url(node: Node) -> str:
    assert node.operator is not None
    return node.operator.url


async def test_metrics_count_a_journey_and_the_grafana_dashboard_queries_only_exposed_metrics(
    fed: Federation,
) -> None:
    """A delivered journey, a refused message and a message stuck without its receipt show in
    the counters, histograms and alert gauges; every metric the Grafana dashboard queries is
    in the node's exposition; no case content is in it."""
    tune(fed, "seajust", "poll_seconds = 0.5\n", "receipt_overdue_seconds = 1\n")
    canary = f"CANARY-{uuid.uuid4().hex}"
    async with running(fed, "seajust", "casc") as nodes:
        seajust = config(fed, "seajust")
        delivered = request("kh-cp-1", "UZ", summary=canary)
        await submit(seajust, credentials(fed, delivered.sender), delivered)
        stuck = request("kh-cp-1", "GH", summary=canary)  # via CASC and EJN; EJN is not running
        await submit(seajust, credentials(fed, stuck.sender), stuck)
        await inject(fed, "seajust", "casc", b"{not json at all")

        async def receipt_back() -> bool:
            return outbox_state(fed, "seajust", delivered.message_id) == "delivered"

        await eventually(receipt_back, within=60)
        url = operator_url(nodes.nodes["seajust"])
        async with httpx.AsyncClient(timeout=10) as client:

            async def overdue_alert() -> bool:
                text = (await client.get(url + "metrics")).text
                return 'mlanet_alert_active{code="receipts_overdue",subject=""} 1.0' in text

            await eventually(overdue_alert, within=60)
            exposition = (await client.get(url + "metrics")).text
            casc = (await client.get(operator_url(nodes.nodes["casc"]) + "metrics")).text
    found = samples(exposition)
    assert found[("mlanet_messages_submitted_total", (("kind", "facilitation_request"),))] == 2
    assert found[("mlanet_messages_forwarded_total", (("peer", "casc"),))] == 2
    assert found[("mlanet_messages_received_total", (("peer", "casc"),))] >= 1  # the receipt
    assert found[("mlanet_receipts_received_total", ())] == 1
    assert found[("mlanet_receipt_wait_seconds_count", ())] == 1
    assert found[("mlanet_messages_quarantined_total", (("reason", "invalid_json"),))] == 1
    assert found[("mlanet_step_seconds_count", (("step", "verify"),))] >= 1
    assert found[("mlanet_step_seconds_count", (("step", "route"),))] >= 1
    assert found[("mlanet_receipts_awaiting_messages", ())] == 1
    assert found[("mlanet_receipts_overdue_messages", ())] == 1
    assert found[("mlanet_alerts", (("severity", "warning"),))] >= 1
    assert found[("mlanet_quarantine_messages", ())] == 1
    assert found[("mlanet_queue_consumers", (("queue", "mlanet.inbox"),))] == 1
    assert found[("mlanet_node_running", ())] == 1
    assert (
        samples(casc)[("mlanet_messages_delivered_total", (("kind", "facilitation_request"),))] == 1
    )
    assert canary not in exposition
    assert canary not in casc
    assert delivered.message_id not in exposition  # no message id in a label

    dashboard = json.loads(GRAFANA.read_text(encoding="utf-8"))
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bmlanet_[a-z0-9_]+", target["expr"])
    }
    queried |= set(re.findall(r"\bmlanet_[a-z0-9_]+", json.dumps(dashboard["templating"])))
    exposed = {name for name, _ in found}
    assert len(queried) >= 20
    assert sorted(queried - exposed) == []


@pytest.mark.timeout(300)  # the management API's figures lag by its statistics interval
async def test_status_shows_a_link_down_with_its_backlog_and_then_the_link_drained(
    fed: Federation,
) -> None:
    """CASC refuses SEAJust's link user: ``mlanet status`` says the link is down, how many
    messages wait and how old the oldest is, alerts (exit 3); once access is back the backlog
    drains, the link is up with a last success, and the receipt clears the waiting message."""
    tune(fed, "seajust", "poll_seconds = 0.5\n", "link_down_seconds = 0\nbacklog_messages = 1\n")
    casc_vhost, seajust_user = fed.door("casc", "seajust"), fed.link_user("seajust")
    async with Management(ADMIN) as management:
        granted = await management.permissions(casc_vhost, seajust_user)
        assert granted is not None
        await management.delete_permissions(casc_vhost, seajust_user)
    async with running(fed, "seajust") as nodes:
        message = request("kh-cp-1", "UZ")
        await submit(config(fed, "seajust"), credentials(fed, message.sender), message)
        path = fed.config_path("seajust")
        seen: dict[str, Any] = {}

        async def link_down() -> bool:
            code, document = await status_cli(path)
            links = {link["peer"]: link for link in document["links"]}
            seen.update(code=code, document=document)
            return (
                links["casc"]["state"] == "down"
                and links["casc"]["backlog"] >= 1  # the message (and its resends) wait
                and {("link_down", "casc"), ("link_backlog", "casc")}
                <= {(a["code"], a["subject"]) for a in document["alerts"]}
            )

        await until(link_down, seen, within=90)
        assert seen["code"] == 3
        casc_link = {link["peer"]: link for link in seen["document"]["links"]}["casc"]
        assert casc_link["shovel"] != "running"
        assert casc_link["oldest_waiting"] is not None
        assert seen["document"]["receipts"]["awaiting"] == 1
        text = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mlanet", "status", "--config", str(path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await text.communicate()
        assert text.returncode == 3
        assert re.search(r"CRITICAL +link_down +casc: link down", out.decode())
        assert re.search(r"casc +down +\S+ +\S+ +[1-9]", out.decode())

        async with Management(ADMIN) as management:
            await management.put_permissions(
                casc_vhost,
                seajust_user,
                configure=granted["configure"],
                write=granted["write"],
                read=granted["read"],
            )
        await nodes.start("casc")

        async def drained() -> bool:
            code, document = await status_cli(path)
            links = {link["peer"]: link for link in document["links"]}
            seen.update(code=code, document=document)
            return (
                links["casc"]["state"] == "up"
                and links["casc"]["backlog"] == 0
                and links["casc"]["last_success"] is not None
                and document["receipts"]["awaiting"] == 0
            )

        await until(drained, seen, within=120)
        assert [a for a in seen["document"]["alerts"] if a["subject"] == "casc"] == []
        assert outbox_state(fed, "seajust", message.message_id) == "delivered"


async def test_status_without_the_management_api_says_plainly_what_it_cannot_show(
    fed: Federation,
) -> None:
    """With the management API unreachable, status still shows the node's queue depths and
    consumers (from AMQP) and lists what it cannot show instead of guessing."""
    async with running(fed, "seajust"):
        original = fed.config_path("seajust")
        blind = original.with_name("node-without-management.toml")
        blind.write_text(
            re.sub(
                r'management_url = "[^"]*"',
                'management_url = "http://127.0.0.1:9"',
                original.read_text(encoding="utf-8"),
            ),
            encoding="utf-8",
        )
        _, document = await status_cli(blind)
    assert document["management"] is False
    assert any("management API not available" in note for note in document["unavailable"])
    queues = {queue["name"]: queue for queue in document["queues"]}
    assert queues["mlanet.inbox"]["consumers"] == 1
    assert queues["mlanet.inbox"]["rate_in"] is None
    assert document["node_running"] is True
    assert document["dashboard"].startswith("http://127.0.0.1:")  # from the node's snapshot
    assert document["expiry"]["directory_expiry_signed"] is True  # the coordinator's valid_until


async def test_dashboard_login_is_required_limited_and_refuses_cross_origin_forms(
    fed: Federation,
) -> None:
    """/metrics is open; the dashboard and its JSON need a login; a cross-origin login form is
    refused; wrong passwords are limited per minute; the session cookie is HttpOnly and
    SameSite=Strict and logging out ends it."""
    tune(fed, "seajust", "login_attempts_per_minute = 3\n")
    secret = (fed.root / "operator.secret").read_text(encoding="ascii").strip()
    async with running(fed, "seajust") as nodes:
        url = operator_url(nodes.nodes["seajust"])
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            assert (await client.get("/metrics")).status_code == 200
            assert (await client.get("/healthz")).json() == {"network": "seajust", "ready": True}
            first = await client.get("/")
            assert (first.status_code, first.headers["location"]) == (303, "/login")
            assert (await client.get("/status.json")).status_code == 401
            assert "script-src" not in first.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in first.headers["content-security-policy"]

            forged = await client.post(
                "/login", data={"password": secret}, headers={"Origin": "http://evil.example"}
            )
            assert forged.status_code == 403
            assert COOKIE not in forged.cookies

            good = await client.post(
                "/login", data={"password": secret}, headers={"Origin": url.rstrip("/")}
            )
            assert good.status_code == 303
            cookie = good.headers["set-cookie"]
            assert "HttpOnly" in cookie
            assert "SameSite=Strict" in cookie
            page = await client.get("/")
            assert page.status_code == 200
            assert "mlanet · seajust node" in page.text
            status = await client.get("/status.json")
            assert status.json()["network"] == "seajust"
            await client.post("/logout", headers={"Origin": url.rstrip("/")})
            assert (await client.get("/status.json")).status_code == 401

        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            huge = await client.post(
                "/login",
                content=b"password=" + b"x" * 100_000,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            assert huge.status_code == 413  # bounded request bodies; not a failed login
            assert "frame-ancestors 'none'" in huge.headers["content-security-policy"]
            missing = await client.get("/../../etc/passwd")
            assert missing.status_code == 404
            rebound = await client.get("/metrics", headers={"Host": "attacker.example:80"})
            assert rebound.status_code == 421  # DNS rebinding onto localhost gets nothing
            guesses = ["guess 0", "x" * 5000, "guess 2", "guess 3"]  # a long one is not hashed
            codes = [
                (await client.post("/login", data={"password": guess})).status_code
                for guess in guesses
            ]
            assert codes == [401, 401, 401, 429]
            limited = await client.post("/login", data={"password": secret})
            assert limited.status_code == 429  # even the right one, from a browser never seen
            assert 0 < int(limited.headers["retry-after"]) <= 20  # 60 s / 3, not a minute


async def test_parallel_wrong_passwords_are_limited_and_a_known_browser_still_logs_in(
    fed: Federation,
) -> None:
    """Sixty wrong passwords sent at once from one address: only the allowed three are hashed
    (401), the others get 429 at once (each attempt is counted before its password is hashed;
    before, all sixty were tried). On that shared address (everything here comes from
    127.0.0.1), the operator's browser, which logged in before, still logs in with the right
    password; a browser that never logged in waits a backoff, not a minute."""
    tune(fed, "seajust", "login_attempts_per_minute = 3\n")
    secret = (fed.root / "operator.secret").read_text(encoding="ascii").strip()
    async with running(fed, "seajust") as nodes:
        url = operator_url(nodes.nodes["seajust"])
        async with httpx.AsyncClient(base_url=url, timeout=60) as operator:
            first = await operator.post("/login", data={"password": secret})
            assert first.status_code == 303
            assert "mlanet_device" in operator.cookies  # this browser is known from now on
            await operator.post("/logout")

            async with httpx.AsyncClient(base_url=url, timeout=60) as attacker:
                replies = await asyncio.gather(
                    *(attacker.post("/login", data={"password": f"guess {i}"}) for i in range(60))
                )
                codes = sorted(reply.status_code for reply in replies)
                assert codes == [401] * 3 + [429] * 57
                assert all(
                    0 < int(r.headers["retry-after"]) <= 20 for r in replies if r.status_code == 429
                )
                assert (await attacker.post("/login", data={"password": secret})).status_code == 429

            again = await operator.post("/login", data={"password": secret})
            assert again.status_code == 303  # not locked out by the others' failures
            assert (await operator.get("/status.json")).status_code == 200


async def test_a_taken_operator_port_does_not_stop_the_node(fed: Federation) -> None:
    """The node's work matters more than its dashboard: with its port taken it still starts,
    says why there is no dashboard, and keeps status's snapshot fresh."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        text = fed.config_path("seajust").read_text(encoding="utf-8")
        fed.config_path("seajust").write_text(
            text.replace("[operator]\nport = 0\n", f"[operator]\nport = {port}\n", 1),
            encoding="utf-8",
        )
        with capture_logs() as logs:
            async with running(fed, "seajust") as nodes:
                node = nodes.nodes["seajust"]
                assert node.operator is not None
                assert node.operator.url is None
                _, document = await status_cli(fed.config_path("seajust"))
    assert [e["port"] for e in logs if e["event"] == "operator_http_not_started"] == [port]
    assert document["node_running"] is True
    assert document["dashboard"] is None
    assert {link["peer"] for link in document["links"]} >= {"casc"}


async def test_a_plaintext_link_is_refused_without_the_development_flag_and_marked_with_it(
    fed: Federation,
) -> None:
    """The local federation's brokers have no TLS. Without ``[link] allow_plaintext`` the node
    makes no link to such a peer: no shovel, a ``link_refused`` log line at start and a
    critical alert naming the peer and the reason. With the flag the link runs, the node says
    so at every start (``link_plaintext``), and status marks it."""
    path = fed.config_path("seajust")
    flagged = path.read_text(encoding="utf-8")
    assert "allow_plaintext = true" in flagged
    path.write_text(flagged.replace("allow_plaintext = true", "allow_plaintext = false"))
    with capture_logs() as logs:
        async with running(fed, "seajust"):
            async with Management(ADMIN) as management:
                shovels = await management.shovel_names(fed.vhost("seajust"))
            assert [s for s in shovels if s.startswith("mlanet-link-")] == []
            code, document = await status_cli(path)
    refused = [e for e in logs if e["event"] == "link_refused"]
    assert {e["peer"] for e in refused} == {"casc", "unodc"}
    assert {e["reason"] for e in refused} == {"link_plaintext_refused"}
    assert code == 3
    alerts = {(a["code"], a["subject"]): a for a in document["alerts"]}
    assert alerts[("link_refused", "casc")]["severity"] == "critical"
    assert alerts[("link_refused", "casc")]["text"].startswith("link_plaintext_refused: ")
    links = {link["peer"]: link for link in document["links"]}
    assert links["casc"]["transport"] == "refused"

    path.write_text(flagged)
    with capture_logs() as logs:
        async with running(fed, "seajust"):
            async with Management(ADMIN) as management:
                shovels = await management.shovel_names(fed.vhost("seajust"))
            assert "mlanet-link-casc" in shovels
            _, document = await status_cli(path)
    assert {e["peer"] for e in logs if e["event"] == "link_plaintext"} == {"casc", "unodc"}
    assert {link["peer"]: link["transport"] for link in document["links"]}["casc"] == "plaintext"
    assert not [a for a in document["alerts"] if a["code"] == "link_refused"]
