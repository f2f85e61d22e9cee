"""One at a time per key: the node handles the copies of one message in turn.

The node handles deliveries concurrently (up to its prefetch). Two copies of the same message
(a replay, a redelivery, the same id with other content) handled at the same time would both
pass the dedupe check before either is recorded, and both be delivered. Holding the message's
key from the dedupe check to the record makes the second copy see the first one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager

__all__ = ["KeyedLock"]


class KeyedLock:
    """An :class:`asyncio.Lock` per key, created on first use and dropped when nobody holds or
    waits for it (so the map never grows with the number of messages seen)."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, list[int]]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[bool]:
        """Hold ``key``; the block gets True when it had to wait for another holder (what
        that holder recorded is new since the block's caller last looked), else False (taking
        a free lock does not yield to the event loop)."""
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            waited = lock.locked()
            async with lock:
                yield waited
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[key]
