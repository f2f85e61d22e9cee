"""Where the node's state lives: SQLite files in the state folder (the embedded default), or
one PostgreSQL database that every replica of a network's node shares (``[database]``).

The stores (``store.py``, ``journal.py``, ``quarantine_store.py``) speak to either through the
same small surface: ``execute``, ``executemany``, ``in_transaction`` and ``close``, with
``?`` placeholders and explicit ``BEGIN``/``COMMIT``/``ROLLBACK``/``SAVEPOINT`` statements, in
SQL both engines read the same way (``INSERT ... ON CONFLICT``, ``COALESCE``, ``CASE``). A
``sqlite3`` connection opened with ``isolation_level=None`` is that surface already;
:class:`Postgres` gives it over a ``psycopg`` connection in autocommit mode, where it turns
``?`` into ``%s``, ``BEGIN IMMEDIATE`` into ``BEGIN`` and skips SQLite's ``PRAGMA`` statements.
What differs beyond that (the schema's types, the journal's lock) is chosen by ``dialect``.

A lost connection is never hidden: when PostgreSQL goes away with a transaction open, every
statement fails until the owner's ``ROLLBACK`` (the group commit's writes are gone, so none of
its deliveries may be acked); the next statement after it connects again, within the connect
timeout. :func:`unavailable` tells such a failure (wait for the database, then try again)
from a defect.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal, Protocol

import psycopg
import structlog
from psycopg import pq

from mlanet.nodes.config import DatabaseConfig

__all__ = [
    "DB_ERRORS",
    "Database",
    "Postgres",
    "advisory_key",
    "dialect_of",
    "unavailable",
]

log = structlog.get_logger("mlanet.state")

DB_ERRORS = (sqlite3.Error, psycopg.Error)
Dialect = Literal["sqlite", "postgresql"]


class Database(Protocol):
    """What the stores need of a connection (a ``sqlite3.Connection`` is one)."""

    @property
    def in_transaction(self) -> bool: ...
    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...
    def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Any]], /) -> Any: ...
    def close(self) -> None: ...


def dialect_of(db: Database) -> Dialect:
    return "postgresql" if isinstance(db, Postgres) else "sqlite"


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is the database being out of reach: a lost or
    refused connection, a server shutting down, a statement or lock timeout. Waiting and
    trying again is the answer; for SQLite nothing is (a full disk is not transient)."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        if isinstance(current, psycopg.OperationalError | psycopg.errors.QueryCanceled):
            return True
        if isinstance(current, psycopg.errors.LockNotAvailable | psycopg.errors.AdminShutdown):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False


def advisory_key(*parts: str) -> int:
    """A PostgreSQL advisory lock key (signed 64 bits) for a name; a collision only makes two
    holders wait for each other, it never lets two hold one name."""
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


_PLACEHOLDER = re.compile(r"\?")
_NO_ROWS = "SELECT 1 WHERE FALSE"


def _translate(sql: str) -> str | None:
    """The PostgreSQL form of a statement written for both (None: nothing to run)."""
    text = sql.strip()
    head = text[:16].upper()
    if head.startswith("PRAGMA"):
        return None
    if head.startswith("BEGIN"):
        return "BEGIN"
    return _PLACEHOLDER.sub("%s", text.replace("%", "%%"))


class _Rows:
    """A finished statement's rows (psycopg's cursor would be reused by the next one)."""

    __slots__ = ("_at", "_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self._at = 0
        self.rowcount = rowcount

    def fetchone(self) -> Any:
        if self._at >= len(self._rows):
            return None
        row = self._rows[self._at]
        self._at += 1
        return row

    def fetchall(self) -> list[Any]:
        rows, self._at = self._rows[self._at :], len(self._rows)
        return rows

    def __iter__(self) -> Iterator[Any]:
        while (row := self.fetchone()) is not None:
            yield row


class Postgres:
    """One connection to the network's PostgreSQL schema (``[database]``), used like a
    ``sqlite3`` connection in autocommit mode. Not thread-safe; one per store."""

    dialect: Dialect = "postgresql"

    def __init__(
        self, config: DatabaseConfig, *, purpose: str, readonly: bool = False, lazy: bool = False
    ) -> None:
        """Connects now, or at the first statement when ``lazy``."""
        self._config = config
        self._purpose = purpose
        self._readonly = readonly
        self._cache: dict[str, str | None] = {}
        self._conn: psycopg.Connection[Any] | None = None
        self._lost = False  # the connection went with a transaction open: ROLLBACK first
        self.connects = 0
        self.losses = 0  # connections lost (what a transaction held then is gone)
        if not lazy:
            self._connect()

    @property
    def schema(self) -> str:
        return self._config.schema_name

    def _connect(self) -> psycopg.Connection[Any]:
        config = self._config
        options = (
            f"-c search_path={config.schema_name},public"
            f" -c statement_timeout={int(config.statement_timeout_seconds * 1000)}"
            f" -c lock_timeout={int(config.statement_timeout_seconds * 1000)}"
            f" -c idle_in_transaction_session_timeout={int(config.replica_lease_seconds * 4000)}"
        )
        if self._readonly:
            options += " -c default_transaction_read_only=on"
        try:
            conn = psycopg.connect(
                config.url,
                password=config.password(),
                connect_timeout=max(1, round(config.connect_timeout_seconds)),
                autocommit=True,
                application_name=f"mlanet {self._purpose}"[:63],
                options=options,
                # a partition is noticed by the kernel, not waited out: data unacknowledged for
                # the statement timeout, or an idle peer silent for ~11 s, ends the connection
                tcp_user_timeout=int(config.statement_timeout_seconds * 1000),
                keepalives=1,
                keepalives_idle=5,
                keepalives_interval=2,
                keepalives_count=3,
            )
        except psycopg.Error as exc:
            raise psycopg.OperationalError(
                f"the database does not answer ({_reason(exc)})"
            ) from None
        self._conn = conn
        self.connects += 1
        return conn

    def _connection(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
            self._conn = None
            conn = self._connect()
        return conn

    @property
    def in_transaction(self) -> bool:
        if self._lost:
            return True
        conn = self._conn
        if conn is None or conn.closed:
            return False
        return conn.info.transaction_status != pq.TransactionStatus.IDLE

    def backend_pid(self) -> int:
        return int(self._connection().info.backend_pid)

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> _Rows:
        statement = self._statement(sql)
        if statement is None:
            return _Rows([], -1)
        if self._lost:
            if statement == "ROLLBACK":
                self._reset()
                return _Rows([], -1)
            raise psycopg.OperationalError(
                "the database connection was lost with a transaction open"
            )
        conn = self._connection()
        was_open = conn.info.transaction_status != pq.TransactionStatus.IDLE
        try:
            cursor = conn.execute(statement, tuple(parameters) or None)  # prepared when repeated
            rows = cursor.fetchall() if cursor.description is not None else []
            return _Rows(rows, cursor.rowcount)
        except psycopg.Error:
            self._after_error(conn, was_open)
            raise

    def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Any]], /) -> _Rows:
        statement = self._statement(sql)
        rows = [tuple(row) for row in seq_of_parameters]
        if statement is None or not rows:
            return _Rows([], 0)
        if self._lost:
            raise psycopg.OperationalError(
                "the database connection was lost with a transaction open"
            )
        conn = self._connection()
        was_open = conn.info.transaction_status != pq.TransactionStatus.IDLE
        try:
            with conn.cursor() as cursor:
                cursor.executemany(statement, rows)
                return _Rows([], cursor.rowcount)
        except psycopg.Error:
            self._after_error(conn, was_open)
            raise

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _statement(self, sql: str) -> str | None:
        try:
            return self._cache[sql]
        except KeyError:
            statement = self._cache[sql] = _translate(sql)
            return statement

    def _after_error(self, conn: psycopg.Connection[Any], was_open: bool) -> None:
        if conn.broken or conn.closed:
            # whatever the open transaction held is gone with the connection (a COMMIT that
            # broke may or may not have happened: its owner treats it as not)
            self._lost = was_open
            self.losses += 1
            self._conn = None
            log.warning("database_connection_lost", purpose=self._purpose)

    def _reset(self) -> None:
        self._lost = False
        self.close()


def _reason(exc: BaseException) -> str:
    """One line about a connection failure: its kind and, from libpq, its first line (which
    names the host and what refused; never a password, which is not in the URL)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
