"""The directory model over time, and routing by it: contact point handovers, alternates and
windows (Directory.as_of), and observers' entitlement (notices only, never members_only)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from mlanet.broker import Reason
from mlanet.broker.routing import Deliver, Forward, Refuse, route
from mlanet.schemas import Header
from mlanet.schemas.directory import Directory, NetworkEntry

T = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
KEY = [{"key_id": "ed25519:1", "public_key": "A" * 43}]


def _entry(network: str, members: list[str], points: list[dict[str, Any]], **extra: Any) -> Any:
    return {
        "id": network,
        "name": network.upper(),
        "members": members,
        "contact_points": points,
        "keys": KEY,
        "broker": {"host": "127.0.0.1", "vhost": network},
        **extra,
    }


def _casc(points: list[dict[str, Any]], **extra: Any) -> NetworkEntry:
    return NetworkEntry.model_validate(_entry("casc", ["UZ", "KZ"], points, **extra), strict=False)


def test_a_due_handover_redirects_and_a_scheduled_one_waits() -> None:
    casc = _casc(
        [
            {"id": "uz-cp-1", "country": "UZ", "successor": "uz-cp-2", "not_after": T},
            {"id": "uz-cp-2", "country": "UZ"},
        ]
    )
    before, after = casc.as_of(T - timedelta(seconds=1)), casc.as_of(T)
    assert before.resolve("uz-cp-1") == "uz-cp-1"
    assert before.contact_points_of("UZ") == ["uz-cp-1", "uz-cp-2"]
    assert after.resolve("uz-cp-1") == "uz-cp-2"
    assert after.contact_points_of("UZ") == ["uz-cp-2"]
    assert after.active_contact_points() == ["uz-cp-2"]


def test_successors_are_followed_to_the_end_of_the_chain() -> None:
    casc = _casc(
        [
            {"id": "uz-cp-1", "country": "UZ", "successor": "uz-cp-2"},
            {"id": "uz-cp-2", "country": "UZ", "successor": "uz-cp-3"},
            {"id": "uz-cp-3", "country": "UZ"},
        ]
    )
    assert casc.as_of(T).resolve("uz-cp-1") == "uz-cp-3"
    assert casc.resolve("kz-cp-9") is None


def test_an_expired_contact_point_hands_over_to_its_first_active_alternate() -> None:
    casc = _casc(
        [
            {"id": "uz-cp-1", "country": "UZ", "not_after": T, "alternates": ["uz-alt", "uz-b"]},
            {"id": "uz-alt", "country": "UZ", "not_after": T},
            {"id": "uz-b", "country": "UZ"},
        ]
    )
    assert casc.as_of(T).resolve("uz-cp-1") == "uz-b"


def test_contact_points_not_yet_appointed_or_expired_without_anyone_are_left_out() -> None:
    casc = _casc(
        [
            {"id": "uz-new", "country": "UZ", "not_before": T},
            {"id": "uz-old", "country": "UZ", "not_after": T},
            {"id": "uz-gone", "country": "UZ", "successor": "uz-new"},
        ]
    )
    early, late = casc.as_of(T - timedelta(hours=1)), casc.as_of(T)
    assert [cp.id for cp in early.contact_points] == ["uz-old"]
    assert [cp.id for cp in late.contact_points] == ["uz-new", "uz-gone"]
    assert late.resolve("uz-gone") == "uz-new"
    assert late.resolve("uz-old") is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"contact_points": [{"id": "uz-a", "country": "UZ", "successor": "uz-z"}]}, "unknown"),
        ({"contact_points": [{"id": "uz-a", "country": "UZ", "successor": "uz-a"}]}, "itself"),
        (
            {"contact_points": [{"id": "uz-a", "country": "UZ"}, {"id": "uz-a", "country": "UZ"}]},
            "twice",
        ),
        ({"observers": ["UZ"]}, "either a member or an observer"),
        ({"contact_points": [{"id": "mn-cp-1", "country": "MN"}]}, "not in a member country"),
        ({"keys": KEY * 2}, "key id is listed twice"),
    ],
)
def test_inconsistent_entries_are_refused(change: dict[str, Any], message: str) -> None:
    value = _entry("casc", ["UZ"], [], **change)
    with pytest.raises(ValidationError, match=message):
        NetworkEntry.model_validate(value, strict=False)


def test_an_observer_country_may_have_contact_points() -> None:
    casc = _casc([{"id": "mn-cp-1", "country": "MN"}], observers=["MN"])
    assert casc.is_observer("MN")
    assert not casc.is_observer("UZ")


# --- routing with observers and handovers --------------------------------------------------------


def _directory(**casc_extra: Any) -> Directory:
    points = casc_extra.pop(
        "contact_points",
        [{"id": "uz-cp-1", "country": "UZ"}, {"id": "mn-cp-1", "country": "MN"}],
    )
    return Directory.model_validate(
        {
            "version": 1,
            "issued_at": T,
            "networks": [
                _entry("seajust", ["KH"], [{"id": "kh-cp-1", "country": "KH"}]),
                _entry("casc", ["UZ"], points, observers=["MN"], **casc_extra),
                _entry("watch", [], [], role="observer"),
                _entry("ejn", ["FR"], [{"id": "fr-cp-1", "country": "FR"}]),
            ],
            "links": [("seajust", "casc"), ("seajust", "watch"), ("watch", "ejn")],
        },
        strict=False,
    )


def _header(kind: str = "notice", members_only: bool = False, **destination: str) -> Header:
    return Header.model_validate(
        {
            "kind": kind,
            "message_id": str(uuid.uuid4()),
            "origin": {"network": "seajust", "country": "KH", "contact_point": "kh-cp-1"},
            "destination": destination,
            "created_at": T,
            "key_id": "ed25519:1",
            "members_only": True if members_only else None,
        },
        strict=False,
    )


def test_an_observer_country_gets_notices_only() -> None:
    directory = _directory()
    assert route(_header(country="MN"), (), directory, (), "seajust") == Forward("casc", "casc")
    assert route(_header(country="MN"), ("seajust",), directory, (), "casc") == Deliver(
        ("mn-cp-1",)
    )
    for header in (
        _header("facilitation_request", country="MN"),
        _header(members_only=True, country="MN"),
        _header(members_only=True, country="MN", contact_point="mn-cp-1"),
    ):
        for path, at in (((), "seajust"), (("seajust",), "casc")):
            decision = route(header, path, directory, (), at)
            assert isinstance(decision, Refuse)
            assert decision.reason is Reason.NOT_FOR_OBSERVERS


def test_a_broadcast_leaves_observers_out_when_it_is_members_only() -> None:
    directory = _directory()
    everyone = route(_header(network="casc"), ("seajust",), directory, (), "casc")
    members = route(_header(members_only=True, network="casc"), ("seajust",), directory, (), "casc")
    request = route(_header("status_update", network="casc"), ("seajust",), directory, (), "casc")
    assert everyone == Deliver(("uz-cp-1", "mn-cp-1"))
    assert members == Deliver(("uz-cp-1",))
    assert request == Deliver(("uz-cp-1",))


def test_an_observer_network_gets_notices_and_is_never_a_transit() -> None:
    directory = _directory()
    to_watch = route(_header(network="watch"), (), directory, (), "seajust")
    assert to_watch == Forward("watch", "watch")
    refused = route(_header("facilitation_request", network="watch"), (), directory, (), "seajust")
    assert isinstance(refused, Refuse)
    assert refused.reason is Reason.NOT_FOR_OBSERVERS
    # EJN is reachable only through the observer network: no route rather than through it.
    to_ejn = route(_header("facilitation_request", country="FR"), (), directory, (), "seajust")
    assert isinstance(to_ejn, Refuse)
    assert to_ejn.reason is Reason.NO_ROUTE


def test_a_message_for_a_replaced_contact_point_goes_to_its_successor() -> None:
    directory = _directory(
        contact_points=[
            {"id": "uz-cp-1", "country": "UZ", "successor": "uz-cp-2", "not_after": T},
            {"id": "uz-cp-2", "country": "UZ"},
        ]
    )
    header = _header("facilitation_request", country="UZ", contact_point="uz-cp-1")
    before = route(header, ("seajust",), directory.as_of(T - timedelta(1)), (), "casc")
    after = route(header, ("seajust",), directory.as_of(T), (), "casc")
    assert before == Deliver(("uz-cp-1",))
    assert after == Deliver(("uz-cp-2",))


def test_the_directory_refuses_an_expiry_before_its_issue() -> None:
    value = _directory().model_dump(mode="json")
    value["valid_until"] = value["issued_at"]
    with pytest.raises(ValidationError, match="valid_until"):
        Directory.model_validate(value, strict=False)
