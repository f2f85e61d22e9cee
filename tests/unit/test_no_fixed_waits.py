"""No test sleeps a fixed time and then asserts: it polls with a deadline instead
(``tests/polling.py``). A sleep that is itself what a test exercises (a fault that lasts so long,
the pace of a load) carries a comment that says so."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _is_sleep(node: ast.stmt) -> bool:
    call = node.value if isinstance(node, ast.Expr) else None
    if isinstance(call, ast.Await):
        call = call.value
    return (
        isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and call.func.attr == "sleep"
        and isinstance(call.func.value, ast.Name)
        and call.func.value.id in {"asyncio", "time"}
    )


def _asserts(node: ast.stmt) -> bool:
    return any(isinstance(inner, ast.Assert) for inner in ast.walk(node))


def test_no_sleep_is_followed_by_an_assertion() -> None:
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for parent in ast.walk(tree):
            for field in ("body", "orelse", "finalbody"):
                block = getattr(parent, field, None)
                if not isinstance(block, list):
                    continue
                for statement, following in itertools.pairwise(block):
                    if _is_sleep(statement) and _asserts(following):
                        found.append(f"{path.relative_to(TESTS)}:{statement.lineno}")
    assert found == []


def test_every_sleep_outside_a_poll_says_why() -> None:
    """A sleep at the top of a test's flow (not the wait of a polling loop) has a comment."""
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        tree = ast.parse("\n".join(lines))
        loops = [node for node in ast.walk(tree) if isinstance(node, ast.While | ast.For)]
        in_loop = {
            inner.lineno for loop in loops for inner in ast.walk(loop) if hasattr(inner, "lineno")
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.stmt) and _is_sleep(node) and node.lineno not in in_loop:
                said = "#" in lines[node.lineno - 1] or "#" in lines[node.lineno - 2]
                if not said:
                    found.append(f"{path.relative_to(TESTS)}:{node.lineno}")
    assert found == []
