"""A node's configuration: one TOML file, validated once at the entry point, then passed down.

Secrets are file paths (broker passwords, the signing key, TLS keys); relative paths are
resolved against the directory of the config file. Example: ``nodes/examples/node.toml``.

TLS to the node's own broker is ``[broker.tls]`` (:class:`BrokerTls`): the CA file the broker's
certificate must come from, optionally a client certificate and its key, the name to check, and
how the node logs in (its password over TLS, or its certificate with RabbitMQ's EXTERNAL). The
files are checked when the config is loaded; see "TLS to the node's own broker" in
docs/OPERATIONS.md.
"""

from __future__ import annotations

import functools
import os
import ssl
import stat
import time
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import quote, urlencode, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlanet.broker.errors import ConfigError
from mlanet.broker.management import ManagementEndpoint
from mlanet.broker.routing import RouteRule
from mlanet.broker.tls import TlsError, client_context, load_certificates, not_after
from mlanet.nodes.directory.config import CoordinatorConfig, LinkConfig
from mlanet.schemas import KINDS, Kind, NetworkId
from mlanet.schemas.directory import BrokerAddress
from mlanet.schemas.header import MAX_RETENTION_DAYS, MIN_RETENTION_DAYS

__all__ = [
    "Alerts",
    "BrokerConfig",
    "BrokerTls",
    "ContactPointsConfig",
    "DatabaseConfig",
    "Limits",
    "NodeConfig",
    "OperatorConfig",
    "PeerConfig",
    "PeerLimits",
    "Policy",
    "Receipts",
    "load_config",
]


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


AMQPS_PORT = 5671
MANAGEMENT_TLS_PORT = 15671


def _private_key_checked(path: Path) -> None:
    """A private key file must be the running user's and closed to everyone else (as the
    state folder's files are, ``nodes/state/state_dir.py``)."""
    info = path.stat()
    if info.st_uid != os.geteuid():
        raise ValueError(f"key_file {path.name} belongs to another user; run mlanet as its owner")
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(
            f"key_file {path.name} is open to other users (mode "
            f"{stat.S_IMODE(info.st_mode):04o}): run chmod 600 {path}"
        )


class BrokerTls(_Config):
    """``[broker.tls]``: TLS to this network's own broker (AMQPS and the management API).

    ``ca_file`` holds the CA certificate(s) the broker's certificate must come from (only
    these, never the system's store; verification cannot be turned off). ``cert_file`` and
    ``key_file``: the node's client certificate, for a broker that asks for one (mutual TLS) or
    for ``login = "certificate"`` (RabbitMQ's EXTERNAL: its common name is the broker user).
    ``server_name``: the name checked in the broker's certificate when it is not ``host``.
    ``login = "password"`` logs in with ``password_file`` over TLS. The management API always
    takes the password (it has no certificate login)."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9.-]{1,253}$")
    login: Literal["password", "certificate"] = "password"

    @model_validator(mode="after")
    def _files_usable(self) -> Self:
        """Every file readable and what it should be: a key that matches its certificate, only
        its owner can read it, and a certificate that has not expired."""
        try:
            load_certificates(self.ca_file)
        except TlsError as exc:
            raise ValueError(f"ca_file: {exc.detail}") from None
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both or neither")
        if self.login == "certificate" and self.cert_file is None:
            raise ValueError('login = "certificate" needs cert_file and key_file')
        if self.cert_file is not None and self.key_file is not None:
            try:
                _private_key_checked(self.key_file)
            except OSError:
                raise ValueError(f"key_file {self.key_file.name} cannot be read") from None
            try:
                certificate = load_certificates(self.cert_file)[0]
            except TlsError as exc:
                raise ValueError(f"cert_file: {exc.detail}") from None
            try:
                key = serialization.load_pem_private_key(self.key_file.read_bytes(), None)
            except (OSError, ValueError, TypeError):
                raise ValueError(
                    f"key_file {self.key_file.name} holds no unencrypted PEM private key"
                ) from None
            if key.public_key() != certificate.public_key():
                raise ValueError(
                    f"key_file {self.key_file.name} is not the key of cert_file "
                    f"{self.cert_file.name}"
                )
            if not_after(certificate).timestamp() < time.time():
                raise ValueError(f"cert_file {self.cert_file.name} has expired: renew it")
        return self

    def common_name(self) -> str | None:
        """The client certificate's common name (the user EXTERNAL logs in as)."""
        if self.cert_file is None:
            return None
        names = load_certificates(self.cert_file)[0].subject.get_attributes_for_oid(
            NameOID.COMMON_NAME
        )
        return str(names[0].value) if names else None

    def context(self) -> ssl.SSLContext:
        """A client context that trusts ``ca_file`` only and presents the client certificate
        when one is configured (built once per process for these files)."""
        return _context(self.ca_file, self.cert_file, self.key_file)

    def query(self, *, client_certificate: bool = True, external: bool = False) -> dict[str, str]:
        """The TLS part of an ``amqps://`` URL's query (``mlanet.broker.transport.tls_query``:
        the same keys a RabbitMQ shovel URI takes)."""
        query = {"cacertfile": str(self.ca_file), "verify": "verify_peer"}
        if client_certificate and self.cert_file is not None and self.key_file is not None:
            query |= {"certfile": str(self.cert_file), "keyfile": str(self.key_file)}
        if self.server_name is not None:
            query["server_name_indication"] = self.server_name
        if external:
            query["auth_mechanism"] = "external"
        return query


