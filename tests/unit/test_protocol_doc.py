"""docs/PROTOCOL.md and the code cannot drift apart, and the document is enough to implement.

Every worked example is extracted from the document (``tests/protocol_examples.py``) and checked
three ways: it equals the frozen vector (``tests/vectors/golden.json``,
``tests/vectors/protocol.json``), it holds for the independent implementation written from the
document alone (``tests/independent.py``: nothing from ``broker``, ``nodes`` or ``schemas``), and it
holds for the reference. Other tests compare the document's tables (reason codes, limits, AMQP
names) with the reference's constants. Routing is in ``test_protocol_routing.py``, the directory and
the key files in ``test_protocol_directory.py``, sealed payloads in ``test_protocol_sealed.py``.
"""

from __future__ import annotations

import ast
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests import independent
from tests.independent import Refused
from tests.protocol_examples import (
    DOC,
    EXAMPLES,
    GOLDEN,
    VECTORS,
    at,
    directory,
    json_lines,
    keys,
    section,
    trust,
)


def test_the_document_has_every_example_block() -> None:
    assert set(EXAMPLES) == {
        "keys",
        "wire",
        "header_bytes",
        "origin_link_digest",
        "record_bytes",
        "payload_bytes",
        "content_sha256",
        "refusal_notice_payload",
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
        "seal_key_file",
        "sealed_listed",
        "sealed_wire",
        "sealed_header",
        "sealed_info",
        "sealed_plaintext",
        "sealed_content_sha256",
        "sealed_checks",
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
    learned = independent.open_envelope(EXAMPLES["wire"].encode("ascii"), keys("keys"))
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
    from mlanet import broker

    wire = json.dumps(change(json.loads(EXAMPLES["wire"]))).encode()
    with pytest.raises(Refused) as refused:
        independent.open_envelope(wire, keys("keys"))
    assert refused.value.args[0] == reason
    with pytest.raises(broker.RefusedMessage) as reference:
        broker.open_envelope(wire, trust(keys("keys")))
    assert reference.value.reason.value == reason


def test_the_example_opens_with_the_reference_implementation() -> None:
    from mlanet import broker

    message = broker.open_envelope(EXAMPLES["wire"].encode("ascii"), trust(keys("keys")))
    learned = independent.open_envelope(EXAMPLES["wire"].encode("ascii"), keys("keys"))
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
    assert keys("keys") == {
        (network, entry["key_id"]): entry["public_key"] for network, entry in GOLDEN["keys"].items()
    }
    assert f"one line, {len(GOLDEN['wire'])} bytes" in DOC


# --- section 8.1: receipts ---------------------------------------------------------------------


def _golden() -> independent.Opened:
    return independent.open_envelope(EXAMPLES["wire"].encode("ascii"), keys("keys"))


def _receipt() -> independent.Opened:
    return independent.open_envelope(EXAMPLES["receipt_wire"].encode("ascii"), keys("receipt_key"))


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
    target, _ = independent.next_hop(sent.header, [], directory(), "seajust", at())
    assert (target, sent.header["destination"]["network"]) == ("forward", "ejn")
    assert independent.receipt_counts(receipt, sent, target="ejn")


def test_the_receipt_example_opens_with_the_reference_implementation() -> None:
    from mlanet import broker
    from mlanet.schemas import Receipt

    message = broker.open_envelope(
        EXAMPLES["receipt_wire"].encode("ascii"), trust(keys("receipt_key"))
    )
    payload = broker.decode_payload(message)
    assert isinstance(payload, Receipt)
    assert payload.receipt_for == message.header.in_reply_to == GOLDEN["header"]["message_id"]
    assert payload.content_sha256 == GOLDEN["content_sha256"]


def test_the_documented_receipt_checks_refuse_a_relay_and_other_content() -> None:
    """A receipt signed by the relay, or for other content, is ``unauthorised``; one about
    another message changes nothing (section 8.1, checks 1 to 3)."""
    sent = _golden()
    when = datetime(2026, 3, 2, 9, 31, tzinfo=UTC)
    known = {**keys("keys"), **keys("receipt_key")}
    casc_seed = bytes.fromhex(VECTORS["keys"]["casc"]["seed_hex"])
    ejn_seed = bytes.fromhex(VECTORS["keys"]["ejn"]["seed_hex"])
    by_relay = independent.receipt_for(
        sent, network="casc", key_id="ed25519:1", seed=casc_seed, delivered_to=None, at=when
    )
    other_content = independent.receipt_for(
        sent,
        network="ejn",
        key_id="ed25519:1",
        seed=ejn_seed,
        delivered_to="de-bfj-1",
        at=when,
        content_sha256=GOLDEN["origin_link_digest"],
    )
    for wire in (by_relay, other_content):
        with pytest.raises(Refused, match="unauthorised"):
            independent.receipt_counts(independent.open_envelope(wire, known), sent, target="ejn")
    fine = independent.receipt_for(
        sent, network="ejn", key_id="ed25519:1", seed=ejn_seed, delivered_to="de-bfj-1", at=when
    )
    assert independent.receipt_counts(independent.open_envelope(fine, known), sent, target="ejn")
    assert not independent.receipt_counts(_golden(), sent, target="ejn")  # not a receipt


def test_the_documented_receipted_kinds_are_the_reference_ones() -> None:
    from mlanet.nodes.runtime.node import RECEIPTED

    which = section("8.1").split("**When.**")[0]
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
    from mlanet import broker

    try:
        independent.open_envelope(wire, keys, payload=False)
        mine = "accepted"
    except Refused as refused:
        mine = refused.args[0]
    try:
        broker.open_envelope(wire, trust(keys))
        theirs = "accepted"
    except broker.RefusedMessage as refused:
        theirs = refused.reason.value
    return mine, theirs


@pytest.mark.parametrize("line", json_lines("header_sizes"), ids=lambda line: str(line))
def test_a_header_text_around_the_size_cap_gets_the_documented_reason(line: dict[str, Any]) -> None:
    keys, seed = _seajust()
    chars = line["characters"]
    filler = "a" * (chars * 3 // 4 - len('{"x":""}'))
    text = independent.b64u_encode(('{"x":"' + filler + '"}').encode("ascii"))
    text = (text + "A" * chars)[:chars]
    assert len(text) == chars
    mine, theirs = _both_verdicts(_envelope_with_header(text, seed), keys)
    assert mine == theirs == line["reason"]


@pytest.mark.parametrize("line", json_lines("header_numbers"), ids=lambda line: line["literal"])
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
    assert json_lines("header_sizes") == VECTORS["edges"]["header_sizes"]
    assert json_lines("header_numbers") == VECTORS["edges"]["header_numbers"]


def test_a_fraction_anywhere_in_a_hop_record_is_not_canonical() -> None:
    """Section 2: also in a hop record, and in a member no schema allows."""
    from mlanet import broker
    from tests.unit.wirekit import sign_hop, signed

    record = signed(hops=1).hops[0].record.model_dump(mode="json")
    raw = independent.canonical(record).replace(b'"at"', b'"x":1.5,"at"', 1)
    message = signed()
    wire = {**message.to_wire(), "hops": [sign_hop(raw)]}
    with pytest.raises(broker.RefusedMessage) as refused:
        broker.open_envelope(json.dumps(wire).encode(), trust(_all_wirekitkeys()))
    assert refused.value.reason.value == "non_canonical_header"
    with pytest.raises(Refused, match="non_canonical_header"):
        independent.signed_part(wire["hops"][0]["record"])


def _all_wirekitkeys() -> independent.Keys:
    from tests.unit.wirekit import CASC, SEAJUST

    return {(k.network, k.key_id): k.public_b64() for k in (SEAJUST, CASC)}


# --- section 12: the AMQP layer ------------------------------------------------------------------


def test_the_amqp_section_uses_the_transport_names() -> None:
    from mlanet.broker import transport

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
    from mlanet.broker.management import ShovelSpec
    from mlanet.broker.topology import door_vhost, inbox_exchange, peer_inbox
    from mlanet.nodes.config import Limits, PeerLimits
    from mlanet.nodes.directory.keeper import DIRECTORY_QUEUE
    from mlanet.nodes.runtime.fairness import INBOX_POLICY_PRIORITY, inbox_policy
    from mlanet.nodes.runtime.reconcile import link_name

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
    door = declared["door"]
    assert door["vhost"] == door_vhost("<vhost>", "<peer>")
    assert [q["name"] for q in door["queues"]] == [peer_inbox("<peer>")]
    assert door["queues"][0]["arguments"] == {"x-queue-type": "quorum"}  # no dead-lettering
    assert [e["name"] for e in door["exchanges"]] == [inbox_exchange("<peer>")]
    assert door["exchanges"][0]["arguments"] == {}  # no alternate exchange in a door
    name, pattern, definition = inbox_policy("<peer>", PeerLimits())
    [inbox] = door["policies"]
    assert (inbox["name"], inbox["pattern"]) == (name, pattern)
    assert (inbox["definition"], inbox["priority"]) == (definition, INBOX_POLICY_PRIORITY)
    [deliver] = declared["policies"]
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
    from mlanet.nodes.state.quarantine import entry_of

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
    documented = set(re.findall(r"`(x-mlanet-[a-z0-9-]+)`", section("12.2")))
    assert documented == {
        "x-mlanet-reason",
        "x-mlanet-detail",
        "x-mlanet-via",
        "x-mlanet-at",
        "x-mlanet-size",
        "x-mlanet-truncated",
        "x-mlanet-sha256",
    }


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
    from mlanet.broker import Reason

    listed = [row[0].strip("`") for row in _table_rows("## 11. Reason codes")]
    assert len(listed) == len(set(listed))
    assert set(listed) == {reason.value for reason in Reason}, (
        "docs/PROTOCOL.md section 11 must list every mlanet.broker.errors.Reason, one line each"
    )


def test_the_limits_table_states_the_reference_limits() -> None:
    from mlanet.broker import envelope, strictjson

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
    assert f"longer than **{cap}** characters" in section("9.1")
