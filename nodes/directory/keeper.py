"""The directory in the running node: apply a newer one without a restart, pass it on, catch up.

:class:`DirectoryKeeper` owns the node's :class:`~mlanet.nodes.directory.book.DirectoryBook` and
everything that follows from the held directory: the trust store, the peers (the directory's links),
the contact points and their handovers, the key the node signs with. A directory is checked in full
(signature, schema, every key it lists: ``broker/directory_signing.py``) before anything is written
or sent; a refused one is quarantined with its reason. When a newer directory is accepted it

1. persists it (the book), then replaces its :class:`~mlanet.nodes.runtime.seams.DirectoryView` (the
   trust store, peers, contact points and signing key, as one frozen value that every part of the
   node reads as ``keeper.view``);
2. has the links follow (``nodes/runtime/links.py``): the topology for new peers and contact points,
   shovels for new links and none for links that are gone, and what the operator must do for a new
   peer's write access (``mlanet directory provision``);
3. moves messages waiting for a replaced contact point to its successor;
4. passes the signed directory on to every linked peer but the one it came from, as a
   ``directory_update`` message (each peer checks the coordinator's signature itself).

Sources of directories: ``directory_update`` messages from peers, and the node's local queue
``mlanet.directory``, where ``mlanet directory publish`` (and, at the coordinator, ``mlanet
directory approve``) put a signed directory. At start the node announces what it holds to its
peers; a peer that holds an older version applies it, a peer that holds a newer one answers with
it, so a node that was offline catches up when it returns. A message whose signer is unknown
because the node's directory is behind is looked at once more: when it is itself a
``directory_update`` carrying a newer valid directory, that directory is applied and the message
is received again.

A maintenance loop re-derives the time-dependent parts (handovers that fall due, a new key
that becomes active, expiry) and warns ahead of expiry.

The keeper holds no node: what it does on the broker and with messages goes through the
:class:`DirectoryPorts` the node hands to each call (their protocols: ``nodes/runtime/seams.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import structlog
from pydantic import ValidationError

from mlanet.broker.directory_signing import VerifiedDirectory
from mlanet.broker.envelope import decode_payload, open_delivered
from mlanet.broker.errors import Reason, RefusedMessage, TransportError
from mlanet.broker.keys import b64u_decode
from mlanet.broker.strictjson import canonical_bytes, loads_strict
from mlanet.broker.transport import Incoming, Transport, deliver_queue, out_queue
from mlanet.nodes.config import NodeConfig
from mlanet.nodes.directory.book import DirectoryBook, OlderDirectory, Outcome
from mlanet.nodes.runtime.pipeline import Accepted
from mlanet.nodes.runtime.seams import DirectoryView, LinksPort, Outbound
from mlanet.nodes.state.db import DB_ERRORS
from mlanet.nodes.state.journal import JournalError
from mlanet.nodes.state.store import Store
from mlanet.schemas import Destination, DirectoryUpdate
from mlanet.schemas.directory import Directory, SignedDirectory

__all__ = ["DIRECTORY_QUEUE", "REPLICA_SOURCE", "DirectoryKeeper", "DirectoryPorts"]

log = structlog.get_logger("mlanet.directory")

# Where an operator (or the coordinator's approve) hands the node a signed directory.
DIRECTORY_QUEUE = "mlanet.directory"
# The source of a directory another replica of this node applied first (its peers have it).
REPLICA_SOURCE = "replica"
_REPEAT_WARNINGS_SECONDS = 3600.0


@dataclass(frozen=True)
class DirectoryPorts:
    """What the keeper acts through, handed to it by the node."""

    transport: Transport
    store: Store
    outbound: Outbound
    links: LinksPort
    # run a delivery's work, then ack it once durable (requeued on a transient failure)
    settle: Callable[[Incoming, Awaitable[None]], Awaitable[None]]
    # told (version, signed bytes) of each newer directory held: the node's other replicas
    applied: Callable[[int, bytes], None] | None = None


class DirectoryKeeper:
    """The node's directory, and how it follows changes while the node runs. The node and
    its parts read :attr:`view`; only the keeper replaces it."""

    def __init__(self, config: NodeConfig, clock: Callable[[], datetime]) -> None:
        self.base = config
        self.clock = clock
        self.book = DirectoryBook.load(config, clock=clock)
        for refused in self.book.refused:  # one line per file passed over, then go on
            say = log.error if refused.source != "config" else log.warning
            say(
                "directory_file_refused",
                file=refused.file,
                source=refused.source,
                reason=refused.reason.value,
                detail=refused.detail,
                version=self.book.version,
            )
        self._lock = asyncio.Lock()
        self._pending_flood: tuple[VerifiedDirectory, str | None] | None = None
        self._reconciled = True
        self._warned: dict[str, float] = {}
        self._was_closed = False
        self._next_change: datetime | None = None
        self._view = self._derive()

    # --- derived state -----------------------------------------------------------------------
    @property
    def view(self) -> DirectoryView:
        """What the node trusts now; replaced as a whole, never changed in place."""
        return self._view

    def _derive(self) -> DirectoryView:
        now = self.clock()
        directory = self.book.view(now)
        self._next_change = _next_change(self.book.held.directory, self.base.network, now)
        me = directory.network(self.base.network)
        handovers: dict[str, str] = {}
        if me is not None:
            for contact_point in me.contact_points:
                if contact_point.successor is not None:
                    successor = me.resolve(contact_point.id)
                    if successor is not None:
                        handovers[contact_point.id] = successor
        return DirectoryView(
            config=self.book.effective_config(),
            held=self.book.held,
            directory=directory,
            trust=self.book.message_trust(),
            contact_points=tuple(me.active_contact_points()) if me else (),
            handovers=tuple(sorted(handovers.items())),
            key=self.book.signing_key(now),
            seal_keys=self.book.seal_keys(),
        )

    def closed(self) -> RefusedMessage | None:
        """The refusal for new messages while the held directory is too old to trust."""
        return self.book.closed(self.clock())

    def _rederive(self, store: Store) -> DirectoryView:
        """Replace the view from the held directory now; returns the one it replaced. A change
        of the key the node signs with is a fact of the journal."""
        before, self._view = self._view, self._derive()
        key = self._view.key
        if key.key_id != before.key.key_id:
            log.info("signing_key_changed", previous=before.key.key_id, key_id=key.key_id)
            store.event("-", "signing_key_changed", previous=before.key.key_id, key_id=key.key_id)
        if not self.book.key_valid(key.key_id, self.clock()):
            log.error(
                "no_valid_signing_key",
                key_id=key.key_id,
                detail="the directory lists no key of this network as valid now: rotate",
            )
        self._check_encryption_keys()
        return before

    def _check_encryption_keys(self) -> None:
        """Say so when the directory lists an encryption key of this network in use that no
        key file here holds (the rotation's key file lost, or another one put in its place)."""
        for key_id in self.book.encryption_keys_without_file(self._view.seal_keys, self.clock()):
            log.error(
                "encryption_key_file_missing",
                key_id=key_id,
                detail="the directory lists this encryption key for this network and no key "
                "file here holds it: what is sealed with it is refused (unknown_encryption_key)",
            )

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self, ports: DirectoryPorts) -> None:
        """Once the node's own topology is there: the local directory queue, peer access,
        handovers, and an announcement of what this node holds to its peers."""
        # With a delivery limit, as every queue the node consumes: a directory that fails
        # other than by a refusal goes to quarantine after a few deliveries, never round again.
        if not await ports.transport.declare_queue(
            DIRECTORY_QUEUE, delivery_limit=self._view.config.limits.delivery_limit
        ):
            log.warning("queue_declared_otherwise", queue=DIRECTORY_QUEUE)

        async def on_local(incoming: Incoming) -> None:
            await ports.settle(incoming, self._local(ports, incoming))

        await ports.transport.consume(DIRECTORY_QUEUE, on_local, prefetch=1)
        await self._reconcile(ports, None)
        self._pending_flood = (self.book.held, None)
        await self._flush_flood(ports)
        self._report()
        self._check_encryption_keys()

    async def maintain(self, ports: DirectoryPorts, stop: asyncio.Event) -> None:
        """Re-check the time-dependent parts until ``stop`` is set."""
        assert self.base.coordinator is not None
        every = self.base.coordinator.check_every_seconds
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
            if stop.is_set():
                return
            try:
                await self.tick(ports)
            except (TransportError, RefusedMessage, JournalError, *DB_ERRORS) as exc:
                log.warning("directory_maintenance_failed", error=str(exc))

    async def tick(self, ports: DirectoryPorts) -> None:
        async with self._lock:
            due = self._next_change is not None and self.clock() >= self._next_change
            if due:  # a handover, a contact point's window or one of our keys changes now
                before = self._rederive(ports.store)
                self._reconciled = False
                await self._reconcile(ports, before)
            elif not self._reconciled:
                await self._reconcile(ports, self._view)
            await self._flush_flood(ports)
            await self._hand_over(ports)
        self._report()

    # --- applying ------------------------------------------------------------------------------
    async def apply(
        self, ports: DirectoryPorts, data: bytes | SignedDirectory, source: str | None
    ) -> Outcome:
        """Consider a signed directory; when it is newer, hold it and apply it to the node."""
        raw = data if isinstance(data, bytes) else _signed_bytes(data)
        async with self._lock:
            outcome = self.book.consider(raw, self.clock())
            if outcome.state == "same":
                return outcome
            before = self._rederive(ports.store)
            log.info(
                "directory_applied", version=outcome.verified.version, source=source or "local"
            )
            ports.store.event(
                "-", "directory_applied", version=outcome.verified.version, from_=source or "local"
            )
            if ports.applied is not None:
                ports.applied(outcome.verified.version, raw)
            # what another replica applied first, it passed on already
            self._pending_flood = None if source == REPLICA_SOURCE else (outcome.verified, source)
            self._reconciled = False
            await self._reconcile(ports, before)
            await self._flush_flood(ports)
        self._report()
        return outcome

    async def on_update(self, ports: DirectoryPorts, accepted: Accepted) -> bool:
        """A ``directory_update`` for this node from a peer; False when it is not for us."""
        message = accepted.message
        header = message.header
        config = self._view.config
        if header.kind != "directory_update" or header.destination.network != config.network:
            return False
        # Read here also when the pipeline did not (a node without contact points routes
        # a message for itself nowhere, so it has not parsed the payload).
        payload = accepted.payload or decode_payload(
            message, max_bytes=config.limits.max_message_bytes
        )
        if not isinstance(payload, DirectoryUpdate):
            raise RefusedMessage(Reason.SCHEMA_INVALID, "not a directory update")
        ports.store.remember(
            header.origin.network, header.message_id, message.content_sha256, "consumed"
        )
        try:
            await self.apply(ports, payload.directory, accepted.sender)
        except OlderDirectory as refused:
            # A peer that is behind (it announced what it holds): not applied; it gets ours.
            # Anything else (forged, unsigned, another with our version) is quarantined.
            log.info("directory_not_newer", peer=accepted.sender, reason=refused.reason.value)
            ports.store.event(
                header.message_id,
                "directory_refused",
                refused.detail,
                reason=refused.reason.value,
                from_=accepted.sender,
            )
            async with self._lock:
                await self._send(ports, self.book.held, accepted.sender)
        return True

    async def _local(self, ports: DirectoryPorts, incoming: Incoming) -> None:
        """A signed directory handed to this node by its operator (or the coordinator).

        Refused -> quarantined with its reason, then acked: never requeued. One that keeps
        failing otherwise is quarantined as ``delivery_limit``: by the queue's own limit, and
        here once it has been delivered ``delivery_limit`` times (so also on a queue that an
        older version declared without a limit)."""
        limit = self._view.config.limits.delivery_limit
        if incoming.delivery_count >= limit:
            refused = RefusedMessage(
                Reason.DELIVERY_LIMIT, f"not settled after {incoming.delivery_count} deliveries"
            )
            await ports.outbound.quarantine(incoming.body, refused, DIRECTORY_QUEUE)
            return
        try:
            outcome = await self.apply(ports, incoming.body, None)
        except RefusedMessage as refused:
            await ports.outbound.quarantine(incoming.body, refused, DIRECTORY_QUEUE)
            return
        if outcome.state == "same":  # published again: pass it on again
            async with self._lock:
                self._pending_flood = (outcome.verified, None)
                await self._flush_flood(ports)

    async def salvage(self, ports: DirectoryPorts, body: bytes, refused: RefusedMessage) -> bool:
        """True when ``body``, refused because this node's trust is behind, carried a newer
        directory that is now applied (the caller then receives the message again)."""
        if refused.reason not in (Reason.UNKNOWN_KEY, Reason.EXPIRED, Reason.KEY_REVOKED):
            return False
        signed = _carried_directory(body, self._view.config.limits.max_message_bytes)
        if signed is None:
            return False
        try:
            outcome = await self.apply(ports, signed, "a message not yet verifiable")
        except RefusedMessage as carried:
            # the message is quarantined for its own refusal; this says why its directory
            # did not help
            log.warning("directory_refused", source="salvage", reason=carried.reason.value)
            return False
        return outcome.state == "applied"

    def may_be_behind(self, body: bytes, refused: RefusedMessage, redelivered: bool) -> bool:
        """True the first time a message names a key of a listed network that is newer than
        any this node knows: a directory update listing it may be being applied by another
        delivery right now (deliveries are handled concurrently), so the message deserves one
        more try a moment later rather than quarantine. A redelivered copy never does."""
        if refused.reason is not Reason.UNKNOWN_KEY or redelivered:
            return False
        for network, key_id in _claimed_keys(body, self.base.limits.max_message_bytes):
            entry = self._view.directory.network(network)
            if entry is None or not key_id.startswith("ed25519:"):
                continue
            known = [int(key.key_id.split(":")[1]) for key in entry.keys]
            number = key_id.split(":")[1]
            if number.isdigit() and int(number) > max(known, default=-1):
                return True
        return False

    def _report(self) -> None:
        closed = self.closed()
        if closed is not None and not self._was_closed:
            log.error("directory_expired", detail=closed.detail)
        elif closed is None and self._was_closed:
            log.info("directory_trusted_again", version=self.book.version)
        self._was_closed = closed is not None
        now = time.monotonic()
        for warning in self.book.warnings(self.clock()):
            last = self._warned.get(warning.subject)
            if last is None or now - last > _REPEAT_WARNINGS_SECONDS:
                self._warned[warning.subject] = now
                log.warning("expiry_warning", subject=warning.subject, detail=warning.text())

    # --- the broker side -----------------------------------------------------------------------
    async def _reconcile(self, ports: DirectoryPorts, before: DirectoryView | None) -> None:
        """Make the broker match the held directory (idempotent; retried by the loop)."""
        await ports.links.follow(before)
        await self._hand_over(ports)
        self._reconciled = True

    async def _hand_over(self, ports: DirectoryPorts) -> None:
        """Move what waits for a replaced contact point to its successor; nothing is lost:
        each message is published (confirmed) to the successor before it leaves the old queue."""
        transport = ports.transport
        for old, successor in self._view.handovers:
            try:
                waiting = await transport.queue_depth(deliver_queue(old))
            except TransportError:
                continue  # never declared here: nothing can be waiting
            moved = 0
            while waiting and (incoming := await transport.get(deliver_queue(old))):
                try:
                    # what waits there is in the delivered form (a sealed payload opened)
                    header = open_delivered(
                        incoming.body,
                        self._view.trust,
                        max_bytes=self._view.config.limits.max_message_bytes,
                    ).header
                except RefusedMessage as refused:
                    await ports.outbound.quarantine(incoming.body, refused, deliver_queue(old))
                    await incoming.ack()
                    continue
                await transport.publish(
                    deliver_queue(successor),
                    incoming.body,
                    message_id=header.message_id,
                    kind=header.kind,
                )
                await incoming.ack()
                ports.store.event(header.message_id, "handed_over", from_=old, to=successor)
                moved += 1
            if moved:
                log.info(
                    "contact_point_handed_over", previous=old, successor=successor, moved=moved
                )

    # --- passing it on -------------------------------------------------------------------------
    async def _flush_flood(self, ports: DirectoryPorts) -> None:
        if self._pending_flood is None:
            return
        verified, source = self._pending_flood
        if verified.version != self.book.version:
            self._pending_flood = None  # a newer one replaced it (and has its own flood)
            return
        for peer in sorted(p.network for p in self._view.config.peers):
            if peer != source:
                await self._send(ports, verified, peer)
        self._pending_flood = None
        log.info("directory_passed_on", version=verified.version)

    async def _send(self, ports: DirectoryPorts, verified: VerifiedDirectory, peer: str) -> None:
        message = ports.outbound.sign(
            "directory_update",
            Destination(network=peer),
            DirectoryUpdate(directory=verified.signed),
        )
        await ports.transport.publish(
            out_queue(peer),
            message.to_bytes(),
            message_id=message.header.message_id,
            kind="directory_update",
        )


