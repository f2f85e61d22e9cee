"""A directory version is used only once the coordinator's node confirmed it (PROTOCOL.md 14.6).

A ``mlanet directory ...`` command that cannot reach the coordinator's broker, or that meets a
stalled one, ends within its deadline and uses nothing up: the next command signs the same
version number. One whose publish went out without a confirm keeps that version pending and
hands the same bytes over again before it signs anything new, so nodes see consecutive versions
and never two documents with one number. Everything runs on the real RabbitMQ; the unreachable
and stalled brokers are a closed port and a black-holed fault proxy, nothing shared is stopped.
"""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from mlanet.broker.management import Management
from mlanet.nodes.cli.app import app
from mlanet.nodes.directory.coordinator import ISSUED_FILE, PENDING_FILE
from mlanet.nodes.local.federation import Federation
from tests.battery.proxy import FaultProxy
from tests.integration.directory_kit import (
    all_hold,
    dfed,
    held_version,
    mlanet,
    quarantine_depth,
)
from tests.integration.kit import ADMIN, config, running

__all__ = ["dfed"]  # the fixture, imported for pytest

pytestmark = pytest.mark.timeout(300)

NODES = ("unodc", "seajust")  # the coordinator's node and its one peer: enough to see a version


async def _run(*args: str | Path) -> Result:
    """An ``mlanet`` command as typed, whatever its exit code."""
    return await asyncio.to_thread(
        CliRunner().invoke, app, [str(arg) for arg in args], catch_exceptions=False
    )


def _closed_port() -> int:
    """A local port nothing listens on (bound, then closed again)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _coordinator_config_on(fed: Federation, port: int, name: str) -> Path:
    """The coordinator's config, beside the original, with its own broker at ``port``."""
    original = fed.config_path("unodc")
    text = original.read_text(encoding="utf-8")
    changed = re.sub(r"(?m)^port = 5672$", f"port = {port}", text, count=1)
    assert changed != text
    path = original.with_name(name)
    path.write_text(changed, encoding="utf-8")
    return path


def _state(fed: Federation) -> Path:
    return config(fed, "unodc").state_dir


def _observers(fed: Federation, network: str, of: str) -> list[str]:
    from mlanet.nodes.directory.book import DirectoryBook

    entry = DirectoryBook.load(config(fed, network), persist=False).held.directory.network(of)
    assert entry is not None
    return list(entry.observers)


async def test_a_version_that_never_reached_the_broker_is_not_used_up(dfed: Federation) -> None:
    """The broker unreachable (a closed port) and stalled (a proxy that passes nothing): each
    command ends with its reason, records nothing, and the next command issues version 2."""
    fed = dfed
    change = ("directory", "membership", "--network", "seajust")
    async with running(fed, *NODES):
        closed = _coordinator_config_on(fed, _closed_port(), "closed.toml")
        refused = await _run(*change, "--add-observer", "JP", "--config", closed, "--timeout", "5")
        assert refused.exit_code == 1
        assert "version 2 was not published" in refused.output
        assert "signs version 2 again" in refused.output

        with FaultProxy("127.0.0.1", 5672, name="stalled-broker") as proxy:
            proxy.blackhole("both")  # connections open, nothing moves: a stalled broker
            stalled = _coordinator_config_on(fed, proxy.port, "stalled.toml")
            hung = await _run(
                *change, "--add-observer", "JP", "--config", stalled, "--timeout", "3"
            )
            assert proxy.accepted >= 1, "the command never reached the stalled broker"
        assert hung.exit_code == 1
        assert "version 2 was not published (nothing within 3 s)" in hung.output
        assert not (_state(fed) / PENDING_FILE).exists()
        assert not (_state(fed) / ISSUED_FILE).exists()

        published = await mlanet(
            *change, "--add-observer", "KR", "--config", fed.config_path("unodc")
        )
        assert "directory version 2 signed and published" in published.output
        await all_hold(fed, 2, NODES)
        assert _observers(fed, "seajust", "seajust") == ["KR"]  # the failed changes never came
        assert not (_state(fed) / PENDING_FILE).exists()
        for network in NODES:
            assert held_version(fed, network) == 2
            assert await quarantine_depth(fed, network) == 0, f"{network} refused a version"


async def test_a_version_sent_without_a_confirm_is_handed_over_again_before_the_next(
    dfed: Federation,
) -> None:
    """The publish goes out and the broker refuses it (the coordinator's node user may, for a
    moment, write nothing but the dead-letter exchange): version 2 stays pending; the next
    command hands version 2 over again, then issues version 3 on top of it. Nodes see 2 then
    3, and no version is ever refused (an equivocation would be)."""
    fed = dfed
    change = ("directory", "membership", "--network", "seajust", "--config")
    vhost, user = fed.vhost("unodc"), fed.user("unodc")
    async with running(fed, *NODES), Management(ADMIN, timeout=60) as management:
        granted = await management.permissions(vhost, user)
        assert granted is not None
        await management.put_permissions(
            vhost,
            user,
            configure=granted["configure"],
            write=r"^mlanet\.unroutable$",  # declaring mlanet.directory needs its DLX
            read=granted["read"],
        )
        try:
            refused = await _run(*change, fed.config_path("unodc"), "--add-observer", "JP")
        finally:
            await management.put_permissions(
                vhost,
                user,
                configure=granted["configure"],
                write=granted["write"],
                read=granted["read"],
            )
        assert refused.exit_code == 1
        assert "version 2 was handed over but not confirmed" in refused.output
        assert (_state(fed) / PENDING_FILE).exists()
        assert held_version(fed, "unodc") == 1

        after = await mlanet(*change, fed.config_path("unodc"), "--add-observer", "KR")
        assert (
            "directory version 2, left pending by an earlier command, is published" in after.output
        )
        assert "directory version 3 signed and published" in after.output
        await all_hold(fed, 3, NODES)
        assert _observers(fed, "seajust", "seajust") == ["JP", "KR"]
        assert not (_state(fed) / PENDING_FILE).exists()
        for network in NODES:
            assert await quarantine_depth(fed, network) == 0, f"{network} refused a version"


async def test_a_pending_version_the_node_already_holds_is_not_signed_again(
    dfed: Federation,
) -> None:
    """The confirm was lost after the node took the version (the state a crash between the
    broker's confirm and the record leaves: version 2 published, still marked pending). The next
    command never signs another version 2: it completes version 2 and goes on with version 3."""
    fed = dfed
    change = ("directory", "membership", "--network", "seajust", "--config")
    async with running(fed, *NODES):
        await mlanet(*change, fed.config_path("unodc"), "--add-observer", "JP")
        await all_hold(fed, 2, NODES)
        (_state(fed) / ISSUED_FILE).replace(_state(fed) / PENDING_FILE)

        after = await mlanet(*change, fed.config_path("unodc"), "--add-observer", "KR")
        assert (
            "directory version 2, left pending by an earlier command, is published" in after.output
        )
        assert "directory version 3 signed and published" in after.output
        await all_hold(fed, 3, NODES)
        assert _observers(fed, "seajust", "seajust") == ["JP", "KR"]
        assert not (_state(fed) / PENDING_FILE).exists()
        for network in NODES:
            assert await quarantine_depth(fed, network) == 0, f"{network} refused a version"
