"""docs/PROTOCOL.md and the code cannot drift apart, and the document is enough to implement.

Every worked example is extracted from the document (fenced blocks after an
``<!-- mlanet-example: NAME -->`` marker) and checked three ways: it equals the frozen vector
(``tests/vectors/golden.json``, ``tests/vectors/protocol.json``), it holds for the independent
implementation written from the document alone (``tests/independent.py``: nothing from
``broker``, ``nodes`` or ``schemas``), and it holds for the reference. Other tests compare the
document's tables (reason codes, limits, AMQP names) with the reference's constants, and let the
independent implementation and the reference route random directories side by side.
"""

from __future__ import annotations

import ast
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests import independent
from tests.independent import Refused

ROOT = Path(__file__).parents[2]
DOC = (ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
GOLDEN = json.loads((ROOT / "tests" / "vectors" / "golden.json").read_text(encoding="ascii"))
VECTORS = json.loads((ROOT / "tests" / "vectors" / "protocol.json").read_text(encoding="ascii"))
_BLOCK = re.compile(r"<!-- mlanet-example: (\w+) -->\n```\w*\n(.*?)\n```\n", re.DOTALL)


def _examples() -> dict[str, str]:
    blocks: dict[str, str] = {}
    for name, text in _BLOCK.findall(DOC):
        assert name not in blocks, f"two example blocks named {name}"
        blocks[name] = text
    return blocks


EXAMPLES = _examples()


def _json_lines(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in EXAMPLES[name].splitlines()]


def _keys(*blocks: str) -> independent.Keys:
    keys: independent.Keys = {}
    for block in blocks:
        for network, entry in json.loads(EXAMPLES[block]).items():
            keys[(network, entry["key_id"])] = entry["public_key"]
    return keys


def _trust(keys: independent.Keys) -> Any:
    import broker

    trust = broker.TrustStore()
    for (network, key_id), public in keys.items():
        trust.add(network, key_id, public)
    return trust


def _section(number: str) -> str:
    """The text of section ``number`` (e.g. ``8.1``) up to the next heading."""
    start = re.search(rf"^#+ {re.escape(number)}\.? ", DOC, re.MULTILINE)
    assert start is not None, number
    end = re.search(r"^#+ \d", DOC[start.end() :], re.MULTILINE)
    return DOC[start.start() : start.end() + (end.start() if end else len(DOC))]


def test_the_document_has_every_example_block() -> None:
    assert set(EXAMPLES) == {
        "keys",
        "wire",
        "header_bytes",
        "origin_link_digest",
        "record_bytes",
        "payload_bytes",
        "content_sha256",
        "receipt_key",
        "receipt_wire",
        "receipt_header",
        "receipt_payload",
        "header_sizes",
        "header_numbers",
        "routing",
        "amqp",
        "quarantine_headers",
        "directory_key",
        "directory",
        "directory_signature",
        "key_file",
        "pub_file",
        "password_file",
        "password_hash",
    }


def test_the_independent_implementation_uses_nothing_of_the_reference() -> None:
    """``tests/independent.py`` is written from the document: it imports no mlanet module."""
    tree = ast.parse(Path(independent.__file__).read_text(encoding="utf-8"))
    imported = {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    } | {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert not imported & {"broker", "nodes", "schemas", "tests"}, imported


# --- section 13: the golden message ----------------------------------------------------------


def test_the_example_verifies_by_the_documented_steps_alone() -> None:
    learned = independent.open_envelope(EXAMPLES["wire"].encode("ascii"), _keys("keys"))
    assert learned.header_bytes == EXAMPLES["header_bytes"].encode("ascii")
    assert learned.payload_bytes == EXAMPLES["payload_bytes"].encode("ascii")
    assert learned.record_bytes == [EXAMPLES["record_bytes"].encode("ascii")]
    assert learned.path == ["seajust", "casc"]
    assert learned.origin_link_digest == EXAMPLES["origin_link_digest"]
    assert learned.content_sha256 == EXAMPLES["content_sha256"]


def _swap(text: str, at: int) -> str:
    """``text`` with one base64url character replaced by another (still valid base64url)."""
    return text[:at] + ("B" if text[at] == "A" else "A") + text[at + 1 :]


def _other_hop_signature(wire: dict[str, Any]) -> dict[str, Any]:
    return {**wire, "hops": [{**wire["hops"][0], "signature": wire["signature"]}]}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda w: {**w, "payload": _swap(w["payload"], 20)}, "bad_signature"),
        (lambda w: {**w, "signature": _swap(w["signature"], 5)}, "bad_signature"),
        (_other_hop_signature, "bad_hop_signature"),
        (lambda w: {**w, "mlanet": 2}, "unsupported_version"),
        (lambda w: {**w, "extra": 1}, "bad_envelope"),
        (lambda w: {**w, "header": w["header"] + "="}, "bad_base64"),
    ],
    ids=["payload", "signature", "hop-signature", "version", "extra-member", "padding"],
)
def test_the_independent_verifier_refuses_tampered_copies(change: Any, reason: str) -> None:
    """The reimplementation is not vacuous: it refuses what the reference refuses, for the same
    reason."""
    import broker

    wire = json.dumps(change(json.loads(EXAMPLES["wire"]))).encode()
    with pytest.raises(Refused) as refused:
        independent.open_envelope(wire, _keys("keys"))
    assert refused.value.args[0] == reason
    with pytest.raises(broker.RefusedMessage) as reference:
        broker.open_envelope(wire, _trust(_keys("keys")))
    assert reference.value.reason.value == reason


