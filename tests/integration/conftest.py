"""Fixtures of the integration tests: a fresh federation (vhosts, users, keys) per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mlanet.nodes.local.federation import Federation, build, provision, teardown
from tests.integration.kit import ADMIN
from tests.stores import POSTGRES_URL

# MLANET_TEST_STORE=postgresql runs the integration tests with every node's state in PostgreSQL
# (the battery's long tier does: scripts/battery); the default is SQLite.
STORE = os.environ.get("MLANET_TEST_STORE", "sqlite")
if STORE not in ("sqlite", "postgresql"):
    raise pytest.UsageError(f"MLANET_TEST_STORE is sqlite or postgresql, not {STORE}")


@pytest.fixture
async def fed(tmp_path: Path) -> AsyncIterator[Federation]:
    """The five example networks under a unique prefix; removed from the broker afterwards."""
    federation = build(
        tmp_path / "federation",
        prefix="t" + uuid.uuid4().hex[:10],
        receipts={"retry_after_seconds": 3.0, "check_every_seconds": 0.5},
        database_url=POSTGRES_URL if STORE == "postgresql" else None,
    )
    try:
        await provision(federation, ADMIN)  # inside: a half-provisioned federation is removed too
        yield federation
    finally:
        await teardown(federation, ADMIN)


@pytest.fixture
async def fed_pg(tmp_path: Path) -> AsyncIterator[Federation]:
    """The five example networks with every node's state in PostgreSQL (so that a node can
    run as replicas); removed from the broker and the database afterwards."""
    federation = build(
        tmp_path / "federation",
        prefix="t" + uuid.uuid4().hex[:10],
        receipts={"retry_after_seconds": 3.0, "check_every_seconds": 0.5},
        database_url=POSTGRES_URL,
    )
    try:
        await provision(federation, ADMIN)
        yield federation
    finally:
        await teardown(federation, ADMIN)