@functools.cache
def _context(ca_file: Path, cert_file: Path | None, key_file: Path | None) -> ssl.SSLContext:
    try:
        return client_context(load_certificates(ca_file), cert_file=cert_file, key_file=key_file)
    except TlsError as exc:
        raise ConfigError(f"[broker.tls]: {exc}") from exc


def _cluster_node(value: str) -> str:
    """``host:port`` of one of the cluster's other nodes."""
    host, _, port = value.rpartition(":")
    named = 0 < len(host) <= 253 and all(c.isascii() and (c.isalnum() or c in ".-") for c in host)
    if not named or not (port.isascii() and port.isdigit()):
        raise ValueError(f"{value!r} is not host:port (a name or IPv4 address, then a port)")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: port {port} is not 1-65535")
    return value


ClusterNode = Annotated[str, Field(max_length=260), AfterValidator(_cluster_node)]
ClusterManagementUrl = Annotated[str, Field(pattern=r"^https?://[^\s@/]+(/[^\s]*)?$")]


class BrokerConfig(_Config):
    """This network's own broker. With ``[broker.tls]`` the node speaks AMQPS (default port
    5671) and the management API is HTTPS (default ``https://<host>:15671``), both checked
    against the same CA file; plaintext is never tried.

    A broker that is a RabbitMQ cluster: ``cluster`` names its other nodes (``"host:port"``),
    tried in order when ``host:port`` does not answer or the connection drops (the transport's
    failover, ``broker/transport.py``), and ``cluster_management_urls`` their management APIs,
    tried in order when ``management_url`` does not answer. With TLS every node's certificate
    must name its host (or ``server_name``)."""

    host: str = "127.0.0.1"
    port: int = 5672
    vhost: str
    user: str
    password_file: Path
    management_url: str = "http://127.0.0.1:15672"
    heartbeat: int = Field(default=15, ge=1, le=600)
    tls: BrokerTls | None = None
    cluster: tuple[ClusterNode, ...] = Field(default=(), max_length=16)
    cluster_management_urls: tuple[ClusterManagementUrl, ...] = Field(default=(), max_length=16)

    @model_validator(mode="before")
    @classmethod
    def _tls_defaults(cls, data: Any) -> Any:
        """With TLS and no port or management URL given: the TLS ones."""
        if isinstance(data, dict) and data.get("tls") is not None:
            data = dict(data)
            data.setdefault("port", AMQPS_PORT)
            host = data.get("host", "127.0.0.1")
            data.setdefault("management_url", f"https://{host}:{MANAGEMENT_TLS_PORT}")
        return data

    @model_validator(mode="after")
    def _tls_everywhere(self) -> Self:
        if self.tls is None:
            return self
        if urlsplit(self.management_url).scheme != "https":
            raise ValueError(
                "management_url must be https:// when [broker.tls] is set (the password would "
                "cross the network in clear): the broker's management.ssl listener, e.g. "
                f"https://{self.host}:{MANAGEMENT_TLS_PORT}"
            )
        if any(urlsplit(url).scheme != "https" for url in self.cluster_management_urls):
            raise ValueError(
                "cluster_management_urls must be https:// when [broker.tls] is set, as "
                "management_url is (each node's management.ssl listener)"
            )
        if self.tls.login == "certificate" and self.tls.common_name() != self.user:
            raise ValueError(
                f"the client certificate's common name is {self.tls.common_name()!r}, not "
                f'user {self.user!r}: with login = "certificate" the broker logs the node in '
                "as that name (ssl_cert_login_from = common_name)"
            )
        return self

    def management_endpoint(self, user: str, password: str) -> ManagementEndpoint:
        """The management API as ``user``, checked against ``[broker.tls] ca_file`` when set
        (the cluster's other nodes' APIs tried in order when it does not answer)."""
        others = self.cluster_management_urls
        if self.tls is None:
            return ManagementEndpoint(self.management_url, user, password, fallback_urls=others)
        return ManagementEndpoint(
            self.management_url,
            user,
            password,
            self.tls.context(),
            self.tls.server_name,
            fallback_urls=others,
        )

    def url(self, user: str, password: str, *, as_node: bool = False) -> str:
        """An AMQP URL of this broker and vhost as ``user``: ``amqps://`` with the TLS keys
        when ``[broker.tls]`` is set. Only the node itself (``as_node``) presents the node's
        client certificate and logs in by it (``login = "certificate"``); a contact point logs
        in with its own password."""
        tls = self.tls
        # the cluster's other nodes: the transport fails over to them (broker/transport.py)
        cluster = {"cluster": ",".join(self.cluster)} if self.cluster else {}
        if tls is None:
            url = _amqp_url(self.host, self.port, self.vhost, user, password, self.heartbeat)
            return f"{url}&{urlencode(cluster)}" if cluster else url
        external = as_node and tls.login == "certificate"
        query = {"heartbeat": str(self.heartbeat)} | cluster
        query |= tls.query(client_certificate=as_node, external=external)
        login = "" if external else f"{quote(user, safe='')}:{quote(password, safe='')}@"
        return f"amqps://{login}{self.host}:{self.port}/{quote(self.vhost, safe='')}?" + urlencode(
            query
        )


