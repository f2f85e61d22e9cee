"""Hop records must describe a path a message can really have taken (``broker/provenance.py``,
PROTOCOL.md section 7.3): the origin never signs one, each is signed by the network the one
before it was addressed to, no network appears twice, every step is a directory link, and every
time is within the clock skew and not before the previous one.

The pure check first (:func:`check_path` on the example networks: seajust - casc - ejn,
ejn - wacap, ejn - gljc, wacap - gljc), then each attack of the review through CASC's receiving
pipeline, built with the hostile forge as a colluding relay would sign it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mlanet.broker import Reason, RefusedMessage
from mlanet.broker.provenance import check_path
from mlanet.nodes.local.federation import EXAMPLE_LINKS, EXAMPLE_NETWORKS
from mlanet.nodes.runtime.pipeline import Accepted
from mlanet.schemas import Header, HopRecord
from mlanet.schemas.directory import Directory
from tests.hostile.corpus import HOSTILE, RECEIVER
from tests.hostile.forge import facilitation_payload, header, hop, sign, wire
from tests.hostile.harness import Harness
from tests.hostile.peer import Publication

NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
SKEW = timedelta(seconds=300)

DIRECTORY = Directory.model_validate(
    {
        "version": 1,
        "issued_at": NOW - timedelta(days=1),
        "networks": [
            {
                "id": network,
                "name": name,
                "members": members,
                "contact_points": [],
                "keys": [{"key_id": "ed25519:1", "public_key": "A" * 43}],
                "broker": {"host": "127.0.0.1", "vhost": network},
            }
            for network, (name, members) in EXAMPLE_NETWORKS.items()
        ],
        "links": EXAMPLE_LINKS,
    }
)


def _header(origin: str, created_at: datetime = NOW) -> Header:
    return Header.model_validate(
        {
            "kind": "facilitation_request",
            "message_id": "5b0c2f1e-8d3a-4c6b-9e7f-0a1b2c3d4e5f",
            "origin": {"network": origin},
            "destination": {"country": "NG"},
            "created_at": created_at,
            "key_id": "ed25519:1",
        }
    )


def _hop(network: str, to: str, at: datetime = NOW) -> HopRecord:
    return HopRecord.model_validate(
        {"network": network, "key_id": "ed25519:1", "at": at, "to": to, "prev": "A" * 43}
    )


def _check(origin: str, *hops: HopRecord, created_at: datetime = NOW) -> None:
    check_path(_header(origin, created_at), hops, DIRECTORY, now=NOW, skew=SKEW)


def _reason(origin: str, *hops: HopRecord, created_at: datetime = NOW) -> Reason:
    with pytest.raises(RefusedMessage) as refused:
        _check(origin, *hops, created_at=created_at)
    return refused.value.reason


# --- the pure check -----------------------------------------------------------------------------


def test_a_real_path_over_links_in_time_passes() -> None:
    """seajust -> casc -> ejn -> wacap, each hop a second after the one before."""
    _check("seajust")
    _check("seajust", _hop("casc", "ejn", NOW + timedelta(seconds=1)))
    _check(
        "seajust",
        _hop("casc", "ejn", NOW + timedelta(seconds=1)),
        _hop("ejn", "wacap", NOW + timedelta(seconds=2)),
    )


def test_the_origin_never_signs_a_hop_record() -> None:
    """The review's first attack: SEAJust adds a hop record of its own to its own message."""
    assert _reason("seajust", _hop("seajust", "casc")) is Reason.HOP_BY_ORIGIN
    # also further down the path: the origin handling its own message again
    relayed_back = (_hop("casc", "seajust"), _hop("seajust", "casc"))
    assert _reason("seajust", *relayed_back) is Reason.HOP_BY_ORIGIN


def test_a_step_over_a_link_the_directory_does_not_have_is_refused() -> None:
    """gljc and seajust are not linked: a record by seajust on gljc's message claims a hop that
    cannot have happened; nor can casc hand a message to wacap."""
    assert _reason("gljc", _hop("seajust", "casc")) is Reason.UNKNOWN_LINK
    assert _reason("seajust", _hop("casc", "wacap"), _hop("wacap", "ejn")) is Reason.UNKNOWN_LINK


def test_hop_records_whose_to_does_not_chain_are_refused() -> None:
    """casc says it sent the message to gljc, but the next record is ejn's."""
    hops = (_hop("casc", "gljc"), _hop("ejn", "wacap"))
    assert _reason("seajust", *hops) is Reason.HOP_CHAIN_BROKEN


def test_a_network_twice_on_the_path_is_a_loop() -> None:
    hops = (_hop("casc", "ejn"), _hop("ejn", "casc"), _hop("casc", "ejn"))
    assert _reason("seajust", *hops) is Reason.LOOP_DETECTED


def test_a_hop_time_in_year_9999_is_refused() -> None:
    far = datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
    assert _reason("seajust", _hop("casc", "ejn", far)) is Reason.CLOCK_SKEW