def test_the_example_opens_with_the_reference_implementation() -> None:
    import broker

    message = broker.open_envelope(EXAMPLES["wire"].encode("ascii"), _trust(_keys("keys")))
    learned = independent.open_envelope(EXAMPLES["wire"].encode("ascii"), _keys("keys"))
    assert message.signing_input == learned.origin_input
    assert message.content_sha256 == EXAMPLES["content_sha256"]
    assert message.path == ("seajust", "casc")
    assert message.hops[0].signing_input == b"mlanet-v1:hop:" + message.hops[0].record_b64.encode()
    assert message.hops[0].record.prev == EXAMPLES["origin_link_digest"]
    payload = broker.decode_payload(message)
    assert broker.canonical_bytes(payload.model_dump(mode="json", exclude_none=True)) == (
        EXAMPLES["payload_bytes"].encode("ascii")
    )


def test_the_example_is_the_golden_vector() -> None:
    assert EXAMPLES["wire"] == GOLDEN["wire"]
    assert EXAMPLES["header_bytes"] == GOLDEN["header_bytes"]
    assert EXAMPLES["payload_bytes"] == GOLDEN["payload_bytes"]
    assert EXAMPLES["record_bytes"] == GOLDEN["hop"]["record_bytes"]
    assert EXAMPLES["content_sha256"] == GOLDEN["content_sha256"]
    assert _keys("keys") == {
        (network, entry["key_id"]): entry["public_key"] for network, entry in GOLDEN["keys"].items()
    }
    assert f"one line, {len(GOLDEN['wire'])} bytes" in DOC


# --- section 8.1: receipts ---------------------------------------------------------------------


def _golden() -> independent.Opened:
    return independent.open_envelope(EXAMPLES["wire"].encode("ascii"), _keys("keys"))


def _receipt() -> independent.Opened:
    return independent.open_envelope(EXAMPLES["receipt_wire"].encode("ascii"), _keys("receipt_key"))


def test_the_receipt_example_is_the_vector() -> None:
    assert EXAMPLES["receipt_wire"] == VECTORS["receipt"]["wire"]
    assert (
        json.loads(EXAMPLES["receipt_key"])["ejn"]["public_key"]
        == (VECTORS["keys"]["ejn"]["public_key"])
    )


def test_the_receipt_example_is_built_and_checked_as_section_8_1_says() -> None:
    """EJN's receipt: its header and payload as documented, and the origin's three checks mark
    the golden message delivered."""
    receipt, sent = _receipt(), _golden()
    assert receipt.header_bytes == EXAMPLES["receipt_header"].encode("ascii")
    assert receipt.payload_bytes == EXAMPLES["receipt_payload"].encode("ascii")
    header = receipt.header
    assert header["kind"] == "receipt"
    assert header["origin"] == {"network": "ejn"}
    assert header["destination"] == sent.header["origin"]
    assert header["in_reply_to"] == sent.header["message_id"]
    assert receipt.payload["receipt_for"] == sent.header["message_id"]
    assert receipt.payload["received_by"] == "node"
    target, _ = independent.next_hop(sent.header, [], _directory(), "seajust", _at())
    assert (target, sent.header["destination"]["network"]) == ("forward", "ejn")
    assert independent.receipt_counts(receipt, sent, target="ejn")


