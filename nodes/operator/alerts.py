"""The alerts: every threshold in ``[operator.alerts]`` (``nodes/config.py``) that one node's
status crosses. The table, with each code's severity, is in docs/OPERATIONS.md ("Watching a
node"). Pure functions of a :class:`~mlanet.nodes.operator.views.NodeStatus`."""

from __future__ import annotations

from mlanet.broker.topology import contact_point_of_deliver_queue
from mlanet.nodes.config import NodeConfig
from mlanet.nodes.operator.views import Alert, NodeStatus, human_duration

__all__ = ["compute_alerts"]


def compute_alerts(status: NodeStatus, config: NodeConfig, now: float) -> list[Alert]:
    """Every threshold in ``[operator.alerts]`` that the status crosses, most severe first."""
    limits = config.operator.alerts
    found: list[Alert] = [
        Alert("broker_foreign", "critical", "", finding) for finding in status.foreign
    ]
    if status.node_running is False:
        found.append(
            Alert("node_down", "critical", "", "nobody consumes mlanet.inbox: the node is down")
        )
    for link in status.links:
        if link.transport == "refused" or (
            link.state == "down" and link.reason is not None and link.reason.startswith("tls_")
        ):
            # not an outage that may pass: the link cannot come up as configured
            found.append(Alert("link_refused", "critical", link.peer, link.reason or "refused"))
        elif link.state in ("down", "stalled"):
            down_for = None if link.down_since is None else now - link.down_since
            if down_for is None or down_for >= limits.link_down_seconds:
                why = f"shovel {link.shovel}" if link.state == "down" else "nothing handed over"
                if link.reason:
                    why += f": {link.reason}"
                since = "" if down_for is None else f" for {human_duration(down_for)}"
                found.append(
                    Alert("link_down", "critical", link.peer, f"link {link.state}{since} ({why})")
                )
        silent_for = None if link.unanswered_since is None else now - link.unanswered_since
        if (
            link.state == "up"
            and silent_for is not None
            and silent_for >= limits.peer_silent_seconds
        ):
            found.append(
                Alert(
                    "peer_silent",
                    "warning",
                    link.peer,
                    f"{link.peer}'s broker accepted {link.unanswered} own messages, and no "
                    f"receipt came back for {human_duration(silent_for)}: is {link.peer}'s "
                    "node (or a network behind it) consuming?",
                )
            )
        if link.backlog is not None and link.backlog >= limits.backlog_messages:
            found.append(
                Alert(
                    "link_backlog",
                    "warning",
                    link.peer,
                    f"{link.backlog} messages waiting (threshold {limits.backlog_messages})",
                )
            )
        elif (
            link.oldest_waiting is not None and link.oldest_waiting >= limits.oldest_waiting_seconds
        ):
            found.append(
                Alert(
                    "link_backlog",
                    "warning",
                    link.peer,
                    f"oldest message waiting {'at least ' if link.oldest_at_least else ''}"
                    f"{human_duration(link.oldest_waiting)}",
                )
            )
    if status.receipts is not None and status.receipts.overdue:
        found.append(
            Alert(
                "receipts_overdue",
                "warning",
                "",
                f"{status.receipts.overdue} messages waiting more than "
                f"{human_duration(limits.receipt_overdue_seconds)} for a receipt",
            )
        )
    if status.receipts is not None and status.receipts.failed_recent >= limits.failed_messages:
        found.append(
            Alert(
                "own_failed",
                "warning",
                "",
                f"{status.receipts.failed_recent} own messages failed in the last "
                f"{human_duration(limits.failed_window_seconds)} (no route, refused on the way, "
                "or no receipt in time): their senders got a notice; mlanet track shows why",
            )
        )
    if status.receipts is not None and status.receipts.unmatched:
        found.append(
            Alert(
                "receipts_unmatched",
                "warning",
                "",
                f"{status.receipts.unmatched} receipts in the last day for messages this node "
                "has no record of: is this network's signing key used outside its node, or was "
                "its state reset?",
            )
        )
    found.extend(_quarantine_alerts(status, config))
    found.extend(_delivery_alerts(status, config))
    found.extend(_replica_alerts(status))
    relevant = [config.network, *(peer.network for peer in config.peers)]
    for network in relevant:
        if network not in status.expiry.network_keys:
            continue
        whose = "our signing key" if network == config.network else f"{network}'s keys"
        found.extend(_key_expiry(network, whose, status.expiry.network_keys[network], config, now))
    if status.expiry.encryption_keys:  # this network lists encryption keys: origins seal for it
        found.extend(
            _key_expiry(
                config.network,
                "our encryption keys",
                status.expiry.encryption_keys_end(),
                config,
                now,
                # every one revoked or expired: nothing for this network is sealed any more
                ended=not any(
                    k.state in ("valid", "not yet valid") for k in status.expiry.encryption_keys
                ),
            )
        )
    found.extend(_ca_alerts(status, config, now))
    left = status.expiry.directory_expires - now
    if left <= 0:
        found.append(
            Alert(
                "directory_expiry",
                "critical",
                "",
                f"directory version {status.expiry.directory_version} "
                + (
                    "has expired (valid_until passed)"
                    if status.expiry.directory_expiry_signed
                    else "is older than [coordinator] max_directory_age_seconds"
                )
                + ": the node refuses new messages (directory_expired) until a newer one arrives",
            )
        )
    elif left <= limits.directory_expiry_days * 86400:
        found.append(
            Alert(
                "directory_expiry",
                "warning",
                "",
                f"directory version {status.expiry.directory_version} expires in "
                f"{human_duration(left)}: then the node refuses new messages until a newer "
                "one arrives",
            )
        )
    return sorted(found, key=lambda alert: alert.severity != "critical")


