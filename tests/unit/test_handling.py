"""The handling rules of the signed header (docs/PROTOCOL.md section 16) as pure decisions:
``direct_only`` in routing at the origin, a relay and the destination; an observer network
that is handed a message to relay; the network's ``[policy]`` over what the sender asked; the
retention period and the archive's purge, which keeps the metadata and leaves no copy of the
content in the database files."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from mlanet.broker import Reason, RefusedMessage, load_signing_key, sign_message
from mlanet.broker.handling import Handling, handling_of, kept_days, kept_until, with_policy
from mlanet.broker.keys import b64u_decode
from mlanet.broker.routing import Deliver, Forward, Refuse, RouteRule, route
from mlanet.nodes.cli.contact import facilitation_request
from mlanet.nodes.cli.precheck import check_route
from mlanet.nodes.config import NodeConfig, Policy, load_config
from mlanet.nodes.local.federation import EXAMPLE_LINKS, EXAMPLE_NETWORKS, build
from mlanet.nodes.state.quarantine import Claim, Entry
from mlanet.nodes.state.quarantine_store import (
    QUARANTINE_FILE,
    Bound,
    QuarantineStore,
    purge_after,
)
from mlanet.nodes.state.store import Store
from mlanet.schemas import Header, Notice
from mlanet.schemas.directory import Directory
from mlanet.schemas.submission import Submission

_PUBLIC_KEY = "A" * 43  # routing never reads keys
_AT = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _network(network: str, members: list[str], role: str = "member") -> dict[str, Any]:
    return {
        "id": network,
        "name": network.upper(),
        "role": role,
        "members": members,
        "contact_points": [{"id": f"{c.lower()}-cp-1", "country": c} for c in members],
        "keys": [{"key_id": "ed25519:1", "public_key": _PUBLIC_KEY}],
        "broker": {"host": "127.0.0.1", "vhost": network},
    }


def _example(observer: str | None = None) -> Directory:
    """The local federation's networks and links (seajust - casc - ejn, ejn - wacap, ejn -
    gljc, wacap - gljc); ``observer``: that network attends as an observer."""
    networks = [
        _network(n, members, "observer" if n == observer else "member")
        for n, (_name, members) in EXAMPLE_NETWORKS.items()
    ]
    return Directory.model_validate(
        {"version": 1, "issued_at": _AT, "networks": networks, "links": list(EXAMPLE_LINKS)}
    )


def _header(
    country: str,
    *,
    origin: str = "seajust",
    kind: str = "facilitation_request",
    **rules: Any,
) -> Header:
    return Header.model_validate(
        {
            "kind": kind,
            "message_id": str(uuid.uuid4()),
            "origin": {"network": origin},
            "destination": {"country": country},
            "created_at": _AT,
            "key_id": "ed25519:1",
            **rules,
        }
    )


# --- direct_only in routing ----------------------------------------------------------------
def test_direct_only_goes_straight_to_a_linked_target_from_the_origin() -> None:
    assert route(_header("UZ", direct_only=True), (), _example(), (), "seajust") == Forward(
        "casc", "casc"
    )


def test_direct_only_is_refused_at_the_origin_when_only_a_relay_reaches_the_target() -> None:
    """France is EJN's; SEAJust reaches EJN only through CASC."""
    decided = route(_header("FR", direct_only=True), (), _example(), (), "seajust")
    assert decided == Refuse(Reason.DIRECT_ONLY_RELAYED, "direct only: no link to ejn")
    # without the rule, the same message is relayed
    assert route(_header("FR"), (), _example(), (), "seajust") == Forward("casc", "ejn")


def test_a_routing_rule_never_sends_a_direct_only_message_through_a_third_network() -> None:
    rules = (RouteRule(via="casc"),)
    # EJN would send what is for Kenya (GLJC) through CASC: not a direct_only one
    assert route(_header("KE"), (), _example(), rules, "ejn") == Forward("casc", "gljc")
    direct = route(_header("KE", direct_only=True), (), _example(), rules, "ejn")
    assert direct == Forward("gljc", "gljc")


