"""The routing function: where each message goes, and why a message is refused.

Most tests use the five example networks of the local federation (seajust - casc - ejn, ejn -
wacap, ejn - gljc, wacap - gljc); small custom graphs pin path avoidance and tie-breaking.
"""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

import pytest

from mlanet.broker import Reason
from mlanet.broker.routing import Deliver, Forward, Refuse, RouteRule, Routing, route
from mlanet.nodes.local.federation import EXAMPLE_LINKS, EXAMPLE_NETWORKS
from mlanet.schemas import Header
from mlanet.schemas.directory import Directory

_PUBLIC_KEY = "A" * 43  # routing never reads keys; any well-formed value will do
_ISSUED = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _network(
    network: str, members: list[str], contact_points: list[tuple[str, str]] | None = None
) -> dict[str, Any]:
    """A directory entry; by default one contact point ``<cc>-cp-1`` per member country."""
    if contact_points is None:
        contact_points = [(f"{country.lower()}-cp-1", country) for country in members]
    return {
        "id": network,
        "name": network.upper(),
        "members": members,
        "contact_points": [{"id": cp, "country": country} for cp, country in contact_points],
        "keys": [{"key_id": "ed25519:1", "public_key": _PUBLIC_KEY}],
        "broker": {"host": "127.0.0.1", "vhost": network},
    }


def _directory(networks: list[dict[str, Any]], links: list[tuple[str, str]]) -> Directory:
    return Directory.model_validate(
        {"version": 1, "issued_at": _ISSUED, "networks": networks, "links": links}
    )


def _example(*, casc_contact_points: list[tuple[str, str]] | None = None) -> Directory:
    networks = []
    for network, (_name, members) in EXAMPLE_NETWORKS.items():
        extra = casc_contact_points if network == "casc" else None
        networks.append(_network(network, members, extra))
    return _directory(networks, list(EXAMPLE_LINKS))


# CASC has a second Uzbek contact point, listed after the first.
_CASC_POINTS = [
    *((f"{c.lower()}-cp-1", c) for c in EXAMPLE_NETWORKS["casc"][1]),
    ("uz-gpo-2", "UZ"),
]
EXAMPLE = _example(casc_contact_points=_CASC_POINTS)


def _header(
    *,
    network: str | None = None,
    country: str | None = None,
    contact_point: str | None = None,
    kind: str = "facilitation_request",
    urgency: str = "normal",
    hop_limit: int = 6,
    origin: str = "seajust",
) -> Header:
    destination = {
        key: value
        for key, value in (
            ("network", network),
            ("country", country),
            ("contact_point", contact_point),
        )
        if value is not None
    }
    return Header.model_validate(
        {
            "kind": kind,
            "message_id": "5b0c2f1e-8d3a-4c6b-9e7f-0a1b2c3d4e5f",
            "origin": {"network": origin},
            "destination": destination,
            "created_at": _ISSUED,
            "hop_limit": hop_limit,
            "key_id": "ed25519:1",
            "urgency": urgency,
        }
    )


def _route(
    header: Header,
    at: str,
    path: tuple[str, ...] = (),
    *,
    directory: Directory = EXAMPLE,
    rules: tuple[RouteRule, ...] = (),
) -> Routing:
    return route(header, path, directory, rules, at)


def _journey(
    header: Header, *, directory: Directory = EXAMPLE, rules: tuple[RouteRule, ...] = ()
) -> tuple[list[str], Routing]:
    """Follow a message from its origin, one routing decision per network, to its outcome."""
    visited = [header.origin.network]
    while len(visited) < 30:
        decision = route(header, tuple(visited[:-1]), directory, rules, visited[-1])
        if not isinstance(decision, Forward):
            return visited, decision
        visited.append(decision.peer)
    raise AssertionError(f"no outcome after {visited}")


def _refusal(decision: Routing) -> Reason:
    assert isinstance(decision, Refuse), decision
    return decision.reason


# --- destination country -> serving network ----------------------------------------------------


