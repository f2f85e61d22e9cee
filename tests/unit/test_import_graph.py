"""The import graph of ``mlanet.schemas``, ``mlanet.broker`` and ``mlanet.nodes``: no two
modules import each other (through any chain, also under ``TYPE_CHECKING``: a part that needs
another part's shape names a ``typing.Protocol`` instead), and the layers point one way,
``schemas`` <- ``broker`` <- ``nodes``.

The graph is read from the source (the AST of every module's imports, wherever they stand in the
module), not from what Python happens to have imported. An edge is an import that names a module
of these packages: ``from mlanet.nodes.runtime.actions import Actions`` is an edge to
``mlanet.nodes.runtime.actions``; ``from mlanet.nodes.runtime import crashpoints`` an edge to
``mlanet.nodes.runtime.crashpoints`` (a module) and to ``mlanet.nodes.runtime`` (the package's
``__init__``). Importing a submodule also runs its packages' ``__init__``, but those are not
counted as edges: a package that re-exports its modules would otherwise be a cycle with each.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "broker", "nodes")
# which packages each one may import (besides itself): the layers of the README's layout
MAY_IMPORT = {"schemas": set(), "broker": {"schemas"}, "nodes": {"schemas", "broker"}}


def modules(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Every module of ``mlanet.<package>`` for each of ``packages`` under ``root`` (the folder
    that holds ``mlanet/``), by dotted name (a package by its own)."""
    found = {}
    for package in packages:
        for path in sorted((root / "mlanet" / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imported(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> set[str]:
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    base = node.module or ""
    if node.level:  # relative: from the module's package (a package's own __init__ is in it)
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        anchor = package[: len(package) - node.level + 1]
        base = ".".join([*anchor, base] if base else anchor)
    return {base} | {f"{base}.{alias.name}" for alias in node.names}


def import_graph(found: Mapping[str, Path]) -> dict[str, set[str]]:
    """Each module's imports among ``found`` (itself left out)."""
    graph: dict[str, set[str]] = {}
    for module, path in found.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges |= {name for name in _imported(module, path, node) if name in found}
        edges.discard(module)
        graph[module] = edges
    return graph


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted: every
    set of modules that import each other through some chain."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in sorted(graph.get(module, ())):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(found)


def layer_breaches(graph: Mapping[str, set[str]]) -> list[str]:
    """Imports that point the wrong way between the packages, one line each."""
    breaches = []
    for module, edges in sorted(graph.items()):
        package = module.split(".")[1]
        for other in sorted(edges):
            target = other.split(".")[1]
            if target != package and target not in MAY_IMPORT[package]:
                breaches.append(f"{module} imports {other}")
    return breaches


def _describe(graph: Mapping[str, set[str]], component: list[str]) -> str:
    members = set(component)
    return "; ".join(f"{m} -> {', '.join(sorted(graph[m] & members))}" for m in component)


def test_no_modules_of_schemas_broker_or_nodes_import_each_other() -> None:
    graph = import_graph(modules(ROOT))
    assert len(graph) > 50  # the packages were found
    found = cycles(graph)
    assert not found, "modules that import each other: " + " | ".join(
        _describe(graph, component) for component in found
    )


def test_schemas_import_neither_broker_nor_nodes_and_broker_does_not_import_nodes() -> None:
    assert layer_breaches(import_graph(modules(ROOT))) == []


def _tree(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_a_cycle_through_type_checking_or_a_relative_import_is_found(tmp_path: Path) -> None:
    """The check itself: a cycle hidden under TYPE_CHECKING, or made of relative imports and
    a package's __init__, is reported; a package re-exporting its modules is not a cycle."""
    _tree(
        tmp_path,
        {
            "mlanet/nodes/__init__.py": "",
            "mlanet/nodes/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from mlanet.nodes.b import B\n",
            "mlanet/nodes/b.py": "from mlanet.nodes import a\n",
            "mlanet/nodes/c/__init__.py": "from .d import D\n",
            "mlanet/nodes/c/d.py": "from .e import E\n",
            "mlanet/nodes/c/e.py": "from ..c.d import D\n",
            "mlanet/nodes/f/__init__.py": "from mlanet.nodes.f.g import G\n",
            "mlanet/nodes/f/g.py": "from mlanet.nodes.f.h import H\n",
            "mlanet/nodes/f/h.py": "import json\n",
        },
    )
    graph = import_graph(modules(tmp_path, ("nodes",)))
    assert cycles(graph) == [
        ["mlanet.nodes.a", "mlanet.nodes.b"],
        ["mlanet.nodes.c.d", "mlanet.nodes.c.e"],
    ]


def test_an_import_against_the_layers_is_found(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "mlanet/schemas/__init__.py": "",
            "mlanet/schemas/model.py": "import mlanet.broker.keys\n",
            "mlanet/broker/__init__.py": "",
            "mlanet/broker/keys.py": "from mlanet.schemas import model\n"
            "from mlanet.nodes.node import Node\n",
            "mlanet/nodes/__init__.py": "",
            "mlanet/nodes/node.py": "from mlanet.broker import keys\n"
            "from mlanet.schemas.model import M\n",
        },
    )
    graph = import_graph(modules(tmp_path))
    assert layer_breaches(graph) == [
        "mlanet.broker.keys imports mlanet.nodes.node",
        "mlanet.schemas.model imports mlanet.broker.keys",
    ]