def test_a_hop_time_beyond_the_skew_is_refused_and_within_it_accepted() -> None:
    assert _reason("seajust", _hop("casc", "ejn", NOW + SKEW + timedelta(seconds=1))) is (
        Reason.CLOCK_SKEW
    )
    _check("seajust", _hop("casc", "ejn", NOW + SKEW))


def test_a_hop_time_before_the_one_before_it_is_refused_beyond_the_skew() -> None:
    """Times go forward along the path; relays' clocks may differ by up to the skew."""
    early = NOW - SKEW - timedelta(seconds=1)
    assert _reason("seajust", _hop("casc", "ejn", early)) is Reason.CLOCK_SKEW  # before created_at
    hops = (_hop("casc", "ejn", NOW), _hop("ejn", "wacap", early))
    assert _reason("seajust", *hops) is Reason.CLOCK_SKEW
    _check("seajust", _hop("casc", "ejn", NOW), _hop("ejn", "wacap", NOW - SKEW))


def test_the_first_broken_rule_names_the_reason() -> None:
    """The rules are checked in the documented order, record by record: a record by the origin
    over a link that does not exist, in year 9999, is hop_by_origin; a step over no link in
    year 9999 is unknown_link."""
    far = datetime(9999, 1, 1, tzinfo=UTC)
    assert _reason("gljc", _hop("gljc", "seajust", far)) is Reason.HOP_BY_ORIGIN
    assert _reason("gljc", _hop("seajust", "casc", far)) is Reason.UNKNOWN_LINK


# --- the attacks through CASC's pipeline --------------------------------------------------------


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    made = Harness.create(tmp_path_factory.mktemp("hops"), prefix="hops")
    try:
        yield made
    finally:
        made.close()


def _from(harness: Harness, origin: str, **payload: Any) -> dict[str, Any]:
    """A valid facilitation request for Uzbekistan signed by ``origin``'s node."""
    key = harness.scene.keys[origin]
    country = header(key, harness.scene.now)["origin"]["country"]
    return sign(
        header(key, harness.scene.now),
        facilitation_payload(requesting_country=country, **payload),
        key,
    )


def _judge(harness: Harness, frame: dict[str, Any], sender: str) -> object:
    return harness.judge(Publication(wire(frame), as_network=sender))


def test_casc_refuses_seajusts_own_hop_record_on_its_own_message(harness: Harness) -> None:
    """SEAJust signs its message and a hop record 'seajust -> casc' on it (CASC used to
    deliver it): hop_by_origin."""
    seajust = harness.scene.keys[HOSTILE]
    frame = hop(_from(harness, HOSTILE), seajust, to=RECEIVER, at=harness.scene.now)
    assert _judge(harness, frame, HOSTILE) == Reason.HOP_BY_ORIGIN


def test_casc_refuses_a_path_through_a_link_the_directory_does_not_have(
    harness: Harness,
) -> None:
    """GLJC's message with SEAJust's hop record: gljc - seajust is not a link (CASC used to
    deliver it): unknown_link."""
    seajust = harness.scene.keys[HOSTILE]
    frame = hop(_from(harness, "gljc"), seajust, to=RECEIVER, at=harness.scene.now)
    assert _judge(harness, frame, HOSTILE) == Reason.UNKNOWN_LINK


def test_casc_refuses_hop_records_whose_to_fields_do_not_chain(harness: Harness) -> None:
    """WACAP's message: GLJC's record says it went to SEAJust, yet the next record is EJN's
    (each signed by its own network, the prev digests intact; CASC used to deliver it):
    hop_chain_broken."""
    keys, now = harness.scene.keys, harness.scene.now
    frame = hop(_from(harness, "wacap"), keys["gljc"], to=HOSTILE, at=now)
    frame = hop(frame, keys["ejn"], to=RECEIVER, at=now)
    assert _judge(harness, frame, "ejn") == Reason.HOP_CHAIN_BROKEN


def test_casc_refuses_a_hop_record_dated_in_year_9999(harness: Harness) -> None:
    """EJN relays WACAP's message with a hop record at 9999-12-31 (CASC used to deliver it):
    clock_skew."""
    far = datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
    frame = hop(_from(harness, "wacap"), harness.scene.keys["ejn"], to=RECEIVER, at=far)
    assert _judge(harness, frame, "ejn") == Reason.CLOCK_SKEW


def test_casc_still_accepts_an_honest_relayed_message(harness: Harness) -> None:
    """WACAP -> EJN -> CASC over the directory's links, in time: delivered to uz-cp-1."""
    frame = hop(
        _from(harness, "wacap"), harness.scene.keys["ejn"], to=RECEIVER, at=harness.scene.now
    )
    accepted = _judge(harness, frame, "ejn")
    assert isinstance(accepted, Accepted)
    assert accepted.message.path == ("wacap", "ejn")
