"""Per-peer fairness (nodes/runtime/fairness.py): the token bucket's arithmetic on a fake clock, the
policy that bounds a peer's inbox, and where a peer's limits come from in the config."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mlanet.broker.transport import Incoming
from mlanet.nodes.config import NodeConfig, PeerLimits
from mlanet.nodes.runtime.fairness import BYTES_PER_TOKEN, TokenBucket, inbox_policy, paced


class FakeTime:
    """A clock that only moves when the bucket sleeps; records every sleep."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_a_full_bucket_gives_its_burst_at_once_then_one_token_per_interval() -> None:
    time = FakeTime()
    bucket = TokenBucket(10.0, 3, clock=time.clock, sleep=time.sleep)
    for _ in range(3):
        await bucket.take()
    assert time.sleeps == []
    for _ in range(5):
        await bucket.take()
    assert time.sleeps == pytest.approx([0.1] * 5)
    assert time.now == pytest.approx(100.5)  # 8 tokens: 3 at once, then 5 at 10 per second


async def test_idle_time_refills_up_to_the_burst_and_no_further() -> None:
    time = FakeTime()
    bucket = TokenBucket(2.0, 4, clock=time.clock, sleep=time.sleep)
    for _ in range(4):
        await bucket.take()
    time.now += 3600  # an hour idle saves 4 tokens, not 7200
    for _ in range(4):
        await bucket.take()
    assert time.sleeps == []
    await bucket.take()
    assert time.sleeps == pytest.approx([0.5])


async def test_waiters_are_served_in_turn() -> None:
    time = FakeTime()
    bucket = TokenBucket(1.0, 1, clock=time.clock, sleep=time.sleep)
    served: list[int] = []

    async def take(n: int) -> None:
        await bucket.take()
        served.append(n)

    await asyncio.gather(*(take(n) for n in range(5)))
    assert served == [0, 1, 2, 3, 4]
    assert time.now == pytest.approx(104.0)


def test_a_bucket_needs_a_positive_rate_and_a_burst() -> None:
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(0.0, 1)
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(1.0, 0)


def test_the_policy_bounds_exactly_the_peer_queue_and_refuses_rather_than_drops() -> None:
    name, pattern, definition = inbox_policy("seajust", PeerLimits(queue_messages=200))
    assert name == "mlanet-inbox-seajust"
    assert pattern == r"^mlanet\.inbox\.seajust$"
    assert definition == {
        "max-length": 200,
        "max-length-bytes": 256 * 1024 * 1024,
        "overflow": "reject-publish",
    }


def _config(**extra: object) -> NodeConfig:
    return NodeConfig.model_validate(
        {
            "network": "casc",
            "signing_key": Path("casc.1.key"),
            "directory": Path("directory.json"),
            "state_dir": Path("state"),
            "broker": {"vhost": "casc", "user": "casc", "password_file": Path("pw")},
            **extra,
        }
    )


def test_a_peer_takes_its_own_limits_or_the_nodes_default() -> None:
    config = _config(
        limits={"peer": {"rate": 40.0}},
        peers=[
            {"network": "seajust", "user": "u", "password_file": "pw", "limits": {"rate": 5.0}},
            {"network": "ejn", "user": "u", "password_file": "pw"},
        ],
    )
    assert config.peer_limits("seajust").rate == 5.0
    assert config.peer_limits("ejn").rate == 40.0
    assert config.peer_limits("wacap").rate == 40.0  # a peer from the directory's links
    assert config.peer_limits("ejn").prefetch is None  # the node's limits.prefetch applies


async def test_a_take_costs_what_is_asked_up_to_the_burst() -> None:
    time = FakeTime()
    bucket = TokenBucket(10.0, 3, clock=time.clock, sleep=time.sleep)
    await bucket.take(2)
    await bucket.take(2)  # one left: waits for one more
    assert time.sleeps == pytest.approx([0.1])
    await bucket.take(50)  # more than the burst: takes the whole burst
    assert time.sleeps == pytest.approx([0.1, 0.3])


async def test_a_delivery_costs_one_token_per_started_block_of_its_body() -> None:
    taken: list[int] = []
    handled: list[bytes] = []

    class Recording(TokenBucket):
        async def take(self, tokens: int = 1) -> None:
            taken.append(tokens)

    async def handler(incoming: Incoming) -> None:
        handled.append(incoming.body)

    paced_handler = paced(Recording(1.0, 1), handler)
    sizes = [0, 1, BYTES_PER_TOKEN, BYTES_PER_TOKEN + 1, 256 * 1024 + 1]
    for size in sizes:
        await paced_handler(
            Incoming(b"x" * size, "mlanet.inbox.from.seajust", "", False, 0, {}, None, None)  # type: ignore[arg-type]
        )
    assert taken == [1, 1, 1, 2, 33]
    assert [len(body) for body in handled] == sizes
