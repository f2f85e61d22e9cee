"""Case content at rest is owner-only (nodes/state/state_dir.py): the state folder is 0700 and its
databases, with the -wal and -shm files SQLite adds, 0600 whatever the umask; a node and the
commands refuse a folder other users may read, in one line that says what to run; the folders
`mlanet federation init` and `mlanet init` write pass."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mlanet.broker import ConfigError, generate_key_files, load_signing_key
from mlanet.nodes.cli.app import app
from mlanet.nodes.cli.contact import ARCHIVE_FILE, open_archive
from mlanet.nodes.config import load_config
from mlanet.nodes.directory.contact_points import Credentials
from mlanet.nodes.local.federation import build
from mlanet.nodes.state.audit import AUDIT_FILE, AuditLog
from mlanet.nodes.state.quarantine_store import QuarantineStore
from mlanet.nodes.state.schema import open_state
from mlanet.nodes.state.state_dir import secure
from mlanet.nodes.state.store import Store


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_state_database_and_its_wal_and_shm_are_owner_only_whatever_the_umask(
    tmp_path: Path,
) -> None:
    """The files the review read as another user: node.sqlite3 (outbox payloads), inbox.sqlite3 (the
    contact points' archive), the journal in node.sqlite3, and their -wal and -shm files (which
    SQLite creates later), written here with the most permissive umask."""
    (key_path, _) = generate_key_files(tmp_path / "keys", "casc", "ed25519:1")
    state = tmp_path / "state"
    with umask(0):
        store = Store(state / "node.sqlite3")
        store.outbox_add(
            message_id="m-1",
            kind="facilitation_request",
            sender="kh-cp-1",
            destination="UZ",
            content_sha256="0" * 64,
            wire=b"signed bytes with case content",
            next_attempt=0.0,
        )
        archive = Store(state / ARCHIVE_FILE)
        archive.inbox_add("uz-cp-1", "seajust", "m-2", "0" * 64, "facilitation_request", b"x")
        audit = AuditLog(state / AUDIT_FILE, load_signing_key(key_path))
        audit.append("delivered", {"message_id": "m-2"})
        try:
            written = sorted(p.name for p in state.iterdir())
            assert {"node.sqlite3-wal", "node.sqlite3-shm", "inbox.sqlite3-wal"} <= set(written)
            assert {name: mode(state / name) for name in written} == dict.fromkeys(written, 0o600)
            assert mode(state) == 0o700
        finally:
            store.close()
            archive.close()
            audit.close()


def test_a_state_folder_others_can_read_is_refused_with_what_to_run(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o755)
    with pytest.raises(ConfigError) as refused:
        secure(state)
    assert str(refused.value) == (
        f"the state folder {state} is open to other users (mode 0755): run chmod 700 {state}"
    )
    state.chmod(0o711)  # others may not list it, but may open a file whose name they know
    with pytest.raises(ConfigError, match="chmod 700"):
        Store(state / "node.sqlite3")
    assert not (state / "node.sqlite3").exists()  # refused before anything was written


def test_databases_others_can_read_are_refused_even_in_a_closed_folder(tmp_path: Path) -> None:
    """An upgrade: a folder fixed by hand, its files still 0644 as the older version left them."""
    state = tmp_path / "state"
    Store(state / "node.sqlite3").close()
    (state / "node.sqlite3").chmod(0o644)
    state.chmod(0o755)
    with pytest.raises(ConfigError) as refused:
        AuditLog(state / AUDIT_FILE, readonly=True)
    assert str(refused.value) == (
        f"the state folder {state} holds files other users can read (node.sqlite3):"
        f" run chmod -R go= {state}"
    )
    subprocess.run(["chmod", "-R", "go=", state], check=True)  # what the refusal says to run
    assert secure(state) == state


def test_a_state_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test gives the folder to another user: run it as root")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 65534, 65534)
    with pytest.raises(ConfigError, match="belongs to another user"):
        secure(state)


def test_a_node_refuses_to_start_on_an_open_state_folder_in_one_line(tmp_path: Path) -> None:
    fed = build(tmp_path / "federation", prefix="zz")
    state = load_config(fed.config_path("casc")).state_dir
    state.chmod(0o755)
    run = subprocess.run(
        [sys.executable, "-m", "mlanet", "node", "run", "--config", fed.config_path("casc")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr == (
        f"mlanet: the state folder {state} is open to other users (mode 0755):"
        f" run chmod 700 {state}\n"
    )
    assert list(state.iterdir()) == []  # nothing read or written before the check


def test_the_folders_init_writes_pass(tmp_path: Path) -> None:
    """`mlanet federation init` (its files: mlanet.nodes.local.federation.build) and `mlanet init`
    write
    each node's state folder owner-only, with the default umask."""
    with umask(0o022):
        fed = build(tmp_path / "federation", prefix="zz")
        result = CliRunner().invoke(
            app,
            [
                "init",
                "--dir", str(tmp_path / "pilon"),
                "--network", "pilon",
                "--name", "Pacific Islands Law Officers Network",
                "--member", "FJ",
                "--coordinator-key", str(fed.coordinator_pub()),
                "--vhost", "pilon", "--user", "pilon", "--link", "seajust",
            ],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    paths = [fed.config_path(network) for network in fed.nodes]
    for path in [*paths, tmp_path / "pilon" / "node.toml"]:
        state = load_config(path).state_dir
        assert mode(state) == 0o700, path
        assert secure(state) == state
    # a contact point's archive is in its own credentials folder, owner-only too
    folder = fed.credentials("kh-cp-1")
    assert mode(folder) == 0o700
    open_archive(load_config(fed.config_path("seajust")), Credentials.load(folder)).close()
    assert mode(folder / ARCHIVE_FILE) == 0o600


def test_commands_opening_a_new_state_file_at_once_all_open_it(tmp_path: Path) -> None:
    """Two `mlanet inbox` at once on a new archive: switching a new file to WAL takes a lock
    SQLite does not wait for, and one of them used to fail with "database is locked"; now each
    of several openers at once gets the database (the node's state and the quarantine's)."""
    secure(tmp_path)
    openers: dict[str, Any] = {"node.sqlite3": open_state, "quarantine.sqlite3": QuarantineStore}
    failures: list[BaseException] = []
    for round_ in range(15):
        for name, open_it in openers.items():
            path = tmp_path / f"{round_}-{name}"
            start = threading.Barrier(3)

            def one(path: Path = path, open_it: Any = open_it, start: Any = start) -> None:
                start.wait()
                try:
                    open_it(path).close()
                except BaseException as exc:
                    failures.append(exc)

            threads = [threading.Thread(target=one) for _ in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            with contextlib.closing(sqlite3.connect(path)) as db:
                assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert failures == []