def test_the_receipt_example_opens_with_the_reference_implementation() -> None:
    import broker
    from schemas import Receipt

    message = broker.open_envelope(
        EXAMPLES["receipt_wire"].encode("ascii"), _trust(_keys("receipt_key"))
    )
    payload = broker.decode_payload(message)
    assert isinstance(payload, Receipt)
    assert payload.receipt_for == message.header.in_reply_to == GOLDEN["header"]["message_id"]
    assert payload.content_sha256 == GOLDEN["content_sha256"]


def test_the_documented_receipt_checks_refuse_a_relay_and_other_content() -> None:
    """A receipt signed by the relay, or for other content, is ``unauthorised``; one about
    another message changes nothing (section 8.1, checks 1 to 3)."""
    sent = _golden()
    at = datetime(2026, 3, 2, 9, 31, tzinfo=UTC)
    keys = {**_keys("keys"), **_keys("receipt_key")}
    casc_seed = bytes.fromhex(VECTORS["keys"]["casc"]["seed_hex"])
    ejn_seed = bytes.fromhex(VECTORS["keys"]["ejn"]["seed_hex"])
    by_relay = independent.receipt_for(
        sent, network="casc", key_id="ed25519:1", seed=casc_seed, delivered_to=None, at=at
    )
    other_content = independent.receipt_for(
        sent,
        network="ejn",
        key_id="ed25519:1",
        seed=ejn_seed,
        delivered_to="de-bfj-1",
        at=at,
        content_sha256=GOLDEN["origin_link_digest"],
    )
    for wire in (by_relay, other_content):
        with pytest.raises(Refused, match="unauthorised"):
            independent.receipt_counts(independent.open_envelope(wire, keys), sent, target="ejn")
    fine = independent.receipt_for(
        sent, network="ejn", key_id="ed25519:1", seed=ejn_seed, delivered_to="de-bfj-1", at=at
    )
    assert independent.receipt_counts(independent.open_envelope(fine, keys), sent, target="ejn")
    assert not independent.receipt_counts(_golden(), sent, target="ejn")  # not a receipt


def test_the_documented_receipted_kinds_are_the_reference_ones() -> None:
    from nodes.node import RECEIPTED

    which = _section("8.1").split("**When.**")[0]
    before_never = which.split("never get one")[0]
    listed = set(re.findall(r"`([a-z_]+)`", before_never.split("contact points:")[1]))
    never = set(re.findall(r"`([a-z_]+)`", before_never.split("contact points:")[1].split(".")[1]))
    assert listed - never == set(RECEIPTED) == set(independent.RECEIPTED)
    assert never == {"receipt", "notice", "directory_update"}


# --- section 9.1: edge cases of the header -----------------------------------------------------


def _seajust() -> tuple[independent.Keys, bytes]:
    keys = {("seajust", "ed25519:1"): VECTORS["keys"]["seajust"]["public_key"]}
    return keys, bytes.fromhex(VECTORS["keys"]["seajust"]["seed_hex"])


