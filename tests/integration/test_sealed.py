"""Sealed payloads between running nodes on the real RabbitMQ (``docs/PROTOCOL.md`` section 16):
what travels is sealed for the network at the other end, both ways; the destination's contact
point reads it; a network whose policy requires sealing refuses an unsealed request, and a
network whose policy requires it sends none unsealed."""

from __future__ import annotations

import json
from pathlib import Path

from mlanet.broker import Reason, SignedMessage, open_envelope
from mlanet.broker.directory_signing import sign_directory
from mlanet.broker.keys import load_signing_key
from mlanet.broker.seal import SealKeyring
from mlanet.broker.topology import peer_inbox
from mlanet.broker.transport import QUARANTINE
from mlanet.nodes.cli.contact import facilitation_request, read_inbox, status_update, submit
from mlanet.nodes.directory.book import load_directory, message_trust
from mlanet.nodes.local.federation import Federation, signed_directory
from mlanet.schemas import Receipt, payload_model
from tests.integration.kit import (
    config,
    credentials,
    drain,
    eventually,
    facilitation,
    inject,
    outbox_state,
    running,
)
from tests.integration.quarantine_kit import reasons


def _policy(fed: Federation, network: str) -> None:
    """``[policy] require_sealed = true`` in ``network``'s node config."""
    path = fed.config_path(network)
    path.write_text(
        path.read_text(encoding="utf-8") + "\n[policy]\nrequire_sealed = true\n", encoding="utf-8"
    )


def _keyring(fed: Federation, network: str) -> SealKeyring:
    return SealKeyring.load(fed.root / network, network)


async def test_the_journey_travels_sealed_for_the_destination_and_back_for_the_origin(
    fed: Federation,
) -> None:
    """Cambodia -> Uzbekistan: the request is sealed for CASC with its encryption key, the Uzbek
    contact point reads it; the Uzbek status update comes back sealed for SEAJust, and the
    Cambodian contact point reads it."""
    async with running(fed, "seajust", "casc"):
        request = facilitation_request("kh-cp-1", "UZ", summary="Sealed journey summary.")
        await submit(config(fed, "seajust"), credentials(fed, "kh-cp-1"), request)
        await eventually(lambda: outbox_state(fed, "seajust", request.message_id) == "delivered")
        items = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
        assert [item.message.header.message_id for item in items] == [request.message_id]
        sealed = items[0].message.header.sealed
        assert sealed is not None
        assert (sealed.network, sealed.key_id) == ("casc", "hpke:1")
        assert b"Sealed journey summary" not in items[0].message.to_bytes()
        assert items[0].payload.model_dump()["summary"] == "Sealed journey summary."

        update = status_update("uz-cp-1", "kh-cp-1", request.message_id)
        await submit(config(fed, "casc"), credentials(fed, "uz-cp-1"), update)
        await eventually(lambda: outbox_state(fed, "casc", update.message_id) == "delivered")
        back = await read_inbox(config(fed, "seajust"), credentials(fed, "kh-cp-1"))
        answer = next(item for item in back if item.message.header.message_id == update.message_id)
        assert answer.message.header.sealed is not None
        assert answer.message.header.sealed.network == "seajust"
        assert answer.payload.model_dump()["status"] == "in_progress"


