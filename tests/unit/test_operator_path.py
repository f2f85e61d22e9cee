"""The operator's path works as written (no broker needed): ``mlanet init`` writes an
``[operator]`` section that ``mlanet operator password`` uses; the coordinator key to pin has a
name of its own and pinning the wrong one says so; the local federation records its prefix and
``federation down`` refuses to guess; every help text shows every word; the docs say what the
commands do; pyproject's licence is an SPDX expression."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from mlanet.broker import ConfigError
from mlanet.broker.keys import load_public_key_file
from mlanet.nodes.cli.app import app
from mlanet.nodes.config import load_config
from mlanet.nodes.directory.book import DirectoryBook
from mlanet.nodes.local.federation import FEDERATION_FILE, Federation, build
from mlanet.nodes.operator.auth import verify_password

ROOT = Path(__file__).parents[2]


@pytest.fixture
def fed(tmp_path: Path) -> Federation:
    return build(tmp_path / "federation", prefix="unit")


def _init(fed: Federation, folder: Path, coordinator_key: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "init",
            "--dir", str(folder),
            "--network", "pilon",
            "--name", "Pacific Islands Law Officers Network",
            "--member", "FJ",
            "--coordinator-key", str(coordinator_key),
            "--vhost", "pilon", "--user", "pilon", "--link", "seajust",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output


# --- mlanet init and the dashboard's password ----------------------------------------------------
def test_init_writes_an_operator_section_that_operator_password_uses(
    fed: Federation, tmp_path: Path
) -> None:
    """Before, a node that joined had no [operator] password_file, so `mlanet operator
    password` told its operator to edit the config first."""
    folder = tmp_path / "pilon"
    _init(fed, folder, fed.coordinator_pub())
    config = load_config(folder / "node.toml")
    assert config.operator.password_file == folder.resolve() / "operator.password"
    assert not config.operator.password_file.exists()  # no password until the operator sets one
    result = CliRunner().invoke(
        app,
        ["operator", "password", "--config", str(folder / "node.toml"), "--stdin"],
        input="a long passphrase\n",
    )
    assert result.exit_code == 0, result.output
    line = config.operator.password_file.read_text(encoding="ascii")
    assert verify_password("a long passphrase", line)


# --- which unodc.1.pub ---------------------------------------------------------------------------
def test_the_directory_key_and_the_coordinators_message_key_have_different_names(
    fed: Federation,
) -> None:
    directory_key = fed.coordinator_pub()
    message_key = fed.root / "unodc" / "unodc.1.pub"
    assert directory_key.name == "unodc-directory.1.pub"
    assert directory_key.name != message_key.name
    assert (
        load_public_key_file(directory_key).public_key
        != load_public_key_file(message_key).public_key
    )
    joining = (ROOT / "docs" / "JOINING.md").read_text(encoding="utf-8")
    assert "unodc/coordinator/unodc-directory.1.pub" in joining  # the file the doc says to pin


def test_pinning_the_coordinators_message_key_says_so(fed: Federation, tmp_path: Path) -> None:
    """The directory cannot open against the wrong key, and the node (and every command that
    loads its directory) says which key was pinned and which one to pin."""
    wrong = tmp_path / "wrong"
    _init(fed, wrong, fed.root / "unodc" / "unodc.1.pub")
    shutil.copy(fed.root / "directory.json", wrong / "directory.json")
    with pytest.raises(ConfigError) as refused:
        DirectoryBook.load(load_config(wrong / "node.toml"), persist=False)
    assert "pins unodc's message key" in str(refused.value)
    assert "unodc/coordinator/unodc-directory.1.pub" in str(refused.value)
    right = tmp_path / "right"
    _init(fed, right, fed.coordinator_pub())
    shutil.copy(fed.root / "directory.json", right / "directory.json")
    # the directory does not list pilon yet: a different refusal, and no word of the pin
    with pytest.raises(ConfigError) as not_yet:
        DirectoryBook.load(load_config(right / "node.toml"), persist=False)
    assert "pilon is not in directory version 1" in str(not_yet.value)


# --- the local federation's prefix ---------------------------------------------------------------
def test_the_federation_records_its_prefix_and_refuses_another_one_in_its_folder(
    fed: Federation,
) -> None:
    loaded = Federation.load(fed.root)
    assert loaded == fed
    assert loaded.nodes == (*fed.networks, "unodc")
    with pytest.raises(ConfigError, match="holds the federation with prefix unit"):
        build(fed.root, prefix="other")
    assert Federation.load(fed.root).prefix == "unit"  # still what down will remove


def test_federation_down_refuses_to_guess_a_prefix(fed: Federation, tmp_path: Path) -> None:
    """Nothing reaches the broker: each case is refused before it is asked anything."""
    runner = CliRunner()
    empty = tmp_path / "empty"
    empty.mkdir()
    unknown = runner.invoke(app, ["federation", "down", "--dir", str(empty)])
    assert unknown.exit_code == 2
    assert f"holds no {FEDERATION_FILE}" in unknown.output
    assert "nothing removed" in unknown.output
    other = runner.invoke(
        app, ["federation", "down", "--dir", str(fed.root), "--prefix", "someone-else"]
    )
    assert other.exit_code == 2
    assert "holds the federation with prefix unit, not someone-else" in other.output


# --- help texts ----------------------------------------------------------------------------------
def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def _words(text: str) -> str:
    """Whitespace normalised; a word click wrapped at its hyphen joined again."""
    return " ".join(re.sub(r"(?<=\w)-\n\s+(?=\w)", "-", text).split())


def test_no_help_text_loses_a_word() -> None:
    """Every command's and option's help, as written, appears in whole in its --help (rich
    markup swallowed "[operator]" and "[section]" before; click cut command lists short)."""
    root = typer.main.get_command(app)
    checked = 0
    for path, command in _commands(root):
        shown = _words(CliRunner().invoke(app, [*path, "--help"]).output)
        texts = [(command.help or "").partition("\f")[0]]
        texts += [getattr(param, "help", None) or "" for param in command.params]
        for sub in getattr(command, "commands", {}).values():  # the group's list of commands
            texts.append((sub.help or "").partition("\f")[0].split("\n\n")[0])
        for text in filter(None, texts):
            assert _words(text) in shown, f"mlanet {' '.join(path)} --help: {text!r}"
            checked += 1
    assert checked > 100
    shown = _words(CliRunner().invoke(app, ["operator", "password", "--help"]).output)
    assert "writes its scrypt hash to [operator] password_file" in shown
    shown = _words(CliRunner().invoke(app, ["directory", "provision", "--help"]).output)
    assert "An administrator of the broker (used by this command only)." in shown


# --- docs, packaging -----------------------------------------------------------------------------
def test_the_docs_name_federation_init_and_its_six_networks() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    operations = (ROOT / "docs" / "OPERATIONS.md").read_text(encoding="utf-8")
    assert "mlanet federation init" in readme
    assert "mlanet federation down" in readme
    for text in (readme, operations):  # where init's networks are counted, six are
        for sentence in re.split(r"(?<=\.) ", _words(text)):
            if "federation init" in sentence and "five" in sentence:
                assert "six networks" in sentence, sentence
    assert "six" in _words(operations).split("mlanet federation init --dir federation", 1)[1][:200]
    help_text = _words(CliRunner().invoke(app, ["federation", "init", "--help"]).output)
    assert "six networks (the five example networks and the coordinator" in help_text


def test_the_licence_is_an_spdx_expression() -> None:
    """setuptools warns at every install about a licence table (deprecated)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["license"] == "Apache-2.0"
    requires = project["build-system"]["requires"]
    assert any(re.fullmatch(r"setuptools>=(\d+)", r) and int(r[12:]) >= 77 for r in requires)


