"""Operators are told, not left to find out, on the real RabbitMQ: a peer whose broker takes
our messages while its node is stopped is ``peer_silent`` long before receipts are an hour
overdue; a refused message and an own message with no route are alerts (``mlanet status`` never
says "ALERTS: none" over them); the counters, the dashboard's flow and the directory's expiry
are the same after a restart; a dashboard password set while the node runs works at once."""

from __future__ import annotations

import asyncio
import sys
import uuid
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from mlanet.nodes.cli.contact import facilitation_request, submit
from mlanet.nodes.directory.book import DirectoryBook
from mlanet.nodes.local.federation import Federation
from mlanet.nodes.operator.status import NodeStatus
from mlanet.nodes.runtime.node import Node
from tests.integration.kit import config, credentials, eventually, inject, outbox_state, running
from tests.integration.test_operator import status_cli, tune


def _alerts(node: Node) -> set[tuple[str, str]]:
    assert node.operator is not None
    status: NodeStatus | None = node.operator.status
    return set() if status is None else {(a.code, a.subject) for a in status.alerts}


def _link(node: Node, peer: str) -> Any:
    assert node.operator is not None
    assert node.operator.status is not None
    return next(link for link in node.operator.status.links if link.peer == peer)


async def test_a_peer_whose_broker_accepts_while_its_node_is_stopped_is_peer_silent(
    fed: Federation,
) -> None:
    """CASC's node stops; its broker still takes SEAJust's request (the link stays up, as it
    did before, when nothing was said for an hour). SEAJust says peer_silent for CASC once no
    receipt came for peer_silent_seconds, and stops saying it once CASC's node is back and the
    receipt arrives."""
    tune(fed, "seajust", "poll_seconds = 0.5\n", "peer_silent_seconds = 3\n")
    async with running(fed, "seajust", "casc") as nodes:
        await nodes.stop("casc")  # its queues stay on its broker, and take what comes
        message = facilitation_request("kh-cp-1", "UZ")
        await submit(config(fed, "seajust"), credentials(fed, message.sender), message)
        seajust = nodes.nodes["seajust"]

        async def silent() -> bool:
            return ("peer_silent", "casc") in _alerts(seajust)

        await eventually(silent, within=90)
        link = _link(seajust, "casc")
        assert link.state == "up"  # the broker takes everything: the link itself is fine
        assert link.backlog == 0
        assert link.unanswered == 1
        assert ("link_down", "casc") not in _alerts(seajust)
        code, document = await status_cli(fed.config_path("seajust"))
        assert code == 1  # a warning
        assert ("peer_silent", "casc") in {(a["code"], a["subject"]) for a in document["alerts"]}
        assert outbox_state(fed, "seajust", message.message_id) == "forwarded"

        await nodes.start("casc")

        async def answered() -> bool:
            # the link view and the alerts are of the node's last poll, which may predate the
            # receipt: wait for one that follows it
            delivered = outbox_state(fed, "seajust", message.message_id) == "delivered"
            return (
                delivered
                and ("peer_silent", "casc") not in _alerts(seajust)
                and _link(seajust, "casc").unanswered_since is None
            )

        await eventually(answered, within=90)


async def test_a_refused_message_and_an_own_message_with_no_route_are_alerts(
    fed: Federation,
) -> None:
    """One message refused into the quarantine and one own message no network serves: mlanet
    status exits 1 and names both (it said "ALERTS: none" for the first and nothing for the
    second before)."""
    tune(fed, "seajust", "poll_seconds = 0.5\n")
    async with running(fed, "seajust"):
        await inject(fed, "seajust", "casc", b"{not json at all")
        lost = facilitation_request("kh-cp-1", "US")  # no network of the federation serves it
        await submit(config(fed, "seajust"), credentials(fed, lost.sender), lost)

        async def failed() -> bool:
            return outbox_state(fed, "seajust", lost.message_id) == "failed"

        await eventually(failed, within=60)
        seen: dict[str, Any] = {}

        async def both() -> bool:
            seen["code"], seen["document"] = await status_cli(fed.config_path("seajust"))
            codes = {a["code"] for a in seen["document"]["alerts"]}
            return {"quarantine_depth", "own_failed"} <= codes

        await eventually(both, within=60, every=1.0)
        assert seen["code"] == 1
        assert seen["document"]["receipts"]["failed_recent"] == 1
        text = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mlanet", "status", "--config", str(fed.config_path("seajust")),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await text.communicate()
    shown = out.decode()
    assert "ALERTS: none" not in shown
    assert "quarantine_depth" in shown
    assert "own_failed" in shown
    assert "mlanet quarantine list" in shown


