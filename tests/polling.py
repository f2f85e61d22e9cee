"""Waiting in tests: poll a condition until it holds, or fail at a deadline. No test sleeps a
fixed time and then asserts; where a sleep is itself what a test exercises (a fault that lasts
so long, a pace of sending), a comment beside it says so."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

__all__ = ["eventually"]


async def eventually(
    check: Callable[[], Awaitable[bool] | bool],
    *,
    within: float = 30.0,
    every: float = 0.1,
    what: str = "condition",
) -> None:
    """Return once ``check()`` (plain or awaitable) is true; raise AssertionError naming
    ``what`` when ``within`` seconds passed first. It is checked once more at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {within:g} s")
        await asyncio.sleep(every)
