"""What the origin can already know will fail, checked before anything is submitted.

``mlanet send`` asks :func:`check_route` before it hands a submission to the node: a destination
that the origin's own routing refuses (no network serves the country, a network no link path
reaches, an observer for anything but a notice, a ``direct_only`` message to a network this one
has no link to) would be signed, quarantined at the origin and
answered with a notice a moment later; one that the target network will refuse by the same
directory (it has no contact points, or not the one named) would travel there to be refused.
The sender is told at once instead, and nothing is submitted. The node still checks every
submission itself (``Outbox.send_from_outbox``), and the target network when the message arrives:
this is a convenience for the person at the keyboard, not a safeguard.

Routing is a pure function of the header, the directory and the node's rules
(``broker/routing.py``); the header built here is never signed or sent.
"""

from __future__ import annotations

from datetime import UTC, datetime

from mlanet.broker import RefusedMessage
from mlanet.broker.handling import handling_of
from mlanet.broker.routing import Forward, Refuse, route
from mlanet.nodes.config import NodeConfig
from mlanet.nodes.directory.book import load_directory
from mlanet.schemas import Header, Origin
from mlanet.schemas.directory import Directory
from mlanet.schemas.submission import Submission

__all__ = ["check_route"]

_NEVER_SIGNED = "ed25519:0"  # routing never reads the key id; this header is never signed


def check_route(
    config: NodeConfig,
    submission: Submission,
    *,
    directory: Directory | None = None,
    now: datetime | None = None,
) -> None:
    """Raise :class:`RefusedMessage` (the routing's reason code) when the origin's node would
    refuse to route ``submission``; ``directory``: the view the node routes by (default: the
    one it holds now)."""
    at = now or datetime.now(UTC)
    rules = handling_of(submission, config.policy)  # as the node will sign it
    header = Header(
        kind=submission.kind,
        message_id=submission.message_id,
        origin=Origin(
            network=config.network,
            country=submission.sender[:2].upper(),
            contact_point=submission.sender,
        ),
        destination=submission.destination,
        created_at=at,
        hop_limit=submission.hop_limit,
        key_id=_NEVER_SIGNED,
        urgency=submission.urgency,
        members_only=rules.members_only,
        direct_only=rules.direct_only,
        retention_days=rules.retention_days,
    )
    view = directory if directory is not None else load_directory(config)
    routing = route(header, (), view, config.routes, config.network)
    if isinstance(routing, Forward):
        # How the target network will deliver it, by the same directory: a network without
        # contact points, or a contact point it does not have, is known here already.
        routing = route(header, (), view, (), routing.target)
    if isinstance(routing, Refuse):
        where = submission.destination
        named = where.contact_point or where.country or where.network
        raise RefusedMessage(routing.reason, f"{routing.detail} (destination {named})")
