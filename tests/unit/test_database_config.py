"""``[database]``: what a node's config may say about its PostgreSQL, how a local federation
writes it, and what a replica's config is."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from mlanet.broker import ConfigError
from mlanet.nodes.cli.app import app
from mlanet.nodes.config import DatabaseConfig, load_config
from mlanet.nodes.local.federation import build
from mlanet.nodes.runtime.replicas import replica_config


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://mlanet@db.example:5432/mlanet",
        "postgres://db.example/mlanet",
        "postgresql://mlanet@127.0.0.1:5432/postgres",
    ],
)
def test_a_url_without_password_is_taken(url: str) -> None:
    assert DatabaseConfig(url=url).url == url


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://mlanet:secret@db.example:5432/mlanet",  # a password in the config file
        "mysql://mlanet@db.example/mlanet",
        "postgresql://db.example",  # no database
        "postgresql://a@b@db.example/mlanet",
    ],
)
def test_a_url_with_a_password_or_of_another_kind_is_refused(url: str) -> None:
    with pytest.raises(ValidationError):
        DatabaseConfig(url=url)


def test_a_schema_name_is_a_plain_identifier() -> None:
    assert DatabaseConfig(url="postgresql://h/d", schema_name="casc_1").schema_name == "casc_1"
    for bad in ("Casc", "casc; DROP TABLE x", '"casc"', "1casc", ""):
        with pytest.raises(ValidationError):
            DatabaseConfig(url="postgresql://h/d", schema_name=bad)


def test_a_local_federation_gives_each_node_a_schema_of_its_own(tmp_path: Path) -> None:
    fed = build(
        tmp_path / "fed", prefix="t-db", database_url="postgresql://postgres@127.0.0.1:5432/x"
    )
    schemas = set()
    for network in fed.nodes:
        database = load_config(fed.config_path(network)).database
        assert database is not None
        assert database.url == "postgresql://postgres@127.0.0.1:5432/x"
        schemas.add(database.schema_name)
    assert schemas == {f"t_db_{network}" for network in fed.nodes}


def test_a_replica_keeps_its_own_files_in_a_folder_of_its_own(tmp_path: Path) -> None:
    with_db = build(tmp_path / "a", prefix="t-r", database_url="postgresql://h/d")
    config = load_config(with_db.config_path("casc"))
    replica = replica_config(config, "casc-2")
    assert replica.state_dir == config.state_dir / "replicas" / "casc-2"
    assert replica.database == config.database
    for bad in ("../casc", "casc 2", "", "a" * 64):
        with pytest.raises(ConfigError):
            replica_config(config, bad)
    without = build(tmp_path / "b", prefix="t-s")
    with pytest.raises(ConfigError, match=r"\[database\]"):
        replica_config(load_config(without.config_path("casc")), "casc-1")


def test_federation_init_refuses_a_database_url_with_a_password(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "federation",
            "init",
            "--dir",
            str(tmp_path / "fed"),
            "--database",
            "postgresql://postgres:secret@127.0.0.1:5432/postgres",
        ],
    )
    assert result.exit_code == 2
    assert "without a password" in result.output
    assert "secret" not in result.output
    assert not (tmp_path / "fed").exists()


def test_node_run_refuses_a_replica_without_a_database(tmp_path: Path) -> None:
    fed = build(tmp_path / "fed", prefix="t-n")
    result = CliRunner().invoke(
        app, ["node", "run", "--config", str(fed.config_path("casc")), "--replica", "casc-1"]
    )
    assert result.exit_code == 2
    assert "[database]" in result.output
