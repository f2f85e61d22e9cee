"""Deployment files are parsed and checked: Docker does not run here, so these tests are what
keeps the files true to the code (the command they run exists, state is persistent, the node
runs unprivileged and as a single replica)."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import yaml
from typer.testing import CliRunner

from mlanet.nodes.cli.app import app

DEPLOY = Path(__file__).parents[2] / "deploy"


def _dockerfile_instructions() -> list[tuple[str, str]]:
    lines: list[tuple[str, str]] = []
    pending = ""
    for raw in (DEPLOY / "docker" / "Dockerfile").read_text().splitlines():
        if raw.strip().startswith("#") or not raw.strip():
            continue
        pending += raw.rstrip("\\").strip() + " "
        if not raw.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            lines.append((word.upper(), rest))
            pending = ""
    return lines


def _cli_accepts(args: list[str]) -> None:
    """The command exists: its --help answers (the real run needs a config and a broker)."""
    result = CliRunner().invoke(app, [*args[: args.index("--config")], "--help"])
    assert result.exit_code == 0, result.output


def test_dockerfile_installs_the_packages_and_runs_the_node_unprivileged() -> None:
    instructions = _dockerfile_instructions()
    known = {"FROM", "WORKDIR", "COPY", "RUN", "USER", "VOLUME", "ENTRYPOINT", "CMD"}
    assert {word for word, _ in instructions} <= known
    copied = " ".join(rest for word, rest in instructions if word == "COPY")
    for package in ("schemas", "broker", "nodes", "pyproject.toml"):
        assert package in copied
    users = [rest for word, rest in instructions if word == "USER"]
    assert users
    assert users[-1] != "root"
    entry = yaml.safe_load(next(rest for word, rest in instructions if word == "ENTRYPOINT"))
    cmd = yaml.safe_load(next(rest for word, rest in instructions if word == "CMD"))
    assert entry == ["mlanet"]
    _cli_accepts(cmd)


def test_kubernetes_runs_one_unprivileged_replica_with_persistent_state() -> None:
    documents = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "node.yaml").read_text()))
    kinds = {doc["kind"]: doc for doc in documents}
    assert set(kinds) == {"PersistentVolumeClaim", "StatefulSet"}
    spec = kinds["StatefulSet"]["spec"]
    assert spec["replicas"] == 1, "a node is the only writer of its state"
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    _cli_accepts(container["args"])
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    claim = next(v for v in pod["volumes"] if v["name"] == "state")["persistentVolumeClaim"]
    assert claim["claimName"] == kinds["PersistentVolumeClaim"]["metadata"]["name"]
    assert mounts["config"]["readOnly"] is True
    assert (
        spec["selector"]["matchLabels"]
        == kinds["StatefulSet"]["spec"]["template"]["metadata"]["labels"]
    )


def test_systemd_unit_runs_the_node_and_restarts_it() -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.read(DEPLOY / "systemd" / "mlanet-node.service")
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/mlanet")
    _cli_accepts(argv[1:])
    assert service["Restart"] == "on-failure"
    assert service["User"] != "root"
    assert service["NoNewPrivileges"] == "true"
