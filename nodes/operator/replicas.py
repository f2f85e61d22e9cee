"""The replicas of a network's node as operators see them (``[database]``; the replicas
themselves are ``nodes/runtime/replicas.py``): read by ``mlanet status`` from outside the node,
through a short-lived read-only connection with a time limit, and by the running node's
operator surface at each poll (through the node's own connection); their lines in the text of
``mlanet status``. Judged by ``nodes/operator/alerts.py`` (``replica_unhealthy``).

What the database says cannot be read is one line (:attr:`ReplicasView.problem`), never a
traceback, and the rest of the status shows as always.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import TypeVar

import psycopg

from mlanet.broker import MlanetError
from mlanet.nodes.config import DatabaseConfig
from mlanet.nodes.operator.views import ReplicasView, human_duration
from mlanet.nodes.runtime.replicas import ReplicaRow, Replicas, database_exposure, read_replicas
from mlanet.nodes.state.db import DB_ERRORS, Postgres, unavailable

__all__ = ["READ_SECONDS", "outside_replicas", "replica_lines", "running_replicas"]

# the longest mlanet status waits for the database to connect, and again for its answer
READ_SECONDS = 5.0

T = TypeVar("T")


async def outside_replicas(database: DatabaseConfig | None) -> ReplicasView | None:
    """The replicas, read from outside the node (``mlanet status``); None without
    ``[database]`` (the node runs alone)."""
    if database is None:
        return None
    limited = database.model_copy(
        update={
            "connect_timeout_seconds": min(database.connect_timeout_seconds, READ_SECONDS),
            "statement_timeout_seconds": min(database.statement_timeout_seconds, READ_SECONDS),
        }
    )
    limit = limited.connect_timeout_seconds + limited.statement_timeout_seconds + 1.0
    try:
        rows, exposure = await asyncio.wait_for(_off_loop(lambda: _read(limited)), limit)
    except TimeoutError:
        return ReplicasView(problem=f"the database did not answer within {limit:g} s")
    except (*DB_ERRORS, MlanetError) as exc:
        return ReplicasView(problem=_problem(exc, database))
    return ReplicasView(tuple(rows), exposure=exposure)


def running_replicas(replicas: Replicas) -> ReplicasView | None:
    """The replicas as the running node reads them (its operator surface's poll, on the
    node's event loop: one short statement, bounded by the statement timeout); None when
    the node runs alone."""
    if not replicas.shared:
        return None
    try:
        return ReplicasView(tuple(replicas.rows()), exposure=replicas.exposure())
    except DB_ERRORS as exc:
        return ReplicasView(problem=_problem(exc, None))


def _read(database: DatabaseConfig) -> tuple[list[ReplicaRow], tuple[str, ...]]:
    db = Postgres(database, purpose="status", readonly=True)
    try:
        return read_replicas(db, database.replica_lease_seconds), database_exposure(db)
    finally:
        db.close()


def _off_loop(read: Callable[[], T]) -> asyncio.Future[T]:
    """``read`` in a daemon thread: a database that hangs past the time limit keeps neither
    the event loop nor the end of the command waiting."""
    done: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        if not done.set_running_or_notify_cancel():
            return
        try:
            done.set_result(read())
        except BaseException as exc:  # handed to the waiting coroutine, which says what it was
            done.set_exception(exc)

    threading.Thread(target=run, name="mlanet-status-replicas", daemon=True).start()
    return asyncio.wrap_future(done)


def _problem(exc: BaseException, database: DatabaseConfig | None) -> str:
    """One line on why the replicas cannot be read (no statement text, no password)."""
    if isinstance(exc, psycopg.errors.UndefinedTable):
        where = f" {database.schema_name}" if database is not None else ""
        return f"the database schema{where} is not set up: no replica has started yet"
    if isinstance(exc, MlanetError):
        return str(exc)
    first = str(exc).strip().splitlines()
    if unavailable(exc):
        # Postgres says "the database does not answer (<libpq's first line>)" when it cannot
        # connect; a lost connection or a timeout says less
        return first[0][:240] if first else f"the database does not answer ({type(exc).__name__})"
    return f"the database refused the query ({type(exc).__name__})"


def replica_lines(view: ReplicasView | None) -> list[str]:
    """The REPLICAS section of ``mlanet status``'s text (nothing when the node runs alone)."""
    if view is None:
        return []
    if view.problem is not None:
        return ["", f"REPLICAS: unknown ({view.problem})"]
    if not view.rows:
        return ["", "REPLICAS: none has joined yet"]
    live = [row for row in view.rows if row.state != "stopped"]
    healthy = sum(1 for row in live if row.healthy)
    lines = [
        "",
        f"REPLICAS: {healthy} of {len(live)} healthy, {len(view.rows) - len(live)} stopped "
        f"(lease {view.rows[0].lease:g} s)",
        f"  {'replica':<20} {'host':<20} {'pid':>7}  {'version':<10} {'state':<8} "
        f"{'heartbeat':<10} health",
    ]
    for row in view.rows:
        health = "healthy" if row.healthy else "-" if row.state == "stopped" else "UNHEALTHY"
        beat = f"{human_duration(row.heartbeat_age)} ago"
        lines.append(
            f"  {row.name:<20} {row.host:<20} {row.pid:>7}  {row.version:<10} {row.state:<8} "
            f"{beat:<10} {health}"
        )
    return lines