class PeerLimits(_Config):
    """What one peer may cost this node (``docs/OPERATIONS.md``, "A noisy peer").

    Its share of the node: a token bucket of ``rate`` messages per second (``burst`` at once),
    with at most ``prefetch`` of its messages in the node at a time (default:
    ``limits.prefetch``). Its inbox queue holds at most ``queue_messages`` messages and
    ``queue_bytes`` bytes; beyond that the broker refuses the peer's publishes
    (``reject-publish``), and its link keeps the messages on its side and retries. Its refused
    messages keep their bodies in the quarantine up to ``quarantine_messages`` and
    ``quarantine_bytes``; beyond that, their metadata only (``nodes/state/quarantine_store.py``).
    """

    rate: float = Field(default=1000.0, gt=0, le=1_000_000)
    burst: int = Field(default=1000, ge=1, le=1_000_000)
    prefetch: int | None = Field(default=None, ge=1, le=5000)
    queue_messages: int = Field(default=50_000, ge=1, le=100_000_000)
    queue_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024, le=2**40)
    quarantine_messages: int = Field(default=10_000, ge=1, le=100_000_000)
    quarantine_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024, le=2**40)


class PeerConfig(_Config):
    """A linked peer network: our credentials at its broker, and what it may send us."""

    network: NetworkId
    user: str
    password_file: Path | None = None  # a plaintext link's login (local development)
    kinds: tuple[Kind, ...] = KINDS
    limits: PeerLimits | None = None  # None: [limits.peer]


