"""One at a time per key: the node handles the copies of one message in turn.

The node handles deliveries concurrently (up to its prefetch). Two copies of the same message
(a replay, a redelivery, the same id with other content) handled at the same time would both
pass the dedupe check before either is recorded, and both be delivered. Holding the message's
key from the dedupe check to the record makes the second copy see the first one.

Almost every key is held by one delivery at a time: taking a free key creates nothing but its
entry in a dict and never yields to the event loop. Only a copy that finds its key held waits,
in turn (first come, first served), for the holder to hand it over.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from types import TracebackType

__all__ = ["KeyedLock"]


class KeyedLock:
    """A lock per key, existing while someone holds or waits for it (so the map never grows
    with the number of messages seen)."""

    def __init__(self) -> None:
        # key -> the holders waiting for it, in turn (an empty deque: held, nobody waiting)
        self._held: dict[Hashable, deque[asyncio.Future[None]]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, key: Hashable) -> _Hold:
        """``async with lock.hold(key) as waited:`` holds ``key`` for the block; ``waited`` is
        True when it had to wait for another holder (what that holder recorded is new since the
        block's caller last looked), else False (taking a free key does not yield to the event
        loop)."""
        return _Hold(self, key)

    async def _acquire(self, key: Hashable) -> bool:
        waiting = self._held.get(key)
        if waiting is None:
            self._held[key] = deque()
            return False
        turn = asyncio.get_running_loop().create_future()
        waiting.append(turn)
        try:
            await turn
        except BaseException:
            if turn.done() and not turn.cancelled():
                self._release(key)  # handed over as we were cancelled: pass it on
            elif turn in waiting:  # (a release may have passed over it already)
                waiting.remove(turn)
            raise
        return True

    def _release(self, key: Hashable) -> None:
        waiting = self._held[key]
        while waiting:
            turn = waiting.popleft()
            if not turn.done():
                turn.set_result(None)  # the key passes to the next one, still held
                return
        del self._held[key]


class _Hold:
    __slots__ = ("_key", "_lock")

    def __init__(self, lock: KeyedLock, key: Hashable) -> None:
        self._lock = lock
        self._key = key

    async def __aenter__(self) -> bool:
        return await self._lock._acquire(self._key)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lock._release(self._key)