@pytest.mark.parametrize(
    ("at", "country", "expected"),
    [
        ("seajust", "UZ", Forward("casc", "casc")),
        ("seajust", "FR", Forward("casc", "ejn")),
        ("seajust", "GH", Forward("casc", "wacap")),
        ("seajust", "KE", Forward("casc", "gljc")),
        ("casc", "KH", Forward("seajust", "seajust")),
        ("wacap", "UZ", Forward("ejn", "casc")),
        ("gljc", "KH", Forward("ejn", "seajust")),
    ],
)
def test_a_destination_country_is_routed_towards_the_network_it_is_a_member_of(
    at: str, country: str, expected: Forward
) -> None:
    """The target is the network serving the country; the next hop is the first step there."""
    assert _route(_header(country=country, origin=at), at) == expected


def test_a_country_of_this_network_is_delivered_to_its_first_contact_point() -> None:
    """No contact point named: the first one the directory lists for that country gets it."""
    decision = _route(_header(country="UZ"), "casc", ("seajust",))
    assert decision == Deliver(("uz-cp-1",))


def test_a_named_contact_point_of_this_network_is_delivered_to_that_contact_point() -> None:
    decision = _route(_header(country="UZ", contact_point="uz-gpo-2"), "casc", ("seajust",))
    assert decision == Deliver(("uz-gpo-2",))


def test_an_unknown_contact_point_has_no_route() -> None:
    """A contact point the destination network does not list is refused, not guessed."""
    decision = _route(_header(country="UZ", contact_point="uz-nobody"), "casc", ("seajust",))
    assert _refusal(decision) is Reason.NO_ROUTE


@pytest.mark.parametrize("at", ["seajust", "casc", "ejn"])
def test_a_country_no_network_serves_has_no_route(at: str) -> None:
    assert _refusal(_route(_header(country="US", origin=at), at)) is Reason.NO_ROUTE


def test_a_destination_network_not_in_the_directory_has_no_route() -> None:
    assert _refusal(_route(_header(network="nowhere"), "seajust")) is Reason.NO_ROUTE


def test_a_destination_network_overrides_the_network_serving_the_country() -> None:
    """Sent to EJN for Uzbekistan: EJN is the target, and EJN has no Uzbek contact point."""
    header = _header(network="ejn", country="UZ")
    assert _route(header, "seajust") == Forward("casc", "ejn")
    assert _refusal(_route(header, "ejn", ("seajust", "casc"))) is Reason.NO_ROUTE


def test_a_network_only_destination_is_delivered_to_every_local_contact_point() -> None:
    decision = _route(_header(network="casc"), "casc", ("seajust",))
    assert decision == Deliver(tuple(cp for cp, _country in _CASC_POINTS))
    assert len(decision.contact_points) == len(EXAMPLE_NETWORKS["casc"][1]) + 1


def test_a_network_only_destination_without_contact_points_has_no_route() -> None:
    directory = _directory([_network("alpha", ["KH"]), _network("beta", ["UZ"], [])], [])
    decision = _route(
        _header(network="beta", origin="alpha"), "beta", ("alpha",), directory=directory
    )
    assert _refusal(decision) is Reason.NO_ROUTE


def test_a_network_missing_from_the_directory_cannot_route() -> None:
    assert _refusal(_route(_header(country="UZ"), "stranger")) is Reason.NO_ROUTE
    assert _refusal(_route(_header(network="stranger"), "stranger")) is Reason.NO_ROUTE


# --- links and paths ---------------------------------------------------------------------------


def test_a_linked_target_is_sent_to_directly() -> None:
    assert _route(_header(country="UZ"), "seajust") == Forward("casc", "casc")
    assert _route(_header(country="KE", origin="ejn"), "ejn") == Forward("gljc", "gljc")


