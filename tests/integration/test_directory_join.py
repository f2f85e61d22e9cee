"""A sixth network joins a running five-network federation: ``mlanet init``, the coordinator's
``mlanet directory approve``, propagation over the federation, and then signed messages and
receipts both ways with SEAJust (sealed for each other's encryption keys: the new network's
from its join request on), with no hand-edited config on any existing node."""

from __future__ import annotations

import hashlib

import pytest

from mlanet.nodes.cli.contact import read_inbox, submit
from mlanet.nodes.local.federation import Federation
from mlanet.schemas.sealing import SEAL_SUITE, Sealed
from tests.integration.directory_kit import (
    all_hold,
    dfed,
    held_version,
    mlanet,
    quarantine_depth,
    request,
)
from tests.integration.kit import ADMIN, config, credentials, eventually, outbox_state, running

__all__ = ["dfed"]  # the fixture, imported for pytest

# Several waits on a busy shared broker: more than the default per-test timeout.
pytestmark = pytest.mark.timeout(300)


def _fingerprints(fed: Federation) -> dict[str, str]:
    """Every existing node's config file and the original directory file, hashed."""
    files = [fed.config_path(network) for network in fed.nodes] + [fed.root / "directory.json"]
    return {str(path): hashlib.sha256(path.read_bytes()).hexdigest() for path in files}


async def test_a_sixth_network_joins_and_exchanges_a_request_and_its_receipt_with_seajust(
    dfed: Federation,
) -> None:
    fed = dfed
    before = _fingerprints(fed)
    folder = fed.root / "pilon"
    async with running(fed, *fed.nodes) as nodes:
        # The new network's operator: keys, config skeleton, signed join request; its broker.
        await mlanet(
            "init",
            "--dir", folder,
            "--network", "pilon",
            "--name", "Pacific Islands Law Officers Network",
            "--member", "FJ", "--member", "WS", "--member", "TO",
            "--coordinator-key", fed.coordinator_pub(),
            "--vhost", fed.vhost("pilon"),
            "--user", fed.user("pilon"),
            "--link", "seajust", "--allow-plaintext-links",
        )  # fmt: skip
        for contact_point in ("fj-cp-1", "ws-cp-1"):  # each with its own key and broker user
            await mlanet(
                "contact-point", "add", "--config", folder / "node.toml",
                "--id", contact_point, "--out", folder / "credentials" / contact_point,
            )  # fmt: skip
        provisioned = await mlanet(
            "directory", "provision", "--config", folder / "node.toml", "--admin-user", ADMIN.user,
        )  # fmt: skip
        assert "no peers yet" in provisioned.output
        assert "contact point fj-cp-1 (" + fed.user("pilon") + "-cp-fj-cp-1): granted" in (
            provisioned.output
        )

        # The coordinator approves; the update travels unodc -> seajust -> casc -> ejn -> ...
        approved = await mlanet(
            "directory", "approve", folder / "join-request.json",
            "--config", fed.config_path("unodc"),
            "--out", folder / "directory.json",
        )  # fmt: skip
        assert "version 2" in approved.output
        await all_hold(fed, 2)
        seajust = nodes.nodes["seajust"]
        assert seajust.directory.network("pilon") is not None
        assert "pilon" in {peer.network for peer in seajust.config.peers}
        assert "pilon" in seajust.trust.networks()
        assert "pilon" in nodes.nodes["gljc"].trust.networks()  # four hops from the coordinator

        # Each side's operator gives the other's link user its one inbox exchange (the nodes
        # hold no administrator account).
        for network_config in (folder / "node.toml", fed.config_path("seajust")):
            granted = await mlanet(
                "directory", "provision", "--config", network_config, "--admin-user", ADMIN.user,
            )  # fmt: skip
            assert "granted" in granted.output

        # The new node starts from the approved directory and links itself to SEAJust.
        await nodes.start("pilon")
        assert held_version(fed, "pilon") == 2

        # Fiji asks Cambodia; SEAJust delivers and its signed receipt comes back.
        outgoing = request("fj-cp-1", country="KH")
        await submit(config(fed, "pilon"), credentials(fed, outgoing.sender), outgoing)

        async def receipted(network: str, message_id: str) -> bool:
            return outbox_state(fed, network, message_id) == "delivered"

        await eventually(lambda: receipted("pilon", outgoing.message_id), within=90)
        delivered = await read_inbox(config(fed, "seajust"), credentials(fed, "kh-cp-1"))
        assert [(i.message.header.message_id, i.message.path) for i in delivered] == [
            (outgoing.message_id, ("pilon",))
        ]

        # Cambodia answers with a request of its own; and CASC reaches Samoa through SEAJust.
        back = request("kh-cp-1", country="FJ")
        relayed = request("uz-cp-1", country="WS")
        await submit(config(fed, "seajust"), credentials(fed, back.sender), back)
        await submit(config(fed, "casc"), credentials(fed, relayed.sender), relayed)
        await eventually(lambda: receipted("seajust", back.message_id), within=90)
        await eventually(lambda: receipted("casc", relayed.message_id), within=90)
        at_fiji = await read_inbox(config(fed, "pilon"), credentials(fed, "fj-cp-1"))
        assert [i.message.header.message_id for i in at_fiji] == [back.message_id]
        at_samoa = await read_inbox(config(fed, "pilon"), credentials(fed, "ws-cp-1"))
        assert [i.message.path for i in at_samoa] == [("casc", "seajust")]
        # The join request carried pilon's encryption key: it is sealed for from the start,
        # and seals what it sends with its peers' keys.
        pilon_key = Sealed(suite=SEAL_SUITE, network="pilon", key_id="hpke:1")
        assert [i.message.header.sealed for i in at_fiji + at_samoa] == [pilon_key] * 2
        assert [i.message.header.sealed for i in delivered] == [
            Sealed(suite=SEAL_SUITE, network="seajust", key_id="hpke:1")
        ]
        for network in (*fed.nodes, "pilon"):
            assert await quarantine_depth(fed, network) == 0, f"{network} refused something"

        shown = await mlanet("directory", "show", "--config", fed.config_path("casc"))
        assert "directory version 2" in shown.output
        assert "pilon  Pacific Islands Law Officers Network" in shown.output

    assert _fingerprints(fed) == before, "an existing node's config was edited"