def _next_change(directory: Directory, network: str, now: datetime) -> datetime | None:
    """The next instant at which the directory's view or this network's key choice changes."""
    times = [
        moment
        for entry in directory.networks
        for cp in entry.contact_points
        for moment in (cp.not_before, cp.not_after)
        if moment is not None and moment > now
    ]
    own = directory.network(network)
    for key in own.keys if own is not None else ():
        times += [m for m in (key.not_before, key.not_after) if m is not None and m > now]
    return min(times, default=None)


def _signed_bytes(signed: SignedDirectory) -> bytes:
    return canonical_bytes(signed.model_dump(mode="json"))


def _claimed_keys(body: bytes, max_bytes: int) -> list[tuple[str, str]]:
    """The (network, key id) pairs a message's header and hop records name, unverified."""
    found: list[tuple[str, str]] = []
    try:
        frame = loads_strict(body, max_bytes=max_bytes, max_depth=4)
        parts = [(frame["header"], "origin"), *((hop["record"], None) for hop in frame["hops"])]
        for part, origin in parts:
            value = loads_strict(b64u_decode(part), max_bytes=4096, max_depth=4)
            network = value["origin"]["network"] if origin else value["network"]
            if isinstance(network, str) and isinstance(value["key_id"], str):
                found.append((network, value["key_id"]))
    except (RefusedMessage, KeyError, TypeError, AttributeError):
        pass
    return found


def _carried_directory(body: bytes, max_bytes: int) -> SignedDirectory | None:
    """The signed directory a ``directory_update`` envelope carries, read without verifying
    the envelope: only the coordinator's signature over the directory will count."""
    try:
        frame = loads_strict(body, max_bytes=max_bytes, max_depth=4)
        header = loads_strict(b64u_decode(frame["header"]), max_bytes=4096, max_depth=4)
        if header.get("kind") != "directory_update":
            return None
        payload = loads_strict(b64u_decode(frame["payload"]), max_bytes=max_bytes, max_depth=8)
        return DirectoryUpdate.model_validate(payload).directory
    except (RefusedMessage, KeyError, TypeError, AttributeError, ValidationError):
        return None