def _counters(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
        if (s.name.startswith("mlanet_") and s.name.endswith("_total"))
        or s.name == "mlanet_receipt_wait_seconds_count"
    }


async def test_counters_flow_and_directory_expiry_are_the_same_after_a_restart(
    fed: Federation,
) -> None:
    """A delivered request and a refused message, then SEAJust's node restarts: /metrics counts
    them again (from the audit trail, not from zero), the dashboard's flow still shows them,
    and the directory's expiry metric is the moment the node fails closed."""
    tune(fed, "seajust", "poll_seconds = 0.5\n")
    canary = f"CANARY-{uuid.uuid4().hex}"
    message = facilitation_request("kh-cp-1", "UZ", summary=canary)
    async with running(fed, "seajust", "casc") as nodes:
        await submit(config(fed, "seajust"), credentials(fed, message.sender), message)
        await inject(fed, "seajust", "casc", b"{not json at all")

        async def receipted() -> bool:
            return outbox_state(fed, "seajust", message.message_id) == "delivered"

        await eventually(receipted, within=60)
        seajust = nodes.nodes["seajust"]
        assert seajust.operator is not None
        assert seajust.operator.url is not None
        async with httpx.AsyncClient(base_url=seajust.operator.url, timeout=10) as client:
            before = _counters((await client.get("/metrics")).text)
        events_before = {
            (e.event, e.network, e.message_id) for e in seajust.operator.flow.recent(500)
        }

        await nodes.stop("seajust")
        await nodes.start("seajust")
        seajust = nodes.nodes["seajust"]
        assert seajust.operator is not None
        assert seajust.operator.url is not None
        async with httpx.AsyncClient(base_url=seajust.operator.url, timeout=10) as client:
            exposition = (await client.get("/metrics")).text
        after = _counters(exposition)
        events_after = {
            (e.event, e.network, e.message_id) for e in seajust.operator.flow.recent(500)
        }
        expires = DirectoryBook.load(config(fed, "seajust"), persist=False).expires_at()

    submitted = ("mlanet_messages_submitted_total", (("kind", "facilitation_request"),))
    refused = ("mlanet_messages_quarantined_total", (("reason", "invalid_json"),))
    receipts = ("mlanet_receipts_received_total", ())
    assert (before[submitted], before[refused], before[receipts]) == (1, 1, 1)
    for name in (submitted, refused, receipts):
        assert after[name] == before[name], name  # not from zero, and nothing counted twice
    for name, value in before.items():
        assert after.get(name, 0) >= value, name  # the restart only adds (its announcements)
    assert {
        ("submitted", "local", message.message_id),
        ("forwarded", "casc", message.message_id),
        ("receipt", "casc", message.message_id),
        ("refused", "casc", "-"),
    } <= events_after
    assert events_before <= events_after
    stale = next(
        s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
        if s.name == "mlanet_directory_stale_timestamp_seconds"
    )
    assert stale == expires.timestamp()
    assert canary not in exposition


async def test_a_password_set_while_the_node_runs_opens_the_dashboard_without_a_restart(
    fed: Federation,
) -> None:
    """The node's password file does not exist yet: the login page says how to set one; then
    mlanet operator password writes it and the running node takes it at the next login."""
    password_file = fed.root / "seajust" / "dashboard.password"
    path = fed.config_path("seajust")
    path.write_text(
        path.read_text(encoding="utf-8").replace(
            'password_file = "../operator.password"', f'password_file = "{password_file.name}"'
        ),
        encoding="utf-8",
    )
    secret = "a long passphrase, set late"
    async with running(fed, "seajust") as nodes:
        node = nodes.nodes["seajust"]
        assert node.operator is not None
        assert node.operator.url is not None
        async with httpx.AsyncClient(base_url=node.operator.url, timeout=10) as client:
            page = await client.get("/login")
            assert "no operator password is set yet" in page.text
            assert "mlanet operator password" in page.text
            closed = await client.post("/login", data={"password": secret})
            assert closed.status_code == 403
            setting = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mlanet", "operator", "password",
                "--config", str(path), "--stdin",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, err = await setting.communicate((secret + "\n").encode())
            assert setting.returncode == 0, err.decode()
            assert password_file.exists()
            opened = await client.post("/login", data={"password": secret})
            assert opened.status_code == 303  # the same node process: no restart
            assert (await client.get("/status.json")).json()["network"] == "seajust"
