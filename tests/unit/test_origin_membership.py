"""No member network can act as another: the origin's country and contact point (and a
facilitation request's requesting country) must belong to the origin network in the directory,
at the message's own time (``broker/provenance.py``, PROTOCOL.md sections 6 and 8).

The pure checks first, on a directory of the example networks (CASC also has Mongolia as an
observer country, with a contact point, and a few contact points with windows and
handovers), and the rule for receipts and notices (only the network a message was sent to can
say what became of it); then the same attacks through the receiving pipeline
(``mlanet.nodes.runtime.pipeline.receive``) as a peer would send them, built with the hostile forge.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mlanet.broker import Reason, RefusedMessage
from mlanet.broker.provenance import check_addressee, check_origin, check_payload_origin, serving
from mlanet.nodes.local.federation import EXAMPLE_LINKS, EXAMPLE_NETWORKS
from mlanet.nodes.runtime.pipeline import Accepted
from mlanet.schemas import FacilitationRequest, Header, Notice
from mlanet.schemas.directory import Directory
from tests.hostile.corpus import HOSTILE, RECEIVER
from tests.hostile.forge import facilitation_payload, header, sign, wire
from tests.hostile.harness import Harness
from tests.hostile.peer import Publication

AT = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
_KEY = {"key_id": "ed25519:1", "public_key": "A" * 43}


def _entry(network: str, members: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "id": network,
        "name": network.upper(),
        "members": members,
        "contact_points": [{"id": f"{c.lower()}-cp-1", "country": c} for c in members],
        "keys": [_KEY],
        "broker": {"host": "127.0.0.1", "vhost": network},
        **extra,
    }


def _directory() -> Directory:
    networks = []
    for network, (_name, members) in EXAMPLE_NETWORKS.items():
        entry = _entry(network, members)
        if network == "casc":
            entry["observers"] = ["MN"]
            entry["contact_points"] += [
                {"id": "mn-cp-1", "country": "MN"},
                # appointed from AT + 1 day
                {"id": "uz-new-1", "country": "UZ", "not_before": AT + timedelta(days=1)},
                # retired at AT - 1 day, nobody in its place
                {"id": "uz-old-1", "country": "UZ", "not_after": AT - timedelta(days=1)},
                # serves until AT + 1 day, then hands over to uz-cp-1
                {
                    "id": "uz-going-1",
                    "country": "UZ",
                    "not_after": AT + timedelta(days=1),
                    "successor": "uz-cp-1",
                },
                # handed over at once (a successor and no end)
                {"id": "uz-gone-1", "country": "UZ", "successor": "uz-cp-1"},
            ]
        networks.append(entry)
    networks.append(_entry("watch", ["CH"], role="observer"))
    return Directory.model_validate(
        {"version": 1, "issued_at": AT, "networks": networks, "links": EXAMPLE_LINKS}
    )


DIRECTORY = _directory()


def _header(
    network: str, country: str | None = None, contact_point: str | None = None, **extra: Any
) -> Header:
    origin: dict[str, str] = {"network": network}
    if country is not None:
        origin["country"] = country
    if contact_point is not None:
        origin["contact_point"] = contact_point
    return Header.model_validate(
        {
            "kind": "facilitation_request",
            "message_id": "5b0c2f1e-8d3a-4c6b-9e7f-0a1b2c3d4e5f",
            "origin": origin,
            "destination": {"country": "FR"},
            "created_at": AT,
            "key_id": "ed25519:1",
            **extra,
        }
    )


def _refused(header: Header, directory: Directory = DIRECTORY) -> RefusedMessage:
    with pytest.raises(RefusedMessage) as refused:
        check_origin(header, directory)
    return refused.value


# --- the header's origin --------------------------------------------------------------------


def test_a_network_cannot_sign_as_another_networks_contact_point() -> None:
    """The review's attack: SEAJust signs with origin {seajust, UZ, uz-cp-1}; UZ and uz-cp-1
    are CASC's. Refused as origin_not_member, and the detail names no case content."""
    refused = _refused(_header("seajust", "UZ", "uz-cp-1"))
    assert refused.reason is Reason.ORIGIN_NOT_MEMBER
    assert refused.detail == "UZ is not a country of seajust"


def test_a_network_cannot_name_another_networks_country() -> None:
    assert _refused(_header("seajust", "UZ")).reason is Reason.ORIGIN_NOT_MEMBER
    assert _refused(_header("casc", "FR")).reason is Reason.ORIGIN_NOT_MEMBER


