"""The names a node uses on its own broker, and :class:`Topology`: what it declares there.

Pure names and values, no I/O (``broker/transport.py`` declares them): a peer publishes into
its inbox exchange ``mlanet.inbox.from.<peer>``, which feeds ``mlanet.inbox.<peer>``; both live
in the peer's own door vhost ``<vhost>:door:<peer>`` (:func:`door_vhost`), never in the node's
vhost, so that the peer's link user can see nothing of the node's other queues. The node
forwards through ``mlanet.out.<peer>`` (drained by the link's shovel) and delivers to
``mlanet.deliver.<contact point>``. Each link is the shovel ``mlanet-link-<peer>``. Names are
built here and read back here (``*_of`` functions: the identifier in a name, or None for a name
that is not one of ours), never by hand elsewhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mlanet.schemas.base import CONTACT_POINT_ID, NETWORK_ID

__all__ = [
    "CONTENT_TYPE",
    "INBOX",
    "LINK_PREFIX",
    "QUARANTINE",
    "SUBMIT",
    "SUBMIT_EXCHANGE",
    "UNROUTABLE",
    "Topology",
    "contact_point_of_deliver_queue",
    "deliver_queue",
    "door_sender",
    "door_vhost",
    "inbox_exchange",
    "link_name",
    "out_queue",
    "peer_inbox",
    "peer_of_inbox_exchange",
    "peer_of_link",
    "peer_of_out_queue",
    "peer_of_peer_inbox",
]

CONTENT_TYPE = "application/vnd.mlanet+json; v=1"
INBOX = "mlanet.inbox"
SUBMIT = "mlanet.submit"
# Contact points hand in submissions through this exchange (bound to the queue of the same
# name): the one resource their broker users may write (never the default exchange).
SUBMIT_EXCHANGE = "mlanet.submit"
QUARANTINE = "mlanet.quarantine"
UNROUTABLE = "mlanet.unroutable"


def inbox_exchange(sender: str) -> str:
    """The exchange a peer network publishes into (the only resource its user may write)."""
    return f"mlanet.inbox.from.{sender}"


def peer_inbox(peer: str) -> str:
    """The queue of one peer's messages (fed by its inbox exchange, bounded, consumed at the
    peer's own rate so that one peer's flood cannot take another peer's share)."""
    return f"mlanet.inbox.{peer}"


def out_queue(peer: str) -> str:
    """The store-and-forward queue towards a peer (drained by the link's shovel)."""
    return f"mlanet.out.{peer}"


def deliver_queue(contact_point: str) -> str:
    return f"mlanet.deliver.{contact_point}"


LINK_PREFIX = "mlanet-link-"


def link_name(peer: str) -> str:
    """The shovel that carries ``mlanet.out.<peer>`` to the peer's inbox exchange."""
    return f"{LINK_PREFIX}{peer}"


_INBOX_EXCHANGE_PREFIX = inbox_exchange("")
_OUT_PREFIX = out_queue("")
_DELIVER_PREFIX = deliver_queue("")


def _suffix(name: str, prefix: str, grammar: re.Pattern[str]) -> str | None:
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix) :]
    return rest if grammar.fullmatch(rest) else None


def peer_of_inbox_exchange(name: str) -> str | None:
    """The peer whose inbox exchange ``name`` is (``mlanet.inbox.from.<peer>``), else None."""
    return _suffix(name, _INBOX_EXCHANGE_PREFIX, NETWORK_ID)


def peer_of_peer_inbox(name: str) -> str | None:
    """The peer whose inbox queue ``name`` is (``mlanet.inbox.<peer>``), else None."""
    return _suffix(name, peer_inbox(""), NETWORK_ID)


def peer_of_out_queue(name: str) -> str | None:
    """The peer that ``name`` (``mlanet.out.<peer>``) forwards to, else None."""
    return _suffix(name, _OUT_PREFIX, NETWORK_ID)


def contact_point_of_deliver_queue(name: str) -> str | None:
    """The contact point of ``name`` (``mlanet.deliver.<contact point>``), else None."""
    return _suffix(name, _DELIVER_PREFIX, CONTACT_POINT_ID)


def peer_of_link(name: str) -> str | None:
    """The peer of the link shovel ``name`` (``mlanet-link-<peer>``), else None."""
    return _suffix(name, LINK_PREFIX, NETWORK_ID)


DOOR_MARK = ":door:"  # ':' is in no directory vhost (``^[A-Za-z0-9._-]{1,64}$``) nor network id


def door_vhost(vhost: str, sender: str) -> str:
    """The vhost where ``sender``'s links land at the network whose vhost is ``vhost``: it holds
    only ``sender``'s inbox exchange and queue (the one place its link user may write)."""
    return f"{vhost}{DOOR_MARK}{sender}"


def door_sender(vhost: str, door: str) -> str | None:
    """The sender whose door ``door`` is, among the doors of ``vhost``; None for another vhost."""
    return _suffix(door, door_vhost(vhost, ""), NETWORK_ID)


@dataclass(frozen=True)
class Topology:
    """What a node declares in its own vhost (each peer's inbox is in that peer's door vhost,
    :func:`door_vhost`)."""

    peers: tuple[str, ...]
    contact_points: tuple[str, ...]
    delivery_limit: int = 5

    def queues(self) -> list[str]:
        return [
            INBOX,
            SUBMIT,
            QUARANTINE,
            *(out_queue(peer) for peer in self.peers),
            *(deliver_queue(cp) for cp in self.contact_points),
        ]
