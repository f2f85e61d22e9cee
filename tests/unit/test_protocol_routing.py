"""Sections 10.1 to 10.3 of docs/PROTOCOL.md: the next hop and local delivery.

The worked example (section 10.3) is decided by the independent implementation of the document
(``tests/independent.py``) and by the reference (``mlanet.broker.routing``), and both must give the
documented outcome; then both decide random small directories, paths, destinations and rules
side by side and must agree every time.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests import independent
from tests.protocol_examples import VECTORS, at, directory, json_lines, section

# --- sections 10.1 to 10.3: routing ------------------------------------------------------------


def _case_header(case: dict[str, Any]) -> dict[str, Any]:
    header = {
        "kind": case["kind"],
        "destination": case["destination"],
        "origin": {"network": case["path"][0] if case["path"] else case["at"]},
    }
    for member in ("hop_limit", "urgency", "members_only", "direct_only"):
        if member in case:
            header[member] = case[member]
    return header


def _outcome(case: dict[str, Any]) -> tuple[str, list[str]]:
    for what in ("forward", "deliver", "refuse"):
        if what in case:
            value = case[what]
            return what, value if isinstance(value, list) else [value]
    raise AssertionError(case)


ROUTING = json_lines("routing")


def test_the_routing_example_is_the_vector() -> None:
    assert VECTORS["routing"] == ROUTING
    assert directory() == VECTORS["directory"]
    assert f"`{VECTORS['routing_at']}`" in section("10.3")


@pytest.mark.parametrize("case", ROUTING, ids=lambda case: json.dumps(case, sort_keys=True))
def test_the_routing_example_follows_the_documented_rules(case: dict[str, Any]) -> None:
    decided = independent.next_hop(
        _case_header(case),
        case["path"],
        directory(),
        case["at"],
        at(),
        case.get("rules", ()),
    )
    assert decided == _outcome(case)


@pytest.mark.parametrize("case", ROUTING, ids=lambda case: json.dumps(case, sort_keys=True))
def test_the_routing_example_is_what_the_reference_decides(case: dict[str, Any]) -> None:
    assert _reference_route(_case_header(case), case, directory()) == _outcome(case)


def _reference_route(
    header: dict[str, Any], case: dict[str, Any], directory: dict[str, Any]
) -> tuple[str, list[str]]:
    from mlanet.broker.routing import Deliver, Forward, RouteRule, route
    from mlanet.schemas import Header
    from mlanet.schemas.directory import Directory

    full = Header.model_validate(
        {
            "message_id": "00000000-0000-4000-8000-000000000000",
            "created_at": VECTORS["routing_at"],
            "key_id": "ed25519:1",
            **header,
        },
        strict=False,
    )
    view = Directory.model_validate(directory, strict=False).as_of(at())
    rules = tuple(RouteRule.model_validate(rule) for rule in case.get("rules", ()))
    decided = route(full, tuple(case["path"]), view, rules, case["at"])
    if isinstance(decided, Forward):
        return "forward", [decided.peer]
    if isinstance(decided, Deliver):
        return "deliver", list(decided.contact_points)
    return "refuse", [decided.reason.value]


_IDS = ["aa", "aab", "ab", "ba", "c-d", "cc", "dd"]
_COUNTRIES = ["AA", "BB", "CC", "DD"]


@st.composite
def _directories(draw: st.DrawFn) -> dict[str, Any]:
    """Small random directories: links, members and observers, observer networks, contact
    points with windows, successors and alternates around a fixed instant."""
    when = at()
    ids = draw(st.lists(st.sampled_from(_IDS), min_size=3, max_size=7, unique=True))
    times = st.sampled_from(
        [None, None, None, when - timedelta(days=1), when, when + timedelta(days=1)]
    )
    networks = []
    for network in ids:
        members = draw(st.lists(st.sampled_from(_COUNTRIES), min_size=1, max_size=3, unique=True))
        observers = draw(
            st.lists(st.sampled_from([c for c in _COUNTRIES if c not in members]), max_size=1)
        )
        points: list[dict[str, Any]] = []
        for country in members + observers:
            for n in range(draw(st.integers(0, 2))):
                points.append({"id": f"{country.lower()}-{network}-{n}", "country": country})
        for index, point in enumerate(points):
            start, end = draw(times), draw(times)
            if start is not None and end is not None and end <= start:
                start = None
            if start is not None:
                point["not_before"] = independent.timestamp(start)
            if end is not None:
                point["not_after"] = independent.timestamp(end)
            others = [p["id"] for p in points[index + 1 :]]  # later ones only: no cycles
            if others and draw(st.booleans()):
                point["successor"] = draw(st.sampled_from(others))
            elif others and draw(st.booleans()):
                point["alternates"] = [draw(st.sampled_from(others))]
        networks.append(
            {
                "id": network,
                "name": network,
                "role": "observer" if draw(st.integers(0, 4)) == 0 else "member",
                "members": members,
                "observers": observers,
                "contact_points": points,
                "keys": [
                    {"key_id": "ed25519:1", "public_key": VECTORS["keys"]["casc"]["public_key"]}
                ],
                "broker": {"host": "mq.example", "vhost": "v"},
            }
        )
    pairs = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1 :]]
    links = [pair for pair in pairs if draw(st.integers(0, 4)) < 3]
    return {
        "version": 1,
        "issued_at": "2026-01-01T00:00:00.000Z",
        "networks": networks,
        "links": [list(link) for link in links],
    }


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_the_documented_routing_rules_and_the_reference_agree_on_random_directories(
    data: st.DataObject,
) -> None:
    """Sections 10.1 and 10.2 as written against ``mlanet.broker.routing`` on random directories,
    paths, destinations and rules: the same outcome every time."""
    directory = data.draw(_directories(), label="directory")
    ids = [n["id"] for n in directory["networks"]]
    here = data.draw(st.sampled_from(ids), label="here")
    others = st.sampled_from([n for n in ids if n != here])
    on_path = data.draw(st.lists(others, max_size=2, unique=True), label="path")
    path = [*on_path, here] if data.draw(st.integers(0, 9), label="here on it?") == 0 else on_path
    kind = data.draw(st.sampled_from(["facilitation_request", "notice", "receipt"]), label="kind")
    points = [cp["id"] for n in directory["networks"] for cp in n["contact_points"]]
    own = next(n for n in directory["networks"] if n["id"] == here)["members"]
    destination = data.draw(
        st.one_of(
            st.builds(lambda c: {"country": c}, st.sampled_from([*_COUNTRIES, *_COUNTRIES, "EE"])),
            st.builds(lambda n: {"network": n}, st.sampled_from([*ids, "zz"])),
            st.builds(lambda c: {"country": c}, st.sampled_from(own)),
            *(
                [
                    st.builds(
                        lambda p: {"country": p[:2].upper(), "contact_point": p},
                        st.sampled_from(points),
                    )
                ]
                if points
                else []
            ),
        ),
        label="destination",
    )
    case: dict[str, Any] = {"at": here, "path": path, "kind": kind, "destination": destination}
    case["hop_limit"] = data.draw(st.integers(1, 6), label="hop_limit")
    if data.draw(st.booleans(), label="members_only?"):
        case["members_only"] = True
    if data.draw(st.integers(0, 3), label="direct_only?") == 0:
        case["direct_only"] = True
    if data.draw(st.booleans(), label="urgent?"):
        case["urgency"] = "urgent"
    rules = data.draw(
        st.lists(
            st.fixed_dictionaries(
                {"via": st.sampled_from(ids)},
                optional={
                    "urgency": st.just("urgent"),
                    "kinds": st.just(["notice"]),
                    "networks": st.lists(st.sampled_from(ids), min_size=1, max_size=2),
                    "countries": st.lists(st.sampled_from(_COUNTRIES), min_size=1, max_size=2),
                },
            ),
            max_size=2,
        ),
        label="rules",
    )
    if rules:
        case["rules"] = rules
    header = _case_header(case)
    mine = independent.next_hop(header, path, directory, here, at(), rules)
    event(mine[0] if mine[0] != "refuse" else mine[1][0])
    assert mine == _reference_route(header, case, directory)