def test_a_relay_refuses_a_direct_only_message() -> None:
    """CASC, handed SEAJust's direct_only message for France, would relay it: refused."""
    decided = route(_header("FR", direct_only=True), ("seajust",), _example(), (), "casc")
    assert isinstance(decided, Refuse)
    assert decided.reason is Reason.DIRECT_ONLY_RELAYED
    assert route(_header("FR"), ("seajust",), _example(), (), "casc") == Forward("ejn", "ejn")


def test_the_destination_takes_a_direct_only_message_only_straight_from_its_origin() -> None:
    direct = _header("FR", direct_only=True, origin="casc")
    assert route(direct, ("casc",), _example(), (), "ejn") == Deliver(("fr-cp-1",))
    relayed = _header("FR", direct_only=True)
    decided = route(relayed, ("seajust", "casc"), _example(), (), "ejn")
    assert decided == Refuse(Reason.DIRECT_ONLY_RELAYED, "direct only, but relayed through casc")


def test_direct_only_within_the_origins_own_network_is_delivered() -> None:
    assert route(_header("KH", direct_only=True), (), _example(), (), "seajust") == Deliver(
        ("kh-cp-1",)
    )


# --- members_only: an observer network handed a message to relay ---------------------------
def test_an_observer_network_refuses_to_relay_what_it_may_not_hold() -> None:
    """No origin routes through an observer network; one that is handed a members_only
    message (or a request) to relay anyway refuses it, and relays a plain notice as any
    network would."""
    directory = _example(observer="ejn")
    secret = _header("NG", kind="notice", members_only=True)
    refused = route(secret, ("casc",), directory, (), "ejn")
    assert refused == Refuse(Reason.NOT_FOR_OBSERVERS, "ejn is an observer: notices only")
    case = route(_header("NG"), ("casc",), directory, (), "ejn")
    assert isinstance(case, Refuse)
    assert case.reason is Reason.NOT_FOR_OBSERVERS
    plenary = route(_header("NG", kind="notice"), ("casc",), directory, (), "ejn")
    assert plenary == Forward("wacap", "wacap")


def test_members_only_for_an_observer_is_refused_at_the_origin_a_relay_and_the_destination() -> (
    None
):
    directory = _example(observer="ejn")
    secret = _header("FR", kind="notice", members_only=True)
    for path, here in (((), "seajust"), (("seajust",), "casc"), (("seajust", "casc"), "ejn")):
        decided = route(secret, path, directory, (), here)
        assert isinstance(decided, Refuse), here
        assert decided.reason is Reason.NOT_FOR_OBSERVERS, here


# --- the network's policy -----------------------------------------------------------------
def test_a_policy_only_adds_rules_and_shortens_the_retention() -> None:
    asked = Handling(retention_days=90)
    assert with_policy(asked) == asked
    assert with_policy(asked, members_only=True, direct_only=True) == Handling(True, True, 90)
    assert with_policy(asked, max_retention_days=30).retention_days == 30
    assert with_policy(asked, max_retention_days=365).retention_days == 90
    assert with_policy(Handling(), max_retention_days=30).retention_days == 30
    assert with_policy(Handling(members_only=True), members_only=False).members_only is True


def test_kept_days_caps_a_period_and_gives_one_to_a_message_without() -> None:
    assert kept_days(None, None) is None
    assert kept_days(10, None) == 10
    assert kept_days(None, 5) == 5
    assert kept_days(10, 5) == 5
    assert kept_days(3, 5) == 3


def test_kept_until_counts_from_the_creation_time() -> None:
    assert kept_until(_header("UZ")) is None
    assert kept_until(_header("UZ", retention_days=7)) == _AT + timedelta(days=7)
    assert kept_until(_header("UZ", retention_days=7), 2) == _AT + timedelta(days=2)
    assert kept_until(_header("UZ"), 2) == _AT + timedelta(days=2)