@pytest.mark.parametrize(
    ("country", "networks", "contact_point"),
    [
        ("UZ", ["seajust", "casc"], "uz-cp-1"),
        ("FR", ["seajust", "casc", "ejn"], "fr-cp-1"),
        ("GH", ["seajust", "casc", "ejn", "wacap"], "gh-cp-1"),
        ("KE", ["seajust", "casc", "ejn", "gljc"], "ke-cp-1"),
    ],
)
def test_a_message_travels_a_shortest_path_of_links_to_its_destination(
    country: str, networks: list[str], contact_point: str
) -> None:
    """seajust -> ejn goes via casc; seajust -> wacap via casc and ejn (not via gljc)."""
    visited, outcome = _journey(_header(country=country))
    assert visited == networks
    assert outcome == Deliver((contact_point,))


def test_the_path_so_far_is_never_re_entered_even_when_that_is_shorter() -> None:
    """From bb, dd is two links away through aa and three through cc; a message that came from
    aa goes the long way round, one that starts at bb takes the short one."""
    directory = _directory(
        [
            _network(n, [c])
            for n, c in (("aa", "AM"), ("bb", "BN"), ("cc", "CV"), ("dd", "DE"), ("ee", "EE"))
        ],
        [("aa", "bb"), ("aa", "dd"), ("bb", "cc"), ("cc", "ee"), ("ee", "dd")],
    )
    header = _header(network="dd", origin="aa")
    assert _route(header, "bb", directory=directory) == Forward("aa", "dd")
    assert _route(header, "bb", ("aa",), directory=directory) == Forward("cc", "dd")
    assert _route(header, "cc", ("aa", "bb"), directory=directory) == Forward("ee", "dd")


def test_a_route_back_to_a_target_already_on_the_path_is_a_loop() -> None:
    """At casc, a message that came from seajust for seajust is never sent back: its route
    leads back to a network already on its path, which is loop_detected (PROTOCOL.md 10.6),
    not no_route."""
    decision = _route(_header(country="KH"), "casc", ("seajust",))
    assert _refusal(decision) is Reason.LOOP_DETECTED


def test_a_target_reachable_only_back_through_the_path_is_a_loop() -> None:
    """aa - bb - cc - dd: at cc, a message from bb for aa could only reach aa back through bb,
    which is on its path: loop_detected. Without that link path at all it stays no_route."""
    networks = [_network(n, [c]) for n, c in (("aa", "AM"), ("bb", "BN"), ("cc", "CV"))]
    chain = _directory([*networks, _network("dd", ["DE"])], [("aa", "bb"), ("bb", "cc")])
    header = _header(network="aa", origin="bb")
    assert _refusal(_route(header, "cc", ("bb",), directory=chain)) is Reason.LOOP_DETECTED
    apart = _directory([*networks, _network("dd", ["DE"])], [("bb", "cc")])
    assert _refusal(_route(header, "cc", ("bb",), directory=apart)) is Reason.NO_ROUTE


def test_a_target_with_no_link_path_has_no_route() -> None:
    directory = _directory([_network("alpha", ["KH"]), _network("beta", ["UZ"])], [])
    assert _refusal(
        _route(_header(country="UZ", origin="alpha"), "alpha", directory=directory)
    ) is (Reason.NO_ROUTE)


# --- loops and hop limits ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "path"),
    [
        ("casc", ("seajust", "casc")),
        ("seajust", ("seajust",)),
        ("seajust", ("seajust", "casc")),
        ("casc", ("casc", "ejn", "wacap")),
    ],
)
def test_a_message_that_already_passed_this_network_is_a_loop(
    at: str, path: tuple[str, ...]
) -> None:
    """Even when the destination is local: being on the path is checked first."""
    for header in (_header(country="FR"), _header(country="UZ")):
        assert _refusal(_route(header, at, path)) is Reason.LOOP_DETECTED


