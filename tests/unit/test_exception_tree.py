"""One documented exception tree: every exception class defined in mlanet's packages descends from
:class:`mlanet.broker.errors.MlanetError`, and the tree drawn in ``broker/errors.py``'s docstring is
exactly the tree the modules define (every class, under its real parent)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import mlanet.broker.errors
from mlanet import broker, nodes, schemas
from mlanet.broker.errors import MlanetError


def _project_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class defined (not imported) in schemas, broker and nodes."""
    found: dict[str, type[BaseException]] = {}
    for package in (schemas, broker, nodes):
        names = [package.__name__]
        names += [  # a __main__ module runs its command when imported
            info.name
            for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
            if not info.name.endswith(".__main__")
        ]
        for name in names:
            module = importlib.import_module(name)
            for _, value in inspect.getmembers(module, inspect.isclass):
                if issubclass(value, BaseException) and value.__module__ == name:
                    assert value.__name__ not in found, f"two exceptions named {value.__name__}"
                    found[value.__name__] = value
    return found


def _drawn() -> dict[str, str | None]:
    """The docstring's tree: each class name with the class drawn as its parent."""
    doc = mlanet.broker.errors.__doc__ or ""
    lines = doc[doc.index("The tree::") :].splitlines()[2:]
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in lines:
        if not line.strip():
            break
        drawn = re.match(r"^(\s*(?:[│ ]   |[├└]── )*)(\w+)", line)
        assert drawn, line
        depth = len(drawn[1])
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[drawn[2]] = stack[-1][1] if stack else None
        stack.append((depth, drawn[2]))
    return parents


def test_every_project_exception_descends_from_the_root() -> None:
    found = _project_exceptions()
    assert "MlanetError" in found
    outside = sorted(name for name, cls in found.items() if not issubclass(cls, MlanetError))
    assert outside == []


def test_the_drawn_tree_is_the_defined_tree() -> None:
    found = _project_exceptions()
    drawn = _drawn()
    assert set(drawn) == set(found)
    for name, parent in drawn.items():
        bases = [base.__name__ for base in found[name].__bases__]
        assert bases == ([parent] if parent else ["Exception"]), name


def test_the_root_is_exported_where_the_tree_is_drawn() -> None:
    assert broker.MlanetError is MlanetError
    assert set(mlanet.broker.errors.__all__) >= {
        "ConfigError",
        "KeyRefused",
        "MlanetError",
        "RefusedMessage",
        "TransportError",
    }
