"""Sections 14 and 15 of docs/PROTOCOL.md: the signed directory and its JSON Schema, version
numbers, key and password files; each example checked against its vector, the independent
implementation of the document (``tests/independent.py``) and the reference."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests import independent
from tests.independent import Refused
from tests.protocol_examples import EXAMPLES, VECTORS, at, directory, keys, section, trust

# --- section 14: the directory ----------------------------------------------------------------


def _signeddirectory() -> bytes:
    frame = json.loads(EXAMPLES["directory_signature"])
    frame["document"] = independent.b64u_encode(independent.canonical(directory()))
    return json.dumps(frame).encode("ascii")


def test_the_directory_example_is_the_vector() -> None:
    frame = json.loads(_signeddirectory())
    assert frame == VECTORS["signed_directory"]
    assert f"{len(frame['document'])} characters" in section("14.1")


def test_the_directory_example_opens_by_the_documented_steps() -> None:
    """The coordinator's signature over the document, then the document valid under
    ``schemas/json/directory.json`` (and the frame under ``signed_directory.json``)."""
    opened = independent.open_directory(_signeddirectory(), keys("directory_key"))
    assert opened == directory()
    tampered = json.loads(_signeddirectory())
    tampered["document"] = independent.b64u_encode(
        independent.canonical({**directory(), "version": 8})
    )
    with pytest.raises(Refused, match="bad_signature"):
        independent.open_directory(json.dumps(tampered).encode(), keys("directory_key"))


def test_the_example_directory_lists_ca_certificates_that_pass_section_14_7() -> None:
    """SEAJust's broker CA and the coordinator's link CA pass the independent checks; the same
    directory with the link CA's validity changed is refused by both implementations alike."""
    opened = independent.open_directory(_signeddirectory(), keys("directory_key"))
    seajust = next(n for n in opened["networks"] if n["id"] == "seajust")
    assert [ca["id"] for ca in seajust["tls"]["cas"]] == ["seajust-ca-1"]
    assert [ca["id"] for ca in opened["link_cas"]] == ["unodc-link-ca-1"]
    altered = dict(opened["link_cas"][0], not_after="2030-12-31T00:00:00.000Z")
    with pytest.raises(Refused, match="tls_validity_mismatch"):
        independent.check_ca(altered, opened["issued_at"])
    with pytest.raises(Refused, match="tls_ca_expired"):
        independent.check_ca(opened["link_cas"][0], "2031-01-01T00:00:00.000Z")
    from mlanet.broker.directory_tls import check_listed_certificates
    from mlanet.broker.errors import RefusedMessage
    from mlanet.schemas.directory import Directory

    changed = Directory.model_validate({**directory(), "link_cas": [altered]}, strict=False)
    with pytest.raises(RefusedMessage, match="tls_validity_mismatch"):
        check_listed_certificates(changed)


def test_the_directory_example_opens_with_the_reference_implementation() -> None:
    from mlanet.broker.directory_signing import open_directory
    from mlanet.schemas.directory import Directory

    verified = open_directory(_signeddirectory(), trust(keys("directory_key")), now=at())
    assert verified.directory == Directory.model_validate(directory(), strict=False)


def test_directories_the_reference_writes_are_valid_under_the_json_schema(tmp_path: Path) -> None:
    """A local federation's directory and the next versions the coordinator builds from it
    (a join, a membership change, a handover, a revocation) validate against the JSON Schema."""
    from mlanet.broker import load_signing_key
    from mlanet.broker.directory_signing import sign_directory
    from mlanet.nodes.directory import coordinator
    from mlanet.nodes.local.federation import build
    from mlanet.schemas.directory import Directory

    fed = build(tmp_path / "federation", prefix="schema")
    key = load_signing_key(fed.coordinator_key())
    trusted = {(key.network, key.key_id): key.public_b64()}
    first = independent.open_directory((fed.root / "directory.json").read_bytes(), trusted)
    directory = Directory.model_validate(first, strict=False)
    now = datetime.now(UTC)
    seajust = directory.network("seajust")
    assert seajust is not None
    changes = [
        coordinator.change_membership(
            directory, "seajust", add_observers=["JP"], contact_points=[("jp-moj-1", "Ministry")]
        ),
        coordinator.hand_over(directory, "seajust", "kh-cp-1", "kh-cp-2", now),
        coordinator.revoke_key(directory, "casc", "ed25519:1", now),
    ]
    for networks in changes:
        following = coordinator.next_version(directory, now, timedelta(days=30), networks=networks)
        opened = independent.open_directory(sign_directory(following, key).to_bytes(), trusted)
        assert opened["version"] == 2


