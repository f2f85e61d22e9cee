"""The node's group commit (nodes/runtime/group_commit.py): a lone delivery is committed without
waiting for the window, deliveries in flight together share one commit, a failed commit is
every waiter's error, and nothing returns from ``durable`` before its commit ran."""

from __future__ import annotations

import asyncio

import pytest

from mlanet.nodes.runtime.group_commit import GroupCommit

LONG = 30.0  # a window no test may wait for: a test that did would hit pytest's timeout


class Commits:
    """The commit function under test: counts its calls; fails while ``failing``."""

    def __init__(self) -> None:
        self.calls = 0
        self.failing = False
        self.twice = asyncio.Event()

    def __call__(self) -> None:
        self.calls += 1
        if self.calls >= 2:
            self.twice.set()
        if self.failing:
            raise OSError("disk full")


async def test_a_lone_delivery_is_committed_without_waiting_for_the_window() -> None:
    commits = Commits()
    group = GroupCommit(commits, window=LONG)
    with group.working():
        async with asyncio.timeout(1.0):  # far below the window
            await group.durable()
    assert commits.calls == 1


async def test_deliveries_in_flight_together_share_one_commit() -> None:
    commits = Commits()
    group = GroupCommit(commits, window=LONG)
    finished: list[int] = []
    release = asyncio.Event()

    async def delivery(number: int, wait: bool) -> None:
        with group.working():
            if wait:
                await release.wait()  # e.g. still waiting for its publish confirm
            await group.durable()
            finished.append(number)

    second = asyncio.create_task(delivery(2, wait=True))
    await asyncio.sleep(0)  # the second is in flight (e.g. its publish not yet confirmed)
    first = asyncio.create_task(delivery(1, wait=False))
    for _ in range(5):  # the first asks for its commit; the second is still in flight
        await asyncio.sleep(0)
    assert commits.calls == 0, "committed while another was in flight"
    assert not finished
    release.set()
    async with asyncio.timeout(1.0):
        await asyncio.gather(first, second)
    assert commits.calls == 1
    assert sorted(finished) == [1, 2]
    assert (group.commits, group.waited) == (1, 2)


async def test_the_window_bounds_the_wait_for_a_delivery_that_does_not_finish() -> None:
    commits = Commits()
    group = GroupCommit(commits, window=0.01)
    stuck = asyncio.Event()

    async def slow() -> None:
        with group.working():
            await stuck.wait()

    other = asyncio.create_task(slow())
    await asyncio.sleep(0)  # one turn of the loop: the other delivery starts its work
    with group.working():
        async with asyncio.timeout(5.0):
            await group.durable()
    assert commits.calls == 1
    stuck.set()
    await other


async def test_a_failed_commit_is_the_error_of_every_delivery_waiting_for_it() -> None:
    commits = Commits()
    commits.failing = True
    group = GroupCommit(commits, window=LONG)

    async def delivery() -> None:
        with group.working():
            await group.durable()

    results = await asyncio.gather(delivery(), delivery(), return_exceptions=True)
    assert [type(result) for result in results] == [OSError, OSError]
    commits.failing = False
    with group.working():
        await group.durable()  # the next commit is a new one
    assert commits.calls == 2


async def test_a_cancelled_waiter_leaves_the_others_commit_alone() -> None:
    commits = Commits()
    group = GroupCommit(commits, window=LONG)
    release = asyncio.Event()

    async def delivery(wait: bool) -> None:
        with group.working():
            await group.durable()
            if wait:
                await release.wait()

    hold = asyncio.Event()

    async def in_flight() -> None:
        with group.working():
            await hold.wait()
            await group.durable()

    other = asyncio.create_task(in_flight())
    await asyncio.sleep(0)  # one turn of the loop: the other delivery starts its work
    waiting = asyncio.create_task(delivery(wait=False))
    for _ in range(3):
        await asyncio.sleep(0)
    assert commits.calls == 0  # it waits for the other one in flight
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    hold.set()
    async with asyncio.timeout(1.0):
        await other
    assert commits.calls == 1


async def test_writes_outside_deliveries_are_committed_by_the_loop_until_stop() -> None:
    commits = Commits()
    group = GroupCommit(commits, every=0.01)
    stop = asyncio.Event()
    loop = asyncio.create_task(group.run(stop))
    async with asyncio.timeout(5.0):
        await commits.twice.wait()
    stop.set()
    await loop
