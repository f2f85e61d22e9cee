"""The node's Prometheus metrics. One registry per node (several nodes may share a process in
tests).

- The message counters and the receipt-wait histogram are counts of the node's audit trail
  (``nodes/state/audit.py``), its durable record of every accept, refusal, forward, delivery,
  receipt and message given up on: :meth:`NodeMetrics.count` folds records in, in order, and the
  operator surface follows the trail (from its first record when the node starts), so the
  counters survive a restart and never disagree with the audit.
- The step timings are fed by the observer seam (they are not in any record: they start empty
  when the node starts).
- The gauges are set from each status poll.

Labels are bounded: peers and networks come from the directory, reasons from the reason-code
enum, kinds from the catalogue, queues from the node's own vhost and its doors, replica states
from :data:`REPLICA_STATES`. No label ever
carries case content or a message id.
"""

from __future__ import annotations

import math
import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from mlanet.broker import Reason
from mlanet.nodes.operator.views import NodeStatus
from mlanet.nodes.runtime.observe import Observer
from mlanet.nodes.state.audit import AuditRecord
from mlanet.nodes.state.journal import RECEIVED
from mlanet.schemas import KINDS

__all__ = ["REPLICA_STATES", "STEPS", "NodeMetrics"]

_REASONS = frozenset(reason.value for reason in Reason)
STEPS = ("verify", "validate", "unseal", "authorise", "route", "handle", "submit")
_STEP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# a replica by what its row says: running (its heartbeat within the lease), stale (running,
# but its heartbeat is older than the lease: not fenced yet), fenced, stopped
REPLICA_STATES = ("running", "stale", "fenced", "stopped")
_RECEIPT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


