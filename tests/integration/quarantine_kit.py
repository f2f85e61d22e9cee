"""The quarantine as the tests read it: the node keeps its entries in its quarantine store
(``nodes/state/quarantine_store.py``); what RabbitMQ put into ``mlanet.quarantine`` waits there
until the node takes it in. ``kit.drain`` and ``kit.depth`` use these for ``mlanet.quarantine``."""

from __future__ import annotations

import time
import uuid
from typing import Any

from mlanet.broker.quarantine_headers import QuarantineHeaders
from mlanet.nodes.local.federation import Federation
from mlanet.nodes.state.quarantine import Entry, Where
from mlanet.nodes.state.quarantine_store import QuarantineStore, open_quarantine, quarantine_exists
from tests.integration.kit import Drained, config


def open_store(fed: Federation, network: str) -> QuarantineStore | None:
    """``network``'s quarantine store; None before its node ever ran."""
    cfg = config(fed, network)
    return open_quarantine(cfg) if quarantine_exists(cfg) else None


def stored(fed: Federation, network: str) -> int:
    """Entries in ``network``'s quarantine store."""
    store = open_store(fed, network)
    if store is None:
        return 0
    with store:
        return store.count()


def headers(entry: Entry) -> dict[str, Any]:
    """The entry's metadata as the ``x-mlanet-*`` headers a refused message carried."""
    return QuarantineHeaders(
        reason=entry.reason,
        detail=entry.detail,
        via=entry.via,
        at=entry.metadata()["at"],
        whole_size=entry.truncated_from,
        whole_sha256=entry.full_sha256,
    ).headers()


def take_entries(fed: Federation, network: str) -> list[Drained]:
    """Take every entry out of ``network``'s quarantine store, oldest first, with its body
    (empty when only its metadata was kept)."""
    store = open_store(fed, network)
    if store is None:
        return []
    with store:
        token = uuid.uuid4().hex
        taken = store.take_matching(Where(), token, time.time(), 1_000_000)
        out = []
        for listed in taken:
            entry = store.get(listed.id)
            assert entry is not None
            out.append(Drained(entry.body or b"", headers(entry), entry.id))
        store.remove(token)
    return out


def reasons(fed: Federation, network: str) -> list[str]:
    """The reasons of the entries in ``network``'s quarantine store, sorted (read only)."""
    store = open_store(fed, network)
    if store is None:
        return []
    with store:
        return sorted(reason for reason, n in store.by_reason().items() for _ in range(n))
