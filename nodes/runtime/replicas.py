"""Replicas: several processes of one network's node, competing consumers on the same quorum
queues, coordinated through the network's PostgreSQL (``[database]``), never through memory.

- **One handler per message.** Before a replica acts on a message from a peer it *claims* it: a
  session-level PostgreSQL advisory lock on (origin, message id), held until the outcome is
  committed (the dedupe row, the journal's rows) and the delivery acked or handed back. Another
  replica holding a copy of the same message waits for the claim, then finds the committed
  record: a duplicate is not delivered twice, one receipt is sent, and a copy with other content
  is an equivocation, whichever replica took it. A replica that dies loses its session, and with
  it its claims, at once.
- **One replica per duty.** The outbox's resends and the retention purges run where the duty's
  lock is held (taken by whoever asks first, kept until its session ends).
- **Heartbeats and fencing.** Each replica writes its heartbeat (database time, so the machines'
  clocks do not matter) every third of ``replica_lease_seconds``, with the backends its
  connections use. A replica whose heartbeat is older than the lease (paused, cut off, hung) is
  *fenced*: the others end its database sessions, which releases its claims and rolls back what
  it had not committed. When it comes back it cannot commit what it was doing (nothing of it is
  acked: its broker channel is gone too, past the consumer timeout), reconnects and starts
  again as a fresh member.
- **One directory.** A replica that applies a newer signed directory stores it; the others
  find it at their next heartbeat and apply it themselves (each checks the coordinator's
  signature: the database is not trusted with it).

Without ``[database]`` the node runs alone (:class:`Alone`): its in-process lock suffices.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Protocol

import structlog

from mlanet.broker.errors import ConfigError, TransportError
from mlanet.nodes.config import DatabaseConfig, NodeConfig
from mlanet.nodes.state.db import DB_ERRORS, Postgres, advisory_key, unavailable
from mlanet.nodes.state.journal import StateUnavailable

__all__ = [
    "Alone",
    "Member",
    "ReplicaRow",
    "Replicas",
    "database_exposure",
    "default_replica_name",
    "read_replicas",
    "replica_config",
]

log = structlog.get_logger("mlanet.replicas")

CLAIM_POLL_FIRST = 0.01  # seconds between two tries for a claim another replica holds, at first
CLAIM_POLL_MAX = 0.2


REPLICA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def default_replica_name() -> str:
    """``MLANET_REPLICA``, else this machine's name."""
    return os.environ.get("MLANET_REPLICA") or socket.gethostname()


def replica_config(config: NodeConfig, name: str) -> NodeConfig:
    """The config of the replica ``name``: the network's shared state is in ``[database]``;
    what stays on its machine (the directory it holds, its lifecycle file, the operator
    surface's snapshot) goes into a state folder of its own, ``<state_dir>/replicas/<name>``."""
    if config.database is None:
        raise ConfigError("replicas share their state through [database]: the config has none")
    if not REPLICA_NAME.match(name):
        raise ConfigError("a replica's name is letters, digits, '.', '_' or '-' (at most 63)")
    return config.model_copy(update={"state_dir": config.state_dir / "replicas" / name})


@dataclass(frozen=True, slots=True)
class ReplicaRow:
    """One replica as the database knows it (``mlanet status``, the dashboard)."""

    name: str
    host: str
    pid: int
    version: str
    started_at: float
    heartbeat_age: float  # seconds since its last heartbeat, by the database's clock
    state: str  # running, stopped, fenced
    lease: float

    @property
    def healthy(self) -> bool:
        return self.state == "running" and self.heartbeat_age <= self.lease

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "host": self.host,
            "pid": self.pid,
            "version": self.version,
            "started_at": round(self.started_at, 3),
            "heartbeat_age_seconds": round(self.heartbeat_age, 1),
            "state": self.state,
            "healthy": self.healthy,
        }


def read_replicas(db: Postgres, lease: float) -> list[ReplicaRow]:
    rows = db.execute(
        "SELECT name, host, pid, version, started_at,"
        " EXTRACT(EPOCH FROM clock_timestamp()) - heartbeat_at, state FROM replicas ORDER BY name"
    ).fetchall()
    return [
        ReplicaRow(str(n), str(h), int(p), str(v), float(s), float(age), str(state), lease)
        for n, h, p, v, s, age, state in rows
    ]