def test_a_relay_may_forward_up_to_the_hop_limit_and_not_beyond() -> None:
    """After a relay forwards, the message carries one hop record per relay: len(path)."""
    one = _header(country="GH", hop_limit=1)
    # The origin adds no hop record: it is never limited.
    assert _route(one, "seajust") == Forward("casc", "wacap")
    # casc's forward makes 1 hop record: allowed with a limit of 1.
    assert _route(one, "casc", ("seajust",)) == Forward("ejn", "wacap")
    # ejn's forward would make the second: refused.
    assert _refusal(_route(one, "ejn", ("seajust", "casc"))) is Reason.HOP_LIMIT_EXCEEDED
    two = _header(country="GH", hop_limit=2)
    assert _route(two, "ejn", ("seajust", "casc")) == Forward("wacap", "wacap")
    visited, outcome = _journey(_header(country="GH", hop_limit=1))
    assert visited == ["seajust", "casc", "ejn"]
    assert _refusal(outcome) is Reason.HOP_LIMIT_EXCEEDED


def test_the_hop_limit_does_not_stop_local_delivery() -> None:
    """Delivering adds no hop record, so the last network delivers even at the limit."""
    header = _header(country="FR", hop_limit=1)
    assert _route(header, "ejn", ("seajust", "casc")) == Deliver(("fr-cp-1",))


def test_the_origin_is_not_hop_limited_on_a_long_chain() -> None:
    """A chain of 19 networks and the largest limit, 16: 16 relays forward, the 17th may not."""
    names = [f"n{i:02d}" for i in range(19)]
    directory = _directory(
        [_network(name, []) for name in names],
        list(pairwise(names)),
    )
    header = _header(network=names[-1], hop_limit=16, origin=names[0])
    assert _route(header, names[0], directory=directory) == Forward(names[1], names[-1])
    visited, outcome = _journey(header, directory=directory)
    assert visited == names[:18]  # n17, the 17th relay, would add a 17th hop record
    assert _refusal(outcome) is Reason.HOP_LIMIT_EXCEEDED


# --- explicit rules ----------------------------------------------------------------------------


def test_without_rules_ejn_reaches_gljc_directly() -> None:
    assert _route(_header(country="KE", origin="ejn"), "ejn") == Forward("gljc", "gljc")


@pytest.mark.parametrize(
    ("rule", "matching", "other"),
    [
        (
            RouteRule(via="wacap", kinds=("notice",)),
            _header(country="KE", kind="notice", origin="ejn"),
            _header(country="KE", kind="facilitation_request", origin="ejn"),
        ),
        (
            RouteRule(via="wacap", countries=("KE",)),
            _header(country="KE", origin="ejn"),
            _header(country="RW", origin="ejn"),
        ),
        (
            RouteRule(via="wacap", urgency="urgent"),
            _header(country="KE", urgency="urgent", origin="ejn"),
            _header(country="KE", urgency="normal", origin="ejn"),
        ),
        (
            RouteRule(via="wacap", networks=("gljc",)),
            _header(network="gljc", origin="ejn"),
            _header(network="casc", origin="ejn"),
        ),
        (
            RouteRule(via="wacap", kinds=("notice",), countries=("KE",), urgency="urgent"),
            _header(country="KE", kind="notice", urgency="urgent", origin="ejn"),
            _header(country="KE", kind="notice", urgency="normal", origin="ejn"),
        ),
    ],
    ids=["kind", "country", "urgency", "network", "all-criteria"],
)
def test_a_matching_rule_overrides_the_default_next_hop(
    rule: RouteRule, matching: Header, other: Header
) -> None:
    """The rule applies to messages it matches, and only to them."""
    default = _route(matching, "ejn")
    assert isinstance(default, Forward)
    assert default.peer != "wacap"
    overridden = _route(matching, "ejn", rules=(rule,))
    assert overridden == Forward("wacap", default.target)
    assert _route(other, "ejn", rules=(rule,)) == _route(other, "ejn")


def test_a_rule_can_send_a_message_away_from_a_directly_linked_target() -> None:
    """Rules win over the default even when the target itself is linked."""
    rule = RouteRule(via="casc", networks=("wacap",))
    assert _route(_header(country="GH", origin="ejn"), "ejn", rules=(rule,)) == Forward(
        "casc", "wacap"
    )