def _envelope_with_header(header_text: str, seed: bytes) -> bytes:
    """An envelope whose header is ``header_text`` (B64U already), signed over ``{}``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    payload = independent.b64u_encode(b"{}")
    signing_input = f"mlanet-v1:origin:{header_text}.{payload}".encode("ascii")
    signature = Ed25519PrivateKey.from_private_bytes(seed).sign(signing_input)
    frame = {
        "header": header_text,
        "hops": [],
        "mlanet": 1,
        "payload": payload,
        "signature": independent.b64u_encode(signature),
    }
    return json.dumps(frame).encode("ascii")


def _both_verdicts(wire: bytes, keys: independent.Keys) -> tuple[str, str]:
    import broker

    try:
        independent.open_envelope(wire, keys, payload=False)
        mine = "accepted"
    except Refused as refused:
        mine = refused.args[0]
    try:
        broker.open_envelope(wire, _trust(keys))
        theirs = "accepted"
    except broker.RefusedMessage as refused:
        theirs = refused.reason.value
    return mine, theirs


@pytest.mark.parametrize("line", _json_lines("header_sizes"), ids=lambda line: str(line))
def test_a_header_text_around_the_size_cap_gets_the_documented_reason(line: dict[str, Any]) -> None:
    keys, seed = _seajust()
    chars = line["characters"]
    filler = "a" * (chars * 3 // 4 - len('{"x":""}'))
    text = independent.b64u_encode(('{"x":"' + filler + '"}').encode("ascii"))
    text = (text + "A" * chars)[:chars]
    assert len(text) == chars
    mine, theirs = _both_verdicts(_envelope_with_header(text, seed), keys)
    assert mine == theirs == line["reason"]


@pytest.mark.parametrize("line", _json_lines("header_numbers"), ids=lambda line: line["literal"])
def test_a_number_in_the_header_gets_the_documented_reason(line: dict[str, Any]) -> None:
    keys, seed = _seajust()
    default = "6" if line["member"] == "hop_limit" else "1"
    header = EXAMPLES["header_bytes"].replace(
        f'"{line["member"]}":{default}', f'"{line["member"]}":{line["literal"]}'
    )
    assert (header != EXAMPLES["header_bytes"]) == (line["literal"] != default)
    wire = _envelope_with_header(independent.b64u_encode(header.encode("ascii")), seed)
    mine, theirs = _both_verdicts(wire, keys)
    assert mine == theirs == line["reason"]


def test_the_edge_examples_are_the_vectors() -> None:
    assert _json_lines("header_sizes") == VECTORS["edges"]["header_sizes"]
    assert _json_lines("header_numbers") == VECTORS["edges"]["header_numbers"]


def test_a_fraction_anywhere_in_a_hop_record_is_not_canonical() -> None:
    """Section 2: also in a hop record, and in a member no schema allows."""
    import broker
    from tests.unit.wirekit import sign_hop, signed

    record = signed(hops=1).hops[0].record.model_dump(mode="json")
    raw = independent.canonical(record).replace(b'"at"', b'"x":1.5,"at"', 1)
    message = signed()
    wire = {**message.to_wire(), "hops": [sign_hop(raw)]}
    with pytest.raises(broker.RefusedMessage) as refused:
        broker.open_envelope(json.dumps(wire).encode(), _trust(_all_wirekit_keys()))
    assert refused.value.reason.value == "non_canonical_header"
    with pytest.raises(Refused, match="non_canonical_header"):
        independent.signed_part(wire["hops"][0]["record"])


def _all_wirekit_keys() -> independent.Keys:
    from tests.unit.wirekit import CASC, SEAJUST

    return {(k.network, k.key_id): k.public_b64() for k in (SEAJUST, CASC)}


# --- sections 10.1 to 10.3: routing ------------------------------------------------------------


def _directory() -> dict[str, Any]:
    value: dict[str, Any] = json.loads(EXAMPLES["directory"])
    return value


def _at() -> datetime:
    return datetime.fromisoformat(VECTORS["routing_at"])


def _case_header(case: dict[str, Any]) -> dict[str, Any]:
    header = {
        "kind": case["kind"],
        "destination": case["destination"],
        "origin": {"network": case["path"][0] if case["path"] else case["at"]},
    }
    for member in ("hop_limit", "urgency", "members_only"):
        if member in case:
            header[member] = case[member]
    return header


def _outcome(case: dict[str, Any]) -> tuple[str, list[str]]:
    for what in ("forward", "deliver", "refuse"):
        if what in case:
            value = case[what]
            return what, value if isinstance(value, list) else [value]
    raise AssertionError(case)


ROUTING = _json_lines("routing")


def test_the_routing_example_is_the_vector() -> None:
    assert VECTORS["routing"] == ROUTING
    assert _directory() == VECTORS["directory"]
    assert f"`{VECTORS['routing_at']}`" in _section("10.3")


@pytest.mark.parametrize("case", ROUTING, ids=lambda case: json.dumps(case, sort_keys=True))
def test_the_routing_example_follows_the_documented_rules(case: dict[str, Any]) -> None:
    decided = independent.next_hop(
        _case_header(case),
        case["path"],
        _directory(),
        case["at"],
        _at(),
        case.get("rules", ()),
    )
    assert decided == _outcome(case)


@pytest.mark.parametrize("case", ROUTING, ids=lambda case: json.dumps(case, sort_keys=True))
def test_the_routing_example_is_what_the_reference_decides(case: dict[str, Any]) -> None:
    assert _reference_route(_case_header(case), case, _directory()) == _outcome(case)


def _reference_route(
    header: dict[str, Any], case: dict[str, Any], directory: dict[str, Any]
) -> tuple[str, list[str]]:
    from broker.routing import Deliver, Forward, RouteRule, route
    from schemas import Header
    from schemas.directory import Directory

    full = Header.model_validate(
        {
            "message_id": "00000000-0000-4000-8000-000000000000",
            "created_at": VECTORS["routing_at"],
            "key_id": "ed25519:1",
            **header,
        },
        strict=False,
    )
    view = Directory.model_validate(directory, strict=False).as_of(_at())
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
    at = _at()
    ids = draw(st.lists(st.sampled_from(_IDS), min_size=3, max_size=7, unique=True))
    times = st.sampled_from([None, None, None, at - timedelta(days=1), at, at + timedelta(days=1)])
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
    """Sections 10.1 and 10.2 as written against ``broker.routing`` on random directories,
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
    mine = independent.next_hop(header, path, directory, here, _at(), rules)
    event(mine[0] if mine[0] != "refuse" else mine[1][0])
    assert mine == _reference_route(header, case, directory)


