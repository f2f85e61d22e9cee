"""A RabbitMQ node of a network's own on this machine, listening for AMQPS with mutual TLS.

What ``mlanet federation init --own-brokers`` will start for each network: a node with its own
name (``mlanet-<network>-<random>@localhost``), free ports (AMQPS, optionally plaintext AMQP for
local development, the management API over HTTPS, Erlang distribution), its own data, log and
config folders under one root, its own Erlang cookie (a private ``HOME``), and its own plugins:
management, shovel, shovel management and ``rabbitmq_auth_mechanism_ssl`` (EXTERNAL: a client
logs in by its certificate, as the certificate's common name). The generated ``rabbitmq.conf``
(:func:`render_config`) is also the example OPERATIONS.md shows a network's operator.

It is started the way the fault battery starts its nodes (``tests/battery/rabbit.py``): the
package's scripts in ``/usr/lib/rabbitmq/bin`` (Debian's ``/usr/sbin`` wrappers would switch
user and write the shared node's startup log), ``-detached``, under a raised open-file limit.
Starting takes 6-10 s on a 2-core machine. Every wait has a deadline and ends in one
:class:`LocalBrokerError` line; :meth:`LocalBroker.stop` stops the node and removes its root.

The administrator (``mlanet-admin``) gets a random password, written 0600 beside the config;
it is the only user with a password at start.

A node without TLS files (``LocalBrokerSpec.tls`` None) is for local development only: plaintext
AMQP and the management API over HTTP, on the loopback interface, password logins. The nodes of
a local cluster (``nodes/local/cluster.py``) are such nodes, sharing one ``HOME`` (one Erlang
cookie) and pausing a minority side when the cluster splits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import secrets
import shutil
import signal
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from mlanet.broker.errors import MlanetError, TransportError
from mlanet.broker.management import Management, ManagementEndpoint
from mlanet.broker.tls import client_context, load_certificates

__all__ = [
    "ADMIN_USER",
    "BrokerRecord",
    "BrokerTlsFiles",
    "LocalBroker",
    "LocalBrokerError",
    "LocalBrokerSpec",
    "Ports",
    "free_ports",
    "process_alive",
    "render_config",
    "render_plugins",
    "server_scripts",
]

_SCRIPTS = Path("/usr/lib/rabbitmq/bin")
PLAINTEXT_PLUGINS = ("rabbitmq_management", "rabbitmq_shovel", "rabbitmq_shovel_management")
PLUGINS = (*PLAINTEXT_PLUGINS, "rabbitmq_auth_mechanism_ssl")
MAX_MESSAGE_SIZE = 327680  # mlanet's 256 KiB cap plus 64 KiB of hop records (docs/PROTOCOL.md)
ADMIN_USER = "mlanet-admin"
PID_FILE_WITHIN = 15.0  # seconds a launched node takes at most to write its pid file


class LocalBrokerError(MlanetError):
    """A local broker could not be started, did not answer in time, or could not be stopped."""


@dataclass(frozen=True)
class BrokerTlsFiles:
    """The files the broker's TLS listeners use (paths on this machine).

    ``client_cas`` is ``ssl_options.cacertfile``: the CAs whose client certificates the broker
    accepts (with EXTERNAL, whoever such a CA names may log in as that name). ``server_ca`` is the
    CA that issued ``certfile``: what this machine's own clients check the broker against."""

    server_ca: Path
    certfile: Path
    keyfile: Path
    client_cas: Path


@dataclass(frozen=True)
class LocalBrokerSpec:
    network: str  # whose broker (a network, or a local cluster's name): in names and errors
    root: Path  # the node's folders; removed by stop()
    tls: BrokerTlsFiles | None  # None: plaintext AMQP and HTTP only (local development)
    plaintext: bool = False  # also a plaintext AMQP listener: for local development only
    fail_if_no_peer_cert: bool = True  # a TLS client without a certificate is refused
    nofile: int = 65536  # the open-file limit: quorum queues and connections hold files
    home: Path | None = None  # HOME (its Erlang cookie) shared with other nodes; None: root/home
    clustered: bool = False  # one of a cluster's nodes: a minority side pauses on a split