def test_the_first_matching_rule_wins() -> None:
    header = _header(country="KE", kind="notice", origin="ejn")
    first = RouteRule(via="wacap", kinds=("notice",))
    second = RouteRule(via="casc", countries=("KE",))
    assert _route(header, "ejn", rules=(first, second)) == Forward("wacap", "gljc")
    assert _route(header, "ejn", rules=(second, first)) == Forward("casc", "gljc")


def test_a_rule_via_a_network_that_is_not_linked_is_skipped() -> None:
    """seajust is linked to casc only: a rule via ejn cannot be followed."""
    rules = (RouteRule(via="ejn"), RouteRule(via="wacap", countries=("FR",)))
    assert _route(_header(country="FR"), "seajust", rules=rules) == Forward("casc", "ejn")


def test_a_rule_via_a_network_already_on_the_path_is_skipped() -> None:
    """At ejn, a message from seajust via casc: a rule via casc would send it back."""
    header = _header(country="KE")
    rules = (RouteRule(via="casc"),)
    assert _route(header, "ejn", ("seajust", "casc"), rules=rules) == Forward("gljc", "gljc")
    # The next matching rule that can be followed is used.
    rules = (RouteRule(via="casc"), RouteRule(via="wacap"))
    assert _route(header, "ejn", ("seajust", "casc"), rules=rules) == Forward("wacap", "gljc")


def test_rules_do_not_apply_to_local_delivery() -> None:
    rules = (RouteRule(via="ejn"),)
    assert _route(_header(country="UZ"), "casc", ("seajust",), rules=rules) == Deliver(("uz-cp-1",))


def test_a_rule_does_not_lift_the_hop_limit() -> None:
    header = _header(country="GH", hop_limit=1)
    rules = (RouteRule(via="wacap"),)
    decision = _route(header, "ejn", ("seajust", "casc"), rules=rules)
    assert _refusal(decision) is Reason.HOP_LIMIT_EXCEEDED


# --- determinism -------------------------------------------------------------------------------


def _diamond(*, reverse: bool) -> Directory:
    """aa - bb - dd and aa - cc - dd: two paths of two links from aa to dd."""
    networks = [
        _network(n, [c]) for n, c in (("aa", "AM"), ("bb", "BN"), ("cc", "CV"), ("dd", "DE"))
    ]
    links = [("aa", "bb"), ("bb", "dd"), ("aa", "cc"), ("cc", "dd")]
    if reverse:
        networks.reverse()
        links = [(y, x) for x, y in reversed(links)]
    return _directory(networks, links)


def test_two_equal_length_paths_resolve_to_the_same_first_step_every_time() -> None:
    """Ties go to the lowest network id, whatever the order of the directory's lists."""
    header = _header(country="DE", origin="aa")
    decisions = {
        _route(header, "aa", directory=_diamond(reverse=reverse))
        for reverse in (False, True)
        for _ in range(3)
    }
    assert decisions == {Forward("bb", "dd")}
    # With bb already on the path, the other path of the same length is taken.
    assert _route(header, "aa", ("bb",), directory=_diamond(reverse=False)) == Forward("cc", "dd")


def test_a_country_served_by_two_networks_resolves_deterministically() -> None:
    """The lowest network id among those it is a member of; this network when it is one."""
    networks = [
        _network("gamma", ["GM"]),
        _network("beta", ["KH", "BN"]),
        _network("alpha", ["KH", "AM"]),
    ]
    links = [("gamma", "beta"), ("gamma", "alpha")]
    for ordering in (networks, list(reversed(networks))):
        directory = _directory(ordering, links)
        header = _header(country="KH", origin="gamma")
        assert _route(header, "gamma", directory=directory) == Forward("alpha", "alpha")
        assert _route(header, "beta", ("gamma",), directory=directory) == Deliver(("kh-cp-1",))