# --- section 12: the AMQP layer ------------------------------------------------------------------


def test_the_amqp_section_uses_the_transport_names() -> None:
    from broker import transport

    section = DOC[DOC.index("## 12. The AMQP layer") : DOC.index("## 13.")]
    assert f"`content_type` = `{transport.CONTENT_TYPE}`" in section
    for name in (
        transport.INBOX,
        transport.peer_inbox("<peer>"),
        transport.SUBMIT,
        transport.QUARANTINE,
        transport.UNROUTABLE,
        transport.inbox_exchange("<peer>"),
        transport.out_queue("<peer>"),
        transport.deliver_queue("<contact_point>"),
    ):
        assert f"`{name}`" in section, name


def test_the_amqp_declarations_are_the_references() -> None:
    """The policies and the link's shovel as the reference defines them (the live declarations
    are compared on the real broker in tests/integration/test_protocol_live.py)."""
    from broker.management import ShovelSpec
    from nodes.config import Limits, PeerLimits
    from nodes.directory_runtime import DIRECTORY_QUEUE
    from nodes.fairness import INBOX_POLICY_PRIORITY, inbox_policy
    from nodes.reconcile import link_name

    declared = json.loads(EXAMPLES["amqp"])
    assert {q["name"] for q in declared["queues"]} >= {DIRECTORY_QUEUE}
    limits = Limits()
    poison = {
        "x-dead-letter-exchange": "mlanet.unroutable",
        "x-delivery-limit": limits.delivery_limit,
        "x-queue-type": "quorum",
    }
    for queue in declared["queues"]:
        quorum_only = queue["name"] in ("mlanet.quarantine", "mlanet.out.<peer>")
        quorum_only |= queue["name"].startswith("mlanet.deliver.")
        assert queue["arguments"] == ({"x-queue-type": "quorum"} if quorum_only else poison)
    name, pattern, definition = inbox_policy("<peer>", PeerLimits())
    inbox = declared["policies"][0]
    assert (inbox["name"], inbox["pattern"]) == (name, pattern)
    assert (inbox["definition"], inbox["priority"]) == (definition, INBOX_POLICY_PRIORITY)
    deliver = declared["policies"][1]
    assert deliver["definition"] == {
        "max-length": limits.deliver_queue_messages,
        "max-length-bytes": limits.deliver_queue_bytes,
        "overflow": "reject-publish",
    }
    spec = ShovelSpec(
        name=link_name("<peer>"),
        vhost="v",
        src_uri="amqp://",
        src_queue="mlanet.out.<peer>",
        dest_uri="amqp://",
        dest_exchange="mlanet.inbox.from.<network>",
    )
    value = {k: v for k, v in spec.definition()["value"].items() if not k.endswith("-uri")}
    assert declared["shovels"] == [{"name": spec.name, "value": value}]


def test_the_quarantine_headers_example_is_read_as_documented() -> None:
    from nodes.quarantine import entry_of

    example = json.loads(EXAMPLES["quarantine_headers"])
    entry = entry_of(b"refused bytes", "", example["message_id"], example["headers"])
    headers = example["headers"]
    assert (entry.id, entry.reason, entry.detail, entry.via) == (
        example["message_id"],
        headers["x-mlanet-reason"],
        headers["x-mlanet-detail"],
        headers["x-mlanet-via"],
    )
    assert entry.at == datetime.fromisoformat(headers["x-mlanet-at"]).timestamp()
    documented = set(re.findall(r"`(x-mlanet-[a-z0-9-]+)`", _section("12.2")))
    assert documented == {
        "x-mlanet-reason",
        "x-mlanet-detail",
        "x-mlanet-via",
        "x-mlanet-at",
        "x-mlanet-size",
        "x-mlanet-truncated",
        "x-mlanet-sha256",
    }


