"""Quarantine entries: each kind of quarantined message gets a reason, a way in and a stable id;
what a refused message claims is read as identifiers only, never as free text."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from mlanet.broker import SigningKey, canonical_bytes, sign_message
from mlanet.broker.keys import b64u_encode
from mlanet.nodes.state.quarantine import Claim, claim, entry_of, log_context, payload_text
from mlanet.schemas import Destination, Header, Origin, StatusUpdate

KEY = SigningKey.from_seed("seajust", "ed25519:1", bytes(range(32)))
ID = "5b0c2f1e-8d3a-4c6b-9e7f-0a1b2c3d4e5f"
CANARY = "CANARY-9F3A-NEVER-LOGGED"


def _envelope() -> bytes:
    header = Header(
        kind="status_update",
        message_id=ID,
        origin=Origin(network="seajust", country="KH", contact_point="kh-cp-1"),
        destination=Destination(country="UZ"),
        created_at=datetime(2026, 3, 2, 9, 30, tzinfo=UTC),
        key_id="ed25519:1",
    )
    payload = StatusUpdate(case_ref=CANARY, status="in_progress", note=f"note {CANARY}")
    return sign_message(header, payload, KEY).to_bytes()


def test_an_envelope_claims_its_header_identifiers_only() -> None:
    claimed = claim(_envelope())
    assert claimed == Claim(ID, "seajust", "UZ", "status_update")
    assert CANARY not in repr(claimed)
    assert log_context(claimed.flow()) == {
        "message_id": ID,
        "origin": "seajust",
        "destination": "UZ",
        "kind": "status_update",
    }


def test_a_submission_claims_its_sender_and_destination() -> None:
    body = canonical_bytes(
        {
            "message_id": ID,
            "kind": "notice",
            "sender": "kh-cp-1",
            "destination": {"network": "casc"},
            "payload": {"title": CANARY * 100},
        }
    )
    assert claim(body) == Claim(ID, "kh-cp-1", "casc", "notice")


def test_garbage_and_free_text_in_identifier_places_claim_nothing() -> None:
    assert claim(b"\xff\xfe not json") == Claim()
    assert claim(b"[1, 2]") == Claim()
    hostile = canonical_bytes(
        {
            "message_id": CANARY,
            "kind": CANARY,
            "sender": f"kh-{CANARY}",
            "destination": {"country": CANARY, "network": CANARY},
        }
    )
    assert claim(hostile) == Claim()
    forged_header = b64u_encode(canonical_bytes({"message_id": ID, "origin": {"network": CANARY}}))
    frame = {"header": forged_header, "payload": "", "signature": "", "hops": [], "mlanet": 1}
    assert claim(canonical_bytes(frame)) == Claim(ID, "", "", "")
    assert log_context(None) == {
        "message_id": "unknown",
        "origin": "unknown",
        "destination": "unknown",
    }


def test_a_node_refusal_is_named_by_the_message_id_the_node_set() -> None:
    headers = {
        "x-mlanet-reason": "bad_signature",
        "x-mlanet-detail": "signature by seajust ed25519:1 does not verify",
        "x-mlanet-via": "mlanet.inbox.from.seajust",
        "x-mlanet-at": "2026-03-02T09:30:00+00:00",
        "x-delivery-count": 3,
    }
    quarantine_id = "9a1c2f1e-8d3a-4c6b-9e7f-0a1b2c3d4e5f"
    entry = entry_of(_envelope(), "", quarantine_id, headers)
    assert (entry.id, entry.reason, entry.via, entry.returns) == (
        quarantine_id,
        "bad_signature",
        "mlanet.inbox.from.seajust",
        3,
    )
    assert entry.claim.message_id == ID
    assert CANARY not in json.dumps(entry.metadata())


def test_a_dead_lettered_message_shows_as_delivery_limit_with_a_stable_id() -> None:
    death = {
        "count": 1,
        "reason": "delivery_limit",
        "queue": "mlanet.inbox",
        "time": datetime(2026, 3, 2, 9, 31, tzinfo=UTC),
        "exchange": "mlanet.inbox.from.seajust",
        "routing-keys": [""],
    }
    headers = {"x-death": [death], "x-first-death-reason": "delivery_limit"}
    first = entry_of(_envelope(), "mlanet.unroutable", ID, headers)
    again = entry_of(_envelope(), "mlanet.unroutable", ID, {**headers, "x-delivery-count": 4})
    assert first.reason == "delivery_limit"
    assert first.via == "mlanet.inbox.from.seajust"
    assert first.id.startswith("dl-")
    assert again.id == first.id  # scanning (returns) does not change the id
    other = entry_of(_envelope(), "mlanet.unroutable", ID, {"x-death": [death | {"count": 2}]})
    assert other.id != first.id
    submit = dict(death, queue="mlanet.submit", exchange="")
    assert entry_of(b"{}", "mlanet.unroutable", None, {"x-death": [submit]}).via == "mlanet.submit"


def test_an_unroutable_message_keeps_the_exchange_it_was_published_to() -> None:
    entry = entry_of(_envelope(), "mlanet.inbox.from.casc", None, {})
    assert entry.reason == "unroutable"
    assert entry.via == "mlanet.inbox.from.casc"
    assert entry.id.startswith("ur-")
    assert entry.id == entry_of(_envelope(), "mlanet.inbox.from.casc", None, {}).id
    assert entry.id != entry_of(_envelope(), "mlanet.inbox.from.ejn", None, {}).id


def test_payload_text_is_the_case_content_for_show_payload_only() -> None:
    assert CANARY in payload_text(_envelope())
    assert payload_text(b"\xff raw") == "\\xff raw"
    submission = canonical_bytes({"sender": "kh-cp-1", "payload": {"summary": CANARY}})
    assert CANARY in payload_text(submission)


def test_an_oversized_body_kept_in_part_says_so() -> None:
    headers = {
        "x-mlanet-reason": "oversized",
        "x-mlanet-via": "mlanet.inbox.from.seajust",
        "x-mlanet-truncated": "true",
        "x-mlanet-size": "9000000",
    }
    entry = entry_of(b"x" * 1024, "", ID, headers)
    assert (entry.size, entry.truncated_from) == (1024, 9000000)
    assert entry.metadata()["truncated_from"] == 9000000
    assert entry_of(b"x", "", ID, {"x-mlanet-reason": "oversized"}).truncated_from is None