def test_the_submission_carries_the_rules_the_policy_makes_mandatory() -> None:
    submission = facilitation_request("kh-cp-1", "UZ").model_copy(update={"retention_days": 400})
    policy = Policy(members_only=True, direct_only=True, max_retention_days=365)
    assert handling_of(submission, policy) == Handling(True, True, 365)
    assert handling_of(submission, Policy()) == Handling(None, None, 400)


def test_the_policy_table_is_bounded() -> None:
    with pytest.raises(ValidationError):
        Policy(max_retention_days=0)
    with pytest.raises(ValidationError):
        Policy(max_retention_days=36501)
    with pytest.raises(ValidationError):
        Policy.model_validate({"direct": True})


# --- the header --------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, 36501, -1, True, 1.5, "7"])
def test_a_retention_period_out_of_bounds_or_not_an_integer_is_refused(value: object) -> None:
    with pytest.raises(ValidationError):
        _header("UZ", retention_days=value)


@pytest.mark.parametrize("value", [False, 1, 1.0, "true"])
@pytest.mark.parametrize("rule", ["direct_only", "members_only"])
def test_a_rule_is_the_boolean_true_or_absent(rule: str, value: object) -> None:
    with pytest.raises(ValidationError):
        _header("UZ", **{rule: value})


def test_the_signed_header_names_a_rule_only_when_it_is_set(tmp_path: Path) -> None:
    fed = build(tmp_path / "federation", prefix="unit")
    key = load_signing_key(fed.root / "seajust" / "seajust.1.key")
    notice = Notice(topic="plenary", title="Plenary")
    plain = sign_message(
        _header("UZ", kind="notice").model_copy(update={"key_id": key.key_id}), notice, key
    )
    ruled = sign_message(
        _header("UZ", kind="notice", direct_only=True, retention_days=30).model_copy(
            update={"key_id": key.key_id}
        ),
        notice,
        key,
    )
    wire_plain = json.loads(b64u_decode(json.loads(plain.to_bytes())["header"]))
    wire_ruled = json.loads(b64u_decode(json.loads(ruled.to_bytes())["header"]))
    assert not {"direct_only", "retention_days", "members_only"} & set(wire_plain)
    assert (wire_ruled["direct_only"], wire_ruled["retention_days"]) == (True, 30)


# --- what mlanet send checks before it submits --------------------------------------------
def _config(tmp_path: Path, network: str, policy: str = "") -> NodeConfig:
    fed = build(tmp_path / "federation", prefix="unit")
    path = fed.config_path(network)
    if policy:
        path.write_text(path.read_text(encoding="utf-8") + policy, encoding="utf-8")
    return load_config(path)


def test_send_refuses_a_direct_only_message_the_origin_has_no_link_for(tmp_path: Path) -> None:
    config = _config(tmp_path, "seajust")
    directory = _example()
    far = facilitation_request("kh-cp-1", "FR").model_copy(update={"direct_only": True})
    with pytest.raises(RefusedMessage) as refused:
        check_route(config, far, directory=directory)
    assert refused.value.reason is Reason.DIRECT_ONLY_RELAYED
    assert refused.value.detail == "direct only: no link to ejn (destination FR)"
    near = facilitation_request("kh-cp-1", "UZ").model_copy(update={"direct_only": True})
    check_route(config, near, directory=directory)  # CASC is linked: it goes


def test_send_refuses_what_the_policy_makes_direct_only(tmp_path: Path) -> None:
    config = _config(tmp_path, "seajust", "\n[policy]\ndirect_only = true\n")
    with pytest.raises(RefusedMessage) as refused:
        check_route(config, facilitation_request("kh-cp-1", "FR"), directory=_example())
    assert refused.value.reason is Reason.DIRECT_ONLY_RELAYED


# --- the archive's purge ----------------------------------------------------------------
_DAY = 86400.0


def _archive(tmp_path: Path) -> Store:
    folder = tmp_path / "credentials"
    folder.mkdir(mode=0o700)
    return Store(folder / "inbox.sqlite3")