# --- section 14: the directory ----------------------------------------------------------------


def _signed_directory() -> bytes:
    frame = json.loads(EXAMPLES["directory_signature"])
    frame["document"] = independent.b64u_encode(independent.canonical(_directory()))
    return json.dumps(frame).encode("ascii")


def test_the_directory_example_is_the_vector() -> None:
    frame = json.loads(_signed_directory())
    assert frame == VECTORS["signed_directory"]
    assert f"{len(frame['document'])} characters" in _section("14.1")


def test_the_directory_example_opens_by_the_documented_steps() -> None:
    """The coordinator's signature over the document, then the document valid under
    ``schemas/json/directory.json`` (and the frame under ``signed_directory.json``)."""
    opened = independent.open_directory(_signed_directory(), _keys("directory_key"))
    assert opened == _directory()
    tampered = json.loads(_signed_directory())
    tampered["document"] = independent.b64u_encode(
        independent.canonical({**_directory(), "version": 8})
    )
    with pytest.raises(Refused, match="bad_signature"):
        independent.open_directory(json.dumps(tampered).encode(), _keys("directory_key"))


def test_the_directory_example_opens_with_the_reference_implementation() -> None:
    from broker.directory_signing import open_directory
    from schemas.directory import Directory

    verified = open_directory(_signed_directory(), _trust(_keys("directory_key")), now=_at())
    assert verified.directory == Directory.model_validate(_directory(), strict=False)


def test_directories_the_reference_writes_are_valid_under_the_json_schema(tmp_path: Path) -> None:
    """A local federation's directory and the next versions the coordinator builds from it
    (a join, a membership change, a handover, a revocation) validate against the JSON Schema."""
    from broker import load_signing_key
    from broker.directory_signing import sign_directory
    from nodes import coordinator
    from nodes.federation import build
    from schemas.directory import Directory

    fed = build(tmp_path / "federation", prefix="schema")
    key = load_signing_key(fed.coordinator_key())
    trusted = {(key.network, key.key_id): key.public_b64()}
    first = independent.open_directory((fed.root / "directory.json").read_bytes(), trusted)
    directory = Directory.model_validate(first, strict=False)
    now = datetime.now(UTC)
    seajust = directory.network("seajust")
    assert seajust is not None
    changes = [
        coordinator.change_membership(
            directory, "seajust", add_observers=["JP"], contact_points=[("jp-moj-1", "Ministry")]
        ),
        coordinator.hand_over(directory, "seajust", "kh-cp-1", "kh-cp-2", now),
        coordinator.revoke_key(directory, "casc", "ed25519:1", now),
    ]
    for networks in changes:
        following = coordinator.next_version(directory, now, timedelta(days=30), networks=networks)
        opened = independent.open_directory(sign_directory(following, key).to_bytes(), trusted)
        assert opened["version"] == 2


@pytest.mark.parametrize(
    "change",
    [
        lambda d: {**d, "networks": [*d["networks"], d["networks"][0]]},
        lambda d: {**d, "links": [*d["links"], ["seajust", "atlantis"]]},
        lambda d: {**d, "valid_until": d["issued_at"]},
        lambda d: _with_contact_point(d, {"id": "de-bfj-9", "country": "KH"}),
        lambda d: _with_contact_point(d, {"id": "kh-x-1", "country": "KH", "successor": "kh-x-1"}),
    ],
    ids=["network-twice", "unknown-link", "valid-until", "prefix", "own-successor"],
)
def test_rules_outside_the_json_schema_are_refused_by_the_reference(change: Any) -> None:
    """Section 14: the cross-field rules JSON Schema cannot state; the schema accepts these
    directories, the reference refuses them."""
    from pydantic import ValidationError

    from schemas.directory import Directory

    broken = change(_directory())
    assert independent.schema("directory").is_valid(broken)
    with pytest.raises(ValidationError):
        Directory.model_validate(broken, strict=False)


