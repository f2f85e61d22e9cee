"""What operators see of one node, as frozen values: :class:`NodeStatus` and its parts.

Gathered by ``nodes/operator/status.py``, judged by ``nodes/operator/alerts.py``, shown by
``mlanet status`` (text or ``--json``), the metrics and the dashboard.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from mlanet.broker.management import QueueFigures
from mlanet.nodes.operator.links import LinkView
from mlanet.nodes.runtime.replicas import ReplicaRow

__all__ = [
    "Alert",
    "ExpiryView",
    "KeyView",
    "NodeStatus",
    "PeerQuarantine",
    "QuarantineEntry",
    "QuarantineView",
    "ReceiptView",
    "ReplicasView",
    "human_duration",
    "iso",
]


@dataclass(frozen=True)
class QuarantineEntry:
    at: float
    reason: str
    detail: str


@dataclass(frozen=True)
class PeerQuarantine:
    """One peer's entries in the quarantine (``local``: the node's local ways in)."""

    waiting: int
    without_body: int  # kept as metadata only: the peer's quarantine bound was reached
    last_minute: int  # refused within the last minute (the refusal-rate alert)


@dataclass(frozen=True)
class QuarantineView:
    # entries waiting: in the quarantine store, and in mlanet.quarantine for the node to take in
    depth: int | None
    by_reason: dict[str, int]  # messages this node quarantined, by reason code (all recorded)
    recent: list[QuarantineEntry]
    peers: dict[str, PeerQuarantine] = field(default_factory=dict)


@dataclass(frozen=True)
class ReceiptView:
    awaiting: int  # own messages sent and not yet acknowledged by a receipt
    oldest_age: float | None
    overdue: int  # of them, waiting longer than the alert threshold
    states: dict[str, int]  # all own messages by state
    unmatched: int = 0  # receipts in the last day for messages this node has no record of
    failed_recent: int = 0  # own messages failed or given up on within failed_window_seconds


@dataclass(frozen=True)
class KeyView:
    """One of this network's keys as the held directory lists it now."""

    key_id: str
    state: str  # schemas/validity.py KeyState: valid, not yet valid, expired, revoked
    ends: float | None  # its not_after or its revocation, the earlier (None: neither)


@dataclass(frozen=True)
class ExpiryView:
    network_keys: dict[str, float | None]  # network -> latest key expiry (None: no expiry)
    directory_version: int
    directory_issued: float
    directory_expires: float  # when the node stops trusting it (directory_expiry)
    directory_expiry_signed: bool  # the coordinator set valid_until
    # network -> when its last broker CA stops being trusted (networks that list TLS only)
    network_cas: dict[str, float] = field(default_factory=dict)
    link_ca: float | None = None  # when the coordinator's last link CA does (None: none listed)
    # when this node's own certificates expire: [link.tls] cert_file, [broker.tls] cert_file
    certificates: dict[str, float] = field(default_factory=dict)
    # this network's encryption keys (what origins seal its payloads for), in directory order
    encryption_keys: tuple[KeyView, ...] = ()

    def encryption_keys_end(self) -> float | None:
        """When the last of this network's encryption keys in use (valid, or about to be)
        stops being valid; None when one has no end, or none is in use."""
        ends = [k.ends for k in self.encryption_keys if k.state in ("valid", "not yet valid")]
        if not ends or any(end is None for end in ends):
            return None
        return max(end for end in ends if end is not None)


@dataclass(frozen=True)
class ReplicasView:
    """The replicas of this network's node as its database lists them (``[database]``,
    ``nodes/runtime/replicas.py``): every one that ever joined, by name."""

    rows: tuple[ReplicaRow, ...] = ()
    problem: str | None = None  # why they could not be read (then there are no rows)
    # what another network could use against the replicas in their database (database_exposure)
    exposure: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "replicas": [{**row.to_json(), "started_at": iso(row.started_at)} for row in self.rows],
            "lease_seconds": self.rows[0].lease if self.rows else None,
            "problem": self.problem,
            "exposure": list(self.exposure),
        }


@dataclass(frozen=True)
class Alert:
    code: str  # node_down, link_down, peer_silent, quarantine_depth, own_failed, ...
    severity: str  # warning, critical
    subject: str  # the peer, network or queue concerned ("" for the node)
    text: str


@dataclass(frozen=True)
class NodeStatus:
    network: str
    at: float
    node_running: bool | None  # the node consumes its inbox; None: cannot tell
    management: bool  # the management API answered
    queues: list[QueueFigures]
    links: list[LinkView]
    quarantine: QuarantineView
    receipts: ReceiptView | None  # None: the node's state cannot be read
    expiry: ExpiryView
    alerts: list[Alert]
    unavailable: list[str] = field(default_factory=list)  # what cannot be shown, and why
    foreign: list[str] = field(default_factory=list)  # on the node's vhost, not put by the node
    dashboard: str | None = None  # the running node's dashboard and /metrics
    replicas: ReplicasView | None = None  # None: the node runs alone (no [database])

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form: timestamps as ISO 8601 UTC, durations in seconds."""
        raw = asdict(self)
        raw["at"] = iso(self.at)
        raw["replicas"] = None if self.replicas is None else self.replicas.to_json()
        for link in raw["links"]:
            link["last_success"] = iso(link["last_success"])
            link["down_since"] = iso(link["down_since"])
            link["unanswered_since"] = iso(link["unanswered_since"])
        for entry in raw["quarantine"]["recent"]:
            entry["at"] = iso(entry["at"])
        expiry = raw["expiry"]
        expiry["network_keys"] = {k: iso(v) for k, v in expiry["network_keys"].items()}
        expiry["directory_issued"] = iso(expiry["directory_issued"])
        expiry["directory_expires"] = iso(expiry["directory_expires"])
        expiry["network_cas"] = {k: iso(v) for k, v in expiry["network_cas"].items()}
        expiry["link_ca"] = iso(expiry["link_ca"])
        expiry["certificates"] = {k: iso(v) for k, v in expiry["certificates"].items()}
        for key in expiry["encryption_keys"]:
            key["ends"] = iso(key["ends"])
        return raw


def iso(value: float | None) -> str | None:
    """An epoch time as ISO 8601 UTC (``...Z``), to the second."""
    if value is None:
        return None
    return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def human_duration(seconds: float) -> str:
    """A duration as operators read it: 45s, 12m, 5h, 3d."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"
