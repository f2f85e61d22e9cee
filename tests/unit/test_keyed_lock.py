"""KeyedLock: copies under one key are handled one at a time, other keys are not held up, and
the map forgets a key as soon as nobody holds or waits for it."""

from __future__ import annotations

import asyncio

from mlanet.nodes.runtime.keyed_lock import KeyedLock
from tests.polling import eventually


async def test_holders_of_one_key_take_turns_and_other_keys_run_meanwhile() -> None:
    locks = KeyedLock()
    order: list[str] = []
    release = asyncio.Event()

    async def first() -> None:
        async with locks.hold("a"):
            order.append("a1 in")
            await release.wait()
            order.append("a1 out")

    async def second() -> None:
        async with locks.hold("a"):
            order.append("a2 in")

    async def other() -> None:
        async with locks.hold("b"):
            order.append("b in")

    tasks = [asyncio.create_task(first())]
    await eventually(lambda: order == ["a1 in"], within=5, every=0.001)
    tasks += [asyncio.create_task(second()), asyncio.create_task(other())]
    # b gets in although a1 holds "a"; a2, started before b, is still waiting when b is in
    await eventually(lambda: "b in" in order, within=5, every=0.001)
    assert order == ["a1 in", "b in"]  # a2 waits for a1; b does not
    release.set()
    await asyncio.gather(*tasks)
    assert order == ["a1 in", "b in", "a1 out", "a2 in"]
    assert len(locks) == 0


async def test_a_key_is_forgotten_even_when_its_holder_fails() -> None:
    locks = KeyedLock()
    try:
        async with locks.hold(("seajust", "id")):
            assert len(locks) == 1
            raise RuntimeError("handling failed")
    except RuntimeError:
        pass
    assert len(locks) == 0
    async with locks.hold(("seajust", "id")):  # and it can be taken again
        pass


async def test_a_waiter_cancelled_before_or_after_its_turn_passes_the_key_on() -> None:
    locks = KeyedLock()
    order: list[str] = []

    async def waiter(name: str) -> None:
        async with locks.hold("a") as waited:
            assert waited
            order.append(name)

    held = locks.hold("a")
    assert not await held.__aenter__()  # a free key: taken at once
    cancelled_waiting = asyncio.create_task(waiter("never"))
    handed_then_cancelled = asyncio.create_task(waiter("never either"))
    last = asyncio.create_task(waiter("last"))
    await eventually(lambda: len(locks._held["a"]) == 3, within=5, every=0.001)
    cancelled_waiting.cancel()  # cancelled while it waits: it leaves the line
    await asyncio.sleep(0)
    await held.__aexit__(None, None, None)  # hands the key to the second waiter...
    handed_then_cancelled.cancel()  # ...which is cancelled before it runs: it passes it on
    await asyncio.gather(cancelled_waiting, handed_then_cancelled, return_exceptions=True)
    await last
    assert order == ["last"]
    assert len(locks) == 0
