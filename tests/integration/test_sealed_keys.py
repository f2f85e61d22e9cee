"""Encryption keys' lifecycle against the real broker (docs/PROTOCOL.md section 16):

- CASC's encryption key rotated while messages sealed with the old one wait in a stopped
  relay's queue: none is lost, every one opens at CASC under the new directory; then the old
  key revoked: what is still sealed with it is quarantined;
- sealed messages CASC cannot open, each quarantined at CASC with its reason and told to its
  origin: sealed with a key CASC does not list, sealed for another network, a sealed payload
  moved into another message."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from typing import Any

import pytest

from mlanet.broker import SignedMessage, sign_message
from mlanet.broker.keys import b64u_encode
from mlanet.nodes.cli.contact import read_inbox, submit
from mlanet.nodes.local.federation import Federation
from mlanet.schemas import FacilitationRequest, Notice
from mlanet.schemas.sealing import SEAL_SUITE, Sealed
from tests.integration.directory_kit import (
    all_hold,
    dfed,
    mlanet,
    quarantine_depth,
    quarantined,
    request,
)
from tests.integration.kit import (
    config,
    credentials,
    depth,
    facilitation,
    inject,
    key,
    outbox_state,
    running,
)
from tests.polling import eventually

__all__ = ["dfed"]

# Several waits on a busy shared broker: more than the default per-test timeout.
pytestmark = pytest.mark.timeout(300)

SUMMARY = "Test request: no real case content."


def _public(fed: Federation, network: str, number: int) -> str:
    """The public encryption key ``hpke:<number>`` of ``network`` (its ``.pub`` file)."""
    path = fed.root / network / f"{network}.seal.{number}.pub"
    public: str = json.loads(path.read_text(encoding="ascii"))["public_key"]
    return public


def _sealed(
    fed: Federation, *, network: str = "casc", key_id: str = "hpke:1", public_key: str
) -> SignedMessage:
    """A request from SEAJust's kh-cp-1 for Uzbekistan (CASC), signed with SEAJust's real
    key, its header saying it is sealed for ``network`` with ``key_id``, sealed with
    ``public_key``."""
    plain = facilitation(fed, "seajust", "kh-cp-1", "UZ", seal=False)
    statement = Sealed(suite=SEAL_SUITE, network=network, key_id=key_id)
    header = plain.header.model_copy(update={"sealed": statement})
    return sign_message(header, plain.payload_bytes, key(fed, "seajust"), seal_with=public_key)


def _moved(fed: Federation, sealed: SignedMessage) -> SignedMessage:
    """``sealed``'s payload, as sealed, under a new header (another message id) that SEAJust
    signs: the origin's signature is valid, the seal is bound to the other header."""
    signing = key(fed, "seajust")
    header = sealed.header.model_copy(update={"message_id": str(uuid.uuid4())})
    fresh = sign_message(header, b"{}", signing, seal_with=_public(fed, "casc", 1))
    moved = replace(fresh, payload_b64=sealed.payload_b64, opened=None)
    return replace(moved, signature_b64=b64u_encode(signing.sign(moved.signing_input)))


async def _notices(fed: Federation, about: set[str]) -> dict[str, str]:
    """The refusal notices in SEAJust's kh-cp-1 inbox about ``about``: message id -> reason."""
    items = await read_inbox(config(fed, "seajust"), credentials(fed, "kh-cp-1"))
    return {
        item.payload.regarding: str(item.payload.reason)
        for item in items
        if isinstance(item.payload, Notice) and item.payload.regarding in about
    }