# --- the broker's open-file limit ----------------------------------------------------------------
def _ensure_nofile(limits: Path) -> str:
    """Run setup.sh's ensure_nofile on its own, against ``limits`` instead of the system's."""
    script = (ROOT / "scripts" / "setup.sh").read_text(encoding="utf-8")
    function = re.search(r"^ensure_nofile\(\) \{\n.*?^\}\n", script, re.M | re.S)
    assert function is not None
    completed = subprocess.run(
        ["bash", "-c", f'set -euo pipefail; SUDO=""; NOFILE=65536\n'
         f'log() {{ echo "$*"; }}\n{function.group(0)}ensure_nofile'],
        env={"PATH": os.environ["PATH"], "RABBITMQ_LIMITS_FILE": str(limits)},
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    return completed.stdout


def test_setup_raises_the_brokers_open_file_limit_for_the_rabbitmq_user(tmp_path: Path) -> None:
    """Debian's rabbitmq-server runs the broker through su: PAM reads limits.d. setup.sh writes
    the file before it starts a broker (and never restarts one that runs)."""
    limits = tmp_path / "limits.d" / "rabbitmq.conf"
    assert "raising" in _ensure_nofile(limits)
    assert limits.read_text(encoding="ascii") == "rabbitmq - nofile 65536\n"
    assert _ensure_nofile(limits) == ""  # already enough: left alone
    limits.write_text("rabbitmq - nofile 1024\n", encoding="ascii")
    assert "raising" in _ensure_nofile(limits)
    assert limits.read_text(encoding="ascii") == "rabbitmq - nofile 65536\n"
    script = (ROOT / "scripts" / "setup.sh").read_text(encoding="utf-8")
    started = script.index('log "starting RabbitMQ"')
    assert script.rindex("ensure_nofile", 0, started) > script.index("if ! rabbit_answers; then")
