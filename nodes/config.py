"""A node's configuration: one TOML file, validated once at the entry point, then passed down.

Secrets are file paths (broker passwords, the signing key); relative paths are resolved against
the directory of the config file. Example: ``nodes/examples/node.toml``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Self
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlanet.broker.errors import ConfigError
from mlanet.broker.routing import RouteRule
from mlanet.nodes.directory.config import CoordinatorConfig, LinkConfig
from mlanet.schemas import KINDS, Kind, NetworkId
from mlanet.schemas.directory import BrokerAddress

__all__ = [
    "Alerts",
    "BrokerConfig",
    "ContactPointsConfig",
    "Limits",
    "NodeConfig",
    "OperatorConfig",
    "PeerConfig",
    "PeerLimits",
    "Receipts",
    "load_config",
]


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BrokerConfig(_Config):
    """This network's own broker."""

    host: str = "127.0.0.1"
    port: int = 5672
    vhost: str
    user: str
    password_file: Path
    management_url: str = "http://127.0.0.1:15672"
    heartbeat: int = Field(default=15, ge=1, le=600)


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
    password_file: Path
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
        return _amqp_url(
            self.broker.host,
            self.broker.port,
            self.broker.vhost,
            self.broker.user,
            _read_secret(self.broker.password_file),
            self.broker.heartbeat,
        )

    def peer_amqp_url(self, peer: PeerConfig, address: BrokerAddress) -> str:
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


_PATH_KEYS = {"signing_key", "directory", "state_dir", "password_file", "keys"}


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