def test_a_contact_point_the_origin_network_does_not_list_is_refused() -> None:
    """Right country, but a contact point id SEAJust does not have: origin_not_member."""
    refused = _refused(_header("seajust", "KH", "kh-nobody-1"))
    assert refused.reason is Reason.ORIGIN_NOT_MEMBER
    assert "kh-nobody-1" in refused.detail


def test_an_origin_network_the_directory_does_not_list_is_refused() -> None:
    assert _refused(_header("atlantis", "KH")).reason is Reason.ORIGIN_NOT_MEMBER


@pytest.mark.parametrize(
    ("network", "country", "contact_point"),
    [
        ("seajust", "KH", "kh-cp-1"),
        ("casc", "UZ", "uz-cp-1"),
        ("seajust", "KH", None),
        ("ejn", None, None),
        ("casc", "MN", "mn-cp-1"),  # an observer country of CASC, with its contact point
        ("casc", "MN", None),
        ("watch", "CH", "ch-cp-1"),  # a member of an observer network
    ],
)
def test_an_origin_that_belongs_to_its_network_is_accepted(
    network: str, country: str | None, contact_point: str | None
) -> None:
    check_origin(_header(network, country, contact_point), DIRECTORY)


def test_an_observer_country_of_another_network_does_not_belong_to_this_one() -> None:
    """Mongolia observes CASC, not SEAJust."""
    assert _refused(_header("seajust", "MN", "mn-cp-1")).reason is Reason.ORIGIN_NOT_MEMBER


# --- at the message's own time --------------------------------------------------------------


def test_a_contact_point_not_yet_appointed_at_the_messages_time_is_refused() -> None:
    assert _refused(_header("casc", "UZ", "uz-new-1")).reason is Reason.ORIGIN_NOT_MEMBER
    later = _header("casc", "UZ", "uz-new-1", created_at=AT + timedelta(days=2))
    check_origin(later, DIRECTORY)


def test_a_contact_point_that_had_retired_at_the_messages_time_is_refused() -> None:
    assert _refused(_header("casc", "UZ", "uz-old-1")).reason is Reason.ORIGIN_NOT_MEMBER


def test_a_message_created_before_its_contact_point_retired_is_still_accepted() -> None:
    """Membership is judged at created_at, not at the receiving time: a message that waited on
    a link while its contact point retired (with or without a successor) is not refused."""
    before = AT - timedelta(days=2)
    check_origin(_header("casc", "UZ", "uz-old-1", created_at=before), DIRECTORY)
    check_origin(_header("casc", "UZ", "uz-going-1"), DIRECTORY)
    after = AT + timedelta(days=2)
    refused = _refused(_header("casc", "UZ", "uz-going-1", created_at=after))
    assert refused.reason is Reason.ORIGIN_NOT_MEMBER


def test_a_contact_point_handed_over_at_once_no_longer_sends() -> None:
    assert _refused(_header("casc", "UZ", "uz-gone-1")).reason is Reason.ORIGIN_NOT_MEMBER


def test_serving_agrees_with_the_directory_view_at_that_time() -> None:
    """``serving`` is the contact points a node's own view (``Directory.as_of``) lists as not
    handed over, for every contact point and at every instant around the windows."""
    casc = DIRECTORY.network("casc")
    assert casc is not None
    for days in (-3, -1, 0, 1, 2):
        at = AT + timedelta(days=days)
        view = casc.as_of(at)
        listed = set(view.active_contact_points())
        for contact_point in casc.contact_points:
            assert serving(casc, contact_point.id, at) == (contact_point.id in listed), (
                contact_point.id,
                days,
            )


# --- the payload's requesting country -------------------------------------------------------


def _request(requesting: str) -> FacilitationRequest:
    return FacilitationRequest.model_validate(
        facilitation_payload(requesting_country=requesting, requested_country="FR")
    )


def test_a_request_on_behalf_of_another_networks_country_is_refused() -> None:
    """SEAJust signs, as its own Cambodian contact point, a request whose requesting country
    is Uzbekistan: origin_not_member."""
    with pytest.raises(RefusedMessage) as refused:
        check_payload_origin(_header("seajust", "KH", "kh-cp-1"), _request("UZ"), DIRECTORY)
    assert refused.value.reason is Reason.ORIGIN_NOT_MEMBER
    assert refused.value.detail == "requesting country UZ is not a country of seajust"


def test_a_request_from_a_country_of_the_origin_network_is_accepted() -> None:
    check_payload_origin(_header("seajust", "KH", "kh-cp-1"), _request("KH"), DIRECTORY)
    check_payload_origin(_header("seajust"), _request("VN"), DIRECTORY)
    check_payload_origin(_header("casc", "MN", "mn-cp-1"), _request("MN"), DIRECTORY)