def _key_expiry(
    network: str,
    whose: str,
    expires: float | None,
    config: NodeConfig,
    now: float,
    *,
    ended: bool = False,
) -> list[Alert]:
    """``key_expiry`` for keys whose last one ends at ``expires`` (None: no end): critical for
    this network's own keys, a warning for a peer's."""
    severity = "critical" if network == config.network else "warning"
    if ended:
        return [Alert("key_expiry", "critical", network, f"{whose}: none valid (ended or revoked)")]
    if expires is not None and expires <= now:
        return [Alert("key_expiry", "critical", network, f"{whose} expired")]
    if expires is not None and expires - now <= config.operator.alerts.key_expiry_days * 86400:
        text = f"{whose} expire in {human_duration(expires - now)}"
        return [Alert("key_expiry", severity, network, text)]
    return []


def _ca_alerts(status: NodeStatus, config: NodeConfig, now: float) -> list[Alert]:
    """A CA certificate the directory lists for this network, a peer, or the coordinator's link
    CA, whose last one stops being trusted within ``key_expiry_days`` (warning) or has
    (critical): the key expiry rule, applied to CAs (``docs/OPERATIONS.md``)."""
    window = config.operator.alerts.key_expiry_days * 86400
    ends: list[tuple[str, str, float]] = [
        (network, f"{network}'s broker CA" if network != config.network else "our broker CA", end)
        for network in [config.network, *(peer.network for peer in config.peers)]
        if (end := status.expiry.network_cas.get(network)) is not None
    ]
    if status.expiry.link_ca is not None:
        ends.append(("", "the coordinator's link CA", status.expiry.link_ca))
    found = _certificate_alerts(status, window, now)
    for subject, whose, end in ends:
        if end <= now:
            found.append(
                Alert(
                    "tls_ca_expiry",
                    "critical",
                    subject,
                    f"{whose} is no longer trusted (expired, revoked or retired): links that "
                    "depend on it cannot be checked",
                )
            )
        elif end - now <= window:
            found.append(
                Alert(
                    "tls_ca_expiry",
                    "warning",
                    subject,
                    f"{whose} stops being trusted in {human_duration(end - now)}: the "
                    "coordinator lists its successor (mlanet directory tls rotate-ca)",
                )
            )
    return found


