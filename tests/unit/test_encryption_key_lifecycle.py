"""Encryption keys go through the signing keys' lifecycle (no broker needed): a join request
carries the first one, a rotation request the next (listed with the activation delay and the
overlap, or at once in an emergency), a revocation ends one at once; the expiry warnings, the
``key_expiry`` alert and ``mlanet status`` show this network's encryption keys."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlanet.broker import RefusedMessage
from mlanet.broker.directory_signing import open_request, sign_directory, sign_request
from mlanet.broker.keys import b64u_decode, b64u_encode, generate_key_files, load_signing_key
from mlanet.broker.seal import load_seal_key
from mlanet.nodes.cli.app import app
from mlanet.nodes.config import load_config
from mlanet.nodes.directory.book import DirectoryBook
from mlanet.nodes.directory.coordinator import (
    approve_join,
    approve_rotation,
    next_version,
    revoke_key,
)
from mlanet.nodes.directory.joining import rotation_request
from mlanet.nodes.local.federation import Federation, build
from mlanet.nodes.operator.alerts import compute_alerts
from mlanet.nodes.operator.dashboard import dashboard_page
from mlanet.nodes.operator.status import expiry_view, render_text
from mlanet.nodes.operator.views import NodeStatus, QuarantineView, iso
from mlanet.schemas.directory import Directory, JoinRequest, KeyRotationRequest, NetworkEntry

DAY = timedelta(days=1)


@pytest.fixture
def fed(tmp_path: Path) -> Federation:
    return build(tmp_path / "federation", prefix="unit")


def _book(fed: Federation, network: str) -> DirectoryBook:
    return DirectoryBook.load(load_config(fed.config_path(network)))


def _apply(fed: Federation, book: DirectoryBook, networks: list[NetworkEntry]) -> Directory:
    directory = next_version(book.held.directory, datetime.now(UTC), 30 * DAY, networks=networks)
    book.consider(sign_directory(directory, load_signing_key(fed.coordinator_key())).to_bytes())
    return directory


def _casc(directory: Directory) -> NetworkEntry:
    entry = directory.network("casc")
    assert entry is not None
    return entry


def test_a_rotation_lists_the_next_encryption_key_with_an_overlap(fed: Federation) -> None:
    """``keys rotate-encryption`` writes casc.seal.2.key beside the signing key and a request
    signed by the current key; approved, hpke:2 is valid after the activation delay, hpke:1
    until the overlap after that, and origins seal with hpke:2 from then on. The signing
    keys are untouched."""
    config = load_config(fed.config_path("casc"))
    files = rotation_request(config, signing=False, encryption=True)
    assert files.key is None
    assert files.encryption_key is not None
    assert files.encryption_key.name == "casc.seal.2.key"
    assert os.stat(files.encryption_key).st_mode & 0o077 == 0
    assert files.request.name == "encryption-key-rotation-2.json"
    request, signed = open_request(files.request.read_bytes())
    assert isinstance(request, KeyRotationRequest)
    assert request.new_key is None
    assert request.new_encryption_key is not None
    assert [s.key_id for s in signed.signatures] == ["ed25519:1"]

    book = _book(fed, "casc")
    now = datetime.now(UTC).replace(microsecond=0)
    networks = approve_rotation(
        book.held.directory, request, signed, now, activate_in=DAY, overlap=7 * DAY
    )
    casc = next(n for n in networks if n.id == "casc")
    old, new = casc.encryption_keys
    assert (old.key_id, new.key_id) == ("hpke:1", "hpke:2")
    assert new.not_before == now + DAY
    assert new.not_after is None
    assert old.not_after == now + 8 * DAY  # the overlap after the new one becomes valid
    assert new.public_key == load_seal_key(files.encryption_key).public_b64()
    assert casc.keys == _casc(book.held.directory).keys
    assert casc.encryption_key(now) == old  # what origins seal with: hpke:1, then hpke:2
    assert casc.encryption_key(now + DAY) == new
    assert casc.encryption_key(now + 9 * DAY) == new

    # the same request again: hpke:2 is listed already
    directory = _apply(fed, book, networks)
    with pytest.raises(RefusedMessage, match="already has an encryption key hpke:2"):
        approve_rotation(directory, request, signed, now, activate_in=DAY, overlap=DAY)
    # the next rotation numbers on from what is listed and on disk
    again = rotation_request(config, signing=False, encryption=True)
    assert again.encryption_key is not None
    assert again.encryption_key.name == "casc.seal.3.key"


def test_an_emergency_rotation_revokes_the_encryption_keys_in_use(fed: Federation) -> None:
    config = load_config(fed.config_path("casc"))
    files = rotation_request(config, signing=False, encryption=True)
    request, signed = open_request(files.request.read_bytes())
    assert isinstance(request, KeyRotationRequest)
    now = datetime.now(UTC).replace(microsecond=0)
    networks = approve_rotation(
        _book(fed, "casc").held.directory,
        request,
        signed,
        now,
        activate_in=DAY,
        overlap=DAY,
        emergency=True,
    )
    old, new = next(n for n in networks if n.id == "casc").encryption_keys
    assert old.revoked_at == now
    assert new.not_before == now


def test_a_rotation_request_for_an_encryption_key_needs_the_current_keys_signature(
    fed: Federation, tmp_path: Path
) -> None:
    """Signed by another network's key, or by a key the network no longer holds as valid: the
    coordinator refuses it; a malformed encryption key is refused with its reason."""
    config = load_config(fed.config_path("casc"))
    files = rotation_request(config, signing=False, encryption=True)
    request, _ = open_request(files.request.read_bytes())
    assert isinstance(request, KeyRotationRequest)
    now = datetime.now(UTC)
    base = _book(fed, "casc").held.directory
    generate_key_files(tmp_path, "casc", "ed25519:1")  # another key under casc's key id
    forged = sign_request(request, [load_signing_key(tmp_path / "casc.1.key")])
    with pytest.raises(RefusedMessage):
        approve_rotation(base, request, forged, now, activate_in=DAY, overlap=DAY)
    signed = sign_request(request, [load_signing_key(fed.root / "casc" / "casc.1.key")])
    revoked = Directory.model_validate(
        base.model_copy(update={"networks": revoke_key(base, "casc", "ed25519:1", now)})
    )
    with pytest.raises(RefusedMessage, match="not valid now"):
        approve_rotation(revoked, request, signed, now, activate_in=DAY, overlap=DAY)
    assert request.new_encryption_key is not None
    raw = b64u_decode(request.new_encryption_key.public_key)
    zero = b64u_encode(raw[:-32] + bytes(32))  # the X25519 part all zero
    weak = request.model_copy(
        update={"new_encryption_key": request.new_encryption_key.model_copy(
            update={"public_key": zero}
        )}
    )  # fmt: skip
    with pytest.raises(RefusedMessage) as refused:
        approve_rotation(
            base,
            weak,
            sign_request(weak, [load_signing_key(fed.root / "casc" / "casc.1.key")]),
            now,
            activate_in=DAY,
            overlap=DAY,
        )
    assert refused.value.reason.value == "weak_key"


def test_keys_rotate_with_encryption_asks_for_both_in_one_request(fed: Federation) -> None:
    result = CliRunner().invoke(
        app, ["keys", "rotate", "--encryption", "--config", str(fed.config_path("casc"))]
    )
    assert result.exit_code == 0, result.output
    assert "casc.2.key" in result.output
    assert "casc.seal.2.key" in result.output
    request, signed = open_request((fed.root / "casc" / "key-rotation-2.json").read_bytes())
    assert isinstance(request, KeyRotationRequest)
    assert request.new_key is not None
    assert request.new_encryption_key is not None
    assert sorted(s.key_id for s in signed.signatures) == ["ed25519:1", "ed25519:2"]
    now = datetime.now(UTC)
    networks = approve_rotation(
        _book(fed, "casc").held.directory, request, signed, now, activate_in=DAY, overlap=DAY
    )
    casc = next(n for n in networks if n.id == "casc")
    assert [k.key_id for k in casc.keys] == ["ed25519:1", "ed25519:2"]
    assert [k.key_id for k in casc.encryption_keys] == ["hpke:1", "hpke:2"]


def test_keys_generate_encryption_writes_a_key_pair(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["keys", "generate-encryption", "--network", "pilon", "--out", str(tmp_path)]
    result = runner.invoke(app, [*args, "--key-id", "hpke:3"])
    assert result.exit_code == 0, result.output
    key = load_seal_key(tmp_path / "pilon.seal.3.key")
    assert key.key_id == "hpke:3"
    assert (tmp_path / "pilon.seal.3.pub").exists()
    again = runner.invoke(app, [*args, "--key-id", "hpke:3"])
    assert again.exit_code != 0
    assert "exists" in again.output
    wrong = runner.invoke(app, [*args, "--key-id", "ed25519:3"])
    assert wrong.exit_code != 0
    assert "hpke:<n>" in wrong.output


def test_a_revoked_encryption_key_is_marked_and_an_unknown_one_refused(fed: Federation) -> None:
    base = _book(fed, "casc").held.directory
    now = datetime.now(UTC).replace(microsecond=0)
    revoked = revoke_key(base, "casc", "hpke:1", now)
    casc = next(n for n in revoked if n.id == "casc")
    assert casc.encryption_keys[0].revoked_at == now
    assert casc.keys == _casc(base).keys  # the signing key is untouched
    assert casc.encryption_key(now) is None  # origins no longer seal with it
    with pytest.raises(RefusedMessage, match="no encryption key hpke:9"):
        revoke_key(base, "casc", "hpke:9", now)
    # a revoked key stays listed (so nodes refuse it as revoked), and goes after 90 days
    directory = base.model_copy(update={"networks": revoked})
    kept = next_version(directory, now + DAY, 30 * DAY)
    assert _casc(kept).encryption_keys[0].revoked_at == now
    pruned = next_version(directory, now + 91 * DAY, 30 * DAY)
    assert _casc(pruned).encryption_keys == []


def test_a_join_request_carries_the_new_networks_encryption_key(
    fed: Federation, tmp_path: Path
) -> None:
    """``mlanet init`` writes pilon.seal.1.key; the approved entry lists hpke:1 as valid from
    the approval on, so origins seal for the new network from its first message."""
    result = CliRunner().invoke(
        app,
        [
            "init", "--dir", str(tmp_path / "pilon"), "--network", "pilon",
            "--name", "Pacific Islands Law Officers Network", "--member", "FJ",
            "--coordinator-key", str(fed.coordinator_pub()),
            "--vhost", "pilon", "--user", "pilon", "--link", "seajust",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    folder = tmp_path / "pilon"
    assert "pilon.seal.1.key" in result.output
    assert os.stat(folder / "pilon.seal.1.key").st_mode & 0o077 == 0
    request, signed = open_request((folder / "join-request.json").read_bytes())
    assert isinstance(request, JoinRequest)
    now = datetime.now(UTC)
    networks, _ = approve_join(_book(fed, "unodc").held.directory, request, signed, [], now)
    (sealing,) = networks[-1].encryption_keys
    assert sealing.public_key == load_seal_key(folder / "pilon.seal.1.key").public_b64()
    assert sealing.not_before is not None
    assert abs(sealing.not_before - now) < timedelta(seconds=1)  # listed from the approval
    assert networks[-1].encryption_key(now + timedelta(seconds=1)) == sealing
    two = request.network.model_copy(
        update={"encryption_keys": [sealing, sealing.model_copy(update={"key_id": "hpke:2"})]}
    )
    with pytest.raises(ValueError, match="at most one encryption key"):
        JoinRequest.model_validate(
            {**request.model_dump(mode="json"), "network": two.model_dump(mode="json")}
        )


def _expiring(fed: Federation, book: DirectoryBook, now: datetime) -> Directory:
    casc = _casc(book.held.directory)
    soon = casc.encryption_keys[0].model_copy(update={"not_after": now + 3 * DAY})
    networks = [
        n.model_copy(update={"encryption_keys": [soon]}) if n.id == "casc" else n
        for n in book.held.directory.networks
    ]
    return _apply(fed, book, networks)


def _status(network: str, expiry_at: Directory, config_path: Path, now: datetime) -> NodeStatus:
    config = load_config(config_path)
    expiry = expiry_view(expiry_at, config, now)
    status = NodeStatus(
        network=network,
        at=now.timestamp(),
        node_running=True,
        management=True,
        queues=[],
        links=[],
        quarantine=QuarantineView(0, {}, []),
        receipts=None,
        expiry=expiry,
        alerts=[],
    )
    return status


def test_an_expiring_encryption_key_warns_alerts_and_shows_in_status(fed: Federation) -> None:
    """Within key_expiry_days of its end this network's encryption key is named by the expiry
    warnings, raises key_expiry (critical: it is our own), and status lists it with its state
    and end; revoked, status says so and the alert says none is valid."""
    book = _book(fed, "casc")
    now = datetime.now(UTC)
    directory = _expiring(fed, book, now)
    texts = [w.text() for w in book.warnings(now)]
    assert any(t.startswith("encryption key hpke:1 of casc expires at") for t in texts), texts
    config = load_config(fed.config_path("casc"))
    status = _status("casc", directory, fed.config_path("casc"), now)
    (key,) = status.expiry.encryption_keys
    assert (key.key_id, key.state) == ("hpke:1", "valid")
    alerts = [a for a in compute_alerts(status, config, now.timestamp()) if a.code == "key_expiry"]
    assert [(a.severity, a.subject, a.text.split(" expire")[0]) for a in alerts] == [
        ("critical", "casc", "our encryption keys")
    ]
    text = render_text(status)
    assert "our encryption key hpke:1: valid, until " in text
    assert list(status.to_json()["expiry"]["encryption_keys"]) == [
        {"key_id": "hpke:1", "state": "valid", "ends": iso(key.ends)}
    ]
    page = dashboard_page(status, directory, {}, refresh=5)
    assert "casc: encryption key hpke:1 (valid)" in page

    revoked = directory.model_copy(
        update={"networks": revoke_key(directory, "casc", "hpke:1", now)}
    )
    status = _status("casc", revoked, fed.config_path("casc"), now + timedelta(seconds=1))
    text = render_text(status)
    assert "our encryption key hpke:1: revoked, ended " in text
    alerts = [
        a for a in compute_alerts(status, config, now.timestamp() + 1) if a.code == "key_expiry"
    ]
    assert [(a.severity, a.text) for a in alerts] == [
        ("critical", "our encryption keys: none valid (ended or revoked)")
    ]


def test_a_network_without_encryption_keys_raises_no_alert_for_them(fed: Federation) -> None:
    book = _book(fed, "casc")
    now = datetime.now(UTC)
    networks = [
        n.model_copy(update={"encryption_keys": []}) if n.id == "casc" else n
        for n in book.held.directory.networks
    ]
    directory = _apply(fed, book, networks)
    status = _status("casc", directory, fed.config_path("casc"), now)
    config = load_config(fed.config_path("casc"))
    assert not [
        a for a in compute_alerts(status, config, now.timestamp()) if a.code == "key_expiry"
    ]
    assert "our encryption key: none listed" in render_text(status)


def test_directory_show_lists_encryption_keys(fed: Federation) -> None:
    result = CliRunner().invoke(
        app, ["directory", "show", "--config", str(fed.config_path("casc"))]
    )
    assert result.exit_code == 0, result.output
    assert "    encryption key hpke:1: valid, from " in result.output


def test_a_listed_encryption_key_without_its_key_file_is_named(fed: Federation) -> None:
    """The directory lists hpke:2 for CASC, and CASC's folder lost casc.seal.2.key: the book
    names it (the node logs encryption_key_file_missing); a revoked one is not named."""
    config = load_config(fed.config_path("casc"))
    files = rotation_request(config, signing=False, encryption=True)
    request, signed = open_request(files.request.read_bytes())
    assert isinstance(request, KeyRotationRequest)
    book = _book(fed, "casc")
    now = datetime.now(UTC)
    networks = approve_rotation(
        book.held.directory, request, signed, now, activate_in=DAY, overlap=DAY
    )
    directory = _apply(fed, book, networks)
    assert book.encryption_keys_without_file(book.seal_keys(), now) == []
    assert files.encryption_key is not None
    files.encryption_key.unlink()
    assert book.encryption_keys_without_file(book.seal_keys(), now) == ["hpke:2"]
    _apply(fed, book, revoke_key(directory, "casc", "hpke:2", now))
    assert book.encryption_keys_without_file(book.seal_keys(), now) == []


def test_a_network_listed_without_an_encryption_key_asks_for_its_first(fed: Federation) -> None:
    """A network that joined before it had one: its rotation request lists its first
    encryption key, valid after the activation delay; until then nothing is sealed for it."""
    book = _book(fed, "casc")
    networks = [
        n.model_copy(update={"encryption_keys": []}) if n.id == "casc" else n
        for n in book.held.directory.networks
    ]
    directory = _apply(fed, book, networks)
    files = rotation_request(load_config(fed.config_path("casc")), signing=False, encryption=True)
    assert files.encryption_key is not None
    assert files.encryption_key.name == "casc.seal.2.key"  # casc.seal.1.key is on disk
    request, signed = open_request(files.request.read_bytes())
    assert isinstance(request, KeyRotationRequest)
    now = datetime.now(UTC)
    casc = next(
        n
        for n in approve_rotation(directory, request, signed, now, activate_in=DAY, overlap=DAY)
        if n.id == "casc"
    )
    assert [k.key_id for k in casc.encryption_keys] == ["hpke:2"]
    assert casc.encryption_key(now) is None
    assert casc.encryption_key(now + DAY) == casc.encryption_keys[0]


def test_at_most_four_encryption_keys_are_listed(fed: Federation) -> None:
    """Three rotations in a row (each overlap still running) list four keys; a fourth is
    refused with its reason until one has ended, and then replaces the ended ones."""
    config = load_config(fed.config_path("casc"))
    book = _book(fed, "casc")
    now = datetime.now(UTC)
    for _ in range(3):
        files = rotation_request(config, signing=False, encryption=True)
        request, signed = open_request(files.request.read_bytes())
        assert isinstance(request, KeyRotationRequest)
        networks = approve_rotation(
            book.held.directory, request, signed, now, activate_in=DAY, overlap=DAY
        )
        _apply(fed, book, networks)
    assert [k.key_id for k in _casc(book.held.directory).encryption_keys] == [
        "hpke:1",
        "hpke:2",
        "hpke:3",
        "hpke:4",
    ]
    files = rotation_request(config, signing=False, encryption=True)
    request, signed = open_request(files.request.read_bytes())
    assert isinstance(request, KeyRotationRequest)
    with pytest.raises(RefusedMessage, match="4 encryption keys, the most it may"):
        approve_rotation(book.held.directory, request, signed, now, activate_in=DAY, overlap=DAY)
    later = now + 3 * DAY  # hpke:1 to hpke:3 have ended
    networks = approve_rotation(
        book.held.directory, request, signed, later, activate_in=DAY, overlap=DAY
    )
    casc = next(n for n in networks if n.id == "casc")
    assert [k.key_id for k in casc.encryption_keys] == ["hpke:4", "hpke:5"]