async def test_an_encryption_key_rotated_with_messages_in_flight_loses_none(
    dfed: Federation,
) -> None:
    """WACAP's Nigerian contact point sends Uzbekistan (CASC) three requests, sealed with CASC's
    hpke:1, while EJN, the relay between them, is down: they wait on their way. CASC's operator
    rotates its encryption key; the coordinator lists hpke:2 (valid at once) and keeps hpke:1
    valid for an overlap; CASC holds that directory before EJN comes back. Then EJN relays the
    waiting ones and CASC opens them with hpke:1; WACAP, once it holds the directory too, seals
    the next three with hpke:2. Every one is delivered and receipted, readable at the Uzbek
    contact point; nothing is refused.

    Then the coordinator revokes hpke:1: a request SEAJust really signed, sealed with hpke:1,
    is quarantined at CASC as encryption_key_revoked, never delivered, and SEAJust is told."""
    fed = dfed
    async with running(fed, "unodc", "seajust", "casc", "ejn", "wacap") as nodes:
        await nodes.stop("ejn")
        early = [request("ng-cp-1", country="UZ") for _ in range(3)]
        for message in early:
            await submit(config(fed, "wacap"), credentials(fed, message.sender), message)

        async def on_their_way() -> bool:  # in WACAP's queue to EJN, or in EJN's inbox
            return all(outbox_state(fed, "wacap", m.message_id) == "forwarded" for m in early)

        await eventually(on_their_way, within=90)

        rotated = await mlanet("keys", "rotate-encryption", "--config", fed.config_path("casc"))
        assert "casc.seal.2.key" in rotated.output
        await mlanet(
            "directory", "approve", fed.root / "casc" / "encryption-key-rotation-2.json",
            "--config", fed.config_path("unodc"), "--activate-in", "0", "--overlap", "3600",
        )  # fmt: skip
        await all_hold(fed, 2, ("unodc", "seajust", "casc"))
        listed = nodes.nodes["casc"].directory.network("casc")
        assert listed is not None
        assert [k.key_id for k in listed.encryption_keys] == ["hpke:1", "hpke:2"]
        assert await depth(fed, "casc", "mlanet.deliver.uz-cp-1") == 0  # none arrived yet

        await nodes.start("ejn")
        await all_hold(fed, 2, ("ejn", "wacap"))
        late = [request("ng-cp-1", country="UZ") for _ in range(3)]
        for message in late:
            await submit(config(fed, "wacap"), credentials(fed, message.sender), message)

        async def all_receipted() -> bool:
            return all(
                outbox_state(fed, "wacap", m.message_id) == "delivered" for m in early + late
            )

        await eventually(all_receipted, within=120)
        items = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
        sealed_with: dict[str, Any] = {}
        for item in items:
            statement = item.message.header.sealed
            assert statement is not None, "a request went unsealed"
            assert isinstance(item.payload, FacilitationRequest)
            assert item.payload.summary == SUMMARY  # opened: the content is readable
            sealed_with[item.message.header.message_id] = statement.key_id
        assert sealed_with == {
            **{m.message_id: "hpke:1" for m in early},
            **{m.message_id: "hpke:2" for m in late},
        }
        for network in ("wacap", "ejn", "casc"):
            assert await quarantine_depth(fed, network) == 0, f"{network} refused something"

        await mlanet(
            "directory", "revoke", "--config", fed.config_path("unodc"),
            "--network", "casc", "--key-id", "hpke:1",
        )  # fmt: skip
        await all_hold(fed, 3, ("unodc", "seajust", "casc"))
        old = _sealed(fed, key_id="hpke:1", public_key=_public(fed, "casc", 1))
        await inject(fed, "casc", "seajust", old.to_bytes())

        async def refused() -> bool:
            return await quarantine_depth(fed, "casc") >= 1

        await eventually(refused, within=90)
        assert await quarantined(fed, "casc") == ["encryption_key_revoked"]

        async def told() -> bool:
            return old.header.message_id in await _notices(fed, {old.header.message_id})

        await eventually(told, within=90)
        assert await _notices(fed, {old.header.message_id}) == {
            old.header.message_id: "encryption_key_revoked"
        }
        items = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
        assert old.header.message_id not in {i.message.header.message_id for i in items}


async def test_sealed_messages_that_do_not_open_are_quarantined_with_their_reasons(
    dfed: Federation,
) -> None:
    """SEAJust (its real key) hands CASC requests for Uzbekistan that CASC cannot open: one
    sealed with a key id CASC does not list (unknown_encryption_key), one sealed for EJN
    (sealed_for_other_network), one whose sealed payload was taken from another message and
    signed under a new header (seal_does_not_open). Each is quarantined at CASC with its
    reason, none reaches the contact point, and SEAJust's contact point is told of each; a
    request sealed the same way for CASC's listed key opens and is delivered."""
    fed = dfed
    async with running(fed, "seajust", "casc"):
        casc = _public(fed, "casc", 1)
        good = _sealed(fed, public_key=casc)
        unknown = _sealed(fed, key_id="hpke:7", public_key=casc)
        other = _sealed(fed, network="ejn", public_key=_public(fed, "ejn", 1))
        moved = _moved(fed, _sealed(fed, public_key=casc))
        refusals = {
            unknown.header.message_id: "unknown_encryption_key",
            other.header.message_id: "sealed_for_other_network",
            moved.header.message_id: "seal_does_not_open",
        }
        for message in (good, unknown, other, moved):
            await inject(fed, "casc", "seajust", message.to_bytes())

        async def all_refused() -> bool:
            return await quarantine_depth(fed, "casc") >= len(refusals)

        await eventually(all_refused, within=90)

        async def all_told() -> bool:
            return len(await _notices(fed, set(refusals))) == len(refusals)

        await eventually(all_told, within=90)
        assert await _notices(fed, set(refusals)) == refusals
        assert sorted(await quarantined(fed, "casc")) == sorted(refusals.values())

        items = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
        assert [i.message.header.message_id for i in items] == [good.header.message_id]
        (item,) = items
        assert isinstance(item.payload, FacilitationRequest)
        assert item.payload.summary == SUMMARY