# Who else can reach the locks and sessions the replicas rely on (OPERATIONS.md, "One database
# and one role per network"): advisory locks are per database, so any role that may connect to
# it can take a message's claim; a superuser or a member of pg_signal_backend can end any
# session; another network's mlanet schema in the same database means its role connects here.
_EXPOSURE = (
    "SELECT has_database_privilege('public', current_database(), 'CONNECT'),"
    " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),"
    " pg_has_role(current_user, 'pg_signal_backend', 'MEMBER'),"
    " ARRAY(SELECT r.rolname FROM pg_roles r WHERE r.rolcanlogin AND NOT r.rolsuper"
    " AND r.rolname <> current_user AND r.rolname NOT LIKE 'pg\\_%'"
    " AND has_database_privilege(r.oid, current_database(), 'CONNECT') ORDER BY 1),"
    " ARRAY(SELECT n.nspname FROM pg_namespace n JOIN pg_class c ON c.relnamespace = n.oid"
    " WHERE c.relname = 'replicas' AND c.relkind = 'r' AND n.nspname <> ? ORDER BY 1),"
    " current_database()"
)


def database_exposure(db: Postgres) -> tuple[str, ...]:
    """What in the network's database another network could use against its replicas (hold
    their claims, end their sessions), one finding each; empty when the database and the
    role are the network's own as OPERATIONS.md asks."""
    public, superuser, signal, roles, schemas, name = db.execute(_EXPOSURE, (db.schema,)).fetchone()
    found = []
    if schemas:
        found.append(
            f"database {name} also holds the state of {len(schemas)} other mlanet schema(s)"
            f" ({', '.join(schemas[:3])}{', ...' if len(schemas) > 3 else ''}): their roles"
            " connect here and can hold this network's claims"
        )
    if public:
        found.append(
            f"every role on the server may connect to database {name} (CONNECT is granted to"
            f" PUBLIC): REVOKE CONNECT ON DATABASE {name} FROM PUBLIC"
        )
    elif roles:
        found.append(
            f"{len(roles)} other login role(s) may connect to database {name}"
            f" ({', '.join(roles[:3])}{', ...' if len(roles) > 3 else ''})"
        )
    if superuser:
        found.append("the node's role is a superuser: it can end any session on the server")
    elif signal:
        found.append("the node's role is in pg_signal_backend: it can end other roles' sessions")
    return tuple(found)


class Replicas(Protocol):
    """What the node asks of its fellow replicas (none, when it runs alone)."""

    shared: bool  # True: other processes may hold copies of the same messages

    def join(self, directory_version: int) -> None: ...
    def leave(self) -> None: ...
    async def run(
        self, stop: asyncio.Event, *, newer_directory: Callable[[int, bytes], Awaitable[None]]
    ) -> None: ...
    async def claim(self, origin: str, message_id: str) -> bool: ...
    def release(self, origin: str, message_id: str) -> None: ...
    def holds(self, duty: str) -> bool: ...
    def share_directory(self, version: int, body: bytes) -> None: ...
    def held_directory(self, version: int) -> None: ...
    def rows(self) -> list[ReplicaRow]: ...
    def exposure(self) -> tuple[str, ...]: ...


class Alone:
    """A node with SQLite: one process; every duty is its own, nothing to claim."""

    shared = False

    def join(self, directory_version: int) -> None:
        return None

    def leave(self) -> None:
        return None

    async def run(
        self, stop: asyncio.Event, *, newer_directory: Callable[[int, bytes], Awaitable[None]]
    ) -> None:
        return None  # nobody to beat for

    async def claim(self, origin: str, message_id: str) -> bool:
        return False

    def release(self, origin: str, message_id: str) -> None:
        return None

    def holds(self, duty: str) -> bool:
        return True

    def share_directory(self, version: int, body: bytes) -> None:
        return None

    def held_directory(self, version: int) -> None:
        return None

    def rows(self) -> list[ReplicaRow]:
        return []

    def exposure(self) -> tuple[str, ...]:
        return ()


