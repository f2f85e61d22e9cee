"""PROTOCOL.md section 10.4 (refusal notices) and the code cannot drift apart: its worked
example is checked by the independent implementation (``tests/independent.py``, written from the
document alone) and by the reference.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from tests import independent
from tests.independent import Refused, b64u_encode, canonical
from tests.protocol_examples import DOC, EXAMPLES


def _schema(name: str) -> Any:
    return independent.schema(name)


def verify_as_documented(wire: bytes, keys: independent.Keys) -> dict[str, Any]:
    """The envelope opened by the independent implementation (tests/independent.py), as the
    fields these tests read."""
    opened = independent.open_envelope(wire, keys, payload=False)
    return {"header_bytes": opened.header_bytes, "records": opened.record_bytes}


def _keys() -> independent.Keys:
    listed = json.loads(EXAMPLES["keys"])
    return {(network, entry["key_id"]): entry["public_key"] for network, entry in listed.items()}


# --- the worked example -------------------------------------------------------------------------


def check_refusal_as_documented(
    payload: dict[str, Any],
    signer: str,
    sent_wire: bytes,
    keys: dict[tuple[str, str], str],
    *,
    addressee: str | None,
    first_step: str | None,
) -> None:
    """Section 10.4, "At the origin", steps 1 to 3 (the path rules of section 7.3 need a
    directory, which the example does not give): raises Refused with the documented code."""
    _schema("notice").validate(payload)
    sent = json.loads(sent_wire)
    origin_input = f"mlanet-v1:origin:{sent['header']}.{sent['payload']}".encode("ascii")
    if payload.get("content_sha256") != b64u_encode(hashlib.sha256(origin_input).digest()):
        raise Refused("unauthorised")
    copy = {**sent, "hops": payload.get("hops", [])}
    learned = verify_as_documented(canonical(copy), keys)
    records = [json.loads(raw) for raw in learned["records"]]
    if signer == addressee:
        return
    if records and records[-1]["to"] == signer:
        return
    if not records and signer == first_step:
        return
    raise Refused("unauthorised")


def check_refusal_by_the_reference(
    payload: dict[str, Any],
    signer: str,
    sent_wire: bytes,
    keys: dict[tuple[str, str], str],
    *,
    addressee: str | None,
    first_step: str | None,
) -> None:
    """The same with the reference code (``mlanet.broker.provenance``), raising Refused likewise."""
    from datetime import UTC, datetime

    from mlanet import broker
    from mlanet.broker.provenance import check_refuser, refused_copy
    from mlanet.schemas import Notice

    trust = broker.TrustStore()
    for (network, key_id), public in keys.items():
        trust.add(network, key_id, public)
    notice = Notice.model_validate(payload)
    try:
        copy = refused_copy(
            broker.open_envelope(sent_wire, trust),
            notice.content_sha256,
            notice.hops or (),
            trust,
            now=datetime(2026, 3, 2, 10, 0, tzinfo=UTC),
        )
        check_refuser(signer, copy, addressee=addressee, first_step=first_step)
    except broker.RefusedMessage as refused:
        raise Refused(refused.reason.value) from None


def _sent_by_seajust() -> bytes:
    """The envelope of section 13 as its origin sent it: without CASC's hop."""
    return canonical({**json.loads(EXAMPLES["wire"]), "hops": []})


def _notice_payload() -> dict[str, Any]:
    return dict(json.loads(EXAMPLES["refusal_notice_payload"]))


CHECKS = [check_refusal_as_documented, check_refusal_by_the_reference]


@pytest.mark.parametrize("check", CHECKS, ids=["documented", "reference"])
@pytest.mark.parametrize(
    ("signer", "hops", "addressee", "first_step"),
    [
        ("ejn", True, None, "casc"),  # the `to` of the last hop record
        ("ejn", True, "ejn", "casc"),  # and the addressee
        ("ejn", False, "ejn", "casc"),  # the addressee, with no hop records
        ("casc", False, None, "casc"),  # the origin's first step, with no hop records
    ],
    ids=["last-hop", "addressee-too", "addressee", "first-step"],
)
def test_the_refusal_notice_example_counts_from_a_network_that_held_the_message(
    check: Any, signer: str, hops: bool, addressee: str | None, first_step: str
) -> None:
    """Section 10.1: the example's notice is taken from EJN (the `to` of CASC's hop record,
    whether or not it is also the addressee) and from the origin's own first step."""
    payload = _notice_payload() if hops else {**_notice_payload(), "hops": []}
    check(payload, signer, _sent_by_seajust(), _keys(), addressee=addressee, first_step=first_step)


def _swap(text: str, at: int) -> str:
    """``text`` with one base64url character replaced by another (still valid base64url)."""
    return text[:at] + ("B" if text[at] == "A" else "A") + text[at + 1 :]


def _forged_hop_signature(payload: dict[str, Any]) -> dict[str, Any]:
    hop = payload["hops"][0]
    return {**payload, "hops": [{**hop, "signature": _swap(hop["signature"], 7)}]}


def _another_content(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "content_sha256": _swap(payload["content_sha256"], 3)}


@pytest.mark.parametrize("check", CHECKS, ids=["documented", "reference"])
@pytest.mark.parametrize(
    ("signer", "change", "first_step", "reason"),
    [
        ("wacap", lambda p: p, "casc", "unauthorised"),
        ("ejn", lambda p: {**p, "hops": []}, "casc", "unauthorised"),
        ("ejn", _forged_hop_signature, "casc", "bad_hop_signature"),
        ("ejn", _another_content, "casc", "unauthorised"),
        (
            "ejn",
            lambda p: {k: v for k, v in p.items() if k != "content_sha256"},
            None,
            "unauthorised",
        ),
    ],
    ids=["never-held", "no-proof", "forged-hop", "other-content", "no-content-hash"],
)
def test_a_refusal_notice_from_a_network_that_never_held_the_message_is_refused(
    check: Any, signer: str, change: Any, first_step: str | None, reason: str
) -> None:
    """Section 10.1: WACAP, which never held the message, cannot use the example's notice; EJN
    cannot without CASC's hop record, nor with a hop signature it changed, nor for other
    content. Both implementations refuse with the same documented code."""
    with pytest.raises(Refused) as refused:
        check(
            change(_notice_payload()),
            signer,
            _sent_by_seajust(),
            _keys(),
            addressee=None,
            first_step=first_step,
        )
    assert refused.value.args[0] == reason


def test_the_refusal_notice_example_is_what_the_reference_node_sends() -> None:
    """The documented payload is the reference's refusal notice about the section 13 message."""
    from mlanet import broker
    from mlanet.nodes.runtime.refusals import refusal_notice

    trust = broker.TrustStore()
    for (network, key_id), public in _keys().items():
        trust.add(network, key_id, public)
    message = broker.open_envelope(EXAMPLES["wire"].encode("ascii"), trust)
    notice = refusal_notice(message, broker.RefusedMessage(broker.Reason.NO_ROUTE, "none here"))
    assert notice.model_dump(mode="json", exclude_none=True) == _notice_payload()


def test_the_refusal_notice_section_states_the_reference_rate_limits() -> None:
    from mlanet.nodes.runtime import refusals

    section = DOC[DOC.index("### 10.4 Refusal notices") : DOC.index("## 11.")]
    assert f"per {refusals.PER_MESSAGE_EVERY:g} seconds" in section
    assert f"at most {refusals.PER_ORIGIN_RATE:g} a second" in section
    assert f"(bursts of {refusals.PER_ORIGIN_BURST})" in section
    assert f"`{refusals.TITLE}`" in section
