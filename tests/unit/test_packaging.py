"""The distribution: one ``mlanet`` namespace in site-packages, typed, with its data files.

The repository keeps the design's folders at its top (``schemas/``, ``broker/``, ``nodes/``);
``mlanet/`` links them into one package, so that an installed mlanet never puts generic names
such as ``broker`` or ``nodes`` into site-packages where they would collide with other projects.
The wheel is built here from the working tree, without the network.
"""

from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import mlanet

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The wheel, built from a copy of what the distribution is made of (setuptools writes a
    build folder beside the sources: not into the checkout)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for folder in ("schemas", "broker", "nodes", "mlanet"):
        shutil.copytree(
            ROOT / folder,
            source / folder,
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(source),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (built,) = out.glob("mlanet-*.whl")
    return zipfile.ZipFile(built)


def test_the_wheel_installs_one_namespace_and_nothing_else(wheel: zipfile.ZipFile) -> None:
    tops = {name.split("/")[0] for name in wheel.namelist()}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"mlanet"}
    names = set(wheel.namelist())
    assert "mlanet/py.typed" in names
    assert "mlanet/broker/envelope.py" in names
    assert "mlanet/nodes/runtime/node.py" in names
    assert any(name.startswith("mlanet/schemas/json/") and name.endswith(".json") for name in names)
    assert "mlanet/nodes/examples/node.toml" in names


def test_the_public_api_is_what_all_names() -> None:
    assert mlanet.__all__ == sorted(mlanet.__all__)
    for name in mlanet.__all__:
        assert getattr(mlanet, name) is not None, name
    assert (Path(mlanet.__file__).parent / "py.typed").exists()


def test_no_module_imports_the_folders_by_their_bare_names() -> None:
    """``import broker`` would load a second copy of a module beside ``mlanet.broker``."""
    bare = []
    for folder in ("schemas", "broker", "nodes", "tests", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    names = [node.module or ""]
                bare += [
                    f"{path.relative_to(ROOT)}:{node.lineno}"
                    for name in names
                    if name.split(".")[0] in ("schemas", "broker", "nodes")
                ]
    assert bare == []


def test_python_dash_m_mlanet_is_the_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mlanet", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert "Usage" in done.stdout
    assert importlib.import_module("mlanet.nodes.cli.app").main is not None
