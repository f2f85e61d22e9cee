"""Fixtures of the integration tests: a fresh federation (vhosts, users, keys) per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mlanet.nodes.local.federation import Federation, build, provision, teardown
from tests.integration.kit import ADMIN


@pytest.fixture
async def fed(tmp_path: Path) -> AsyncIterator[Federation]:
    """The five example networks under a unique prefix; removed from the broker afterwards."""
    federation = build(
        tmp_path / "federation",
        prefix="t" + uuid.uuid4().hex[:10],
        receipts={"retry_after_seconds": 3.0, "check_every_seconds": 0.5},
    )
    try:
        await provision(federation, ADMIN)  # inside: a half-provisioned federation is removed too
        yield federation
    finally:
        await teardown(federation, ADMIN)
