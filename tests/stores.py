"""Both stores the node's state can live in, for tests: SQLite (the embedded default) and
PostgreSQL (``[database]``), the server on this machine (``scripts/setup.sh`` makes sure it
answers; ``MLANET_TEST_POSTGRES`` names another). Each PostgreSQL use gets a schema of its own,
dropped at its end. A test run without PostgreSQL fails with how to start it, never skips."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator

import psycopg
import pytest

from mlanet.nodes.config import DatabaseConfig

__all__ = ["POSTGRES_URL", "STORES", "database", "drop_schema", "postgres_schema"]

POSTGRES_URL = os.environ.get(
    "MLANET_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
STORES = ("sqlite", "postgresql")
_HOW = "PostgreSQL must answer at " + POSTGRES_URL + ": run ./scripts/setup.sh"


def drop_schema(name: str) -> None:
    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@contextlib.contextmanager
def postgres_schema(prefix: str = "t") -> Iterator[DatabaseConfig]:
    """A fresh schema on the test server (created by the first store that opens it)."""
    name = f"{prefix}_{secrets.token_hex(5)}"
    try:
        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5):
            pass
    except psycopg.Error as exc:
        pytest.fail(f"{_HOW} ({type(exc).__name__})")
    try:
        yield DatabaseConfig(url=POSTGRES_URL, schema_name=name, replica_lease_seconds=4)
    finally:
        drop_schema(name)


@pytest.fixture(params=STORES)
def database(request: pytest.FixtureRequest) -> Iterator[DatabaseConfig | None]:
    """None (SQLite in the test's folder) or a PostgreSQL schema of the test's own."""
    if request.param == "sqlite":
        yield None
        return
    with postgres_schema() as config:
        yield config
