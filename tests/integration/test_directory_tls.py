"""The coordinator publishes a network's AMQPS endpoint and broker CA, and its own link CA, in the
signed directory (docs/PROTOCOL.md 14.7), against the real broker: the nodes apply the version,
``mlanet directory show`` prints them with their expiry, ``mlanet status`` shows when they stop
being trusted and warns (``tls_ca_expiry``) of one that ends within the warning period, each
change is a row of the coordinator node's journal, and a certificate no node could use is
refused by the command with its reason, nothing published."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner, Result

from mlanet.broker.tls import generate_ca, issue_server_certificate
from mlanet.nodes.cli.app import app
from mlanet.nodes.local.federation import Federation
from mlanet.nodes.state.audit import AuditLog
from tests.integration.directory_kit import all_hold, dfed, held_version, mlanet
from tests.integration.kit import config, running

__all__ = ["dfed"]

pytestmark = pytest.mark.timeout(300)


def _write(path: Path, certificate: object) -> Path:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))  # type: ignore[attr-defined]
    return path


async def _invoke(*args: str | Path) -> Result:
    """An ``mlanet`` command whose exit code the test reads (status exits non-zero on alerts)."""
    return await asyncio.to_thread(
        CliRunner().invoke, app, [str(arg) for arg in args], catch_exceptions=False
    )


async def test_a_directory_with_broker_and_link_cas_is_applied_and_shown(
    dfed: Federation, tmp_path: Path
) -> None:
    fed = dfed
    broker_ca = generate_ca("seajust broker CA")
    link_ends = datetime.now(UTC) + timedelta(days=3)  # within key_expiry_days (30)
    link_ca = generate_ca("unodc link CA", not_after=link_ends)
    broker_pem = _write(tmp_path / "seajust-ca.pem", broker_ca.certificate)
    link_pem = _write(tmp_path / "unodc-link-ca.pem", link_ca.certificate)
    coordinator = fed.config_path("unodc")
    async with running(fed, "unodc", "seajust", "casc"):
        await mlanet(
            "directory", "tls", "endpoints", "--config", coordinator, "--network", "seajust",
            "--endpoint", "127.0.0.1:5671=localhost", "--ca", broker_pem, "--ca-id", "seajust-ca-1",
        )  # fmt: skip
        await mlanet(
            "directory", "tls", "link-ca", "--config", coordinator,
            "--ca", link_pem, "--ca-id", "unodc-link-1",
        )  # fmt: skip
        await all_hold(fed, 3, ("unodc", "seajust", "casc"))

        # a server certificate is no CA: refused by the command, nothing signed or published
        server = issue_server_certificate(broker_ca, ["localhost"])
        leaf = _write(tmp_path / "server.pem", server.certificate)
        refused = await _invoke(
            "directory", "tls", "add-ca", "--config", coordinator, "--network", "seajust",
            "--ca", leaf, "--ca-id", "seajust-ca-2",
        )  # fmt: skip
        assert refused.exit_code == 2
        assert "tls_not_ca" in refused.output
        assert held_version(fed, "unodc") == 3

        shown = await mlanet("directory", "show", "--config", fed.config_path("casc"))
        assert "    amqps: 127.0.0.1:5671, server name localhost" in shown.output
        assert "    broker CA seajust-ca-1: valid, from " in shown.output
        assert "link CA unodc-link-1: valid, from " in shown.output
        assert "warning: link CA unodc-link-1 expires at " in shown.output

        status = await _invoke("status", "--config", fed.config_path("seajust"), "--json")
        assert status.stdout, status.output
        expiry = json.loads(status.stdout)["expiry"]
        broker_ends = broker_ca.certificate.not_valid_after_utc
        assert expiry["network_cas"]["seajust"] == broker_ends.isoformat().replace("+00:00", "Z")
        assert expiry["link_ca"] == link_ca.certificate.not_valid_after_utc.isoformat().replace(
            "+00:00", "Z"
        )
        alerts = json.loads(status.stdout)["alerts"]
        assert {"code": "tls_ca_expiry", "severity": "warning", "subject": ""} in [
            {k: a[k] for k in ("code", "severity", "subject")} for a in alerts
        ]
        text = await _invoke("status", "--config", fed.config_path("seajust"))
        assert "  our broker CA: trusted until " in text.stdout
        assert "  the coordinator's link CA: trusted until " in text.stdout

        # SEAJust's CA rotates: both listed, the old one retired when the overlap ends
        successor = _write(tmp_path / "seajust-ca-2.pem", generate_ca("seajust CA 2").certificate)
        await mlanet(
            "directory", "tls", "rotate-ca", "--config", coordinator, "--network", "seajust",
            "--ca", successor, "--ca-id", "seajust-ca-2", "--overlap", "7",
        )  # fmt: skip
        await all_hold(fed, 4, ("unodc", "seajust", "casc"))
        shown = await mlanet("directory", "show", "--config", fed.config_path("casc"))
        assert "    broker CA seajust-ca-1: valid, from " in shown.output
        assert ", retired " in shown.output
        assert "    broker CA seajust-ca-2: valid, from " in shown.output

    with AuditLog.of(config(fed, "unodc"), readonly=True) as journal:
        rows = [(r.event, r.meta) for r in journal.records()]
    changed = [
        (event, meta)
        for event, meta in rows
        if event in ("broker_endpoints_set", "link_ca_set", "broker_ca_rotated")
    ]
    assert [event for event, _ in changed] == [
        "broker_endpoints_set",
        "link_ca_set",
        "broker_ca_rotated",
    ]
    assert changed[0][1]["network"] == "seajust"
    assert changed[0][1]["version"] == 2
    assert changed[1][1]["ca_id"] == "unodc-link-1"
    assert changed[1][1]["operator"]
