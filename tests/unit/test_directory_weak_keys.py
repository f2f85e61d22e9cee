"""A coordinator-signed directory that lists a key no trust store may take (the identity, another
small-order point, a mixed-order point, a non-canonical encoding; as a network key or as a
coordinator key) is refused with ``weak_key`` / ``malformed_key`` when it is opened, before a
node writes anything; the coordinator never signs one; a node starts on its last good
directory whatever its state file holds; a directory without a signature is
``unsigned_directory`` however it arrives. No broker needed."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlanet.broker import ConfigError, Reason, RefusedMessage, decode_payload, sign_message
from mlanet.broker.curve import PointCheck, check_public_point
from mlanet.broker.directory_signing import coordinator_trust, open_directory, sign_directory
from mlanet.broker.keys import TrustStore, b64u_decode, b64u_encode, load_signing_key
from mlanet.broker.seal import PrivateSealKey
from mlanet.nodes.cli.app import app
from mlanet.nodes.config import load_config
from mlanet.nodes.directory.book import (
    PREVIOUS_FILE,
    REFUSED_FILE,
    STATE_FILE,
    DirectoryBook,
    RefusedFile,
)
from mlanet.nodes.directory.coordinator import next_version
from mlanet.nodes.local.federation import Federation, build
from mlanet.schemas import DirectoryUpdate
from mlanet.schemas.directory import Directory
from mlanet.schemas.sealing import EncryptionKey
from tests.unit.wirekit import COORDINATOR, SEAJUST, make_header, sample_directory
from tests.weak_directories import (
    ATTACKS,
    Attack,
    mixed_order,
    sign_anyway,
    with_coordinator_key,
    with_network_key,
)

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
MIXED = Attack("mixed_order", mixed_order(b64u_decode(COORDINATOR.public_b64())), Reason.WEAK_KEY)
EVERY = (*ATTACKS, MIXED)


def _trust() -> TrustStore:
    return coordinator_trust("unodc", [(COORDINATOR.key_id, COORDINATOR.public_b64())])


def _forged(attack: Attack, role: str, base: Directory, version: int) -> Directory:
    if role == "network":
        return with_network_key(base, base.networks[0].id, attack, version, base.issued_at)
    return with_coordinator_key(base, attack, version, base.issued_at)


@pytest.mark.parametrize("role", ["network", "coordinator"])
@pytest.mark.parametrize("attack", EVERY, ids=lambda a: a.name)
def test_opening_a_directory_checks_every_key_it_lists(attack: Attack, role: str) -> None:
    base = sample_directory().directory
    data = sign_anyway(_forged(attack, role, base, 4), COORDINATOR)
    with pytest.raises(RefusedMessage) as refused:
        open_directory(data, _trust(), now=NOW)
    assert refused.value.reason is attack.reason
    owner = "network casc" if role == "network" else "coordinator unodc"
    assert refused.value.detail.startswith(f"{owner} key ed25519:1: public key is ")
    assert attack.public_key not in str(refused.value)


def test_the_attack_points_are_what_their_names_say() -> None:
    """Each attack point has the defect it is named after (broker/curve.py)."""
    assert [check_public_point(a.raw) for a in EVERY] == [
        PointCheck.SMALL_ORDER,
        PointCheck.SMALL_ORDER,
        PointCheck.NON_CANONICAL,
        PointCheck.MIXED_ORDER,
    ]


@pytest.mark.parametrize("role", ["network", "coordinator"])
@pytest.mark.parametrize("attack", EVERY, ids=lambda a: a.name)
def test_the_coordinator_never_signs_such_a_directory(attack: Attack, role: str) -> None:
    forged = _forged(attack, role, sample_directory().directory, 4)
    with pytest.raises(RefusedMessage) as refused:
        sign_directory(forged, COORDINATOR)
    assert refused.value.reason is attack.reason


# --- a node ---------------------------------------------------------------------------------
@pytest.fixture
def fed(tmp_path: Path) -> Federation:
    return build(tmp_path / "federation", prefix="unit")


def _book(fed: Federation, persist: bool = True) -> DirectoryBook:
    return DirectoryBook.load(load_config(fed.config_path("casc")), persist=persist)


def _weak(fed: Federation, base: Directory, attack: Attack, role: str, version: int) -> bytes:
    now = datetime.now(UTC)
    if role == "network":
        forged = with_network_key(base, "seajust", attack, version, now)
    else:
        forged = with_coordinator_key(base, attack, version, now)
    return sign_anyway(forged, load_signing_key(fed.coordinator_key()))


@pytest.mark.parametrize("role", ["network", "coordinator"])
@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.name)
def test_a_node_refuses_it_before_writing_anything(
    fed: Federation, attack: Attack, role: str
) -> None:
    book = _book(fed)
    state_dir = book.config.state_dir
    before = (state_dir / STATE_FILE).read_bytes()
    with pytest.raises(RefusedMessage) as refused:
        book.consider(_weak(fed, book.held.directory, attack, role, 2))
    assert refused.value.reason is attack.reason
    assert (state_dir / STATE_FILE).read_bytes() == before
    assert not (state_dir / PREVIOUS_FILE).exists()
    assert book.version == 1
    assert _book(fed).version == 1  # and it starts again on what it held


def _next(fed: Federation, base: Directory) -> bytes:
    directory = next_version(base, datetime.now(UTC), timedelta(days=30))
    return sign_directory(directory, load_signing_key(fed.coordinator_key())).to_bytes()


def test_an_applied_directory_keeps_the_one_held_before_as_previous(fed: Federation) -> None:
    book = _book(fed)
    version_1 = book.held.to_bytes()
    book.consider(_next(fed, book.held.directory))
    assert (book.config.state_dir / PREVIOUS_FILE).read_bytes() == version_1
    assert os.stat(book.config.state_dir / PREVIOUS_FILE).st_mode & 0o077 == 0


@pytest.mark.parametrize("role", ["network", "coordinator"])
def test_a_node_starts_on_its_last_good_directory_when_its_state_file_is_bad(
    fed: Federation, role: str
) -> None:
    """A state file an older version wrote (a weak key, signed by the coordinator): the node
    starts on the one it held before, names the refused file once, and moves it aside."""
    book = _book(fed)
    book.consider(_next(fed, book.held.directory))  # version 2 held, version 1 previous
    book.consider(_next(fed, book.held.directory))  # version 3 held, version 2 previous
    state = book.config.state_dir / STATE_FILE
    weak = _weak(fed, book.held.directory, ATTACKS[0], role, 4)
    state.write_bytes(weak)

    shown = _book(fed, persist=False)
    assert shown.version == 2
    (refused,) = shown.refused
    assert refused == RefusedFile(STATE_FILE, "state", Reason.WEAK_KEY, refused.detail)
    owner = "network seajust" if role == "network" else "coordinator unodc"
    assert refused.detail == f"{owner} key ed25519:1: public key is small_order"
    assert state.read_bytes() == weak  # a read-only look changes nothing

    started = _book(fed)
    assert started.version == 2
    assert (book.config.state_dir / REFUSED_FILE).read_bytes() == weak  # kept, not lost
    assert state.read_bytes() == started.held.to_bytes()
    assert _book(fed).refused == ()  # said once


def test_without_a_previous_one_the_node_starts_on_its_configured_directory(
    fed: Federation,
) -> None:
    book = _book(fed)
    state = book.config.state_dir / STATE_FILE
    for data, reason in (
        (_weak(fed, book.held.directory, ATTACKS[2], "coordinator", 2), Reason.MALFORMED_KEY),
        (b'{"mlanet_directory": 1, "sig', Reason.INVALID_JSON),
    ):
        state.write_bytes(data)
        started = _book(fed)
        assert started.version == 1
        assert [file.reason for file in started.refused] == [reason]


def test_a_weak_pinned_coordinator_key_is_a_clear_config_error(fed: Federation) -> None:
    path = fed.config_path("casc")
    coordinator = load_signing_key(fed.coordinator_key()).public_b64()
    path.write_text(path.read_text().replace(coordinator, ATTACKS[0].public_key))
    with pytest.raises(ConfigError, match=r"\[coordinator\] pins a key .*weak_key"):
        _book(fed)


def test_directory_show_answers_and_names_a_bad_state_file(fed: Federation) -> None:
    book = _book(fed)
    state = book.config.state_dir / STATE_FILE
    state.write_bytes(_weak(fed, book.held.directory, ATTACKS[1], "network", 2))
    config = str(fed.config_path("casc"))
    shown = CliRunner().invoke(app, ["directory", "show", "--config", config])
    assert shown.exit_code == 0, shown.output
    assert shown.output.startswith("directory version 1, ")
    assert "warning: directory.json (state) refused: weak_key: network seajust key" in shown.output
    as_json = CliRunner().invoke(app, ["directory", "show", "--config", config, "--json"])
    record = json.loads(as_json.output)
    assert record["version"] == 1
    assert any(w.startswith("directory.json (state) refused: weak_key") for w in record["warnings"])


# --- unsigned ---------------------------------------------------------------------------------
@pytest.mark.parametrize("signature", ["", None])
def test_a_directory_update_without_a_signature_is_unsigned_directory(
    signature: str | None,
) -> None:
    """Its payload is well formed; opening the directory it carries says what is wrong."""
    frame = sample_directory().signed.model_dump(mode="json")
    if signature is None:
        del frame["signature"]
    else:
        frame["signature"] = signature
    message = sign_message(
        make_header("directory_update"),
        DirectoryUpdate.model_validate({"directory": frame}),
        SEAJUST,
    )
    payload = decode_payload(message)
    assert isinstance(payload, DirectoryUpdate)
    with pytest.raises(RefusedMessage) as refused:
        open_directory(payload.directory, _trust(), now=NOW)
    assert refused.value.reason is Reason.UNSIGNED_DIRECTORY


# --- encryption keys ---------------------------------------------------------------------------
def _with_encryption_key(raw: bytes) -> Directory:
    """Version 4 of the sample directory, in which casc lists ``raw`` as its encryption key."""
    base = sample_directory().directory
    listed = EncryptionKey(key_id="hpke:1", public_key=b64u_encode(raw))
    networks = [
        e.model_copy(update={"encryption_keys": [listed]}) if e.id == "casc" else e
        for e in base.networks
    ]
    return base.model_copy(update={"version": 4, "issued_at": NOW, "networks": networks})


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        # an X25519 part of zeros: every shared secret with it is known
        (PrivateSealKey.generate("casc", "hpke:1").public_raw()[:1184] + bytes(32), "weak_key"),
        # an ML-KEM encapsulation key whose coefficients are not reduced mod q
        (b"\xff" * 1184 + os.urandom(32), "malformed_key"),
    ],
    ids=["zero_x25519", "unreduced_mlkem"],
)
def test_a_directory_listing_an_unusable_encryption_key_is_never_signed_nor_opened(
    raw: bytes, reason: str
) -> None:
    """No origin could seal with such a key: the coordinator refuses to sign the directory, and
    a node refuses one signed anyway, naming the network and key id (never the key)."""
    forged = _with_encryption_key(raw)
    with pytest.raises(RefusedMessage) as refused:
        sign_directory(forged, COORDINATOR)
    assert refused.value.reason.value == reason
    with pytest.raises(RefusedMessage) as refused:
        open_directory(sign_anyway(forged, COORDINATOR), _trust(), now=NOW)
    assert refused.value.reason.value == reason
    assert refused.value.detail.startswith("network casc encryption key hpke:1: ")
    assert b64u_encode(raw) not in str(refused.value)
