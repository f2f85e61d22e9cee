"""What another network could use against a network's replicas in PostgreSQL, found on the
real server (``database_exposure``): nothing for a database and a role of the network's own,
as OPERATIONS.md asks; each of a database every role may connect to, another network's mlanet
schema beside ours, and a superuser role is named. The ``database_shared`` alert that carries
them is in ``test_operator_replicas.py``."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest

from mlanet.nodes.config import DatabaseConfig
from mlanet.nodes.runtime.replicas import database_exposure
from mlanet.nodes.state.schema import open_postgres
from tests.stores import POSTGRES_URL


@pytest.fixture
def own_database() -> Iterator[tuple[str, str]]:
    """A database and a login role of one network's own: only that role may connect."""
    name = f"mlanet_own_{secrets.token_hex(4)}"
    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f"CREATE ROLE {name} LOGIN")
        admin.execute(f"CREATE DATABASE {name} OWNER {name}")
        admin.execute(f"REVOKE CONNECT ON DATABASE {name} FROM PUBLIC")
    try:
        yield name, POSTGRES_URL.rsplit("/", 1)[0].replace("postgres@", f"{name}@") + f"/{name}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            admin.execute(f"DROP ROLE IF EXISTS {name}")


def _exposure(url: str, schema: str = "casc") -> tuple[str, ...]:
    db = open_postgres(DatabaseConfig(url=url, schema_name=schema), purpose="test")
    try:
        return database_exposure(db)
    finally:
        db.close()


def test_a_database_and_role_of_the_networks_own_expose_nothing(
    own_database: tuple[str, str],
) -> None:
    _, url = own_database
    assert _exposure(url) == ()


def test_a_database_every_role_may_reach_and_a_second_network_in_it_are_named(
    own_database: tuple[str, str],
) -> None:
    name, url = own_database
    assert _exposure(url, "seajust") == ()  # another network's state, same role: the same
    found = _exposure(url)  # database now holds two networks
    assert len(found) == 1
    assert "also holds the state of 1 other mlanet schema(s) (seajust)" in found[0]
    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f"GRANT CONNECT ON DATABASE {name} TO PUBLIC")
    found = _exposure(url)
    assert any(
        f"every role on the server may connect to database {name}" in f
        and f"REVOKE CONNECT ON DATABASE {name} FROM PUBLIC" in f
        for f in found
    )


def test_a_superuser_role_is_named(own_database: tuple[str, str]) -> None:
    name, _ = own_database
    superuser = POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"  # the server's administrator
    found = _exposure(superuser)
    assert "the node's role is a superuser: it can end any session on the server" in found