def test_payloads_that_name_no_requesting_country_are_not_concerned() -> None:
    notice = Notice(topic="plenary", title="Plenary")
    check_payload_origin(_header("seajust", kind="notice"), notice, DIRECTORY)


# --- receipts and notices about a message ---------------------------------------------------


@pytest.mark.parametrize("kind", ["receipt", "notice"])
def test_a_receipt_or_notice_counts_only_from_the_network_the_message_was_sent_to(
    kind: str,
) -> None:
    """SEAJust's message went to EJN through CASC: CASC, the relay, cannot say what became of
    it (its notice used to mark the message failed), nor can anyone else; EJN can."""
    check_addressee(kind, "ejn", "ejn")
    for signer in ("casc", "gljc", "seajust"):
        with pytest.raises(RefusedMessage) as refused:
            check_addressee(kind, signer, "ejn")
        assert refused.value.reason is Reason.UNAUTHORISED
        assert (
            refused.value.detail == f"{kind} from {signer}, not the network the message was sent to"
        )


def test_when_the_sender_cannot_tell_where_a_message_went_no_receipt_or_notice_counts() -> None:
    """A message whose target the sender neither recorded nor can route to now was addressed
    to nobody known: a receipt or notice about it is refused."""
    with pytest.raises(RefusedMessage) as refused:
        check_addressee("receipt", "casc", None)
    assert refused.value.reason is Reason.UNAUTHORISED


# --- through the receiving pipeline ---------------------------------------------------------


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    made = Harness.create(tmp_path_factory.mktemp("membership"), prefix="member")
    try:
        yield made
    finally:
        made.close()


def test_casc_refuses_seajust_signing_as_an_uzbek_contact_point(harness: Harness) -> None:
    """Exactly the review's message: signed by SEAJust, origin {seajust, UZ, uz-cp-1}, for
    Uzbekistan. CASC's pipeline refuses it as origin_not_member (it used to deliver it)."""
    seajust = harness.scene.keys[HOSTILE]
    forged = header(
        seajust,
        harness.scene.now,
        origin={"contact_point": "uz-cp-1", "country": "UZ", "network": HOSTILE},
    )
    payload = facilitation_payload(requesting_country="UZ")
    assert harness.judge(Publication(wire(sign(forged, payload, seajust)))) == (
        Reason.ORIGIN_NOT_MEMBER
    )


def test_casc_refuses_a_request_whose_requesting_country_is_not_the_origins(
    harness: Harness,
) -> None:
    """SEAJust's own contact point, but a payload that asks on behalf of Uzbekistan: refused
    at the destination, where the payload is read."""
    seajust = harness.scene.keys[HOSTILE]
    frame = sign(
        header(seajust, harness.scene.now), facilitation_payload(requesting_country="UZ"), seajust
    )
    assert harness.judge(Publication(wire(frame))) == Reason.ORIGIN_NOT_MEMBER


_PAYLOADS: dict[str, dict[str, Any]] = {
    "receipt": {
        "content_sha256": "A" * 43,
        "receipt_for": "5b0c2f1e-8d3a-4c6b-9e7f-0a1b2c3d4e5f",
        "received_at": "2026-03-02T09:30:00.000Z",
    },
    "notice": {"title": "Plenary", "topic": "plenary"},
    "directory_update": {"directory": {}},
}


@pytest.mark.parametrize(
    ("kind", "sender", "stolen"),
    [
        ("receipt", HOSTILE, ("UZ", "uz-cp-1")),
        ("notice", HOSTILE, ("UZ", "uz-cp-1")),
        # casc's config forbids seajust this kind: ejn signs as a Cambodian contact point
        ("directory_update", "ejn", ("KH", "kh-cp-1")),
    ],
)
def test_receipts_notices_and_directory_updates_are_held_to_the_same_rule(
    harness: Harness, kind: str, sender: str, stolen: tuple[str, str]
) -> None:
    """A receipt, a notice or a directory update whose origin names another network's country
    and contact point: origin_not_member before anything reads its payload."""
    key = harness.scene.keys[sender]
    country, contact_point = stolen
    forged = header(
        key,
        harness.scene.now,
        kind=kind,
        destination={"network": RECEIVER},
        origin={"contact_point": contact_point, "country": country, "network": sender},
    )
    publication = Publication(wire(sign(forged, _PAYLOADS[kind], key)), as_network=sender)
    assert harness.judge(publication) == Reason.ORIGIN_NOT_MEMBER


def test_a_truthful_origin_is_still_accepted(harness: Harness) -> None:
    seajust = harness.scene.keys[HOSTILE]
    frame = sign(header(seajust, harness.scene.now), facilitation_payload(), seajust)
    assert isinstance(harness.judge(Publication(wire(frame))), Accepted)
