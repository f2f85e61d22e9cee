"""Directories a node must refuse (forged, unsigned, signed by another key, stale), whether an
operator hands them over or a peer does; and a node whose directory has expired, which fails
closed for new messages with a clear reason until a newer directory arrives."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from mlanet.broker import sign_message
from mlanet.broker.directory_signing import sign_directory
from mlanet.broker.keys import SigningKey, b64u_decode, b64u_encode
from mlanet.broker.strictjson import canonical_bytes
from mlanet.nodes.cli.contact import read_inbox, submit
from mlanet.nodes.directory.book import DirectoryBook
from mlanet.nodes.directory.coordinator import publish_directory
from mlanet.nodes.local.federation import Federation
from mlanet.schemas import Destination, DirectoryUpdate, Header, Notice, Origin
from mlanet.schemas.directory import Directory, SignedDirectory
from tests.integration.directory_kit import (
    all_hold,
    dfed,
    events,
    held_version,
    mlanet,
    quarantine_depth,
    quarantined,
    request,
)
from tests.integration.kit import (
    config,
    credentials,
    eventually,
    facilitation,
    inject,
    key,
    running,
)

__all__ = ["dfed"]

# Several waits on a busy shared broker: more than the default per-test timeout.
pytestmark = pytest.mark.timeout(300)


def _signed(fed: Federation) -> SignedDirectory:
    return DirectoryBook.load(config(fed, "seajust"), persist=False).held.signed


def _bytes(signed: SignedDirectory) -> bytes:
    return canonical_bytes(signed.model_dump(mode="json"))


def _forged(fed: Federation) -> bytes:
    """Version 1 with a new version number and SEAJust's key removed, the signature kept."""
    signed = _signed(fed)
    document = Directory.model_validate_json(b64u_decode(signed.document))
    changed = document.model_copy(update={"version": 9})
    text = b64u_encode(canonical_bytes(changed.model_dump(mode="json", exclude_none=True)))
    return _bytes(signed.model_copy(update={"document": text}))


def _by_another_key(fed: Federation) -> bytes:
    """A newer directory, properly signed, but by a key that is not the coordinator's."""
    impostor = SigningKey.from_seed("unodc", "ed25519:5", bytes(range(7, 39)))
    document = DirectoryBook.load(config(fed, "seajust"), persist=False).held.directory
    changed = document.model_copy(update={"version": 9})
    return sign_directory(changed, impostor).to_bytes()


def _unsigned(fed: Federation) -> bytes:
    document = DirectoryBook.load(config(fed, "seajust"), persist=False).held.directory
    return canonical_bytes(document.model_copy(update={"version": 9}).model_dump(mode="json"))


def _update_from(
    fed: Federation, sender: str, receiver: str, signed: SignedDirectory
) -> tuple[str, bytes]:
    """A directory_update that peer ``sender`` hands ``receiver`` (signed by the sender)."""
    header = Header(
        kind="directory_update",
        message_id=str(uuid.uuid4()),
        origin=Origin(network=sender),
        destination=Destination(network=receiver),
        created_at=datetime.now(UTC),
        key_id="ed25519:1",
    )
    message = sign_message(header, DirectoryUpdate(directory=signed), key(fed, sender))
    return header.message_id, message.to_bytes()


async def _count(fed: Federation, network: str, at_least: int) -> bool:
    return await quarantine_depth(fed, network) >= at_least


