"""A contact point's credentials as the node's operator writes them, the node's config table that
names where the node's vouched keys are, and what quarantine tools read from a signed frame."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlanet.broker import ConfigError, Reason
from mlanet.broker.submission_signing import sign_returned, sign_submission
from mlanet.nodes.cli.contact import facilitation_request
from mlanet.nodes.config import load_config
from mlanet.nodes.directory.contact_points import (
    Credentials,
    broker_user,
    vouched_users,
    write_contact_point,
)
from mlanet.nodes.state.quarantine import claim, payload_text

NODE_TOML = """network = "seajust"
signing_key = "seajust.1.key"
directory = "directory.json"
state_dir = "state"

[broker]
vhost = "mlanet-seajust"
user = "mlanet-seajust"
password_file = "broker.password"
"""


def test_a_contact_points_credentials_and_what_its_node_holds(tmp_path: Path) -> None:
    """The credentials folder holds the key and the password (owner-only, folder 0700); the
    node's folder the public key and a hash of the password, never the password itself."""
    keys, out = tmp_path / "contact-points", tmp_path / "given" / "kh-cp-1"
    added = write_contact_point(keys, "mlanet-seajust", "mlanet-seajust", "kh-cp-1", out)
    assert added.user == broker_user("mlanet-seajust", "kh-cp-1") == "mlanet-seajust-cp-kh-cp-1"
    credentials = Credentials.load(out)
    assert credentials.contact_point == "kh-cp-1"
    assert out.stat().st_mode & 0o777 == 0o700
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {
        "contact-point.key": 0o600,
        "broker.password": 0o600,
    }
    assert sorted(p.name for p in keys.iterdir()) == ["kh-cp-1.pub", "kh-cp-1.user"]
    (user,) = vouched_users(keys)
    assert (user.contact_point, user.name, user.vhost) == ("kh-cp-1", added.user, "mlanet-seajust")
    held = "".join(p.read_text(encoding="ascii") for p in keys.iterdir())
    assert credentials.password not in held
    assert credentials.password not in repr(credentials)
    with pytest.raises(FileExistsError):
        write_contact_point(keys, "mlanet-seajust", "mlanet-seajust", "kh-cp-1", tmp_path / "b")
    with pytest.raises(ConfigError, match="kh-cp-1"):
        write_contact_point(keys, "mlanet-seajust", "mlanet-seajust", "../../x", tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_credentials_that_cannot_be_used_say_why(tmp_path: Path) -> None:
    out = tmp_path / "kh-cp-1"
    write_contact_point(tmp_path / "keys", "n", "v", "kh-cp-1", out)
    (out / "contact-point.key").chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        Credentials.load(out)
    with pytest.raises(ConfigError, match="cannot load"):
        Credentials.load(tmp_path / "nowhere")
    (tmp_path / "keys" / "kh-cp-1.user").write_text("{}", encoding="ascii")
    with pytest.raises(ConfigError, match=r"kh-cp-1\.user"):
        vouched_users(tmp_path / "keys")


def test_the_vouched_keys_folder_is_beside_the_config_unless_named(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(NODE_TOML, encoding="utf-8")
    assert load_config(path).contact_points.keys == tmp_path.resolve() / "contact-points"
    path.write_text(NODE_TOML + '\n[contact_points]\nkeys = "vouched"\n', encoding="utf-8")
    assert load_config(path).contact_points.keys == tmp_path.resolve() / "vouched"
    path.write_text(NODE_TOML + '\n[contact_points]\nkeys = "x"\nother = 1\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"contact_points\.other"):
        load_config(path)


def test_quarantine_tools_read_what_a_signed_frame_claims(tmp_path: Path) -> None:
    """``mlanet quarantine list`` shows the identifiers a signed submission (or a handed-back
    delivery) claims, and ``show --payload`` its payload, as for an unsigned one."""
    out = tmp_path / "kh-cp-1"
    write_contact_point(tmp_path / "keys", "n", "v", "kh-cp-1", out)
    key = Credentials.load(out).key
    submission = facilitation_request("kh-cp-1", "UZ", summary="the summary")
    found = claim(sign_submission(submission, key))
    assert (found.message_id, found.origin, found.destination, found.kind) == (
        submission.message_id,
        "kh-cp-1",
        "UZ",
        "facilitation_request",
    )
    assert json.loads(payload_text(sign_submission(submission, key)))["summary"] == "the summary"
    handed_back = claim(sign_returned(b'{"not": "an envelope"}', Reason.EXPIRED, key))
    assert handed_back.message_id == ""
