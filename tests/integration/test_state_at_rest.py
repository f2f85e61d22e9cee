"""Case content at rest, as the review read it: a local user ``nobody`` tries to read the
state of nodes that have just carried a request (the outbox with its payload, the contact
point's archive, the audit trail, the -wal and -shm files), in a federation folder that
everyone may enter, as /etc or /srv would be. Every state file is refused to it."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mlanet.nodes.cli.contact import facilitation_request, read_inbox, submit
from mlanet.nodes.local.federation import Federation, build, provision, teardown
from mlanet.nodes.state.store import open_node_store
from tests.integration.kit import ADMIN, config, credentials, eventually, outbox_state, running

SUMMARY = "Case content at rest: nobody else may read this."


def _open_folder() -> Path:
    """A folder every local user may enter (pytest's own are owner-only)."""
    root = Path(tempfile.mkdtemp(prefix="mlanet-at-rest-", dir="/tmp"))
    root.chmod(0o755)
    return root


@pytest.fixture
async def open_fed() -> AsyncIterator[Federation]:
    """The example federation in a folder every local user may enter (mode 0755)."""
    root = _open_folder()
    federation = build(
        root / "federation",
        prefix="r" + uuid.uuid4().hex[:10],
        receipts={"retry_after_seconds": 3.0, "check_every_seconds": 0.5},
    )
    try:
        await provision(federation, ADMIN)
        yield federation
    finally:
        await teardown(federation, ADMIN)
        shutil.rmtree(root)


def outbox_wire(fed: Federation, message_id: str) -> bytes:
    """The signed bytes (payload included) SEAJust's outbox keeps for resending."""
    store = open_node_store(config(fed, "seajust"), readonly=True)
    try:
        entry = store.outbox_get(message_id)
        assert entry is not None
        return entry.wire
    finally:
        store.close()


def read_as_nobody(path: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "cat", str(path)],
        capture_output=True,
        timeout=30,
        check=False,
    )


async def test_another_local_user_reads_none_of_the_state(open_fed: Federation) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test reads the state as the user nobody (setpriv): run it as root")
    fed = open_fed
    request = facilitation_request("kh-cp-1", "UZ", summary=SUMMARY)
    async with running(fed, "seajust", "casc"):
        await submit(config(fed, "seajust"), credentials(fed, request.sender), request)

        async def delivered() -> bool:
            return outbox_state(fed, "seajust", request.message_id) == "delivered"

        await eventually(delivered, within=60)
        (item,) = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
        assert item.payload.model_dump()["summary"] == SUMMARY  # in casc's archive now
        assert item.message.to_bytes() == outbox_wire(fed, request.message_id)  # and seajust's

        # While the nodes run, with their -wal and -shm files in place.
        # ... and the contact point's own folder, where its archive is
        states = [config(fed, network).state_dir for network in ("seajust", "casc")]
        states.append(fed.credentials("uz-cp-1"))
        files = sorted(p for state in states for p in state.iterdir())
        names = {p.name for p in files}
        assert {"node.sqlite3", "node.sqlite3-wal", "node.sqlite3-shm"} <= names  # the journal
        assert "inbox.sqlite3" in names

        control = read_as_nobody(fed.config_path("casc"))  # 0644 outside the state: readable
        assert control.returncode == 0, control.stderr
        for state in states:
            assert stat.S_IMODE(state.stat().st_mode) == 0o700
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
            attempt = read_as_nobody(path)
            assert attempt.returncode != 0, f"nobody read {path.name}"
            assert b"Permission denied" in attempt.stderr