async def test_forged_unsigned_foreign_and_stale_directories_are_refused(
    dfed: Federation,
) -> None:
    fed = dfed
    async with running(fed, "unodc", "seajust", "casc"):
        version_1 = _signed(fed)
        # Handed to SEAJust's node by an operator: each goes to quarantine with its reason.
        for data in (_forged(fed), _by_another_key(fed), _unsigned(fed)):
            await publish_directory(config(fed, "seajust"), data)
        await eventually(lambda: _count(fed, "seajust", 3), within=90)
        assert await quarantined(fed, "seajust") == [
            "bad_signature",
            "unknown_key",
            "unsigned_directory",
        ]
        assert held_version(fed, "seajust") == 1

        # The coordinator issues version 2; version 1 is stale from then on.
        await mlanet("directory", "renew", "--config", fed.config_path("unodc"))
        await all_hold(fed, 2, ("unodc", "seajust", "casc"))
        await publish_directory(config(fed, "casc"), _bytes(version_1))
        await eventually(lambda: _count(fed, "casc", 1), within=90)
        assert await quarantined(fed, "casc") == ["stale_directory"]

        # The same from a peer: a forged directory is quarantined; a stale one (a peer that is
        # behind) is not applied, and the peer is sent the newer version instead.
        forged = SignedDirectory.model_validate_json(_forged(fed))
        _, forged_update = _update_from(fed, "seajust", "casc", forged)
        await inject(fed, "casc", "seajust", forged_update)
        await eventually(lambda: _count(fed, "casc", 1), within=90)
        assert await quarantined(fed, "casc") == ["bad_signature"]
        stale_id, stale = _update_from(fed, "seajust", "casc", version_1)
        await inject(fed, "casc", "seajust", stale)

        async def answered() -> bool:
            return any(
                event == "directory_refused" and "stale_directory" in detail
                for event, detail in events(fed, "casc", stale_id)
            )

        await eventually(answered, within=90)
        for network in ("unodc", "seajust", "casc"):
            assert held_version(fed, network) == 2
        assert await quarantine_depth(fed, "casc") == 0


async def test_a_node_with_an_expired_directory_refuses_new_messages_and_says_why(
    dfed: Federation,
) -> None:
    """The coordinator issues a version valid for a few seconds only. Once it has expired,
    SEAJust refuses a new submission (quarantined as directory_expired, the reason in `mlanet
    track`'s history and in a notice to the sender, and in `mlanet directory show`) and a
    message from a peer. A newer directory arrives and SEAJust trusts it again."""
    fed = dfed
    async with running(fed, "unodc", "seajust", "casc") as nodes:
        seconds = 8
        await mlanet(
            "directory", "renew", "--config", fed.config_path("unodc"),
            "--valid-for", str(seconds / 86400),
        )  # fmt: skip
        await all_hold(fed, 2, ("unodc", "seajust", "casc"))
        seajust = nodes.nodes["seajust"]
        expires = DirectoryBook.load(config(fed, "seajust"), persist=False).expires_at()
        assert expires < datetime.now(UTC) + timedelta(seconds=seconds)

        async def expired() -> bool:
            return seajust.keeper.closed() is not None

        await eventually(expired, within=90)
        refused = request("kh-cp-1", country="UZ")
        await submit(config(fed, "seajust"), credentials(fed, refused.sender), refused)
        await eventually(lambda: _count(fed, "seajust", 1), within=90)
        assert await quarantined(fed, "seajust") == ["directory_expired"]
        (failed,) = [d for e, d in events(fed, "seajust", refused.message_id) if e == "failed"]
        assert failed.startswith("directory_expired: directory version 2 expired at")

        async def told() -> bool:
            items = await read_inbox(config(fed, "seajust"), credentials(fed, "kh-cp-1"))
            return any(
                isinstance(i.payload, Notice)
                and i.payload.regarding == refused.message_id
                and i.payload.reason == "directory_expired"
                for i in items
            )

        await eventually(told, within=90)
        shown = await mlanet("directory", "show", "--config", fed.config_path("seajust"))
        assert "EXPIRED: directory_expired" in shown.output

        from_peer = facilitation(fed, "casc", "uz-cp-1", "KH")
        await inject(fed, "seajust", "casc", from_peer.to_bytes())
        await eventually(lambda: _count(fed, "seajust", 1), within=90)
        assert await quarantined(fed, "seajust") == ["directory_expired"]

        # A newer directory is still accepted, and new messages flow again.
        await mlanet("directory", "renew", "--config", fed.config_path("unodc"))
        await all_hold(fed, 3, ("unodc", "seajust", "casc"))
        assert seajust.keeper.closed() is None
        again = request("kh-cp-1", country="UZ")
        await submit(config(fed, "seajust"), credentials(fed, again.sender), again)

        async def delivered() -> bool:
            items = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
            return again.message_id in {i.message.header.message_id for i in items}

        await eventually(delivered, within=90)