async def test_a_receipt_travels_sealed_for_the_origin_network(fed: Federation) -> None:
    """CASC delivers a request from SEAJust (whose node is down) and sends its receipt: the
    receipt waiting at SEAJust is sealed for SEAJust and opens there, and only there."""
    message = facilitation(fed, "seajust", "kh-cp-1", "UZ")
    async with running(fed, "seajust"):
        pass  # its topology declared (its inbox of casc's messages), then seajust's node is down
    trust = message_trust(load_directory(config(fed, "seajust")))
    async with running(fed, "casc"):
        await inject(fed, "casc", "seajust", message.to_bytes())
        waiting: list[SignedMessage] = []

        async def receipt_at_seajust() -> bool:
            for drained in await drain(fed, "seajust", peer_inbox("casc")):
                if (opened := open_envelope(drained.body, trust)).header.kind == "receipt":
                    waiting.append(opened)
            return bool(waiting)

        await eventually(receipt_at_seajust, what="casc's receipt in seajust's inbox")
    receipt = waiting[0]
    assert receipt.header.in_reply_to == message.header.message_id
    assert receipt.header.sealed is not None
    assert receipt.header.sealed.network == "seajust"
    listed = load_directory(config(fed, "seajust")).network("seajust")
    assert listed is not None
    plaintext = _keyring(fed, "seajust").open(
        receipt.header, receipt.header_b64, receipt.payload_bytes, listed.encryption_keys
    )
    opened = payload_model("receipt").model_validate(json.loads(plaintext))
    assert isinstance(opened, Receipt)
    assert opened.content_sha256 == message.content_sha256


async def test_a_network_that_requires_sealing_refuses_an_unsealed_request(
    fed: Federation,
) -> None:
    """With ``[policy] require_sealed``, CASC quarantines a request SEAJust really signed but
    did not seal (``not_sealed``) and delivers nothing; a sealed one from the same origin is
    delivered."""
    _policy(fed, "casc")
    unsealed = facilitation(fed, "seajust", "kh-cp-1", "UZ", seal=False)
    sealed = facilitation(fed, "seajust", "kh-cp-1", "UZ")
    assert unsealed.header.sealed is None
    async with running(fed, "casc"):
        await inject(fed, "casc", "seajust", unsealed.to_bytes())
        await inject(fed, "casc", "seajust", sealed.to_bytes())

        async def delivered() -> bool:
            items = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
            return [i.message.header.message_id for i in items] == [sealed.header.message_id]

        await eventually(delivered)
        await eventually(lambda: reasons(fed, "casc") == [Reason.NOT_SEALED.value])
    drained_quarantine = await drain(fed, "casc", QUARANTINE)
    assert [d.body for d in drained_quarantine] == [unsealed.to_bytes()]


def _without_encryption_key(fed: Federation, network: str) -> None:
    """Re-sign the federation's directory (before any node starts) with ``network`` listing no
    encryption key: a network that has not published one yet."""
    directory = signed_directory(fed)
    networks = [
        entry.model_copy(update={"encryption_keys": []}) if entry.id == network else entry
        for entry in directory.networks
    ]
    key = load_signing_key(fed.coordinator_key())
    path = Path(fed.root / "directory.json")
    path.write_bytes(
        sign_directory(directory.model_copy(update={"networks": networks}), key).to_bytes()
    )


async def test_an_origin_that_requires_sealing_sends_nothing_unsealed(fed: Federation) -> None:
    """SEAJust requires sealing; CASC lists no encryption key: SEAJust refuses the Cambodian
    request at submission (``no_encryption_key``) and sends nothing. Without the policy, the
    same request goes unsealed and is delivered (a network that lists no key takes it so)."""
    _without_encryption_key(fed, "casc")
    _policy(fed, "seajust")
    async with running(fed, "seajust", "casc"):
        refused = facilitation_request("kh-cp-1", "UZ")
        await submit(config(fed, "seajust"), credentials(fed, "kh-cp-1"), refused)
        await eventually(lambda: reasons(fed, "seajust") == [Reason.NO_ENCRYPTION_KEY.value])
        assert outbox_state(fed, "seajust", refused.message_id) is None
    text = fed.config_path("seajust").read_text(encoding="utf-8")
    fed.config_path("seajust").write_text(
        text.replace("require_sealed = true", "require_sealed = false"), encoding="utf-8"
    )
    async with running(fed, "seajust", "casc"):
        request = facilitation_request("kh-cp-1", "UZ")
        await submit(config(fed, "seajust"), credentials(fed, "kh-cp-1"), request)
        await eventually(lambda: outbox_state(fed, "seajust", request.message_id) == "delivered")
        items = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
        assert [item.message.header.sealed for item in items] == [None]
