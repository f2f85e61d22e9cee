"""The names a node uses on its own broker, and :class:`Topology`: what it declares there.

Pure names and values, no I/O (``broker/transport.py`` declares them): a peer publishes into
its inbox exchange ``mlanet.inbox.from.<peer>``, which feeds ``mlanet.inbox.<peer>``; the node
forwards through ``mlanet.out.<peer>`` (drained by the link's shovel) and delivers to
``mlanet.deliver.<contact point>``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CONTENT_TYPE",
    "INBOX",
    "QUARANTINE",
    "SUBMIT",
    "SUBMIT_EXCHANGE",
    "UNROUTABLE",
    "Topology",
    "deliver_queue",
    "inbox_exchange",
    "out_queue",
    "peer_inbox",
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


@dataclass(frozen=True)
class Topology:
    """What a node declares on its own broker."""

    peers: tuple[str, ...]
    contact_points: tuple[str, ...]
    delivery_limit: int = 5

    def queues(self) -> list[str]:
        return [
            INBOX,
            SUBMIT,
            QUARANTINE,
            *(peer_inbox(peer) for peer in self.peers),
            *(out_queue(peer) for peer in self.peers),
            *(deliver_queue(cp) for cp in self.contact_points),
        ]
