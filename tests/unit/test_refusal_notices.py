"""Refusal notices (docs/PROTOCOL.md section 10.1), as pure functions: who is told, what the
notice carries, how often, how the origin checks that the refusing network held its message,
and how copies of one refused message become one quarantine entry.

The wire-level example is checked in test_protocol_doc.py; the journeys on the real broker are
in tests/integration/test_refusal_notices.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from mlanet.broker import (
    Reason,
    RefusedMessage,
    SignedMessage,
    add_hop,
    canonical_bytes,
    sign_message,
)
from mlanet.broker.keys import b64u_encode
from mlanet.broker.provenance import check_refuser, refused_copy
from mlanet.nodes.runtime.refusals import NoticeGate, deserves_notice, refusal_notice
from mlanet.nodes.state.quarantine import Claim, Entry, refusal_id
from mlanet.nodes.state.quarantine_store import QUARANTINE_FILE, Bound, QuarantineStore
from mlanet.schemas import Origin
from mlanet.schemas.payloads import Notice, NoticeHop
from tests.unit.wirekit import (
    CASC,
    SEAJUST,
    T1,
    T2,
    WACAP,
    make_header,
    sample_payloads,
    signed,
    trust_store,
)

NOW = T2


def _sent() -> SignedMessage:
    """SEAJust's message as it sent it (no hop records)."""
    return signed("facilitation_request", hops=0)


def _hops(message: SignedMessage) -> list[NoticeHop]:
    return [NoticeHop(record=h.record_b64, signature=h.signature_b64) for h in message.hops]


def _refusal(refuser: str, hops: list[NoticeHop], **known: Any) -> Reason | None:
    """None when SEAJust takes ``refuser``'s notice carrying ``hops``; else the reason."""
    sent = _sent()
    try:
        copy = refused_copy(sent, sent.content_sha256, hops, trust_store(), now=NOW)
        check_refuser(
            refuser,
            copy,
            addressee=known.get("addressee", "casc"),
            first_step=known.get("first_step", "casc"),
        )
    except RefusedMessage as refused:
        return refused.reason
    return None


# --- who held the message --------------------------------------------------------------------


def test_each_network_that_held_the_message_may_say_it_refused_it() -> None:
    """SEAJust -> CASC -> WACAP -> EJN: CASC (first step, zero hop records), WACAP (with CASC's
    record to it) and EJN (with both records) can each show the copy it held."""
    twice = signed("facilitation_request", hops=2)
    assert _refusal("casc", [], addressee="ejn") is None
    assert _refusal("wacap", _hops(twice)[:1], addressee="ejn") is None
    assert _refusal("ejn", _hops(twice), addressee="other") is None


def test_a_network_cannot_claim_a_copy_that_went_on_past_it_or_never_reached_it() -> None:
    twice = signed("facilitation_request", hops=2)
    # WACAP handed the message on to EJN: the full copy ends at EJN, not at WACAP.
    assert _refusal("wacap", _hops(twice), addressee="ejn") is Reason.UNAUTHORISED
    # With no hop records only the origin's own first step (or the addressee) held it.
    assert _refusal("wacap", [], addressee="ejn") is Reason.UNAUTHORISED
    assert _refusal("ejn", [], addressee="other") is Reason.UNAUTHORISED


def test_a_relay_cannot_forge_another_relays_hop_record() -> None:
    """WACAP writes "CASC sent it to WACAP" and signs it with its own key."""
    as_casc = canonical_bytes(
        {
            "at": "2026-03-02T09:30:01.500Z",
            "key_id": CASC.key_id,
            "network": "casc",
            "prev": _sent().last_link_digest(),
            "to": "wacap",
        }
    )
    record = b64u_encode(as_casc)
    signature = b64u_encode(WACAP.sign(b"mlanet-v1:hop:" + record.encode("ascii")))
    hops = [NoticeHop(record=record, signature=signature)]
    assert _refusal("wacap", hops, addressee="ejn") is Reason.BAD_HOP_SIGNATURE


def test_hop_records_of_another_message_or_out_of_order_do_not_chain() -> None:
    other = sign_message(
        make_header(message_id="0f9e8d7c-6b5a-4a39-8271-605f4e3d2c1c"),
        sample_payloads()["facilitation_request"],
        SEAJUST,
    )
    borrowed = _hops(add_hop(other, CASC, to="wacap", at=T1))
    assert _refusal("wacap", borrowed, addressee="ejn") is Reason.HOP_CHAIN_BROKEN
    twice = _hops(signed("facilitation_request", hops=2))
    assert _refusal("ejn", twice[1:], addressee="other") is Reason.HOP_CHAIN_BROKEN


@pytest.mark.parametrize("named", [None, "x" * 43], ids=["missing", "other"])
def test_a_notice_must_name_the_content_of_the_message_sent(named: str | None) -> None:
    with pytest.raises(RefusedMessage) as refused:
        refused_copy(_sent(), named, [], trust_store(), now=NOW)
    assert refused.value.reason is Reason.UNAUTHORISED


