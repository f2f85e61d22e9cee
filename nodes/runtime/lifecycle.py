"""Where a node process is in its life: ``starting``, ``retrying``, ``running``, ``draining``,
``stopped`` or ``failed``, written to ``<state_dir>/lifecycle.json`` at each change.

One fact, one record: the node enters a phase through :meth:`LifecycleFile.enter`, which writes
the file and logs the event (``node_starting``, ``node_start_retrying``, ``node_started``,
``node_stopping``, ``node_stopped``, ``node_failed``) with the same fields. The file is what
others read:

- the demo and the tests wait for a node process's own ``running`` (its pid in the file, so a
  file an earlier process left is never taken for it), and name its phase when it fails;
- ``mlanet status`` says that the node is retrying its broker, since when and why, when the
  broker cannot be reached.

Only metadata is written: the phase, the process id, times, the attempt and the error's text
(which names a broker address or a queue, never case content).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog

__all__ = ["LIFECYCLE_FILE", "Lifecycle", "LifecycleFile", "Phase", "read_lifecycle"]

LIFECYCLE_FILE = "lifecycle.json"

log = structlog.get_logger("mlanet.node")


class Phase(StrEnum):
    STARTING = "starting"  # the process runs; it has not reached its broker yet
    RETRYING = "retrying"  # its broker could not be reached (or failed it) at start: waits
    RUNNING = "running"  # started: consumes its queues, links and directory in place
    DRAINING = "draining"  # asked to stop: consumes nothing new, finishes what it handles
    STOPPED = "stopped"  # stopped cleanly
    FAILED = "failed"  # stopped by an error that retrying cannot mend (see the log)


_EVENTS = {
    Phase.STARTING: "node_starting",
    Phase.RETRYING: "node_start_retrying",
    Phase.RUNNING: "node_started",
    Phase.DRAINING: "node_stopping",
    Phase.STOPPED: "node_stopped",
    Phase.FAILED: "node_failed",
}


@dataclass(frozen=True)
class Lifecycle:
    """One node process's phase, as written at its last change."""

    network: str
    phase: Phase
    pid: int
    since: float  # when this phase began (epoch seconds)
    started_at: float  # when the process began
    attempt: int = 0  # start attempts that failed so far (retrying)
    retry_at: float | None = None  # when the next attempt begins (retrying)
    error: str | None = None  # why the last attempt failed, or why the node failed

    def alive(self) -> bool:
        """The process that wrote this still exists (a file left by a killed node is not)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process: it exists
            return True
        return True

    def describe(self, now: float) -> str:
        """One line for an operator, e.g. ``retrying since 12:00:03 (attempt 4 failed, next in
        8 s): cannot reach the broker at ...``."""
        since = time.strftime("%H:%M:%S", time.localtime(self.since))
        text = f"{self.phase.value} since {since}"
        if self.phase is Phase.RETRYING:
            wait = "" if self.retry_at is None else f", next in {max(self.retry_at - now, 0):.0f} s"
            text += f" (attempt {self.attempt} failed{wait})"
        elif self.phase is Phase.STARTING and self.attempt:
            text += f" (attempt {self.attempt + 1}; the one before failed)"
        if self.error:
            text += f": {self.error}"
        return text


class LifecycleFile:
    """The node process's record of its phase (one writer: the node)."""

    def __init__(self, state_dir: Path, network: str) -> None:
        self._path = state_dir / LIFECYCLE_FILE
        now = time.time()
        self.current = Lifecycle(network, Phase.STARTING, os.getpid(), now, now)

    def enter(
        self,
        phase: Phase,
        *,
        attempt: int = 0,
        retry_at: float | None = None,
        error: str | None = None,
        **logged: Any,
    ) -> Lifecycle:
        """Write the new phase (atomically) and log it; ``logged``: more fields for the log
        line only (e.g. an unexpected error's location)."""
        now = time.time()
        self.current = replace(
            self.current, phase=phase, since=now, attempt=attempt, retry_at=retry_at, error=error
        )
        event: dict[str, Any] = {"network": self.current.network, **logged}
        if attempt:
            event["attempt"] = attempt
        if retry_at is not None:
            event["retry_in"] = round(retry_at - now, 1)
        if error is not None:
            event["error"] = error
        try:
            _write(self._path, self.current)
        except OSError as exc:  # a full disk must not stop the node from stopping
            event["lifecycle_not_written"] = exc.strerror or type(exc).__name__
        emit = {Phase.RETRYING: log.warning, Phase.FAILED: log.error}.get(phase, log.info)
        emit(_EVENTS[phase], **event)
        return self.current


def _write(path: Path, lifecycle: Lifecycle) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # owner-only
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(asdict(lifecycle), out, sort_keys=True)
    temporary.replace(path)


def read_lifecycle(state_dir: Path) -> Lifecycle | None:
    """The last phase a node process wrote in ``state_dir``; None when there is none or it
    cannot be read."""
    try:
        raw = json.loads((state_dir / LIFECYCLE_FILE).read_text(encoding="utf-8"))
        return Lifecycle(
            network=str(raw["network"]),
            phase=Phase(raw["phase"]),
            pid=int(raw["pid"]),
            since=float(raw["since"]),
            started_at=float(raw["started_at"]),
            attempt=int(raw.get("attempt") or 0),
            retry_at=None if raw.get("retry_at") is None else float(raw["retry_at"]),
            error=None if raw.get("error") is None else str(raw["error"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
