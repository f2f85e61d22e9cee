"""The node's lifecycle file: each phase written atomically, owner-only, with the process id;
read back as written; a missing or damaged file reads as nothing, never as an error."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from structlog.testing import capture_logs

from mlanet.nodes.runtime.lifecycle import LIFECYCLE_FILE, LifecycleFile, Phase, read_lifecycle


def test_each_phase_is_written_and_logged_with_the_same_fields(tmp_path: Path) -> None:
    record = LifecycleFile(tmp_path, "seajust")
    with capture_logs() as logs:
        record.enter(Phase.STARTING)
        retry_at = time.time() + 4
        record.enter(Phase.RETRYING, attempt=3, retry_at=retry_at, error="cannot reach x:1")
    found = read_lifecycle(tmp_path)
    assert found is not None
    assert (found.network, found.phase, found.pid) == ("seajust", Phase.RETRYING, os.getpid())
    assert (found.attempt, found.retry_at, found.error) == (3, retry_at, "cannot reach x:1")
    assert found.alive()
    assert [log["event"] for log in logs] == ["node_starting", "node_start_retrying"]
    assert logs[1]["attempt"] == 3
    assert logs[1]["error"] == "cannot reach x:1"
    assert stat.S_IMODE((tmp_path / LIFECYCLE_FILE).stat().st_mode) == 0o600
    assert "(attempt 3 failed, next in " in found.describe(time.time())
    record.enter(Phase.STARTING, attempt=3, error="cannot reach x:1")
    again = read_lifecycle(tmp_path)
    assert again is not None
    assert "(attempt 4; the one before failed): cannot reach x:1" in again.describe(time.time())


def test_a_missing_or_damaged_file_reads_as_nothing(tmp_path: Path) -> None:
    assert read_lifecycle(tmp_path) is None
    (tmp_path / LIFECYCLE_FILE).write_text('{"phase": "nonsense"', encoding="utf-8")
    assert read_lifecycle(tmp_path) is None
    (tmp_path / LIFECYCLE_FILE).write_text('{"phase": "nonsense"}', encoding="utf-8")
    assert read_lifecycle(tmp_path) is None


def test_a_file_left_by_a_process_that_is_gone_is_not_alive(tmp_path: Path) -> None:
    LifecycleFile(tmp_path, "casc").enter(Phase.RUNNING)
    text = (tmp_path / LIFECYCLE_FILE).read_text(encoding="utf-8")
    gone = 2**22 + 12345  # above the default pid_max: no such process
    (tmp_path / LIFECYCLE_FILE).write_text(
        text.replace(f'"pid": {os.getpid()}', f'"pid": {gone}'), encoding="utf-8"
    )
    found = read_lifecycle(tmp_path)
    assert found is not None
    assert found.pid == gone
    assert not found.alive()
