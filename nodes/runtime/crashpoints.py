"""Deterministic crash points and a clock offset for the fault battery. Test-only; off by default.

The node calls :func:`reached` (or :func:`in_flight` around a publish) at each step of its
forwarding path. Unless the process was started with ``MLANET_CRASH_AT``, every call is a
dictionary lookup that does nothing. With it, the process ends abruptly (``os._exit``: no
``finally``, no flush, no goodbye to the broker, as with SIGKILL) on the n-th pass through a
point, so a test can place a crash exactly between two steps and then check that nothing was
lost or delivered twice (``tests/battery/``).

Environment (read once, when :func:`from_environment` or the first hook runs)::

    MLANET_CRASH_AT="after_confirm_before_ack:3"       crash on the 3rd pass through that point
    MLANET_CRASH_AT="after_receive_before_forward:1,after_delivery_before_ack:5"
    MLANET_CLOCK_OFFSET_SECONDS="-42.5"                 the node's clock runs 42.5 s behind

The points, along the path of a message:

- ``after_sign_before_forward``: origin; the submission is signed and committed to the outbox,
  nothing is published yet, the submission is not acked;
- ``after_forward_before_record``: origin; the broker confirmed the publish towards the peer,
  the outbox does not say so yet, the submission is not acked;
- ``after_receive_before_forward``: relay or destination; a delivery from a peer is verified,
  nothing is done with it yet;
- ``after_forward_before_confirm``: relay; the publish towards the next peer is handed to the
  connection, the process dies before it sees the confirm (the broker may or may not hold it);
- ``after_confirm_before_ack``: relay; the publish is confirmed, neither recorded nor acked;
- ``after_delivery_before_ack``: destination; the message is confirmed in the contact point's
  delivery queue, neither recorded nor acked (and no receipt sent).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import NoReturn, TypeVar

from mlanet.broker.errors import ConfigError

__all__ = [
    "CLOCK_OFFSET",
    "CRASH_AT",
    "CRASH_EXIT_CODE",
    "POINTS",
    "CrashPlan",
    "clock",
    "from_environment",
    "in_flight",
    "parse_crash_at",
    "reached",
]

CRASH_AT = "MLANET_CRASH_AT"
CLOCK_OFFSET = "MLANET_CLOCK_OFFSET_SECONDS"
CRASH_EXIT_CODE = 86
POINTS = (
    "after_sign_before_forward",
    "after_forward_before_record",
    "after_receive_before_forward",
    "after_forward_before_confirm",
    "after_confirm_before_ack",
    "after_delivery_before_ack",
)

T = TypeVar("T")


def parse_crash_at(spec: str) -> dict[str, int]:
    """``"point:n[,point:n...]"`` -> {point: n}; ConfigError for anything else."""
    armed: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        point, _, count = item.partition(":")
        if point not in POINTS:
            raise ConfigError(f"{CRASH_AT}: unknown crash point {point!r}")
        if not count.isdigit() or int(count) < 1:
            raise ConfigError(f"{CRASH_AT}: {point} needs a pass number >= 1")
        armed[point] = int(count)
    return armed


class CrashPlan:
    """Which points are armed, and how often each was passed so far."""

    def __init__(self, armed: Mapping[str, int]) -> None:
        self.armed = dict(armed)
        self.passes = dict.fromkeys(self.armed, 0)

    def due(self, point: str) -> bool:
        """Count a pass through ``point``; True on the armed pass."""
        if point not in self.armed:
            return False
        self.passes[point] += 1
        return self.passes[point] == self.armed[point]


def _crash(point: str, plan: CrashPlan) -> NoReturn:
    os.write(2, f"crash point {point} reached (pass {plan.passes[point]}): exiting\n".encode())
    os._exit(CRASH_EXIT_CODE)


@cache
def _plan() -> CrashPlan:
    return CrashPlan(parse_crash_at(os.environ.get(CRASH_AT, "")))


def reached(point: str) -> None:
    """The node is between two steps at ``point``; die here if this pass is the armed one."""
    plan = _plan()
    if plan.armed and plan.due(point):
        _crash(point, plan)


async def in_flight(point: str, publish: Awaitable[T]) -> T:
    """Await ``publish``; on the armed pass, start it, let its frames go out, and die before
    looking at the confirm."""
    plan = _plan()
    if not (plan.armed and plan.due(point)):
        return await publish
    task = asyncio.ensure_future(publish)
    for _ in range(20):  # the publish task writes its frames, then waits for the confirm
        await asyncio.sleep(0)
    del task  # never awaited: the process ends before the confirm is looked at
    _crash(point, plan)


def _now() -> datetime:
    return datetime.now(UTC)


def clock() -> Callable[[], datetime]:
    """The node's clock: the system's, shifted by ``MLANET_CLOCK_OFFSET_SECONDS`` when set."""
    raw = os.environ.get(CLOCK_OFFSET, "").strip()
    if not raw:
        return _now
    try:
        offset = timedelta(seconds=float(raw))
    except (ValueError, OverflowError):
        raise ConfigError(f"{CLOCK_OFFSET} must be a number of seconds") from None
    if abs(offset) > timedelta(days=3650):
        raise ConfigError(f"{CLOCK_OFFSET} is out of range")

    def shifted() -> datetime:
        return datetime.now(UTC) + offset

    return shifted


def from_environment() -> Callable[[], datetime]:
    """Read both variables at start-up (a bad value stops the node before it consumes) and
    return the node's clock."""
    _plan()
    return clock()