# --- who is told, and what ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "origin", "here", "told"),
    [
        ("facilitation_request", "contact point", "casc", True),
        ("notice", "contact point", "casc", True),  # a contact point's plenary notice
        ("notice", "node", "casc", False),  # a node's notice: never a notice about it
        ("receipt", "node", "casc", False),
        ("directory_update", "node", "casc", False),
        ("facilitation_request", "contact point", "seajust", False),  # our own message
    ],
)
def test_who_is_told_of_a_refusal(kind: Any, origin: str, here: str, told: bool) -> None:
    by = (
        Origin(network="seajust", country="KH", contact_point="kh-ago-1")
        if origin == "contact point"
        else Origin(network="seajust")
    )
    assert deserves_notice(make_header(kind, origin=by), here) is told


@pytest.mark.parametrize("reason", list(Reason), ids=lambda reason: reason.value)
def test_a_notice_can_name_every_reason_code(reason: Reason) -> None:
    """Also ``not_utf8`` (a digit): a sealed payload that opens to bytes that are not UTF-8 is
    refused after opening, and its origin is told."""
    message = signed("facilitation_request")
    assert refusal_notice(message, RefusedMessage(reason, "")).reason == reason.value


def test_the_notice_names_the_message_and_carries_its_hop_entries_but_no_case_content() -> None:
    message = signed("facilitation_request", hops=2)
    notice = refusal_notice(message, RefusedMessage(Reason.HOP_LIMIT_EXCEEDED, "6 hops"))
    assert (notice.regarding, notice.reason, notice.content_sha256) == (
        message.header.message_id,
        "hop_limit_exceeded",
        message.content_sha256,
    )
    assert notice.hops == _hops(message)
    text = canonical_bytes(notice.model_dump(mode="json", exclude_none=True))
    assert b"KH-MLA-2020-0042" not in text
    assert b"summary" not in text
    assert message.payload_b64.encode() not in text
    assert message.header_b64.encode() not in text
    assert Notice.model_validate_json(text) == notice


# --- how often ----------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_notice_per_message_per_interval() -> None:
    clock = _Clock()
    gate = NoticeGate(per_message=60.0, clock=clock)
    assert gate.allow("seajust", "m1")
    assert not gate.allow("seajust", "m1")  # the origin's resend, a moment later
    assert gate.allow("seajust", "m2")  # another message is told
    clock.now += 59.9
    assert not gate.allow("seajust", "m1")
    clock.now += 0.2
    assert gate.allow("seajust", "m1")  # its notice may have been lost: told again
    gate.forget("seajust", "m1")  # it could not be sent (the broker failed)
    assert gate.allow("seajust", "m1")  # the copy that comes back tells the origin


def test_each_origin_network_has_its_own_rate() -> None:
    clock = _Clock()
    gate = NoticeGate(rate=2.0, burst=3, clock=clock)
    assert [gate.allow("seajust", f"m{n}") for n in range(5)] == [True, True, True, False, False]
    assert gate.allow("wacap", "m0")  # another origin is not held back
    clock.now += 1.0  # two more tokens
    assert [gate.allow("seajust", f"n{n}") for n in range(3)] == [True, True, False]


def test_the_gate_remembers_a_bounded_number_of_messages() -> None:
    clock = _Clock()
    gate = NoticeGate(remembered=2, burst=100, clock=clock)
    for n in range(3):
        assert gate.allow("seajust", f"m{n}")
    assert gate.allow("seajust", "m0")  # forgotten, the oldest first
    assert not gate.allow("seajust", "m2")


# --- copies in the quarantine -----------------------------------------------------------------


def _entry(message: SignedMessage, reason: str, body: bytes) -> Entry:
    return Entry(
        id=refusal_id(message.header, message.content_sha256, reason),
        reason=reason,
        detail="-",
        via="mlanet.inbox.from.casc",
        at=1_800_000_000.0,
        size=len(body),
        body_sha256=hashlib.sha256(body).hexdigest(),
        returns=0,
        claim=Claim(message.header.message_id, "seajust", "UZ", "facilitation_request"),
    )


def test_copies_of_one_refused_message_are_one_entry_with_a_count(tmp_path: Path) -> None:
    """Copies with other hop records (the origin's resends) count on one entry; a redelivery
    of a copy is not counted; another reason is another entry."""
    store = QuarantineStore(tmp_path / QUARANTINE_FILE)
    wide = Bound(1000, 2**30)
    first, second = signed(hops=1), add_hop(_sent(), CASC, to="wacap", at=T2)
    assert first.to_bytes() != second.to_bytes()
    copies = [first, second, first]
    added = [
        store.add(_entry(m, "no_route", m.to_bytes()), m.to_bytes(), wide, fresh=False)
        for m in copies
    ]
    store.commit()
    again = store.add(
        _entry(first, "no_route", first.to_bytes()),
        first.to_bytes(),
        wide,
        fresh=False,
        redelivered=True,
    )
    store.add(_entry(first, "loop_detected", b"x"), b"x", wide, fresh=False)
    store.commit()
    assert added == [True, None, None]
    assert again is None
    entry = store.get(refusal_id(first.header, first.content_sha256, "no_route"))
    assert entry is not None
    assert entry.copies == 3
    assert entry.body == first.to_bytes()
    assert store.by_reason() == {"no_route": 1, "loop_detected": 1}
    store.close()