def _add(store: Store, message_id: str, content: bytes, **times: float | None) -> None:
    store.inbox_add(
        "uz-cp-1", "seajust", message_id, f"hash-{message_id}", "facilitation_request", content,
        **times,
    )  # fmt: skip


def test_the_content_is_purged_when_its_senders_period_has_passed(tmp_path: Path) -> None:
    store = _archive(tmp_path)
    try:
        _add(store, "m-1", b"CASE-ONE " * 50, created_at=0.0, retain_until=2 * _DAY)
        _add(store, "m-2", b"CASE-TWO " * 50, created_at=0.0, retain_until=None)
        assert store.inbox_purge("uz-cp-1", now=_DAY) == []
        (purged,) = store.inbox_purge("uz-cp-1", now=2 * _DAY)
        assert (purged.origin, purged.message_id, purged.kind) == (
            "seajust",
            "m-1",
            "facilitation_request",
        )
        assert (purged.content_sha256, purged.created_at, purged.purged_at) == (
            "hash-m-1",
            0.0,
            2 * _DAY,
        )
        assert [row[1] for row in store.inbox("uz-cp-1")] == ["m-2"]
        assert store.inbox_purged("uz-cp-1") == [purged]
        assert store.inbox_purge("uz-cp-1", now=10 * _DAY) == []  # once; m-2 has no period
        files = [path.read_bytes() for path in (tmp_path / "credentials").iterdir()]
        assert not any(b"CASE-ONE" in data for data in files)  # no copy left in the files
        assert any(b"CASE-TWO" in data for data in files)
    finally:
        store.close()


def test_the_readers_cap_purges_a_message_without_a_period_or_with_a_longer_one(
    tmp_path: Path,
) -> None:
    store = _archive(tmp_path)
    try:
        _add(store, "long", b"x", created_at=0.0, retain_until=100 * _DAY)
        _add(store, "none", b"y", created_at=0.0, retain_until=None)
        _add(store, "later", b"z", created_at=5 * _DAY, retain_until=None)
        purged = store.inbox_purge("uz-cp-1", now=3 * _DAY, max_days=3)
        assert sorted(p.message_id for p in purged) == ["long", "none"]
        assert [row[1] for row in store.inbox("uz-cp-1")] == ["later"]
    finally:
        store.close()


def test_a_message_archived_before_retention_is_capped_from_its_arrival(tmp_path: Path) -> None:
    store = _archive(tmp_path)
    try:
        _add(store, "old", b"x")  # no created_at: an archive of an earlier version
        (row,) = store.inbox("uz-cp-1")
        arrived = row[4]
        assert store.inbox_purge("uz-cp-1", now=arrived + _DAY - 1, max_days=1) == []
        (purged,) = store.inbox_purge("uz-cp-1", now=arrived + _DAY, max_days=1)
        assert (purged.message_id, purged.created_at) == ("old", None)
    finally:
        store.close()


def test_another_contact_points_messages_are_not_purged(tmp_path: Path) -> None:
    store = _archive(tmp_path)
    try:
        store.inbox_add("kz-cp-1", "seajust", "m", "h", "notice", b"x", retain_until=0.0)
        assert store.inbox_purge("uz-cp-1", now=_DAY, max_days=1) == []
        assert len(list(store.inbox("kz-cp-1"))) == 1
    finally:
        store.close()


def test_a_submission_names_its_rules_only_when_set() -> None:
    plain = facilitation_request("kh-cp-1", "UZ")
    assert not {"direct_only", "retention_days"} & set(
        plain.model_dump(mode="json", exclude_none=True)
    )
    with pytest.raises(ValidationError):
        Submission.model_validate({**plain.model_dump(), "retention_days": 0})


# --- quarantined content ------------------------------------------------------------------
_T0 = 1_800_000_000.0
_WIDE = Bound(1_000_000, 2**40)


