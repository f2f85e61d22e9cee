"""The directory a node holds (no broker needed): which one it loads, what it accepts next, when
it fails closed, what it warns about, which key it signs with, which peers it has; and the
coordinator's changes that make the next version."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlanet.broker import ConfigError, Reason, RefusedMessage
from mlanet.broker.directory_signing import open_request, sign_directory, sign_request
from mlanet.broker.keys import generate_key_files, load_signing_key
from mlanet.nodes.cli.app import app
from mlanet.nodes.config import load_config
from mlanet.nodes.directory.book import STATE_FILE, DirectoryBook, effective_config
from mlanet.nodes.directory.coordinator import (
    approve_join,
    approve_rotation,
    change_membership,
    hand_over,
    next_version,
    revoke_key,
)
from mlanet.nodes.local.federation import Federation, build
from mlanet.schemas.directory import Directory, JoinRequest, KeyRotationRequest

DAY = timedelta(days=1)


@pytest.fixture
def fed(tmp_path: Path) -> Federation:
    return build(tmp_path / "federation", prefix="unit")


def _book(fed: Federation, network: str = "casc", **clock: datetime) -> DirectoryBook:
    now = clock.get("now")
    return DirectoryBook.load(
        load_config(fed.config_path(network)), clock=(lambda: now) if now else _now
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _issue(fed: Federation, directory: Directory) -> bytes:
    return sign_directory(directory, load_signing_key(fed.coordinator_key())).to_bytes()


def _next(fed: Federation, base: Directory, **changes: object) -> Directory:
    return next_version(base, datetime.now(UTC), timedelta(days=30), **changes)  # type: ignore[arg-type]


def test_the_node_loads_the_signed_directory_and_keeps_it_in_its_state(fed: Federation) -> None:
    book = _book(fed)
    assert book.version == 1
    state = load_config(fed.config_path("casc")).state_dir / STATE_FILE
    assert state.read_bytes() == (fed.root / "directory.json").read_bytes()
    assert os.stat(state).st_mode & 0o077 == 0


def test_the_newest_of_state_and_config_file_wins(fed: Federation) -> None:
    book = _book(fed)
    newer = _next(fed, book.held.directory)
    book.consider(_issue(fed, newer))
    assert _book(fed).version == 2  # from the state, although the config file names version 1
    (fed.root / "directory.json").write_bytes(_issue(fed, _next(fed, newer)))
    assert _book(fed).version == 3  # the operator installed a newer file


def test_a_node_without_a_valid_directory_does_not_start(fed: Federation) -> None:
    (fed.root / "directory.json").write_text('{"version": 1}')
    with pytest.raises(ConfigError, match=r"no valid directory: .*unsigned_directory"):
        _book(fed)


def test_a_node_without_a_pinned_coordinator_key_does_not_start(fed: Federation) -> None:
    path = fed.config_path("casc")
    text = path.read_text()
    start = text.index("\n[coordinator]")
    end = text.index("\n[", start + 2)
    path.write_text(text[:start] + text[end:])
    with pytest.raises(ConfigError, match="no \\[coordinator\\] table"):
        _book(fed)


def test_what_a_node_accepts_next(fed: Federation) -> None:
    book = _book(fed)
    current = book.held.to_bytes()
    assert book.consider(current).state == "same"
    v2 = _issue(fed, _next(fed, book.held.directory))
    assert book.consider(v2).state == "applied"
    for data, reason in (
        (current, Reason.STALE_DIRECTORY),
        (_issue(fed, book.held.directory.model_copy(update={"links": []})), Reason.EQUIVOCATION),
    ):
        with pytest.raises(RefusedMessage) as caught:
            book.consider(data)
        assert caught.value.reason is reason
    expired = book.held.directory.model_copy(
        update={
            "version": 3,
            "issued_at": datetime.now(UTC) - 2 * DAY,
            "valid_until": datetime.now(UTC) - DAY,
        }
    )
    with pytest.raises(RefusedMessage, match="expired at") as caught:
        book.consider(_issue(fed, expired))
    assert caught.value.reason is Reason.STALE_DIRECTORY
    assert book.version == 2


def test_a_directory_that_drops_this_network_is_refused(fed: Federation) -> None:
    book = _book(fed)
    base = book.held.directory
    without = _next(
        fed,
        base,
        networks=[n for n in base.networks if n.id != "casc"],
        links=[link for link in base.links if "casc" not in link],
    )
    with pytest.raises(RefusedMessage, match="no longer lists this network"):
        book.consider(_issue(fed, without))


def test_the_node_fails_closed_once_its_directory_expires(fed: Federation) -> None:
    book = _book(fed)
    expires = book.expires_at()
    assert book.closed(expires - timedelta(seconds=1)) is None
    closed = book.closed(expires)
    assert closed is not None
    assert closed.reason is Reason.DIRECTORY_EXPIRED
    assert "directory version 1 expired at" in closed.detail
    assert "refused until a newer directory arrives" in closed.detail


def test_a_directory_without_valid_until_is_trusted_for_the_configured_age(
    fed: Federation,
) -> None:
    book = _book(fed)
    undated = book.held.directory.model_copy(update={"version": 2, "valid_until": None})
    book.consider(_issue(fed, undated))
    assert book.expires_at() == undated.issued_at + timedelta(days=90)


def test_warnings_come_ahead_of_expiry(fed: Federation) -> None:
    book = _book(fed)
    base = book.held.directory
    now = datetime.now(UTC)
    casc = base.network("casc")
    assert casc is not None
    soon = casc.keys[0].model_copy(update={"not_after": now + 3 * DAY})
    networks = [
        n.model_copy(update={"keys": [soon]}) if n.id == "casc" else n for n in base.networks
    ]
    book.consider(_issue(fed, _next(fed, base, networks=networks)))
    texts = [w.text() for w in book.warnings(now)]
    assert any(t.startswith("key ed25519:1 of casc expires at") for t in texts)
    assert not any("directory version" in t for t in texts)  # 30 days left, warned at 14
    later = [w.text() for w in book.warnings(now + 20 * DAY)]
    assert any(t.startswith("directory version 2 expires at") for t in later)


def test_the_node_signs_with_the_newest_key_the_directory_lists_as_valid(
    fed: Federation,
) -> None:
    book = _book(fed, "seajust")
    folder = fed.root / "seajust"
    generate_key_files(folder, "seajust", "ed25519:2")
    new = load_signing_key(folder / "seajust.2.key")
    assert book.signing_key().key_id == "ed25519:1"  # not listed yet
    rotation = KeyRotationRequest.model_validate(
        {
            "type": "key_rotation",
            "network": "seajust",
            "current_key_id": "ed25519:1",
            "new_key": {"key_id": "ed25519:2", "public_key": new.public_b64()},
            "requested_at": datetime.now(UTC),
        },
        strict=False,
    )
    signed = sign_request(rotation, [load_signing_key(folder / "seajust.1.key"), new])
    now = datetime.now(UTC).replace(microsecond=0)
    networks = approve_rotation(
        book.held.directory, rotation, signed, now, activate_in=DAY, overlap=DAY
    )
    book.consider(_issue(fed, _next(fed, book.held.directory, networks=networks)))
    assert book.signing_key(now).key_id == "ed25519:1"
    assert book.signing_key(now + DAY).key_id == "ed25519:2"
    entry = book.held.directory.network("seajust")
    assert entry is not None
    old, fresh = entry.keys
    assert old.not_after == fresh.not_before + DAY  # the overlap
    # The emergency path: the current key revoked at once, the new one valid at once.
    urgent = approve_rotation(
        book.held.directory.model_copy(update={"networks": _original(fed).networks}),
        rotation,
        signed,
        now,
        activate_in=DAY,
        overlap=DAY,
        emergency=True,
    )
    seajust = next(n for n in urgent if n.id == "seajust")
    assert seajust.keys[0].revoked_at == now
    assert seajust.keys[1].not_before == now


def _original(fed: Federation) -> Directory:
    return DirectoryBook.load(load_config(fed.config_path("unodc")), persist=False).held.directory


def test_peers_come_from_the_directorys_links(fed: Federation) -> None:
    config = load_config(fed.config_path("seajust"))
    directory = _book(fed, "seajust").held.directory
    peers = effective_config(config, directory).peers
    assert [(p.network, p.user) for p in peers] == [
        ("casc", fed.link_user("seajust")),
        ("unodc", fed.link_user("seajust")),
    ]
    unlinked = directory.model_copy(update={"links": [("seajust", "unodc")]})
    assert [p.network for p in effective_config(config, unlinked).peers] == ["unodc"]


# --- the coordinator's changes ------------------------------------------------------------------


def test_a_join_is_approved_only_with_a_valid_request(fed: Federation, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "init",
            "--dir", str(tmp_path / "pilon"),
            "--network", "pilon",
            "--name", "Pacific Islands Law Officers Network",
            "--member", "FJ",
            "--observer", "AU",
            "--contact-point", "fj-ago-1=Central authority",
            "--contact-point", "au-obs-1=Observer",
            "--coordinator-key", str(fed.coordinator_pub()),
            "--vhost", "pilon", "--user", "pilon", "--link", "seajust",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    folder = tmp_path / "pilon"
    assert os.stat(folder / "pilon.1.key").st_mode & 0o077 == 0
    assert os.stat(folder / "broker.password").st_mode & 0o077 == 0
    config = load_config(folder / "node.toml")
    assert config.coordinator is not None
    assert (
        config.coordinator.keys[0].public_key
        == load_signing_key(fed.coordinator_key()).public_b64()
    )
    request, signed = open_request((folder / "join-request.json").read_bytes())
    assert isinstance(request, JoinRequest)
    assert request.network.observers == ["AU"]
    base = _original(fed)
    networks, links = approve_join(base, request, signed, request.links, datetime.now(UTC))
    assert ("seajust", "pilon") in links
    assert [n.id for n in networks][-1] == "pilon"
    with pytest.raises(RefusedMessage, match="already in the directory"):
        approve_join(
            base.model_copy(update={"networks": networks}), request, signed, [], datetime.now(UTC)
        )
    with pytest.raises(RefusedMessage, match="not in the directory"):
        approve_join(base, request, signed, ["nowhere"], datetime.now(UTC))
    stranger = signed.model_copy(update={"signatures": [signed.signatures[0].model_copy(
        update={"signature": signed.signatures[0].signature[::-1]}
    )]})  # fmt: skip
    with pytest.raises(RefusedMessage):
        approve_join(base, request, stranger, [], datetime.now(UTC))


def test_revocation_handover_membership_and_pruning(fed: Federation) -> None:
    base = _original(fed)
    now = datetime.now(UTC).replace(microsecond=0)
    revoked = revoke_key(base, "seajust", "ed25519:1", now)
    assert next(n for n in revoked if n.id == "seajust").keys[0].revoked_at == now
    with pytest.raises(RefusedMessage, match="no key ed25519:9"):
        revoke_key(base, "seajust", "ed25519:9", now)

    handed = hand_over(base, "casc", "uz-cp-1", "uz-cp-2", now, "Prosecutor")
    casc = next(n for n in handed if n.id == "casc")
    assert casc.contact_point("uz-cp-1").successor == "uz-cp-2"  # type: ignore[union-attr]
    assert casc.contact_point("uz-cp-2").role == "Prosecutor"  # type: ignore[union-attr]
    with pytest.raises(RefusedMessage, match="same country"):
        hand_over(base, "casc", "uz-cp-1", "kz-cp-9", now)

    changed = change_membership(
        base,
        "casc",
        add_observers=["MN"],
        remove_members=["TM"],
        contact_points=[("mn-cp-1", "Observer")],
    )
    casc = next(n for n in changed if n.id == "casc")
    assert casc.observers == ["MN"]
    assert "TM" not in casc.members
    assert casc.contact_point("tm-cp-1") is None
    assert casc.contact_point("mn-cp-1") is not None

    directory = next_version(base, now, timedelta(days=30), networks=revoked)
    assert directory.version == base.version + 1
    assert directory.valid_until == now + timedelta(days=30)
    much_later = next_version(directory, now + timedelta(days=91), timedelta(days=30))
    seajust = much_later.network("seajust")
    assert seajust is not None
    assert seajust.keys[0].revoked_at == now  # never left with no key at all


def test_directory_show_prints_what_the_node_trusts(fed: Federation) -> None:
    result = CliRunner().invoke(
        app, ["directory", "show", "--config", str(fed.config_path("casc"))]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("directory version 1, issued ")
    assert ": valid" in result.output.splitlines()[0]
    assert "signed by unodc ed25519:1" in result.output
    assert "contact point uz-cp-1 (UZ, contact point)" in result.output
    assert "links: seajust-casc, casc-ejn" in result.output
    as_json = CliRunner().invoke(
        app, ["directory", "show", "--config", str(fed.config_path("casc")), "--json"]
    )
    record = json.loads(as_json.output)
    assert (record["version"], record["status"], record["signing_key"]) == (1, "valid", "ed25519:1")