class NodeMetrics(Observer):
    """Everything ``/metrics`` exposes for one node."""

    def __init__(self, network: str, peers: tuple[str, ...]) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        self.received_total = Counter(
            "mlanet_messages_received",
            "Messages from peers that passed the pipeline.",
            ["peer"],
            registry=r,
        )
        self.submitted_total = Counter(
            "mlanet_messages_submitted",
            "Submissions of local contact points, signed.",
            ["kind"],
            registry=r,
        )
        self.forwarded_total = Counter(
            "mlanet_messages_forwarded",
            "Messages confirmed into the link to a peer.",
            ["peer"],
            registry=r,
        )
        self.delivered_total = Counter(
            "mlanet_messages_delivered",
            "Messages delivered to local contact points.",
            ["kind"],
            registry=r,
        )
        self.quarantined_total = Counter(
            "mlanet_messages_quarantined",
            "Messages refused into quarantine.",
            ["reason"],
            registry=r,
        )
        self.receipts_total = Counter(
            "mlanet_receipts_received", "Receipts for this node's own messages.", registry=r
        )
        self.undeliverable_total = Counter(
            "mlanet_messages_undeliverable",
            "Own messages given up on (no receipt in time).",
            registry=r,
        )
        self.step_seconds = Histogram(
            "mlanet_step_seconds",
            "Time a step of handling a message took.",
            ["step"],
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self.receipt_wait = Histogram(
            "mlanet_receipt_wait_seconds",
            "From sending an own message to its receipt.",
            buckets=_RECEIPT_BUCKETS,
            registry=r,
        )
        self.running = Gauge(
            "mlanet_node_running", "1 while the node consumes its inbox.", registry=r
        )
        self.management = Gauge(
            "mlanet_management_api_up",
            "1 when the management API answered the last poll.",
            registry=r,
        )
        self.started = Gauge(
            "mlanet_node_start_timestamp_seconds", "When the node started.", registry=r
        )
        self.queue_messages = Gauge(
            "mlanet_queue_messages",
            "Messages in a queue of the node's vhost.",
            ["queue"],
            registry=r,
        )
        self.queue_consumers = Gauge(
            "mlanet_queue_consumers",
            "Consumers of a queue of the node's vhost.",
            ["queue"],
            registry=r,
        )
        self.link_up = Gauge(
            "mlanet_link_up", "1 when the link to a peer is up.", ["peer"], registry=r
        )
        self.link_backlog = Gauge(
            "mlanet_link_backlog_messages",
            "Messages waiting for the link to a peer.",
            ["peer"],
            registry=r,
        )
        self.link_oldest = Gauge(
            "mlanet_link_oldest_waiting_seconds",
            "Age of the oldest message waiting for the link (0 when none wait).",
            ["peer"],
            registry=r,
        )
        self.link_success = Gauge(
            "mlanet_link_last_success_timestamp_seconds",
            "When the link last handed a message to the peer (0: not seen since start).",
            ["peer"],
            registry=r,
        )
        self.quarantine_depth = Gauge(
            "mlanet_quarantine_messages", "Messages waiting in the quarantine.", registry=r
        )
        self.awaiting = Gauge(
            "mlanet_receipts_awaiting_messages", "Own messages awaiting a receipt.", registry=r
        )
        self.overdue = Gauge(
            "mlanet_receipts_overdue_messages",
            "Own messages awaiting a receipt past the alert threshold.",
            registry=r,
        )
        self.awaiting_oldest = Gauge(
            "mlanet_receipts_oldest_waiting_seconds",
            "How long the oldest own message has awaited its receipt.",
            registry=r,
        )
        self.failed = Gauge(
            "mlanet_own_failed_messages",
            "Own messages that failed (no route, a notice's reason, no receipt in time) within "
            "[operator.alerts] failed_window_seconds.",
            registry=r,
        )
        self.link_unanswered = Gauge(
            "mlanet_link_unanswered_seconds",
            "How long own messages the peer's broker accepted have waited with no receipt "
            "through that peer (0: none waiting).",
            ["peer"],
            registry=r,
        )
        self.key_expiry = Gauge(
            "mlanet_key_expiry_timestamp_seconds",
            "When the last key of this network or a peer stops being valid (its not_after or "
            "revoked_at; +Inf: a key without expiry).",
            ["network"],
            registry=r,
        )
        self.ca_expiry = Gauge(
            "mlanet_tls_ca_expiry_timestamp_seconds",
            "When the last CA certificate the directory lists stops being trusted: this "
            "network's or a peer's broker CA (network), the coordinator's link CA (network "
            '"link").',
            ["network"],
            registry=r,
        )
        self.directory_issued = Gauge(
            "mlanet_directory_issued_timestamp_seconds",
            "When the directory was issued.",
            registry=r,
        )
        self.directory_stale = Gauge(
            "mlanet_directory_stale_timestamp_seconds",
            "When the node stops trusting its directory and refuses new messages "
            "(directory_expired): its valid_until, else issued_at + [coordinator] "
            "max_directory_age_seconds.",
            registry=r,
        )
        self.replicas = Gauge(
            "mlanet_replicas",
            "Replicas of this network's node by state, as its database lists them ([database] "
            "only): running (heartbeat within the lease), stale (heartbeat older than the "
            "lease, not fenced yet), fenced, stopped.",
            ["state"],
            registry=r,
        )
        self.alerts = Gauge("mlanet_alerts", "Active alerts by severity.", ["severity"], registry=r)
        self.alert_active = Gauge(
            "mlanet_alert_active", "1 for each active alert.", ["code", "subject"], registry=r
        )
        self.network = network
        self._watched = {network, *peers}  # our key and our peers' keys
        self.started.set(time.time())
        for peer in peers:
            self.received_total.labels(peer)
            self.forwarded_total.labels(peer)
        for kind in KINDS:
            self.submitted_total.labels(kind)
            self.delivered_total.labels(kind)
        for reason in Reason:
            self.quarantined_total.labels(reason.value)
        self._steps = {step: self.step_seconds.labels(step) for step in STEPS}
        self._children: dict[tuple[int, str], Counter] = {}
        self.counted_through = 0  # the last audit record counted (its seq)
        for severity in ("warning", "critical"):
            self.alerts.labels(severity)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # --- the audit trail -----------------------------------------------------------------------
    def _child(self, metric: Counter, label: str) -> Counter:
        """A labelled child, looked up once (``labels()`` costs several times an ``inc()``)."""
        key = (id(metric), label)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(label)
        return child

    def count(self, record: AuditRecord) -> None:
        """Fold one audit record into the counters (records are counted once, in order)."""
        if record.seq <= self.counted_through:
            return
        self.counted_through = record.seq
        meta = record.meta
        came_from, via = meta.get("from"), meta.get("via")
        if (
            record.event in RECEIVED
            and isinstance(came_from, str)
            and came_from
            and via != "submit"
        ):
            self._child(self.received_total, came_from).inc()  # passed the pipeline
        label = meta.get("kind")
        kind = label if isinstance(label, str) and label in KINDS else None
        if record.event == "accepted" and via == "submit" and kind:
            self._child(self.submitted_total, kind).inc()
        elif record.event == "forwarded" and isinstance(meta.get("to"), str):
            self._child(self.forwarded_total, str(meta["to"])).inc()
        elif record.event == "delivered" and kind:
            self._child(self.delivered_total, kind).inc()
        elif record.event == "refused" and isinstance(reason := meta.get("reason"), str):
            if reason in _REASONS:
                self._child(self.quarantined_total, reason).inc()
        elif record.event == "receipt":
            self.receipts_total.inc()
            waited = meta.get("waited_s")
            if isinstance(waited, int | float):
                self.receipt_wait.observe(max(0.0, float(waited)))
        elif record.event == "undeliverable":
            self.undeliverable_total.inc()

    # --- the observer seam ---------------------------------------------------------------------
    def timing(self, step: str, seconds: float) -> None:
        child = self._steps.get(step)
        if child is not None:  # unknown steps are ignored: labels stay bounded
            child.observe(seconds)

    # --- each status poll ----------------------------------------------------------------------

    def update(self, status: NodeStatus) -> None:
        """Set every gauge from one status poll."""
        self.running.set(1 if status.node_running else 0)
        self.management.set(1 if status.management else 0)
        self.queue_messages.clear()
        self.queue_consumers.clear()
        for queue in status.queues:
            if queue.messages is not None:
                self.queue_messages.labels(queue.name).set(queue.messages)
            if queue.consumers is not None:
                self.queue_consumers.labels(queue.name).set(queue.consumers)
        for link in status.links:
            self.link_up.labels(link.peer).set(1 if link.state == "up" else 0)
            if link.backlog is not None:
                self.link_backlog.labels(link.peer).set(link.backlog)
            self.link_oldest.labels(link.peer).set(link.oldest_waiting or 0)
            self.link_success.labels(link.peer).set(link.last_success or 0)
            unanswered = link.unanswered_since
            self.link_unanswered.labels(link.peer).set(
                0 if unanswered is None else max(0.0, status.at - unanswered)
            )
        self.quarantine_depth.set(status.quarantine.depth or 0)
        if status.receipts is not None:
            self.awaiting.set(status.receipts.awaiting)
            self.overdue.set(status.receipts.overdue)
            self.awaiting_oldest.set(status.receipts.oldest_age or 0)
            self.failed.set(status.receipts.failed_recent)
        self.key_expiry.clear()
        for network, expires in status.expiry.network_keys.items():
            if network in self._watched:
                self.key_expiry.labels(network).set(math.inf if expires is None else expires)
        self.ca_expiry.clear()
        for network, ends in status.expiry.network_cas.items():
            if network in self._watched:
                self.ca_expiry.labels(network).set(ends)
        if status.expiry.link_ca is not None:
            self.ca_expiry.labels("link").set(status.expiry.link_ca)
        self.directory_issued.set(status.expiry.directory_issued)
        self.directory_stale.set(status.expiry.directory_expires)
        self._update_replicas(status)
        self.alert_active.clear()
        counts = {"warning": 0, "critical": 0}
        for alert in status.alerts:
            counts[alert.severity] = counts.get(alert.severity, 0) + 1
            self.alert_active.labels(alert.code, alert.subject).set(1)
        for severity, count in counts.items():
            self.alerts.labels(severity).set(count)

    def _update_replicas(self, status: NodeStatus) -> None:
        """Replicas by state; no sample when the node runs alone or its database did not
        answer (unknown is not zero)."""
        self.replicas.clear()
        view = status.replicas
        if view is None or view.problem is not None:
            return
        counts = dict.fromkeys(REPLICA_STATES, 0)
        for row in view.rows:
            state = "stale" if row.state == "running" and not row.healthy else row.state
            if state in counts:  # any other word stays out: labels stay bounded
                counts[state] += 1
        for state, count in counts.items():
            self.replicas.labels(state).set(count)
