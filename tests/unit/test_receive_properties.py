"""Property tests of the node's whole receiving path, ``mlanet.nodes.runtime.pipeline.receive``
(size, sender, properties, verify, authorise, dedupe, route, validate) with a real SQLite store:
whatever a peer sends, through whatever exchange, the result is accepted or refused with a reason
code, never another exception. What is accepted obeys the rules a forger would attack.

test_properties.py covers open_envelope and decode_payload alone; these go through receive()
with mutations of valid signed messages, arbitrary exchanges and senders, AMQP properties,
headers with random fields that are validly signed, and hop chains signed by random networks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import timedelta
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from mlanet.broker import RefusedMessage, SigningKey
from mlanet.broker.keys import b64u_decode, b64u_encode
from mlanet.broker.routing import Deliver, Forward, Refuse
from mlanet.broker.transport import CONTENT_TYPE
from mlanet.nodes.runtime.pipeline import Accepted, Properties, receive
from mlanet.schemas import KINDS
from mlanet.schemas.base import format_timestamp
from tests.hostile.corpus import HOSTILE, RECEIVER, UNLISTED_SEAJUST
from tests.hostile.forge import facilitation_payload, header, hop, receipt_payload, sign, wire
from tests.hostile.harness import Harness
from tests.hostile.peer import Publication

_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    made = Harness.create(tmp_path_factory.mktemp("receive"), prefix="prop")
    try:
        yield made
    finally:
        made.close()


def _receive(
    harness: Harness, body: bytes, exchange: str, properties: Properties | None = None
) -> Accepted | None:
    """Accepted, or None when refused with a reason; any other exception fails the test."""
    try:
        accepted = receive(
            body,
            exchange,
            config=harness.config,
            trust=harness.keeper.view.trust,
            directory=harness.keeper.view.directory,
            store=harness.store,
            now=harness.scene.now,
            properties=properties or Properties(),
        )
    except RefusedMessage as refused:
        _event(f"refused: {refused.reason.value}")
        return None
    _event(f"accepted: {type(accepted.routing).__name__}")
    _check(harness, accepted, exchange)
    return accepted


def _event(text: str) -> None:
    """Tally outcomes (pytest --hypothesis-show-statistics shows how often each was reached)."""
    if currently_in_test_context():
        event(text)


def _check(harness: Harness, accepted: Accepted, exchange: str) -> None:
    """What an accepted message must satisfy, however it was made."""
    config, message = harness.config, accepted.message
    header_ = message.header
    assert exchange == f"mlanet.inbox.from.{accepted.sender}"
    peer = config.peer(accepted.sender)
    assert peer is not None
    assert header_.kind in peer.kinds
    assert message.last_sender == accepted.sender
    if message.hops:
        assert message.hops[-1].record.to == config.network
    assert len(message.hops) <= header_.hop_limit
    assert harness.keeper.view.directory.network(header_.origin.network) is not None
    skew = timedelta(seconds=config.limits.max_clock_skew_seconds)
    assert header_.created_at <= harness.scene.now + skew
    if isinstance(accepted.routing, Deliver):
        assert accepted.payload is not None  # validated where it is read
    if isinstance(accepted.routing, Forward | Deliver):
        assert config.network not in message.path
    # Provenance: the origin's claims belong to it, and the path is one of links, in time.
    origin = harness.keeper.view.directory.network(header_.origin.network)
    assert origin is not None
    if header_.origin.country is not None:
        assert header_.origin.country in origin.members + origin.observers
    if header_.origin.contact_point is not None:
        assert origin.contact_point(header_.origin.contact_point) is not None
    assert len(set(message.path)) == len(message.path)
    links = harness.keeper.view.directory.links
    for here, there in pairwise((*message.path, config.network)):
        assert (here, there) in links or (there, here) in links
    for hop_ in message.hops:
        assert hop_.record.at <= harness.scene.now + skew


def _peers(harness: Harness) -> list[str]:
    return [peer.network for peer in harness.config.peers]


def _exchanges(harness: Harness) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from([f"mlanet.inbox.from.{n}" for n in harness.federation.networks]),
        st.sampled_from(["", "mlanet.inbox", "mlanet.inbox.from.", "amq.direct", "x" * 300]),
        st.text(max_size=40),
        st.builds(lambda t: "mlanet.inbox.from." + t, st.text(max_size=12)),
    )


_CONTENT_TYPES = st.one_of(
    st.just(CONTENT_TYPE),
    st.none(),
    st.sampled_from(["application/json", CONTENT_TYPE.upper(), CONTENT_TYPE + " ", "\ufffd"]),
    st.text(max_size=20),
)
_PROPERTIES = st.builds(
    Properties,
    content_type=_CONTENT_TYPES,
    content_encoding=st.one_of(st.none(), st.sampled_from(["gzip", "", "identity"])),
    expires=st.booleans(),
)


def _valid_wires(harness: Harness) -> list[tuple[bytes, str]]:
    """(body, the exchange it is valid through) for a few shapes of valid message."""
    s, keys = harness.scene, harness.scene.keys
    direct = sign(header(keys[HOSTILE], s.now), facilitation_payload(), keys[HOSTILE])
    relayed = hop(  # wacap -> ejn -> casc: over the directory's links
        sign(
            header(keys["wacap"], s.now),
            facilitation_payload(requesting_country="NG"),
            keys["wacap"],
        ),
        keys["ejn"],
        to=RECEIVER,
        at=s.now,
    )
    onward = sign(
        header(keys["ejn"], s.now, to_country="KH"),
        facilitation_payload(requested_country="KH"),
        keys["ejn"],
    )
    notice = sign(
        header(keys[HOSTILE], s.now, kind="notice", to_country="UZ"),
        {"title": "Plenary", "topic": "plenary"},
        keys[HOSTILE],
    )
    receipt_id = "0f9e8d7c-6b5a-4a39-8271-605f4e3d2c1b"
    receipt = sign(
        header(
            keys[HOSTILE],
            s.now,
            kind="receipt",
            destination={"network": RECEIVER},
            in_reply_to=receipt_id,
        ),
        receipt_payload(receipt_id, s.now),
        keys[HOSTILE],
    )
    return [
        (wire(direct), "mlanet.inbox.from.seajust"),
        (wire(relayed), "mlanet.inbox.from.ejn"),
        (wire(onward), "mlanet.inbox.from.ejn"),
        (wire(notice), "mlanet.inbox.from.seajust"),
        (wire(receipt), "mlanet.inbox.from.seajust"),
    ]


def test_the_valid_shapes_are_accepted(harness: Harness) -> None:
    """The starting points of the mutations below are accepted as they are."""
    for body, exchange in _valid_wires(harness):
        accepted = _receive(harness, body, exchange)
        assert accepted is not None
        assert not isinstance(accepted.routing, Refuse)


@_SETTINGS
@given(data=st.data())
def test_byte_mutations_through_any_exchange_with_any_properties(
    harness: Harness, data: st.DataObject
) -> None:
    body, exchange = data.draw(st.sampled_from(_valid_wires(harness)), label="valid")
    edited = bytearray(body)
    for _ in range(data.draw(st.integers(0, 4), label="edits")):
        at = data.draw(st.integers(0, len(edited)), label="at")
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]), label="op")
        if op == "flip" and at < len(edited):
            edited[at] ^= data.draw(st.integers(1, 255), label="bits")
        elif op == "insert":
            edited[at:at] = data.draw(st.binary(min_size=1, max_size=4), label="bytes")
        elif op == "delete":
            del edited[at : at + data.draw(st.integers(1, 8), label="n")]
        elif op == "truncate":
            del edited[at:]
    if data.draw(st.integers(0, 3), label="other exchange?") == 0:
        exchange = data.draw(_exchanges(harness), label="exchange")
    properties = Properties()
    if data.draw(st.integers(0, 3), label="other properties?") == 0:
        properties = data.draw(_PROPERTIES, label="properties")
    _receive(harness, bytes(edited), exchange, properties)


_NETWORKS = st.sampled_from(["seajust", "casc", "ejn", "wacap", "gljc", "unodc", "atlantis"])
_TEXT_OR_JUNK = st.one_of(
    st.text(max_size=12), st.integers(-3, 40), st.none(), st.booleans(), st.floats()
)


@st.composite
def _headers(draw: st.DrawFn, harness: Harness) -> tuple[dict[str, Any], SigningKey]:
    """A header with random fields (mostly plausible, sometimes junk) and a key to sign it."""
    now = harness.scene.now
    keys = {**harness.scene.keys, "seajust:7": UNLISTED_SEAJUST}
    signer = keys[draw(st.sampled_from(sorted(keys)), label="signer")]
    value = header(signer, now)
    changes: dict[str, Any] = {}

    def sometimes(name: str) -> bool:
        return draw(st.integers(0, 3), label=f"{name}?") == 0

    def plausible_or_junk(plausible: st.SearchStrategy[Any], name: str) -> Any:
        junk = draw(st.integers(0, 3), label=f"{name} junk?") == 0
        return draw(_TEXT_OR_JUNK if junk else plausible, label=name)

    if sometimes("kind"):
        changes["kind"] = plausible_or_junk(st.sampled_from(KINDS), "kind")
    if sometimes("origin"):
        changes["origin"] = {
            "network": plausible_or_junk(_NETWORKS, "origin network"),
            "country": draw(st.sampled_from(["KH", "UZ", "FR", "kh", "XX"]), label="country"),
        }
    if sometimes("destination"):
        destination: dict[str, Any] = {}
        if draw(st.booleans(), label="dest network?"):
            destination["network"] = draw(_NETWORKS, label="dest network")
        if draw(st.booleans(), label="dest country?") or not destination:
            destination["country"] = draw(
                st.sampled_from(["UZ", "KZ", "KH", "FR", "NG", "US", "uz"]), label="dest country"
            )
        if draw(st.booleans(), label="dest cp?"):
            destination["contact_point"] = draw(
                st.sampled_from(["uz-cp-1", "kz-cp-1", "uz-cp-9", "fr-cp-1"]), label="cp"
            )
        changes["destination"] = destination
    if sometimes("created_at"):
        offset = draw(st.integers(-40 * 86400, 2 * 86400), label="offset")
        changes["created_at"] = draw(
            st.one_of(
                st.just(format_timestamp(now + timedelta(seconds=offset))),
                st.sampled_from(["2026-02-30T00:00:00.000Z", "yesterday", ""]),
                _TEXT_OR_JUNK,
            ),
            label="created_at",
        )
    if sometimes("hop_limit"):
        changes["hop_limit"] = plausible_or_junk(st.integers(-2, 20), "hop_limit")
    if sometimes("key_id"):
        changes["key_id"] = draw(
            st.sampled_from(["ed25519:1", "ed25519:7", "ed25519:8", "ed25519:9", "rsa:1"]),
            label="key_id",
        )
    for name in ("urgency", "in_reply_to", "members_only", "format", "content", "extra"):
        if draw(st.integers(0, 5), label=f"{name}?") == 0:
            changes[name] = draw(
                st.one_of(st.sampled_from(["urgent", "normal", True, 1]), _TEXT_OR_JUNK),
                label=name,
            )
    value.update(changes)
    return value, signer


_PAYLOADS = st.one_of(
    st.just(facilitation_payload()),
    st.builds(lambda s: facilitation_payload(summary=s), st.text(max_size=30)),
    st.just({"title": "Plenary", "topic": "plenary"}),
    st.dictionaries(st.text(max_size=6), st.one_of(st.text(max_size=6), st.integers())),
    st.binary(max_size=40),
)


@_SETTINGS
@given(data=st.data())
def test_validly_signed_headers_with_random_fields(harness: Harness, data: st.DataObject) -> None:
    value, signer = data.draw(_headers(harness), label="header")
    payload = data.draw(_PAYLOADS, label="payload")
    frame = sign(value, payload, signer)
    sender = data.draw(st.sampled_from([*_peers(harness), "wacap"]), label="sender")
    if data.draw(st.booleans(), label="relayed?"):
        relay = harness.scene.keys[data.draw(st.sampled_from(["seajust", "ejn"]), label="relay")]
        frame = hop(frame, relay, to=RECEIVER, at=harness.scene.now)
        sender = relay.network
    _receive(harness, wire(frame), f"mlanet.inbox.from.{sender}")


@_SETTINGS
@given(data=st.data())
def test_hop_chains_signed_by_random_networks(harness: Harness, data: st.DataObject) -> None:
    """Chains of hop records by random relays, mostly well formed and mostly ending at one of
    CASC's peers, with sometimes a record signed by another network's key, a broken ``prev``,
    an odd field, the last hop addressed elsewhere, or a sender that is not the last relay."""
    keys = harness.scene.keys
    others = sorted(n for n in keys if n != RECEIVER)

    def one_in(n: int, label: str) -> bool:
        return data.draw(st.integers(0, n - 1), label=label) == 0

    origin = keys[data.draw(st.sampled_from(sorted(keys)), label="origin")]
    frame = sign(header(origin, harness.scene.now), facilitation_payload(), origin)
    count = data.draw(st.integers(1, 4), label="hops")
    for index in range(count):
        last = index == count - 1
        relays = _peers(harness) if last and not one_in(4, "any last relay") else others
        relay = keys[data.draw(st.sampled_from(relays), label=f"relay {index}")]
        signer = relay
        if one_in(6, f"other signer {index}"):
            signer = keys[data.draw(st.sampled_from(sorted(keys)), label=f"signer {index}")]
        changes: dict[str, Any] = {}
        if one_in(6, f"break prev {index}"):
            changes["prev"] = b64u_encode(hashlib.sha256(str(index).encode()).digest())
        if one_in(8, f"odd field {index}"):
            field = data.draw(st.sampled_from(["at", "to", "key_id", "x"]), label="field")
            changes[field] = data.draw(_TEXT_OR_JUNK, label="odd")
        to = data.draw(_NETWORKS, label=f"to {index}")
        if last and not one_in(2, "last hop elsewhere"):
            to = RECEIVER
        frame = hop(
            frame, relay, to=to, at=harness.scene.now, signer=signer, record_changes=changes
        )
    sender = frame_sender(frame)
    if one_in(4, "another sender"):
        sender = data.draw(st.sampled_from(_peers(harness)), label="sender")
    _receive(harness, wire(frame), f"mlanet.inbox.from.{sender}")


def frame_sender(frame: dict[str, Any]) -> str:
    """The network that signed the last hop record (what a relay claims to be)."""
    record = json.loads(_b64(frame["hops"][-1]["record"]))
    return str(record.get("network", "seajust"))


def _b64(text: str) -> bytes:
    return b64u_decode(text)


@_SETTINGS
@given(data=st.data())
def test_a_repeated_id_is_a_duplicate_or_equivocation_never_a_second_new_message(
    harness: Harness, data: st.DataObject
) -> None:
    """Whatever the store holds for (origin, message id), a message with that id is either the
    same content (a duplicate) or refused as equivocation."""
    keys, now = harness.scene.keys, harness.scene.now
    value = header(keys[HOSTILE], now)
    first = sign(value, facilitation_payload(), keys[HOSTILE])
    harness.deliver(Publication(wire(first)))
    summary = data.draw(
        st.one_of(st.just(facilitation_payload()["summary"]), st.text(min_size=1, max_size=20)),
        label="summary",
    )
    again = sign(value, facilitation_payload(summary=summary), keys[HOSTILE])
    accepted = _receive(harness, wire(again), "mlanet.inbox.from.seajust")
    if accepted is not None:
        assert accepted.duplicate is not None
        assert accepted.message.content_sha256 == accepted.duplicate.content_sha256