@dataclass(frozen=True)
class Ports:
    amqps: int | None  # None: no TLS listener (a spec without TLS files)
    management: int
    dist: int
    amqp: int | None  # None: no plaintext listener


@dataclass(frozen=True)
class BrokerRecord:
    """A started broker as a federation's record keeps it (``LocalBroker.record``/``attach``):
    its spec, node name and ports. ``to_json``/``from_json`` are the record's JSON form."""

    spec: LocalBrokerSpec
    nodename: str
    ports: Ports

    def to_json(self) -> dict[str, Any]:
        tls = self.spec.tls
        return {
            "network": self.spec.network,
            "root": str(self.spec.root),
            "nodename": self.nodename,
            "ports": {
                "amqps": self.ports.amqps,
                "management": self.ports.management,
                "dist": self.ports.dist,
                "amqp": self.ports.amqp,
            },
            "tls": None
            if tls is None
            else {
                "server_ca": str(tls.server_ca),
                "certfile": str(tls.certfile),
                "keyfile": str(tls.keyfile),
                "client_cas": str(tls.client_cas),
            },
            "plaintext": self.spec.plaintext,
            "fail_if_no_peer_cert": self.spec.fail_if_no_peer_cert,
            "home": None if self.spec.home is None else str(self.spec.home),
            "clustered": self.spec.clustered,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> BrokerRecord:
        """The record ``to_json`` wrote (KeyError, TypeError or ValueError when it is not one;
        a record written before plaintext and clustered nodes existed reads as it was)."""
        ports, tls, home = raw["ports"], raw["tls"], raw.get("home")
        spec = LocalBrokerSpec(
            str(raw["network"]),
            Path(str(raw["root"])),
            None
            if tls is None
            else BrokerTlsFiles(
                Path(str(tls["server_ca"])),
                Path(str(tls["certfile"])),
                Path(str(tls["keyfile"])),
                Path(str(tls["client_cas"])),
            ),
            plaintext=bool(raw["plaintext"]),
            fail_if_no_peer_cert=bool(raw["fail_if_no_peer_cert"]),
            home=None if home is None else Path(str(home)),
            clustered=bool(raw.get("clustered", False)),
        )
        return cls(
            spec,
            str(raw["nodename"]),
            Ports(
                _port(ports["amqps"]),
                int(ports["management"]),
                int(ports["dist"]),
                _port(ports["amqp"]),
            ),
        )


def _port(value: object) -> int | None:
    return None if value is None else int(str(value))


def server_scripts() -> tuple[str, str]:
    """(rabbitmq-server, rabbitmqctl) that run as the calling user without switching."""
    if (_SCRIPTS / "rabbitmq-server").exists():
        return str(_SCRIPTS / "rabbitmq-server"), str(_SCRIPTS / "rabbitmqctl")
    server, ctl = shutil.which("rabbitmq-server"), shutil.which("rabbitmqctl")
    if server is None or ctl is None:
        raise LocalBrokerError(
            "a broker of each network's own needs rabbitmq-server: run ./scripts/setup.sh "
            "(it installs Debian's rabbitmq-server)"
        )
    return server, ctl


def free_ports(count: int) -> list[int]:
    """``count`` TCP ports on 127.0.0.1 that nothing listens on right now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def process_alive(pid: int) -> bool:
    """Whether the process runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie is dead, only not reaped yet


def render_plugins(*, tls: bool = True) -> str:
    """The ``enabled_plugins`` file: without TLS, no certificate login plugin."""
    return "[" + ",".join(PLUGINS if tls else PLAINTEXT_PLUGINS) + "].\n"


def render_config(
    spec: LocalBrokerSpec, ports: Ports, admin_password: str, log_folder: Path
) -> str:
    """The node's ``rabbitmq.conf``: AMQPS with mutual TLS, EXTERNAL by common name, the
    management API over HTTPS only, mlanet's message size cap. Without TLS files (local
    development): plaintext AMQP and the management API over HTTP, on the loopback only."""
    tls = spec.tls
    lines = _plaintext_lines(spec, ports) if tls is None else _tls_lines(spec, tls, ports)
    if spec.clustered:
        lines += [
            "# One of a cluster's nodes: a side that sees a minority of the nodes pauses (its",
            "# clients fail over to the majority's nodes) until the cluster is whole again.",
            "cluster_partition_handling = pause_minority",
        ]
    lines += [
        "# The largest message: mlanet's 256 KiB cap plus 64 KiB for hop records.",
        f"max_message_size = {MAX_MESSAGE_SIZE}",
        "# The only user with a password at start; no guest.",
        f"default_user = {ADMIN_USER}",
        f"default_pass = {admin_password}",
        "default_user_tags.administrator = true",
        "log.console = false",
        f"log.file = {log_folder / 'rabbit.log'}",
        "log.file.level = info",
    ]
    return "\n".join(lines) + "\n"


def _plaintext_lines(spec: LocalBrokerSpec, ports: Ports) -> list[str]:
    return [
        f"# Generated by mlanet (nodes/local/brokers.py) for {spec.network}: local development.",
        "# AMQP and the management API in plaintext, on the loopback interface only.",
        f"listeners.tcp.1 = 127.0.0.1:{ports.amqp}",
        "listeners.ssl = none",
        "auth_mechanisms.1 = PLAIN",
        "auth_mechanisms.2 = AMQPLAIN",
        f"management.tcp.port = {ports.management}",
        "management.tcp.ip = 127.0.0.1",
    ]


def _tls_lines(spec: LocalBrokerSpec, tls: BrokerTlsFiles, ports: Ports) -> list[str]:
    return [
        "# Generated by mlanet (nodes/local/brokers.py) for the network "
        f"{spec.network}'s own broker.",
        "# AMQP: TLS only, unless plaintext was asked for (local development).",
        (
            f"listeners.tcp.1 = 127.0.0.1:{ports.amqp}"
            if ports.amqp is not None
            else "listeners.tcp = none"
        ),
        f"listeners.ssl.1 = 127.0.0.1:{ports.amqps}",
        f"ssl_options.cacertfile = {tls.client_cas}",
        f"ssl_options.certfile = {tls.certfile}",
        f"ssl_options.keyfile = {tls.keyfile}",
        "ssl_options.verify = verify_peer",
        f"ssl_options.fail_if_no_peer_cert = {str(spec.fail_if_no_peer_cert).lower()}",
        "ssl_options.versions.1 = tlsv1.3",
        "ssl_options.versions.2 = tlsv1.2",
        "# A link user logs in by its client certificate: the user is the certificate's CN.",
        "auth_mechanisms.1 = EXTERNAL",
        "auth_mechanisms.2 = PLAIN",
        "ssl_cert_login_from = common_name",
        "# The management API: HTTPS on the loopback interface only.",
        f"management.ssl.port = {ports.management}",
        "management.ssl.ip = 127.0.0.1",
        f"management.ssl.cacertfile = {tls.server_ca}",
        f"management.ssl.certfile = {tls.certfile}",
        f"management.ssl.keyfile = {tls.keyfile}",
    ]


def _write_private(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)


def _open_files_limit(wanted: int) -> int:
    """``wanted``, or this process's hard limit when that is lower (raising it needs a
    privilege that even root lacks in a container)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)


class LocalBroker:
    """``async with LocalBroker(spec) as broker``: a started node, stopped and removed at the
    end."""

    def __init__(
        self,
        spec: LocalBrokerSpec,
        *,
        nodename: str | None = None,
        ports: Ports | None = None,
        admin_password: str | None = None,
    ) -> None:
        """Write the node's folder (nothing is started). ``nodename`` (default
        ``mlanet-<network>-<random>@localhost``), ``ports`` (default: free ones) and
        ``admin_password`` (default: a random one) are given for a cluster's nodes."""
        if ports is None:
            amqps, management, dist, amqp = free_ports(4)
            ports = Ports(
                amqps if spec.tls is not None else None,
                management,
                dist,
                amqp if spec.plaintext or spec.tls is None else None,
            )
        self._attach(
            spec,
            nodename or f"mlanet-{spec.network}-{secrets.token_hex(3)}@localhost",
            ports,
            admin_password or secrets.token_urlsafe(24),
        )
        self._write_files()

    def _attach(self, spec: LocalBrokerSpec, nodename: str, ports: Ports, password: str) -> None:
        self.spec = spec
        self.root = spec.root
        self.nodename = nodename
        self.ports = ports
        scheme = "http" if spec.tls is None else "https"
        self.admin = ManagementEndpoint(
            f"{scheme}://127.0.0.1:{ports.management}", ADMIN_USER, password
        )
        self._launched = False  # start() ran in this process
        self._server, self._ctl = server_scripts()
        self._env = self._environment()

    def record(self) -> BrokerRecord:
        """What :meth:`attach` needs to find this broker again from another process (``mlanet
        federation down`` after ``init`` returned): no secret, its root holds the password."""
        return BrokerRecord(self.spec, self.nodename, self.ports)

    @classmethod
    def attach(cls, record: BrokerRecord) -> LocalBroker:
        """The broker ``record`` names, running or not, as it was written: nothing is written
        again; its administrator's password is read from its root. LocalBrokerError when the
        root is gone or holds no password (it was removed, or never made)."""
        try:
            password = (record.spec.root / "admin.password").read_text(encoding="ascii").strip()
        except OSError:
            raise LocalBrokerError(
                f"the broker of {record.spec.network} has no folder at {record.spec.root} (its "
                "administrator's password is kept there): it was removed, or never made"
            ) from None
        broker = cls.__new__(cls)
        broker._attach(record.spec, record.nodename, record.ports, password)
        return broker

    # --- files ----------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.root / "rabbitmq.conf"

    @property
    def log_folder(self) -> Path:
        return self.root / "log"

    @property
    def home(self) -> Path:
        """HOME of the node and its rabbitmqctl: where its Erlang cookie is."""
        return self.spec.home if self.spec.home is not None else self.root / "home"

    @property
    def amqp_port(self) -> int:
        """The port clients connect to: AMQPS, or plaintext AMQP on a node without TLS."""
        port = self.ports.amqps if self.ports.amqps is not None else self.ports.amqp
        if port is None:
            raise LocalBrokerError(f"broker {self.nodename} has no AMQP listener")
        return port

    def _write_files(self) -> None:
        home = self.home
        for folder in (home, self.root / "mnesia", self.log_folder):
            folder.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        cookie = home / ".erlang.cookie"
        if not cookie.exists():
            _write_private(cookie, secrets.token_hex(20).upper())
            cookie.chmod(0o400)
        (self.root / "enabled_plugins").write_text(
            render_plugins(tls=self.spec.tls is not None), encoding="ascii"
        )
        (self.root / "rabbitmq-env.conf").write_text("", encoding="ascii")
        _write_private(
            self.config_file,
            render_config(self.spec, self.ports, self.admin.password, self.log_folder),
        )
        _write_private(self.root / "admin.password", self.admin.password + "\n")

    def _environment(self) -> dict[str, str]:
        home = self.home
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
        return {
            **keep,
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_DIST_PORT": str(self.ports.dist),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.log_folder),
            "RABBITMQ_PID_FILE": str(self.root / "rabbit.pid"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(self.root / "plugins-expand"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.config_file),
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    # --- clients --------------------------------------------------------------------------------
    def server_context(self) -> ssl.SSLContext:
        """A context that trusts only this broker's CA (for the management API and probes)."""
        if self.spec.tls is None:
            raise LocalBrokerError(f"broker {self.nodename} has no TLS listener")
        return client_context(load_certificates(self.spec.tls.server_ca))

    def management(self, timeout: float = 10.0) -> Management:
        """The management API as the administrator, over HTTPS checked against the broker's CA
        (over HTTP on a node without TLS)."""
        verify = None if self.spec.tls is None else self.server_context()
        return Management(self.admin, timeout=timeout, verify=verify)

    # --- lifecycle ------------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop(remove=False)  # its log says why
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def pid(self) -> int | None:
        try:
            return int((self.root / "rabbit.pid").read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            return None

    async def start(self, within: float = 120.0) -> None:
        """Start the node under the raised open-file limit and wait until it serves AMQPS (AMQP
        without TLS) and the management API."""
        limit = _open_files_limit(self.spec.nofile)
        self._launched = True  # stop() waits for the pid file of a start it interrupted
        process = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            'ulimit -n "$1" && exec "$0" -detached',
            self._server,
            str(limit),
            env=self._env,
            cwd=self.root,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, err = await asyncio.wait_for(process.communicate(), within)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise LocalBrokerError(
                f"rabbitmq-server for {self.spec.network} did not detach within {within:.0f} s"
            ) from None
        if process.returncode != 0:
            self._launched = False  # no node went on in the background
            first = err.decode(errors="replace").strip().splitlines()[:1]
            raise LocalBrokerError(
                f"rabbitmq-server for {self.spec.network} did not start: "
                f"{first[0] if first else 'exit status ' + str(process.returncode)}"
            )
        await self.wait_serving(within)

    async def wait_serving(self, within: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        async with self.management(timeout=5.0) as api:
            while True:
                try:
                    await api.overview()
                    if await self._port_open(self.amqp_port):
                        return
                except TransportError:
                    pass  # not up yet
                if loop.time() > deadline:
                    amqp, http = ("AMQP", "HTTP") if self.spec.tls is None else ("AMQPS", "HTTPS")
                    raise LocalBrokerError(
                        f"broker {self.nodename} did not serve {amqp} on :{self.amqp_port} and "
                        f"{http} on :{self.ports.management} within {within:.0f} s; see its log "
                        f"in {self.log_folder}"
                    )
                await asyncio.sleep(0.25)

    @staticmethod
    async def _port_open(port: int) -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        return True

    async def stop(self, within: float = 60.0, *, remove: bool = True) -> None:
        """Stop the node (SIGKILL when it does not stop within ``within``) and remove its root
        folder (unless ``remove`` is False: after a failed start its log says why). Idempotent.
        A start interrupted before the node wrote its pid file (a time limit ran out) is waited
        for a few seconds, so that the node does not go on without its folder."""
        pid = self.pid
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PID_FILE_WITHIN
        while pid is None and self._launched and loop.time() < deadline:
            await asyncio.sleep(0.2)
            pid = self.pid
        if pid is not None and process_alive(pid):
            with contextlib.suppress(LocalBrokerError):  # killed below if it did not stop
                await self.ctl("stop", within=within)
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
            deadline = loop.time() + 10.0
            while process_alive(pid):
                if loop.time() > deadline:
                    raise LocalBrokerError(f"broker {self.nodename} (pid {pid}) did not exit")
                await asyncio.sleep(0.1)
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)

    async def ctl(self, *args: str, within: float = 60.0) -> str:
        """``rabbitmqctl -n <this node> ...``; LocalBrokerError when it fails or times out."""
        process = await asyncio.create_subprocess_exec(
            self._ctl,
            "-q",
            "-n",
            self.nodename,
            *args,
            env=self._env,
            cwd=self.root,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), within)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise LocalBrokerError(
                f"rabbitmqctl {args[0]} on {self.nodename} did not finish within {within:.0f} s"
            ) from None
        if process.returncode != 0:
            first = err.decode(errors="replace").strip().splitlines()[:1]
            raise LocalBrokerError(
                f"rabbitmqctl {args[0]} on {self.nodename} failed: {first[0] if first else '?'}"
            )
        return out.decode(errors="replace")

    async def open_files_limit(self) -> int | None:
        """The open-file limit the running node reports, or None when it does not say."""
        found = await self.ctl(
            "eval", "proplists:get_value(total_limit, file_handle_cache:info([total_limit]))."
        )
        digits = "".join(ch for ch in found if ch.isdigit())
        return int(digits) if digits else None
