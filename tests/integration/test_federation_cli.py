"""`mlanet federation init`, `down` and `remove` on the real broker: every node of the
federation, the coordinator's included, is provisioned and named with its start command; down
removes it, reading the prefix from the folder (two federations on one broker never remove
each other's); remove takes a network that joined off the broker."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
from typer.testing import CliRunner

from mlanet.broker.management import Management
from mlanet.broker.peer_access import PEER_TAG
from mlanet.nodes.cli.app import app
from mlanet.nodes.local.federation import COORDINATOR, EXAMPLE_NETWORKS, build, provision, teardown
from tests.integration.kit import ADMIN


def _vhosts(prefix: str) -> set[str]:
    """Every vhost of the federation: its networks' and their doors."""
    found = httpx.get("http://127.0.0.1:15672/api/vhosts", auth=("guest", "guest"), timeout=60)
    return {v["name"] for v in found.json() if v["name"].startswith(prefix + "-")}


def _networks(prefix: str) -> set[str]:
    """The federation's networks' own vhosts (not their doors)."""
    return {name for name in _vhosts(prefix) if ":door:" not in name}


def test_init_names_every_node_and_down_removes_them(tmp_path: Path) -> None:
    prefix = "c" + uuid.uuid4().hex[:10]
    folder = tmp_path / "federation"
    runner = CliRunner()
    try:
        result = runner.invoke(
            app,
            [
                "federation",
                "init",
                "--dir",
                str(folder),
                "--prefix",
                prefix,
                "--operator-port",
                "0",
            ],
        )
        assert result.exit_code == 0, result.output
        started = {line.split(":")[0] for line in result.output.splitlines() if "node run" in line}
        assert started == {*EXAMPLE_NETWORKS, COORDINATOR}
        assert _networks(prefix) == {f"{prefix}-{n}" for n in started}
    finally:
        result = runner.invoke(
            app, ["federation", "down", "--dir", str(folder), "--prefix", prefix]
        )
    assert result.exit_code == 0, result.output
    assert _vhosts(prefix) == set()


def _users(prefix: str) -> set[str]:
    found = httpx.get("http://127.0.0.1:15672/api/users", auth=("guest", "guest"), timeout=60)
    return {u["name"] for u in found.json() if u["name"].startswith(prefix + "-")}


def test_two_federations_on_one_broker_each_go_down_alone(tmp_path: Path) -> None:
    """Two people on one broker: each folder records its own prefix, down reads it (no
    --prefix typed) and removes that federation's vhosts and users only."""
    runner = CliRunner()
    mine, theirs = "c" + uuid.uuid4().hex[:10], "c" + uuid.uuid4().hex[:10]
    folders = {mine: tmp_path / "mine", theirs: tmp_path / "theirs"}
    try:
        for prefix, folder in folders.items():
            made = runner.invoke(
                app,
                ["federation", "init", "--dir", str(folder), "--prefix", prefix,
                 "--operator-port", "0"],
            )  # fmt: skip
            assert made.exit_code == 0, made.output
            assert f"mlanet federation down --dir {folder}" in made.output
            assert "unodc-directory.1.pub" in made.output
        assert len(_networks(mine)) == len(_networks(theirs)) == 6
        down = runner.invoke(app, ["federation", "down", "--dir", str(folders[mine])])
        assert down.exit_code == 0, down.output
        assert f"prefix {mine}" in down.output
        assert _vhosts(mine) == set()
        assert _users(mine) == set()
        assert len(_networks(theirs)) == 6  # untouched
        # theirs untouched: a node user and a link user per network, and the contact points'
        assert len({u for u in _users(theirs) if "-cp-" not in u}) == 12
        assert any("-cp-" in u for u in _users(theirs))
    finally:
        for folder in folders.values():
            runner.invoke(app, ["federation", "down", "--dir", str(folder)])
    assert _vhosts(theirs) == set()


async def test_a_network_that_joined_is_taken_off_the_broker(tmp_path: Path) -> None:
    """mlanet init and directory provision put a network on the broker; its link user was made
    from a directory (tag mlanet-peer) and has its inbox permission at a peer. federation
    remove takes all three off, and keeps an account that serves something else."""
    prefix = "c" + uuid.uuid4().hex[:10]
    fed = build(tmp_path / "federation", prefix=prefix)
    folder = tmp_path / "pilon"
    runner = CliRunner()
    await provision(fed, ADMIN)
    try:
        made = runner.invoke(
            app,
            [
                "init", "--dir", str(folder), "--network", "pilon",
                "--name", "Pacific Islands Law Officers Network", "--member", "FJ",
                "--coordinator-key", str(fed.coordinator_pub()),
                "--vhost", f"{prefix}-pilon", "--user", f"{prefix}-pilon", "--link", "seajust",
                "--allow-plaintext-links",
            ],
        )  # fmt: skip
        assert made.exit_code == 0, made.output
        provisioned = await asyncio.to_thread(
            runner.invoke,
            app,
            ["directory", "provision", "--config", str(folder / "node.toml"),
             "--admin-user", ADMIN.user],
        )  # fmt: skip
        assert provisioned.exit_code == 0, provisioned.output
        link_user = f"{prefix}-pilon-link"
        async with Management(ADMIN) as management:  # as SEAJust's provision does for it
            await management.put_user(link_user, "a throwaway password", PEER_TAG)
            await management.put_permissions(
                fed.vhost("seajust"), link_user, configure="", write="^x$", read=""
            )
        assert f"{prefix}-pilon" in _vhosts(prefix)
        removed = await asyncio.to_thread(
            runner.invoke, app, ["federation", "remove", "--config", str(folder / "node.toml")]
        )
        assert removed.exit_code == 0, removed.output
        assert f"vhost {prefix}-pilon removed" in removed.output
        assert f"user {prefix}-pilon removed" in removed.output
        assert f"link user {link_user} removed" in removed.output
        assert not {v for v in _vhosts(prefix) if v.startswith(f"{prefix}-pilon")}  # doors too
        assert {f"{prefix}-pilon", link_user}.isdisjoint(_users(prefix))
        assert len(_networks(prefix)) == 6  # the federation itself is untouched

        async with Management(ADMIN) as management:  # an account made for something else
            await management.put_user(link_user, "a throwaway password", "monitoring")
        again = await asyncio.to_thread(
            runner.invoke, app, ["federation", "remove", "--config", str(folder / "node.toml")]
        )
        assert again.exit_code == 0, again.output
        assert "not on this broker" in again.output
        assert f"link user {link_user} kept" in again.output
        assert link_user in _users(prefix)
    finally:
        await teardown(fed, ADMIN)
        async with Management(ADMIN) as management:
            await management.delete_vhost(f"{prefix}-pilon")
            await management.delete_user(f"{prefix}-pilon")
            await management.delete_user(f"{prefix}-pilon-link")