def _certificate_alerts(status: NodeStatus, window: float, now: float) -> list[Alert]:
    """This node's own certificates (its links', its broker client's) expiring within the
    window (warning) or expired (critical: the peer's broker refuses the link)."""
    found = []
    for whose, end in sorted(status.expiry.certificates.items()):
        if end <= now:
            found.append(
                Alert(
                    "tls_certificate_expiry",
                    "critical",
                    "",
                    f"{whose} has expired: brokers refuse it; renew it and point the config "
                    "at the new files",
                )
            )
        elif end - now <= window:
            found.append(
                Alert(
                    "tls_certificate_expiry",
                    "warning",
                    "",
                    f"{whose} expires in {human_duration(end - now)}: renew it (new file names) "
                    "and point the config at them",
                )
            )
    return found


def _quarantine_alerts(status: NodeStatus, config: NodeConfig) -> list[Alert]:
    """Entries waiting in the quarantine (at least ``quarantine_messages``), a peer refused at
    more than ``refusals_per_minute``, and a peer whose refusals are kept without their body
    (its quarantine bound is reached)."""
    threshold = config.operator.alerts.refusals_per_minute
    found = []
    depth = status.quarantine.depth
    if depth is not None and depth >= config.operator.alerts.quarantine_messages:
        found.append(
            Alert(
                "quarantine_depth",
                "warning",
                "",
                f"{depth} refused messages wait in the quarantine: look (mlanet quarantine "
                "list), then release or drop them",
            )
        )
    for peer, counts in status.quarantine.peers.items():
        which = "--local" if peer == "local" else f"--peer {peer}"
        if counts.last_minute >= threshold:
            found.append(
                Alert(
                    "quarantine_rate",
                    "warning",
                    peer,
                    f"{counts.last_minute} messages refused in the last minute (threshold "
                    f"{threshold}): mlanet quarantine list {which}",
                )
            )
        if counts.without_body:
            found.append(
                Alert(
                    "quarantine_bound",
                    "warning",
                    peer,
                    f"{counts.without_body} refused messages kept as metadata only: the "
                    f"quarantine bound is reached (look, then: mlanet quarantine drop "
                    f"--all-matching {which})",
                )
            )
    return found


def _delivery_alerts(status: NodeStatus, config: NodeConfig) -> list[Alert]:
    """A contact point's delivery queue near (80 %) or at its bound."""
    bound = config.limits.deliver_queue_messages
    found = []
    for queue in status.queues:
        contact_point = contact_point_of_deliver_queue(queue.name)
        if contact_point is None or queue.messages is None:
            continue
        if queue.messages >= bound:
            found.append(
                Alert(
                    "delivery_queue",
                    "critical",
                    contact_point,
                    f"{queue.messages} messages wait to be read (bound {bound}): the queue is "
                    "full, new messages for it go to quarantine as delivery_limit",
                )
            )
        elif queue.messages >= 0.8 * bound:
            found.append(
                Alert(
                    "delivery_queue",
                    "warning",
                    contact_point,
                    f"{queue.messages} messages wait to be read (bound {bound})",
                )
            )
    return found


def _replica_alerts(status: NodeStatus) -> list[Alert]:
    """A replica that is not stopped and not healthy (fenced, or its heartbeat older than the
    lease): a warning while another replica is healthy, critical when none is. And a database
    other networks can reach (``database_exposure``): one warning naming each finding."""
    if status.replicas is None:
        return []
    live = [row for row in status.replicas.rows if row.state != "stopped"]
    unhealthy = [row for row in live if not row.healthy]
    severity = "critical" if len(unhealthy) == len(live) else "warning"
    found = []
    if status.replicas.exposure:
        found.append(
            Alert(
                "database_shared",
                "warning",
                "",
                "another network could stall or fence this network's replicas: "
                + "; ".join(status.replicas.exposure)
                + " (give each network a database and a role of its own: OPERATIONS.md)",
            )
        )
    for row in unhealthy:
        beat = f"last heartbeat {human_duration(row.heartbeat_age)} ago, lease {row.lease:g} s"
        if row.state == "fenced":
            text = (
                f"fenced by the other replicas ({beat}): it joins again when it comes back; "
                "if it does not, look at its process on "
                f"{row.host} (pid {row.pid})"
            )
        else:
            text = (
                f"{row.state} but not beating ({beat}): paused, cut off from the database or "
                f"hung, on {row.host} (pid {row.pid})"
                + ("; the other replicas fence it" if severity == "warning" else "")
            )
        found.append(Alert("replica_unhealthy", severity, row.name, text))
    return found
