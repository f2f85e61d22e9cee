"""Session checks shared by every test: the integration tests need the real RabbitMQ, and a
run without it fails loudly with the way to start it (never a silent skip)."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from tests.stores import database  # noqa: F401 - the fixture, for every test

_HOW = (
    "RabbitMQ must answer on 127.0.0.1:5672 with the management API on :15672 and the shovel "
    "plugin enabled. Run ./scripts/setup.sh (or: rabbitmq-server -detached && rabbitmq-plugins "
    "enable rabbitmq_management rabbitmq_shovel rabbitmq_shovel_management)."
)


def _broker_problem() -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=3):
            pass
    except OSError as exc:
        return f"AMQP port unreachable ({exc.__class__.__name__})"
    request = urllib.request.Request("http://127.0.0.1:15672/api/overview")
    request.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")  # guest:guest
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - fixed local URL
            if response.status != 200:
                return f"management API answered {response.status}"
    except OSError as exc:
        return f"management API unreachable ({exc.__class__.__name__})"
    return None


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
    # The long tier (the battery's full-scale scenarios, and the slowest integration tests) runs
    # with ./scripts/battery (-m battery_long); the test command deselects it, visibly.
    if "battery_long" not in (config.getoption("markexpr") or ""):
        long_tier = [item for item in items if item.get_closest_marker("battery_long")]
        if long_tier:
            config.hook.pytest_deselected(items=long_tier)
            items[:] = [item for item in items if not item.get_closest_marker("battery_long")]
    needs_broker = [item for item in items if "integration" in item.keywords]
    if needs_broker and (problem := _broker_problem()):
        pytest.exit(f"integration tests cannot run: {problem}. {_HOW}", returncode=3)
