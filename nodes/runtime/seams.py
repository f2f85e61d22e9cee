"""How the parts of a running node see each other: one frozen value and a few small protocols.

    DirectoryKeeper --view--> Actions, Outbox, Receipts, Links, Node  (DirectoryView, read only)
    Outbox, Receipts, DirectoryKeeper --Outbound--> Actions (sign, forward, deliver, quarantine)
    DirectoryKeeper --LinksPort--> Links                          (follow a directory change)
    Outbox --OwnDelivery--> Receipts               (a message for a contact point of its own)

The keeper (``nodes/directory/keeper.py``) owns the node's view of the directory and hands it
out as a :class:`DirectoryView`: a new value whenever a directory is applied or a part of it
falls due, never changed in place. Every part reads ``keeper.view`` when it needs it, so a
directory applied while a message is handled is seen by its next step, as one whole. The node
(``nodes/runtime/node.py``) builds the parts and wires them; no part holds the node.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from mlanet.broker import RefusedMessage, SignedMessage
from mlanet.broker.directory_signing import VerifiedDirectory
from mlanet.broker.keys import SigningKey, TrustStore
from mlanet.broker.routing import Deliver, Forward
from mlanet.broker.seal import SealKeyring
from mlanet.nodes.config import NodeConfig
from mlanet.nodes.runtime.observe import Flow
from mlanet.schemas import Destination, WireModel
from mlanet.schemas.directory import Directory

__all__ = ["Commit", "DirectoryView", "LinksPort", "Outbound", "OwnDelivery", "ViewSource"]

# Waits until every store and audit write so far is committed (the node's group commit).
Commit = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class DirectoryView:
    """What the node trusts at one moment, all derived from the one directory it holds."""

    config: NodeConfig  # the node's configuration, its peers taken from the directory's links
    held: VerifiedDirectory  # the signed directory held, in full
    directory: Directory  # the held directory as it stands now (handovers, windows applied)
    trust: TrustStore  # the networks' message keys the held directory lists
    contact_points: tuple[str, ...]  # this network's contact points active now
    handovers: tuple[tuple[str, str], ...]  # (replaced contact point, successor), sorted
    key: SigningKey  # the key this node signs with now
    seal_keys: SealKeyring  # this network's private encryption keys (sealed payloads for it)


class ViewSource(Protocol):
    """Who owns the view (the directory keeper); read, never copied or overwritten."""

    @property
    def view(self) -> DirectoryView: ...

    def closed(self) -> RefusedMessage | None:
        """The refusal for new messages while the held directory is too old to trust."""
        ...


class Outbound(Protocol):
    """What the node does with a message (``nodes/runtime/actions.py``)."""

    def sign(
        self,
        kind: str,
        destination: Destination,
        payload: WireModel,
        *,
        in_reply_to: str | None = None,
        country: str | None = None,
        contact_point: str | None = None,
        urgency: str = "normal",
        hop_limit: int = 6,
        message_id: str | None = None,
        members_only: bool | None = None,
        direct_only: bool | None = None,
        retention_days: int | None = None,
    ) -> SignedMessage: ...

    async def forward(self, message: SignedMessage, routing: Forward) -> None: ...

    async def deliver(self, message: SignedMessage, routing: Deliver) -> None: ...

    async def quarantine(
        self,
        body: bytes,
        refused: RefusedMessage,
        via: str,
        flow: Flow | None = None,
        *,
        message: SignedMessage | None = None,
        redelivered: bool = False,
    ) -> None: ...


class OwnDelivery(Protocol):
    """Delivering a message this node signed for one of its own contact points
    (``nodes/runtime/receipts.py``): a receipt or notice is taken in, anything else delivered."""

    async def deliver_own(self, message: SignedMessage, routing: Deliver) -> None: ...


class LinksPort(Protocol):
    """The node's links as the directory keeper sees them (``nodes/runtime/links.py``)."""

    async def follow(self, before: DirectoryView | None) -> None:
        """Make the broker match the current view; ``before``: the view it replaced."""
        ...