def _envelope(tmp_path: Path, marker: str, **rules: Any) -> bytes:
    """A signed envelope (as a node would quarantine it) whose payload carries ``marker``."""
    fed = build(tmp_path / f"federation-{marker}", prefix="unit")
    key = load_signing_key(fed.root / "seajust" / "seajust.1.key")
    header = _header("UZ", kind="notice", **rules).model_copy(
        update={"key_id": key.key_id, "created_at": datetime.fromtimestamp(_T0, UTC)}
    )
    return sign_message(header, Notice(topic="plenary", title=marker), key).to_bytes()


def _refused(n: int, body: bytes, at: float = _T0) -> Entry:
    return Entry(
        id=f"00000000-0000-4000-8000-{n:012d}",
        reason="no_route",
        detail="no contact point",
        via="mlanet.inbox.from.seajust",
        at=at,
        size=len(body),
        body_sha256=hashlib.sha256(body).hexdigest(),
        returns=0,
        claim=Claim(message_id=f"00000000-0000-4000-8000-{n:012d}", origin="seajust"),
    )


def test_purge_after_reads_the_claimed_period(tmp_path: Path) -> None:
    assert purge_after(_envelope(tmp_path, "a", retention_days=2), 0.0) == _T0 + 2 * _DAY
    assert purge_after(_envelope(tmp_path, "b"), 0.0) is None
    assert purge_after(b"not json", 5.0) is None
    submission = facilitation_request("kh-cp-1", "UZ").model_copy(update={"retention_days": 3})
    raw = json.dumps(submission.model_dump(mode="json", exclude_none=True)).encode()
    assert purge_after(raw, 5.0) == 5.0 + 3 * _DAY  # no created_at: from the refusal


def test_a_quarantined_body_is_purged_when_its_period_has_passed(tmp_path: Path) -> None:
    short = _envelope(tmp_path, "QUARANTINED-SHORT", retention_days=1)
    plain = _envelope(tmp_path, "QUARANTINED-PLAIN")
    store = QuarantineStore(tmp_path / QUARANTINE_FILE)
    try:
        store.add(_refused(1, short), short, _WIDE, now=_T0)
        store.add(_refused(2, plain), plain, _WIDE, now=_T0)
        store.commit()
        assert store.due_bodies(_T0 + _DAY - 1) == []
        (due,) = store.due_bodies(_T0 + _DAY)
        assert due.id.endswith("1")
        assert store.purge_bodies([due.id]) == 1
        entry = store.get(due.id)
        assert entry is not None
        assert (entry.body, entry.body_kept, entry.reason) == (None, False, "no_route")
        # purged, not over the peer's bound: no quarantine_bound alert for it
        assert store.by_peer(0.0)["seajust"].without_body == 0
        assert store.due_bodies(_T0 + 100 * _DAY) == []  # once; the other claims no period
        files = b"".join(p.read_bytes() for p in tmp_path.glob(QUARANTINE_FILE + "*"))
        payload = json.loads(short)["payload"].encode()
        assert payload not in files
        assert json.loads(plain)["payload"].encode() in files
        # the node's cap purges the other one, counted from its refusal
        (capped,) = store.due_bodies(_T0 + 2 * _DAY, max_days=2)
        assert capped.id.endswith("2")
    finally:
        store.close()


def test_a_body_an_operator_command_holds_is_not_purged(tmp_path: Path) -> None:
    short = _envelope(tmp_path, "HELD", retention_days=1)
    store = QuarantineStore(tmp_path / QUARANTINE_FILE)
    try:
        store.add(_refused(1, short), short, _WIDE, now=_T0)
        store.commit()
        (due,) = store.due_bodies(_T0 + _DAY)
        store.take(due.id, "command-1", _T0 + _DAY)
        assert store.due_bodies(_T0 + _DAY) == []
        assert store.purge_bodies([due.id]) == 0
        store.let_go("command-1")
        assert store.purge_bodies([due.id]) == 1
    finally:
        store.close()