def _with_contact_point(directory: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    networks = [dict(n) for n in directory["networks"]]
    networks[0]["contact_points"] = [*networks[0]["contact_points"], point]
    return {**directory, "networks": networks}


def test_the_hand_over_deadline_is_the_documented_default() -> None:
    from nodes.coordinator import HAND_OVER_SECONDS

    assert f"(`--timeout`, {HAND_OVER_SECONDS:g} seconds by default)" in " ".join(
        _section("14.6").split()
    )


# --- section 15: key and password files ----------------------------------------------------------


def test_the_key_files_are_the_vectors_and_derive_the_documented_key() -> None:
    files = VECTORS["files"]
    assert EXAMPLES["key_file"] == files["key_file"]
    assert EXAMPLES["pub_file"] + "\n" == files["pub_file"]
    network, key_id, seed = independent.private_key_file(EXAMPLES["key_file"])
    public = json.loads(EXAMPLES["pub_file"])
    assert (network, key_id) == (public["network"], public["key_id"]) == ("seajust", "ed25519:1")
    assert independent.public_key_of(seed) == public["public_key"]
    assert public["public_key"] == json.loads(EXAMPLES["keys"])["seajust"]["public_key"]


def test_the_key_files_load_with_the_reference_and_an_open_one_is_refused(tmp_path: Path) -> None:
    from broker import load_signing_key
    from broker.errors import KeyRefused
    from broker.keys import load_public_key_file

    private, public = tmp_path / "seajust.1.key", tmp_path / "seajust.1.pub"
    private.write_text(EXAMPLES["key_file"], encoding="ascii")
    private.chmod(0o600)
    public.write_text(EXAMPLES["pub_file"] + "\n", encoding="ascii")
    key = load_signing_key(private)
    assert key.public_b64() == load_public_key_file(public).public_key
    private.chmod(0o640)
    with pytest.raises(KeyRefused) as refused:
        load_signing_key(private)
    assert refused.value.reason.value == "malformed_key"


def test_the_password_file_and_its_hash_are_as_documented() -> None:
    from broker.peer_access import rabbit_password_hash

    files = VECTORS["files"]
    assert EXAMPLES["password_file"] + "\n" == files["password_file"]
    password = independent.password_of(files["password_file"])
    salt = bytes.fromhex(files["password_salt_hex"])
    assert len(password) == 32
    assert independent.password_hash(password, salt) == EXAMPLES["password_hash"]
    assert rabbit_password_hash(password, salt) == EXAMPLES["password_hash"]
    seajust = next(n for n in _directory()["networks"] if n["id"] == "seajust")
    assert seajust["link_user"]["password_hash"] == EXAMPLES["password_hash"]


# --- the document's tables against the reference ------------------------------------------------


def _table_rows(heading: str) -> list[list[str]]:
    """The rows of the first table after ``heading``, as lists of cell texts."""
    section = DOC[DOC.index(heading) :]
    rows = []
    for line in section.splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
        elif rows:
            break
    return rows[2:]  # without the heading row and the separator


def test_the_reason_code_table_lists_exactly_the_reason_codes() -> None:
    from broker import Reason

    listed = [row[0].strip("`") for row in _table_rows("## 11. Reason codes")]
    assert len(listed) == len(set(listed))
    assert set(listed) == {reason.value for reason in Reason}, (
        "docs/PROTOCOL.md section 11 must list every broker.errors.Reason, one line each"
    )


def test_the_limits_table_states_the_reference_limits() -> None:
    from broker import envelope, strictjson

    limits = {row[0]: row[1] for row in _table_rows("\nLimits:")}

    def number(label: str) -> int:
        (value,) = [v for k, v in limits.items() if k.startswith(label)]
        return int(value.split()[0])

    assert number("message size cap") == envelope.DEFAULT_MAX_BYTES
    assert number("header size cap") == envelope.MAX_HEADER_BYTES
    assert number("hop record size cap") == envelope.MAX_HEADER_BYTES
    assert number("depth cap of the payload") == strictjson.MAX_DEPTH
    assert number("longest number literal") == strictjson.MAX_NUMBER_CHARS
    assert number("most hop records") == envelope.MAX_HOPS
    assert envelope.ORIGIN_CONTEXT.decode() in DOC
    assert envelope.HOP_CONTEXT.decode() in DOC
    cap = envelope.MAX_HEADER_BYTES * 4 // 3 + 4
    assert f"longer than {cap} characters" in DOC
    assert cap == independent.HEADER_TEXT_CAP
    assert f"longer than **{cap}** characters" in _section("9.1")
