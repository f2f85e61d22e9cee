"""PROTOCOL.md section 10.4 (refusal notices) and the code cannot drift apart: its worked
example is checked by a verifier written here from the document's steps alone (``json``,
``hashlib``, ``base64`` and ``cryptography``; nothing from ``broker``) and by the reference.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from jsonschema import Draft202012Validator

ROOT = Path(__file__).parents[2]
DOC = (ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
SCHEMAS = ROOT / "schemas" / "json"
_BLOCK = re.compile(r"<!-- mlanet-example: (\w+) -->\n```\w*\n(.*?)\n```\n", re.DOTALL)


def _examples() -> dict[str, str]:
    blocks: dict[str, str] = {}
    for name, text in _BLOCK.findall(DOC):
        assert name not in blocks, f"two example blocks named {name}"
        blocks[name] = text
    return blocks


EXAMPLES = _examples()


# --- an independent verifier, from the document's steps -------------------------------------


class Refused(Exception):
    """The independent verifier refuses; ``args[0]`` is the documented reason code."""


_B64U = re.compile(r"[A-Za-z0-9_-]*\Z")


def b64u_decode(text: object) -> bytes:
    """Section 3.2: unpadded base64url, alphabet, length and canonical trailing bits."""
    if not isinstance(text, str) or not _B64U.match(text) or len(text) % 4 == 1:
        raise Refused("bad_base64")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64u_encode(raw) != text:
        raise Refused("bad_base64")
    return raw


def b64u_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({key for key, _ in pairs}) != len(pairs):
        raise Refused("duplicate_key")
    return dict(pairs)


def _refuse_constant(_: str) -> Any:
    raise Refused("non_finite_number")


def strict_json(raw: bytes, cap: int) -> Any:
    """Section 4, the rules this example can exercise (size, BOM, UTF-8, duplicates, NaN)."""
    if len(raw) > cap:
        raise Refused("oversized")
    if raw.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        raise Refused("byte_order_mark")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused("not_utf8") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)
    except json.JSONDecodeError:
        raise Refused("invalid_json") from None


def canonical(value: Any) -> bytes:
    """Section 3.3."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def signed_part(b64: object, name: str) -> tuple[bytes, dict[str, Any]]:
    """Section 9 step 3: decode, strict JSON (2048 bytes), an object, canonical."""
    raw = b64u_decode(b64)
    value = strict_json(raw, 2048)
    if not isinstance(value, dict):
        raise Refused("bad_envelope")
    if canonical(value) != raw:
        raise Refused("non_canonical_header")
    _schema(name).validate(value)
    return raw, value


def _schema(name: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((SCHEMAS / f"{name}.json").read_text(encoding="utf-8")))


def ed25519_verify(
    keys: dict[tuple[str, str], str], signer: tuple[str, str], sig: bytes, data: bytes, reason: str
) -> None:
    """Section 7: the signer must be trusted, then Ed25519 over the signing input."""
    if signer not in keys:
        raise Refused("unknown_key")
    try:
        Ed25519PublicKey.from_public_bytes(b64u_decode(keys[signer])).verify(sig, data)
    except InvalidSignature:
        raise Refused(reason) from None


def link_digest(signing_input: bytes, signature_b64: str) -> str:
    """Section 7.3."""
    return b64u_encode(hashlib.sha256(signing_input + b"." + signature_b64.encode()).digest())


def verify_as_documented(wire: bytes, keys: dict[tuple[str, str], str]) -> dict[str, Any]:
    """Sections 5 to 9, in order. Returns what a node would learn from the message."""
    frame = strict_json(wire, 262144)
    if not isinstance(frame, dict) or set(frame) != {
        "mlanet",
        "header",
        "payload",
        "signature",
        "hops",
    }:
        raise Refused("bad_envelope")
    if type(frame["mlanet"]) is not int or frame["mlanet"] != 1:
        raise Refused("unsupported_version")
    if not all(isinstance(frame[m], str) for m in ("header", "payload", "signature")):
        raise Refused("bad_envelope")
    if not isinstance(frame["hops"], list) or len(frame["hops"]) > 16:
        raise Refused("bad_envelope")

    header_raw, header = signed_part(frame["header"], "header")
    payload_raw = b64u_decode(frame["payload"])
    origin_input = f"mlanet-v1:origin:{frame['header']}.{frame['payload']}".encode("ascii")
    signer = (header["origin"]["network"], header["key_id"])
    ed25519_verify(keys, signer, b64u_decode(frame["signature"]), origin_input, "bad_signature")

    path = [header["origin"]["network"]]
    records = []
    prev = link_digest(origin_input, frame["signature"])
    origin_link = prev
    for hop in frame["hops"]:
        if not isinstance(hop, dict) or set(hop) != {"record", "signature"}:
            raise Refused("bad_envelope")
        record_raw, record = signed_part(hop["record"], "hop_record")
        hop_input = f"mlanet-v1:hop:{hop['record']}".encode("ascii")
        hop_signer = (record["network"], record["key_id"])
        signature = b64u_decode(hop["signature"])
        ed25519_verify(keys, hop_signer, signature, hop_input, "bad_hop_signature")
        if record["prev"] != prev:
            raise Refused("hop_chain_broken")
        prev = link_digest(hop_input, hop["signature"])
        path.append(record["network"])
        records.append(record_raw)

    payload = strict_json(payload_raw, 262144)
    _schema(header["kind"]).validate(payload)
    return {
        "header_bytes": header_raw,
        "payload_bytes": payload_raw,
        "records": records,
        "path": path,
        "origin_link_digest": origin_link,
        "content_sha256": b64u_encode(hashlib.sha256(origin_input).digest()),
        "origin_input": origin_input,
    }


def _keys() -> dict[tuple[str, str], str]:
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
    """The same with the reference code (``broker.provenance``), raising Refused likewise."""
    from datetime import UTC, datetime

    import broker
    from broker.provenance import check_refuser, refused_copy
    from schemas import Notice

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
    import broker
    from nodes.refusals import refusal_notice

    trust = broker.TrustStore()
    for (network, key_id), public in _keys().items():
        trust.add(network, key_id, public)
    message = broker.open_envelope(EXAMPLES["wire"].encode("ascii"), trust)
    notice = refusal_notice(message, broker.RefusedMessage(broker.Reason.NO_ROUTE, "none here"))
    assert notice.model_dump(mode="json", exclude_none=True) == _notice_payload()


def test_the_refusal_notice_section_states_the_reference_rate_limits() -> None:
    from nodes import refusals

    section = DOC[DOC.index("### 10.4 Refusal notices") : DOC.index("## 11.")]
    assert f"per {refusals.PER_MESSAGE_EVERY:g} seconds" in section
    assert f"at most {refusals.PER_ORIGIN_RATE:g} a second" in section
    assert f"(bursts of {refusals.PER_ORIGIN_BURST})" in section
    assert f"`{refusals.TITLE}`" in section