class Member:
    """This process as one replica of its network's node (``[database]``). Used from the
    node's event loop; its statements are short and bounded by the statement timeout."""

    shared = True

    def __init__(self, database: DatabaseConfig, name: str, *, backends: Callable[[], list[int]]):
        """``backends``: the PostgreSQL backend pids of the node's other connections (its
        stores), fenced with this one."""
        self.name = name
        self._lease = database.replica_lease_seconds
        self._backends = backends
        self._db = Postgres(database, purpose=f"replica {name}", lazy=True)  # connects at join
        self._schema = database.schema_name
        self._epoch = 0  # the coordination session; claims of an earlier one are gone
        self._connects = self._db.connects
        self._claims: dict[tuple[str, str], int] = {}  # held claim -> epoch taken in
        self._duties: dict[str, int] = {}  # duty -> epoch held in
        self._version = _version()
        self._held_directory = 0  # the newest directory version this replica holds
        self.fenced_others = 0

    # --- membership ---------------------------------------------------------------------------
    def join(self, directory_version: int = 0) -> None:
        """Write this replica's row, holding directory ``directory_version``; TransportError
        (the node's start retries) while the database does not answer, or while a live
        replica of another process holds the name (two under one name would fence each
        other)."""
        try:
            self._join()
        except DB_ERRORS as exc:
            if not unavailable(exc):
                raise
            raise TransportError(
                f"the node's database does not answer ({type(exc).__name__})"
            ) from None
        self.held_directory(directory_version)

    def _join(self) -> None:
        row = self._db.execute(
            "SELECT host, pid, state, EXTRACT(EPOCH FROM clock_timestamp()) - heartbeat_at"
            " FROM replicas WHERE name=?",
            (self.name,),
        ).fetchone()
        here = (socket.gethostname(), os.getpid())
        live = row is not None and row[2] == "running" and float(row[3]) <= self._lease
        if live and (str(row[0]), int(row[1])) != here and not _gone(row, here[0]):
            # another live process under this name, or this one restarted on another machine
            # before its lease ran out: the node's start retries until the row is free
            raise TransportError(
                f"replica name {self.name} is held by a running replica on {row[0]} (until its"
                f" lease of {self._lease:g} s runs out; two live replicas need two names)"
            )
        self._db.execute(
            "INSERT INTO replicas (name, host, pid, version, started_at, heartbeat_at, backends,"
            " state) VALUES (?, ?, ?, ?, EXTRACT(EPOCH FROM clock_timestamp()),"
            " EXTRACT(EPOCH FROM clock_timestamp()), ?, 'running') ON CONFLICT (name) DO UPDATE"
            " SET host=excluded.host, pid=excluded.pid, version=excluded.version,"
            " started_at=excluded.started_at, heartbeat_at=excluded.heartbeat_at,"
            " backends=excluded.backends, state='running', detail=''",
            (self.name, *here, self._version, self._backend_list()),
        )
        log.info("replica_joined", replica=self.name)

    def leave(self) -> None:
        with contextlib.suppress(*DB_ERRORS):
            self._db.execute("UPDATE replicas SET state='stopped' WHERE name=?", (self.name,))
        self._db.close()

    async def run(
        self, stop: asyncio.Event, *, newer_directory: Callable[[int, bytes], Awaitable[None]]
    ) -> None:
        """Heartbeat, fence the replicas whose lease ran out, pick up a directory another
        replica applied, until ``stop``."""
        every = self._lease / 3
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
            if stop.is_set():
                return
            try:
                self.beat()
                self.fence()
                found = self._newest_directory()
            except DB_ERRORS as exc:
                log.warning("replica_heartbeat_failed", replica=self.name, error=_short(exc))
                continue
            if found is not None:
                await newer_directory(*found)

    def beat(self) -> None:
        updated = self._db.execute(
            "UPDATE replicas SET heartbeat_at=EXTRACT(EPOCH FROM clock_timestamp()), backends=?"
            " WHERE name=? AND pid=? AND state='running'",
            (self._backend_list(), self.name, os.getpid()),
        ).rowcount
        self._check_session()
        if updated != 1:  # fenced while it could not beat (or its row was removed): join again
            log.warning("replica_rejoined", replica=self.name)
            self._join()

    def fence(self) -> None:
        """End the database sessions of every replica whose heartbeat is older than the lease."""
        stale = self._db.execute(
            "SELECT name, backends FROM replicas WHERE state='running' AND name<>? AND"
            " EXTRACT(EPOCH FROM clock_timestamp()) - heartbeat_at > ?",
            (self.name, self._lease),
        ).fetchall()
        for name, backends in stale:
            pids = [int(pid) for pid in str(backends).split(",") if pid.strip().isdigit()]
            for pid in pids:
                # only sessions of mlanet (a reused pid is someone else's now)
                # waits (up to 5 s) until the session is gone: its claims are free on return
                self._db.execute(
                    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE pid=? AND"
                    " application_name LIKE 'mlanet %'",
                    (pid,),
                )
            self._db.execute(
                "UPDATE replicas SET state='fenced', detail=? WHERE name=? AND state='running'",
                (f"lease of {self._lease:g} s ran out; fenced by {self.name}", str(name)),
            )
            self.fenced_others += 1
            log.warning("replica_fenced", replica=str(name), by=self.name)

    def rows(self) -> list[ReplicaRow]:
        return read_replicas(self._db, self._lease)

    def exposure(self) -> tuple[str, ...]:
        return database_exposure(self._db)

    # --- claims ------------------------------------------------------------------------------
    async def claim(self, origin: str, message_id: str) -> bool:
        """Hold (origin, message id) against every other replica; True when another replica
        held it first (what it recorded is new: look again). Waits while it is held; raises
        StateUnavailable when the database cannot be asked."""
        key = (origin, message_id)
        lock = advisory_key("mlanet:message", self._schema, origin, message_id)
        waited = False
        pause = CLAIM_POLL_FIRST
        while True:
            try:
                got = self._db.execute("SELECT pg_try_advisory_lock(?)", (lock,)).fetchone()[0]
            except DB_ERRORS as exc:
                raise _unavailable("cannot claim the message", exc) from exc
            self._check_session()  # (a reconnect: the lock is of the new session)
            if got:
                self._claims[key] = self._epoch
                return waited
            waited = True
            await asyncio.sleep(pause)
            pause = min(CLAIM_POLL_MAX, pause * 2)

    def release(self, origin: str, message_id: str) -> None:
        epoch = self._claims.pop((origin, message_id), None)
        if epoch is None or epoch != self._epoch:
            return  # its session is gone, and the lock with it
        lock = advisory_key("mlanet:message", self._schema, origin, message_id)
        with contextlib.suppress(*DB_ERRORS):
            self._db.execute("SELECT pg_advisory_unlock(?)", (lock,))

    def holds(self, duty: str) -> bool:
        """Whether this replica does ``duty`` now (the first to ask takes it, and keeps it
        while its session lives)."""
        try:
            self._db.execute("SELECT 1")  # finds a lost session (and connects again)
            self._check_session()
            if self._duties.get(duty) == self._epoch:
                return True
            lock = advisory_key("mlanet:duty", self._schema, duty)
            got = bool(self._db.execute("SELECT pg_try_advisory_lock(?)", (lock,)).fetchone()[0])
            self._check_session()
        except DB_ERRORS:
            return False
        if got:
            self._duties[duty] = self._epoch
            log.info("replica_took_duty", replica=self.name, duty=duty)
        return got

    # --- the directory ------------------------------------------------------------------------
    def share_directory(self, version: int, body: bytes) -> None:
        with contextlib.suppress(*DB_ERRORS):
            self._db.execute(
                "INSERT INTO directories (version, body, by_replica, at) VALUES (?, ?, ?,"
                " EXTRACT(EPOCH FROM clock_timestamp())) ON CONFLICT DO NOTHING",
                (version, body, self.name),
            )
        self.held_directory(version)

    def _newest_directory(self) -> tuple[int, bytes] | None:
        row = self._db.execute(
            "SELECT version, body FROM directories ORDER BY version DESC LIMIT 1"
        ).fetchone()
        if row is None or int(row[0]) <= self._held_directory:
            return None
        return int(row[0]), bytes(row[1])

    def held_directory(self, version: int) -> None:
        self._held_directory = max(version, self._held_directory)

    # --- internals ----------------------------------------------------------------------------
    def _check_session(self) -> None:
        """A new coordination session (the old one was lost): every claim and duty of the old
        one is gone."""
        if self._db.connects != self._connects:
            self._connects = self._db.connects
            self._epoch += 1
            if self._claims or self._duties:
                log.warning("replica_claims_lost", replica=self.name, claims=len(self._claims))
            self._claims.clear()
            self._duties.clear()

    def _backend_list(self) -> str:
        pids = [self._db.backend_pid(), *self._backends()]
        return ",".join(str(pid) for pid in pids)


def _gone(row: tuple[object, ...], host: str) -> bool:
    """The replica of a row on this machine whose process is gone (it was killed and this is
    its restart): its place is free at once."""
    if str(row[0]) != host:
        return False
    try:
        os.kill(int(str(row[1])), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _version() -> str:
    try:
        return metadata.version("mlanet")
    except metadata.PackageNotFoundError:
        return "unknown"


def _short(exc: BaseException) -> str:
    return (
        f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        if str(exc)
        else type(exc).__name__
    )


def _unavailable(what: str, exc: BaseException) -> StateUnavailable:
    kind = "the database is out of reach" if unavailable(exc) else "the database failed"
    return StateUnavailable(f"{what}: {kind} ({type(exc).__name__})")