@pytest.mark.parametrize(
    "change",
    [
        lambda d: {**d, "networks": [*d["networks"], d["networks"][0]]},
        lambda d: {**d, "links": [*d["links"], ["seajust", "atlantis"]]},
        lambda d: {**d, "valid_until": d["issued_at"]},
        lambda d: _with_contact_point(d, {"id": "de-bfj-9", "country": "KH"}),
        lambda d: _with_contact_point(d, {"id": "kh-x-1", "country": "KH", "successor": "kh-x-1"}),
    ],
    ids=["network-twice", "unknown-link", "valid-until", "prefix", "own-successor"],
)
def test_rules_outside_the_json_schema_are_refused_by_the_reference(change: Any) -> None:
    """Section 14: the cross-field rules JSON Schema cannot state; the schema accepts these
    directories, the reference refuses them."""
    from pydantic import ValidationError

    from mlanet.schemas.directory import Directory

    broken = change(directory())
    assert independent.schema("directory").is_valid(broken)
    with pytest.raises(ValidationError):
        Directory.model_validate(broken, strict=False)


def _with_contact_point(directory: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    networks = [dict(n) for n in directory["networks"]]
    networks[0]["contact_points"] = [*networks[0]["contact_points"], point]
    return {**directory, "networks": networks}


def test_the_hand_over_deadline_is_the_documented_default() -> None:
    from mlanet.nodes.directory.coordinator import HAND_OVER_SECONDS

    assert f"(`--timeout`, {HAND_OVER_SECONDS:g} seconds by default)" in " ".join(
        section("14.6").split()
    )


# --- section 15: key and password files ----------------------------------------------------------


def test_the_key_files_are_the_vectors_and_derive_the_documented_key() -> None:
    files = VECTORS["files"]
    assert EXAMPLES["key_file"] == files["key_file"]
    assert EXAMPLES["pub_file"] + "\n" == files["pub_file"]
    network, key_id, seed = independent.private_key_file(EXAMPLES["key_file"])
    public = json.loads(EXAMPLES["pub_file"])
    assert (network, key_id) == (public["network"], public["key_id"]) == ("seajust", "ed25519:1")
    assert independent.public_key_of(seed) == public["public_key"]
    assert public["public_key"] == json.loads(EXAMPLES["keys"])["seajust"]["public_key"]


def test_the_key_files_load_with_the_reference_and_an_open_one_is_refused(tmp_path: Path) -> None:
    from mlanet.broker import load_signing_key
    from mlanet.broker.errors import KeyRefused
    from mlanet.broker.keys import load_public_key_file

    private, public = tmp_path / "seajust.1.key", tmp_path / "seajust.1.pub"
    private.write_text(EXAMPLES["key_file"], encoding="ascii")
    private.chmod(0o600)
    public.write_text(EXAMPLES["pub_file"] + "\n", encoding="ascii")
    key = load_signing_key(private)
    assert key.public_b64() == load_public_key_file(public).public_key
    private.chmod(0o640)
    with pytest.raises(KeyRefused) as refused:
        load_signing_key(private)
    assert refused.value.reason.value == "malformed_key"


def test_the_password_file_and_its_hash_are_as_documented() -> None:
    from mlanet.broker.peer_access import rabbit_password_hash

    files = VECTORS["files"]
    assert EXAMPLES["password_file"] + "\n" == files["password_file"]
    password = independent.password_of(files["password_file"])
    salt = bytes.fromhex(files["password_salt_hex"])
    assert len(password) == 32
    assert independent.password_hash(password, salt) == EXAMPLES["password_hash"]
    assert rabbit_password_hash(password, salt) == EXAMPLES["password_hash"]
    seajust = next(n for n in directory()["networks"] if n["id"] == "seajust")
    assert seajust["link_user"]["password_hash"] == EXAMPLES["password_hash"]