class Limits(_Config):
    max_message_bytes: int = Field(default=256 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_clock_skew_seconds: int = Field(default=300, ge=0)
    max_age_seconds: int = Field(default=30 * 86400, ge=60)
    prefetch: int = Field(default=64, ge=1, le=5000)
    delivery_limit: int = Field(default=5, ge=1, le=100)
    # bound of each mlanet.deliver.<contact point> (reject-publish, see nodes/runtime/fairness.py)
    deliver_queue_messages: int = Field(default=100_000, ge=1, le=100_000_000)
    deliver_queue_bytes: int = Field(default=1024 * 1024 * 1024, ge=1024 * 1024, le=2**40)
    peer: PeerLimits = PeerLimits()  # every peer's, unless its [[peers]] table has [peers.limits]


class Receipts(_Config):
    retry_after_seconds: float = Field(default=60.0, gt=0)
    undeliverable_after_seconds: float = Field(default=86400.0, gt=0)
    check_every_seconds: float = Field(default=5.0, gt=0)


class Alerts(_Config):
    """Thresholds past which status, metrics and the dashboard raise an alert (the table is in
    docs/OPERATIONS.md, "Watching a node"). The two expiry windows are also when the node logs
    ``expiry_warning``; when the directory expires is ``[coordinator]`` (``directory_expiry``)."""

    link_down_seconds: float = Field(default=60.0, ge=0)  # link down or stalled this long
    backlog_messages: int = Field(default=1000, ge=1)  # messages waiting in mlanet.out.<peer>
    oldest_waiting_seconds: float = Field(default=600.0, gt=0)  # oldest of them waited this long
    receipt_overdue_seconds: float = Field(default=3600.0, gt=0)  # sent, no receipt this long
    # own messages handed to a peer's broker, and nothing back through that peer this long
    peer_silent_seconds: float = Field(default=600.0, gt=0)
    key_expiry_days: float = Field(default=30.0, ge=0)  # a key expires within this many days
    directory_expiry_days: float = Field(default=14.0, ge=0)  # the directory expires within
    refusals_per_minute: int = Field(default=600, ge=1)  # one peer's refusals in the last minute
    # entries waiting in the quarantine: 1, so one refused message is never "ALERTS: none"
    quarantine_messages: int = Field(default=1, ge=1)
    # own messages that failed (no_route, a notice's reason, undeliverable) within the window
    failed_messages: int = Field(default=1, ge=1)
    failed_window_seconds: float = Field(default=86400.0, gt=0)
    # Refused when present: the node's trust in its directory ends at one moment only.
    directory_max_age_days: float | None = None

    @model_validator(mode="after")
    def _one_directory_expiry(self) -> Self:
        if self.directory_max_age_days is not None:
            raise ValueError(
                "directory_max_age_days is no longer read: status, metrics and alerts use the "
                "moment the node itself stops trusting the directory ([coordinator] "
                "max_directory_age_seconds when it has no valid_until); remove it"
            )
        return self


class OperatorConfig(_Config):
    """The node's HTTP surface for operators: /metrics and a read-only dashboard."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)  # 0: any free port (see state_dir)
    password_file: Path | None = None  # scrypt hash (mlanet operator password); no file: no login
    session_minutes: int = Field(default=480, ge=1, le=7 * 24 * 60)
    secure_cookie: bool = False  # set when a TLS proxy serves the dashboard
    login_attempts_per_minute: int = Field(default=5, ge=1, le=1000)
    poll_seconds: float = Field(default=5.0, ge=0.2, le=3600)
    alerts: Alerts = Alerts()


class ContactPointsConfig(_Config):
    """The contact points this node's operator vouches for (``mlanet contact-point add``): a
    folder of their public keys (``<contact point>.pub``) and broker users
    (``<contact point>.user``). Default: ``contact-points`` beside the config file."""

    keys: Path = Path("contact-points")


class Policy(_Config):
    """[policy]: the handling rules this network makes mandatory (docs/PROTOCOL.md section 17).

    ``members_only`` and ``direct_only``: every message a contact point of this network sends
    carries the rule, whatever it asked for. ``max_retention_days``: every such message carries
    a retention period of at most this many days (this many when it asked for none), and a
    message delivered here is kept at most this long, whatever its own period.
    ``require_sealed``: a sealed kind (a request, a receipt, a status update, an answer) that
    arrives for this network unsealed is refused (``not_sealed``), and none leaves unsealed
    (``no_encryption_key``; docs/PROTOCOL.md section 16)."""

    members_only: bool = False
    direct_only: bool = False
    max_retention_days: int | None = Field(
        default=None, ge=MIN_RETENTION_DAYS, le=MAX_RETENTION_DAYS
    )
    require_sealed: bool = False


class DatabaseConfig(_Config):
    """``[database]``: the node's state in PostgreSQL instead of the state folder's SQLite files
    (``nodes/state/db.py``). Several replicas of one network's node share it: each message's
    claim, the outbox's resends and the journal's chain are serialised by the database
    (docs/OPERATIONS.md, "Replicas"). The password is a file, never part of the URL."""

    # postgresql://user@host:port/dbname: a password in it is refused (password_file)
    url: str = Field(pattern=r"^postgres(ql)?://([^:@/]+@)?[^@/]+/[A-Za-z0-9_.-]+$")
    password_file: Path | None = None
    # the schema of this network's tables, in a database (and role) no other network uses
    schema_name: str = Field(default="mlanet", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    connect_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    statement_timeout_seconds: float = Field(default=15.0, gt=0, le=600)
    # a replica whose heartbeat is older than this is gone: its claims may be taken over
    replica_lease_seconds: float = Field(default=15.0, ge=2, le=3600)

    def password(self) -> str | None:
        return None if self.password_file is None else _read_secret(self.password_file)


class NodeConfig(_Config):
    network: NetworkId
    signing_key: Path
    directory: Path
    state_dir: Path
    broker: BrokerConfig
    peers: tuple[PeerConfig, ...] = ()
    routes: tuple[RouteRule, ...] = ()
    limits: Limits = Limits()
    receipts: Receipts = Receipts()
    operator: OperatorConfig = OperatorConfig()
    contact_points: ContactPointsConfig = ContactPointsConfig()
    policy: Policy = Policy()
    database: DatabaseConfig | None = None  # None: SQLite in state_dir
    coordinator: CoordinatorConfig | None = None
    link: LinkConfig | None = None
    # Refused when present: a node never runs with the broker administrator's password.
    provisioning: dict[str, object] | None = None
    log_level: str = "info"

    @model_validator(mode="after")
    def _no_administrator(self) -> Self:
        if self.provisioning is not None:
            raise ValueError(
                "[provisioning] is no longer read: a node never holds the broker "
                "administrator's password; remove the section (and its password file) and run "
                "mlanet directory provision when the directory links a new peer"
            )
        if self.link is not None and self.link.user == self.broker.user:
            raise ValueError(
                "[link] user must not be the node's own broker user: the link user may only "
                "write one inbox exchange at each peer (mlanet init names it <user>-link)"
            )
        return self

    @model_validator(mode="after")
    def _routes_use_peers(self) -> Self:
        if self.link is not None:
            return self  # peers come from the directory's links (routing checks them)
        peers = {peer.network for peer in self.peers}
        for rule in self.routes:
            if rule.via not in peers:
                raise ValueError(f"route via {rule.via} names no configured peer")
        return self

    def peer(self, network: str) -> PeerConfig | None:
        for peer in self.peers:
            if peer.network == network:
                return peer
        return None

    def peer_limits(self, network: str) -> PeerLimits:
        peer = self.peer(network)
        return peer.limits if peer is not None and peer.limits is not None else self.limits.peer

    def amqp_url(self) -> str:
        """The node's own broker as the node (``amqps://`` with ``[broker.tls]``)."""
        return self.broker.url(
            self.broker.user, _read_secret(self.broker.password_file), as_node=True
        )

    def management_endpoint(self) -> ManagementEndpoint:
        """The node's own broker's management API as the node's user."""
        return self.broker.management_endpoint(
            self.broker.user, _read_secret(self.broker.password_file)
        )

    def peer_amqp_url(self, peer: PeerConfig, address: BrokerAddress) -> str:
        """A plaintext link's URL at ``peer``'s broker, with its password (ConfigError when the
        peer has none)."""
        if peer.password_file is None:
            raise ConfigError(f"no password_file for the link to {peer.network}")
        return _amqp_url(
            address.host,
            address.port,
            address.vhost,
            peer.user,
            _read_secret(peer.password_file),
            self.broker.heartbeat,
        )


def _amqp_url(host: str, port: int, vhost: str, user: str, password: str, heartbeat: int) -> str:
    return (
        f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/"
        f"{quote(vhost, safe='')}?heartbeat={heartbeat}"
    )


def _read_secret(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"secret file {path.name} cannot be read") from exc


def _resolve(value: object, base: Path, keys: set[str]) -> object:
    if isinstance(value, dict):
        return {
            k: (
                str(base / v)
                if k in keys and isinstance(v, str) and not Path(v).is_absolute()
                else _resolve(v, base, keys)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_resolve(v, base, keys) for v in value]
    return value


_PATH_KEYS = {
    "signing_key",
    "directory",
    "state_dir",
    "password_file",
    "keys",
    "ca_folder",
    "ca_file",
    "cert_file",
    "key_file",
}


def load_config(path: Path) -> NodeConfig:
    """Read and validate a node's TOML file (raises ConfigError with a readable reason)."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    table = raw.setdefault("contact_points", {})
    if isinstance(table, dict):  # the default folder is beside the config file too
        table.setdefault("keys", ContactPointsConfig().keys.as_posix())
    try:
        return NodeConfig.model_validate(_resolve(raw, path.parent.resolve(), _PATH_KEYS))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path.name}: {problems}") from exc
