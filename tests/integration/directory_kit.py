"""Helpers of the directory integration tests: a federation that also removes the networks
that joined it, the ``mlanet`` commands run as an operator types them, and waits on the
version each node holds. Everything runs against the real RabbitMQ."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from mlanet.broker.management import Management
from mlanet.broker.peer_access import door_vhosts
from mlanet.nodes.cli.app import app
from mlanet.nodes.directory.book import DirectoryBook
from mlanet.nodes.directory.contact_points import vouched_users
from mlanet.nodes.local.federation import Federation, build, provision, teardown
from mlanet.nodes.state.store import open_node_store
from mlanet.schemas.submission import Submission
from tests.integration.kit import ADMIN, config, depth, drain, eventually


@pytest.fixture
async def dfed(tmp_path: Path) -> AsyncIterator[Federation]:
    """The five example networks and the coordinator's node; every node may grant new peers
    their inbox permission. Networks that join during a test are removed afterwards too."""
    federation = build(
        tmp_path / "federation",
        prefix="d" + uuid.uuid4().hex[:10],
        receipts={"retry_after_seconds": 3.0, "check_every_seconds": 0.5},
    )
    await provision(federation, ADMIN)
    try:
        yield federation
    finally:
        await teardown(federation, ADMIN)
        async with Management(ADMIN, timeout=60) as management:  # slow when the broker is busy
            for folder in federation.root.iterdir():
                if folder.is_dir() and folder.name not in federation.nodes:
                    vhost = federation.vhost(folder.name)
                    for door in (await door_vhosts(management, vhost)).values():
                        await management.delete_vhost(door)
                    await management.delete_vhost(vhost)
                    await management.delete_user(federation.user(folder.name))
                    await management.delete_user(federation.link_user(folder.name))
                    vouched = vouched_users(folder / "contact-points")
                    await management.delete_users([user.name for user in vouched])


async def mlanet(*args: str | Path) -> Result:
    """Run an ``mlanet`` command as typed (in a thread: the command runs its own event loop)."""
    result = await asyncio.to_thread(
        CliRunner().invoke, app, [str(arg) for arg in args], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return result


def held_version(fed: Federation, network: str) -> int:
    """The directory version the node of ``network`` holds (its state file)."""
    return DirectoryBook.load(config(fed, network), persist=False).version


async def all_hold(fed: Federation, version: int, networks: tuple[str, ...] | None = None) -> None:
    """Wait until every node of ``networks`` (default: all) holds ``version``."""

    async def check() -> bool:
        return all(held_version(fed, n) >= version for n in networks or fed.nodes)

    await eventually(check, within=90)


def request(
    sender: str,
    *,
    country: str | None = None,
    contact_point: str | None = None,
    kind: str = "facilitation_request",
    payload: dict[str, Any] | None = None,
    members_only: bool = False,
) -> Submission:
    country = country or (contact_point[:2].upper() if contact_point else None)
    assert country is not None
    return Submission.model_validate(
        {
            "message_id": str(uuid.uuid4()),
            "kind": kind,
            "sender": sender,
            "destination": {"country": country, "contact_point": contact_point},
            "members_only": True if members_only else None,
            "payload": payload
            or {
                "case_ref": "KH-MLA-2020-0042",
                "requesting_country": sender[:2].upper(),
                "requested_country": country,
                "offence_categories": ["drug_trafficking"],
                "measures_sought": ["evidence"],
                "languages": ["en"],
                "summary": "Test request: no real case content.",
            },
        }
    )


def notice(sender: str, country: str, **options: Any) -> Submission:
    return request(
        sender,
        country=country,
        kind="notice",
        payload={"topic": "plenary", "title": "Annual plenary"},
        **options,
    )


def events(fed: Federation, network: str, message_id: str) -> list[tuple[str, str]]:
    store = open_node_store(config(fed, network))
    try:
        return [(e.event, e.detail) for e in store.events(message_id)]
    finally:
        store.close()


async def quarantined(fed: Federation, network: str) -> list[str]:
    """Take the quarantine of ``network``: the reason of each refused message."""
    return [d.headers["x-mlanet-reason"] for d in await drain(fed, network, "mlanet.quarantine")]


async def quarantine_depth(fed: Federation, network: str) -> int:
    return await depth(fed, network, "mlanet.quarantine")
