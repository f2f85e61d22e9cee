"""An independent implementation of docs/PROTOCOL.md, written from the document alone.

It uses ``json``, ``hashlib``, ``base64``, ``cryptography`` and ``jsonschema`` (with the JSON
Schemas in ``schemas/json/``) and nothing of mlanet's own code (``broker``, ``nodes``,
``schemas``): ``tests/unit/test_protocol_doc.py`` checks that it imports none of them. Where it
and the reference agree on the document's worked examples and vectors, the document is complete
enough for a second implementation; where they disagree, the document or the code is wrong.

Covered: opening an envelope (sections 3 to 9, the header size cap and the rule on numbers
included), receipts (8.1), choosing the next hop and local delivery (10.1, 10.2), opening a signed
directory and its schema (14.1), the CA certificates it lists (14.7), key and password files (15),
sealed payloads (16: sealing for the destination network, opening with its private key and the
destination's checks in order, the delivered form), and building and signing messages and
receipts the way section 8.1 says (so that integration tests can act as a second implementation
on the real broker). For HPKE it uses ``cryptography``'s ``hpke`` module directly, as a second
implementation in Python would.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from jsonschema import Draft202012Validator

ROOT = Path(__file__).parents[1]
SCHEMAS = ROOT / "schemas" / "json"

HEADER_CAP = 2048  # section 4: bytes of the header (and of a hop record) after decoding
HEADER_TEXT_CAP = 2734  # section 9, step 3: characters of its text before decoding
MESSAGE_CAP = 262144
RECEIPTED = (
    "facilitation_request",
    "status_update",
    "information_request",
    "information_response",
    "meeting_request",
)
OBSERVER_KINDS = ("notice", "receipt")
SEAL_SUITE = "hpke-mlkem768x25519-hkdfsha256-chacha20poly1305"
SEALED_KINDS = (*RECEIPTED, "receipt")  # section 16.1; directory_update and notice never


class Refused(Exception):
    """The independent implementation refuses; ``args[0]`` is the documented reason code."""


# --- sections 3 and 4 ---------------------------------------------------------------------------
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


class _Fraction(float):
    """A number written with a fraction or an exponent (section 2: never in the header)."""


def strict_json(raw: bytes, cap: int) -> Any:
    """Section 4, the rules the examples exercise (size, BOM, UTF-8, duplicates, NaN)."""
    if len(raw) > cap:
        raise Refused("oversized")
    if raw.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        raise Refused("byte_order_mark")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused("not_utf8") from None
    try:
        return json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_refuse_constant,
            parse_float=_Fraction,
        )
    except json.JSONDecodeError:
        raise Refused("invalid_json") from None


def _has_fraction(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_fraction(v) for v in value.values())
    return isinstance(value, list) and any(_has_fraction(v) for v in value)


def canonical(value: Any) -> bytes:
    """Section 3.3 (integers only: a number with a fraction or exponent has no canonical form)."""
    if _has_fraction(value):
        raise Refused("non_canonical_header")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def schema(name: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((SCHEMAS / f"{name}.json").read_text(encoding="utf-8")))


def _valid(name: str, value: Any) -> None:
    if not schema(name).is_valid(value):
        raise Refused("schema_invalid")


def signed_part(b64: object) -> tuple[bytes, dict[str, Any]]:
    """Section 9 step 3: the size cap on the text, then decode, strict JSON (2048 bytes), an
    object, canonical."""
    if isinstance(b64, str) and len(b64) > HEADER_TEXT_CAP:
        raise Refused("oversized")
    raw = b64u_decode(b64)
    value = strict_json(raw, HEADER_CAP)
    if not isinstance(value, dict):
        raise Refused("bad_envelope")
    if canonical(value) != raw:
        raise Refused("non_canonical_header")
    return raw, value


# --- section 7 ----------------------------------------------------------------------------------
Keys = dict[tuple[str, str], str]


def ed25519_verify(
    keys: Keys, signer: tuple[str, str], sig: bytes, data: bytes, reason: str
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


def content_hash(frame: dict[str, Any]) -> str:
    """Section 7.4."""
    origin_input = f"mlanet-v1:origin:{frame['header']}.{frame['payload']}".encode("ascii")
    return b64u_encode(hashlib.sha256(origin_input).digest())


@dataclass(frozen=True)
class Opened:
    """What a node learns from a message (sections 5 to 9)."""

    header: dict[str, Any]
    header_bytes: bytes
    payload: Any
    payload_bytes: bytes
    records: list[dict[str, Any]]
    record_bytes: list[bytes]
    path: list[str]
    origin_link_digest: str
    content_sha256: str
    origin_input: bytes
    opened: bytes | None = None  # the plaintext of a sealed payload (section 16)


_FRAME = {"mlanet", "header", "payload", "signature", "hops"}


def open_envelope(
    wire: bytes, keys: Keys, *, payload: bool = True, recipient: Recipient | None = None
) -> Opened:
    """Sections 5 to 9, in order (the payload last, when ``payload``). A sealed payload is
    opened first (section 16.6) with ``recipient``, the destination's keys."""
    frame = strict_json(wire, MESSAGE_CAP)
    if not isinstance(frame, dict) or set(frame) != _FRAME:
        raise Refused("bad_envelope")
    return _open_frame(frame, keys, payload=payload, recipient=recipient)


def open_delivered(wire: bytes, keys: Keys) -> Opened:
    """Section 16.7: what a contact point receives from its own node, the envelope and, for a
    sealed payload, ``opened``: its plaintext, which the payload's checks then read."""
    frame = strict_json(wire, 2 * MESSAGE_CAP)
    if not isinstance(frame, dict) or not _FRAME <= set(frame) <= _FRAME | {"opened"}:
        raise Refused("bad_envelope")
    opened_b64 = frame.pop("opened", None)
    learned = _open_frame(frame, keys, payload=False, recipient=None)
    if (opened_b64 is None) != ("sealed" not in learned.header):
        raise Refused("bad_envelope")
    plaintext = learned.payload_bytes if opened_b64 is None else b64u_decode(opened_b64)
    value = strict_json(plaintext, MESSAGE_CAP)
    _valid(learned.header["kind"], value)
    opened = None if opened_b64 is None else plaintext
    return replace(learned, payload=value, opened=opened)


def _open_frame(
    frame: dict[str, Any], keys: Keys, *, payload: bool, recipient: Recipient | None
) -> Opened:
    if type(frame["mlanet"]) is not int or frame["mlanet"] != 1:
        raise Refused("unsupported_version")
    if not all(isinstance(frame[m], str) for m in ("header", "payload", "signature")):
        raise Refused("bad_envelope")
    if not isinstance(frame["hops"], list) or len(frame["hops"]) > 16:
        raise Refused("bad_envelope")

    header_raw, header = signed_part(frame["header"])
    origin = header.get("origin")
    network = origin.get("network") if isinstance(origin, dict) else None
    if not isinstance(network, str) or not isinstance(header.get("key_id"), str):
        raise Refused("schema_invalid")
    payload_raw = b64u_decode(frame["payload"])
    signature = b64u_decode(frame["signature"])
    origin_input = f"mlanet-v1:origin:{frame['header']}.{frame['payload']}".encode("ascii")
    ed25519_verify(keys, (network, header["key_id"]), signature, origin_input, "bad_signature")
    _valid("header", header)

    path = [network]
    records, record_bytes = [], []
    prev = origin_link = link_digest(origin_input, frame["signature"])
    for hop in frame["hops"]:
        if not isinstance(hop, dict) or set(hop) != {"record", "signature"}:
            raise Refused("bad_envelope")
        if not all(isinstance(hop[m], str) for m in ("record", "signature")):
            raise Refused("bad_envelope")
        raw, record = signed_part(hop["record"])
        if not isinstance(record.get("network"), str) or not isinstance(record.get("key_id"), str):
            raise Refused("schema_invalid")
        hop_input = f"mlanet-v1:hop:{hop['record']}".encode("ascii")
        hop_signature = b64u_decode(hop["signature"])
        signer = (record["network"], record["key_id"])
        ed25519_verify(keys, signer, hop_signature, hop_input, "bad_hop_signature")
        _valid("hop_record", record)
        if record["prev"] != prev:
            raise Refused("hop_chain_broken")
        prev = link_digest(hop_input, hop["signature"])
        path.append(record["network"])
        records.append(record)
        record_bytes.append(raw)

    value, opened = None, None
    if payload:
        plaintext = payload_raw
        if "sealed" in header or recipient is not None:
            if recipient is None:
                raise Refused("unknown_encryption_key")  # holds no key: cannot read it
            plaintext = opened = recipient.unseal(header, frame["header"], payload_raw)
        value = strict_json(plaintext, MESSAGE_CAP)
        _valid(header["kind"], value)
    return Opened(
        header=header,
        header_bytes=header_raw,
        payload=value,
        payload_bytes=payload_raw,
        records=records,
        record_bytes=record_bytes,
        path=path,
        origin_link_digest=origin_link,
        content_sha256=b64u_encode(hashlib.sha256(origin_input).digest()),
        origin_input=origin_input,
        opened=opened,
    )


# --- building and signing, as another implementation would ---------------------------------------
def timestamp(at: datetime) -> str:
    """Section 2: ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    at = at.astimezone(UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def sign(
    header: dict[str, Any],
    payload: dict[str, Any] | bytes,
    seed: bytes,
    *,
    seal_for: tuple[str, dict[str, Any]] | None = None,
) -> bytes:
    """An envelope with no hops, signed by the origin (sections 5 and 7.2); ``payload`` is a
    JSON object, or bytes sent as they are. With ``seal_for`` (a network and the encryption
    key its directory entry lists) the header says ``sealed`` and the payload is sealed under
    the header's text, then signed as sealed (section 16)."""
    if seal_for is not None:
        network, listed = seal_for
        header = {
            **header,
            "sealed": {"key_id": listed["key_id"], "network": network, "suite": SEAL_SUITE},
        }
    header_b64 = b64u_encode(canonical(header))
    payload_bytes = payload if isinstance(payload, bytes) else canonical(payload)
    if seal_for is not None:
        payload_bytes = seal(payload_bytes, header_b64, seal_for[1]["public_key"])
    payload_b64 = b64u_encode(payload_bytes)
    signing_input = f"mlanet-v1:origin:{header_b64}.{payload_b64}".encode("ascii")
    signature = Ed25519PrivateKey.from_private_bytes(seed).sign(signing_input)
    frame = {
        "header": header_b64,
        "hops": [],
        "mlanet": 1,
        "payload": payload_b64,
        "signature": b64u_encode(signature),
    }
    return canonical(frame)


def receipt_for(
    received: Opened,
    *,
    network: str,
    key_id: str,
    seed: bytes,
    delivered_to: str | None,
    at: datetime,
    origin: dict[str, str] | None = None,
    content_sha256: str | None = None,
    seal_for: tuple[str, dict[str, Any]] | None = None,
) -> bytes:
    """Section 8.1: the receipt the destination ``network`` signs for a message it delivered.
    ``origin`` (default ``{"network": network}``) and ``content_sha256`` may be given to build
    the variants section 8.1 allows or refuses; ``seal_for`` seals it for the received
    message's origin network (section 16.2)."""
    original = received.header
    header = {
        "content": "json",
        "created_at": timestamp(at),
        "destination": dict(original["origin"]),
        "format": 1,
        "hop_limit": 6,
        "in_reply_to": original["message_id"],
        "key_id": key_id,
        "kind": "receipt",
        "message_id": str(uuid.uuid4()),
        "origin": origin or {"network": network},
        "urgency": "normal",
    }
    payload = {
        "content_sha256": content_sha256 or received.content_sha256,
        "received_at": timestamp(at),
        "received_by": "node",
        "receipt_for": original["message_id"],
    }
    if delivered_to is not None:
        payload["delivered_to"] = delivered_to
    return sign(header, payload, seed, seal_for=seal_for)


def receipt_counts(receipt: Opened, sent: Opened, target: str) -> bool:
    """Section 8.1: does ``receipt`` (opened) mark ``sent`` (a message this node sent towards
    ``target``) delivered? Raises Refused("unauthorised") for one that must be refused."""
    payload = receipt.payload
    if receipt.header["kind"] != "receipt" or not isinstance(payload, dict):
        return False
    if payload["receipt_for"] != sent.header["message_id"]:
        return False  # about another message: changes nothing about this one
    if receipt.header["origin"]["network"] != target:
        raise Refused("unauthorised")
    if payload["content_sha256"] != sent.content_sha256:
        raise Refused("unauthorised")
    return True


# --- section 10.1 and 10.2: the next hop, local delivery -----------------------------------------
def _parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z")


def contact_points_as_of(network: dict[str, Any], at: datetime) -> dict[str, str | None]:
    """Section 10.2: the contact points that count at ``at``, each with whom it hands over to
    (None: it receives itself), in directory order."""
    listed = {cp["id"]: cp for cp in network["contact_points"]}

    def active(cp: dict[str, Any]) -> bool:
        start, end = cp.get("not_before"), cp.get("not_after")
        return (start is None or _parse_time(start) <= at) and (
            end is None or at < _parse_time(end)
        )

    view: dict[str, str | None] = {}
    for cp in network["contact_points"]:
        start, end = cp.get("not_before"), cp.get("not_after")
        if start is not None and at < _parse_time(start):
            continue  # not appointed yet
        ended = end is not None and at >= _parse_time(end)
        successor = cp.get("successor")
        if successor is not None:
            view[cp["id"]] = successor if ended or end is None else None
        elif ended:
            standing_in = [a for a in cp.get("alternates", []) if active(listed[a])]
            if standing_in:
                view[cp["id"]] = standing_in[0]
        else:
            view[cp["id"]] = None
    changed = True
    while changed:  # a handover to one that does not count leads nowhere
        changed = False
        for cp_id, to in list(view.items()):
            if to is not None and to not in view:
                del view[cp_id]
                changed = True
    return view


def _is_observer(network: dict[str, Any], country: str | None) -> bool:
    if network.get("role", "member") == "observer":
        return True
    return country is not None and country in network.get("observers", [])


def _entitled(header: dict[str, Any], network: dict[str, Any], country: str | None) -> bool:
    if not _is_observer(network, country):
        return True
    return header["kind"] in OBSERVER_KINDS and header.get("members_only") is None


def deliver_locally(
    header: dict[str, Any], network: dict[str, Any], at: datetime
) -> tuple[str, list[str]]:
    """Section 10.2: ("deliver", contact points) or ("refuse", [reason])."""
    view = contact_points_as_of(network, at)
    country_of = {cp["id"]: cp["country"] for cp in network["contact_points"]}
    destination = header["destination"]
    if destination.get("contact_point") is not None:
        current: str | None = destination["contact_point"]
        for _ in range(7):  # at most 7 successors followed
            if current not in view or view[current] is None:
                break
            current = view[current]
        if current not in view or view[current] is not None:
            return "refuse", ["no_route"]
        if not _entitled(header, network, country_of[current]):
            return "refuse", ["not_for_observers"]
        return "deliver", [current]
    receiving = [cp for cp, to in view.items() if to is None]
    if destination.get("country") is not None:
        country = destination["country"]
        found = [cp for cp in receiving if country_of[cp] == country]
        if not found:
            return "refuse", ["no_route"]
        if not _entitled(header, network, country):
            return "refuse", ["not_for_observers"]
        return "deliver", found[:1]
    entitled = [cp for cp in receiving if _entitled(header, network, country_of[cp])]
    if entitled:
        return "deliver", entitled
    return "refuse", ["not_for_observers" if receiving else "no_route"]


def _neighbours(directory: dict[str, Any], network: str) -> set[str]:
    return {b for a, b in directory["links"] if a == network} | {
        a for a, b in directory["links"] if b == network
    }


def _shortest_paths(
    directory: dict[str, Any], start: str, goal: str, avoid: set[str]
) -> list[list[str]]:
    """Every shortest link path start -> goal (without ``start``) that enters no network of
    ``avoid``: breadth first, keeping every path of the current length."""
    paths = [[start]]
    reached = {start}
    while paths:
        longer = []
        for path in paths:
            for nxt in _neighbours(directory, path[-1]):
                if nxt not in reached and nxt not in avoid:
                    longer.append([*path, nxt])
        done = [path[1:] for path in longer if path[-1] == goal]
        if done:
            return done
        reached |= {path[-1] for path in longer}
        paths = longer
    return []


def _rule_matches(rule: dict[str, Any], header: dict[str, Any], target: str) -> bool:
    destination = header["destination"]
    return (
        (not rule.get("kinds") or header["kind"] in rule["kinds"])
        and (not rule.get("countries") or destination.get("country") in rule["countries"])
        and (not rule.get("networks") or target in rule["networks"])
        and (rule.get("urgency") is None or header.get("urgency", "normal") == rule["urgency"])
    )


def target_of(header: dict[str, Any], directory: dict[str, Any], here: str) -> str | None:
    """Section 10.1, step 2: the network a message is addressed to, as ``here`` sees it."""
    destination = header["destination"]
    if destination.get("network") is not None:
        return str(destination["network"])
    country = destination["country"]
    networks = directory["networks"]
    serving = sorted(n["id"] for n in networks if country in n["members"])
    serving = serving or sorted(n["id"] for n in networks if country in n.get("observers", []))
    return here if here in serving else (serving[0] if serving else None)


def next_hop(
    header: dict[str, Any],
    path: Sequence[str],
    directory: dict[str, Any],
    here: str,
    at: datetime,
    rules: Iterable[dict[str, Any]] = (),
) -> tuple[str, list[str]]:
    """Section 10.1: ("forward", [peer]), ("deliver", contact points) or ("refuse", [reason])."""
    networks = {n["id"]: n for n in directory["networks"]}
    if here in path:
        return "refuse", ["loop_detected"]
    destination = header["destination"]
    target = target_of(header, directory, here)
    direct = header.get("direct_only") is True
    if target == here:
        if direct and len(path) > 1:
            return "refuse", ["direct_only_relayed"]
        return deliver_locally(header, networks[here], at)
    if target is None or target not in networks:
        return "refuse", ["no_route"]
    if not _entitled(header, networks[target], destination.get("country")):
        return "refuse", ["not_for_observers"]
    if path and here in networks and not _entitled(header, networks[here], None):
        return "refuse", ["not_for_observers"]
    if target in path:
        return "refuse", ["loop_detected"]
    if len(path) > header.get("hop_limit", 6):
        return "refuse", ["hop_limit_exceeded"]
    observers = {n for n, e in networks.items() if e.get("role") == "observer"} - {target}
    avoid = set(path) | observers
    linked = _neighbours(directory, here)
    if direct:
        if not path and target in linked:
            return "forward", [target]
        return "refuse", ["direct_only_relayed"]
    for rule in rules:
        if (
            _rule_matches(rule, header, target)
            and rule["via"] in linked
            and rule["via"] not in avoid
        ):
            return "forward", [rule["via"]]
    if target in linked:
        return "forward", [target]
    candidates = _shortest_paths(directory, here, target, avoid)
    if candidates:
        return "forward", [min(candidates)[0]]
    if _shortest_paths(directory, here, target, observers):
        return "refuse", ["loop_detected"]
    return "refuse", ["no_route"]


# --- section 14.1: a signed directory ---------------------------------------------------------
def open_directory(data: bytes, coordinator_keys: Keys) -> dict[str, Any]:
    """Section 14.1, the steps the examples exercise: the frame, the signature over the exact
    ``document`` text, then the document, strictly parsed and valid under its schema."""
    frame = strict_json(data, MESSAGE_CAP)
    if not isinstance(frame, dict) or not frame.get("signature"):
        raise Refused("unsigned_directory")
    if set(frame) != {"mlanet_directory", "signer", "key_id", "document", "signature"}:
        raise Refused("bad_envelope")
    _valid("signed_directory", frame)
    signer = (frame["signer"], frame["key_id"])
    signing_input = b"mlanet-v1:directory:" + frame["document"].encode("ascii")
    ed25519_verify(
        coordinator_keys, signer, b64u_decode(frame["signature"]), signing_input, "bad_signature"
    )
    document = strict_json(b64u_decode(frame["document"]), MESSAGE_CAP)
    _valid("directory", document)
    if document.get("coordinator") != frame["signer"]:
        raise Refused("unauthorised")
    listed = list(document.get("link_cas", []))
    for network in document["networks"]:
        listed += network.get("tls", {}).get("cas", [])
    for entry in listed:
        check_ca(entry, document["issued_at"])
    return dict(document)


# --- section 14.7: CA certificates ------------------------------------------------------------
def _timestamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def check_ca(entry: dict[str, Any], issued_at: str) -> None:
    """Section 14.7, the checks of a listed CA certificate, in the order the section gives."""
    pem = entry["pem"]
    labels = re.findall(r"-----BEGIN ([A-Z0-9 ]+)-----", pem)
    if any("PRIVATE" in label for label in labels):
        raise Refused("tls_private_key")
    block = re.fullmatch(
        r"\s*(-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]*-----END CERTIFICATE-----)\s*", pem
    )
    if labels != ["CERTIFICATE"] or block is None:
        raise Refused("tls_bad_certificate")
    try:
        certificate = x509.load_pem_x509_certificate(block.group(1).encode("ascii"))
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise Refused("tls_not_ca") from None
    except ValueError:
        raise Refused("tls_bad_certificate") from None
    if not constraints.ca:
        raise Refused("tls_not_ca")
    if certificate.issuer == certificate.subject:
        try:
            certificate.verify_directly_issued_by(certificate)
        except (InvalidSignature, ValueError, TypeError):
            raise Refused("tls_bad_certificate") from None
    public = certificate.public_key()
    allowed = (
        isinstance(public, ec.EllipticCurvePublicKey)
        and public.curve.name in ("secp256r1", "secp384r1")
    ) or (isinstance(public, rsa.RSAPublicKey) and 3072 <= public.key_size <= 8192)
    digests = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
    if not allowed or not isinstance(certificate.signature_hash_algorithm, digests):
        raise Refused("tls_weak_certificate")
    starts, ends = _timestamp(entry["not_before"]), _timestamp(entry["not_after"])
    if (starts, ends) != (certificate.not_valid_before_utc, certificate.not_valid_after_utc):
        raise Refused("tls_validity_mismatch")
    if ends <= _timestamp(issued_at):
        raise Refused("tls_ca_expired")


# --- section 15: files ----------------------------------------------------------------------------
def private_key_file(text: str) -> tuple[str, str, bytes]:
    """A ``.key`` file: (network, key id, seed)."""
    value = json.loads(text)
    seed = b64u_decode(value["seed"])
    if len(seed) != 32:
        raise Refused("malformed_key")
    return value["network"], value["key_id"], seed


def public_key_of(seed: bytes) -> str:
    return b64u_encode(Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw())


def password_of(text: str) -> str:
    """A password file: its content without surrounding whitespace."""
    return text.strip()


def password_hash(password: str, salt: bytes) -> str:
    """Section 14.5: RabbitMQ's ``rabbit_password_hashing_sha256``."""
    return base64.b64encode(
        salt + hashlib.sha256(salt + password.encode("utf-8")).digest()
    ).decode()


# --- section 16: sealed payloads -----------------------------------------------------------------
_HPKE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
ENC_BYTES = 1120  # the KEM's enc: ML-KEM-768 ciphertext (1088) || X25519 share (32)
TAG_BYTES = 16


def seal_info(header_b64: str) -> bytes:
    """Section 16.5: HPKE ``info`` binds the seal to the signed header's text."""
    return b"mlanet-v1:seal:" + header_b64.encode("ascii")


def _valid_at(entry: dict[str, Any], at: datetime) -> bool:
    """Section 14.3's rule for a key: from ``not_before`` until ``not_after``, never revoked."""
    if entry.get("revoked_at") is not None:
        return False
    start, end = entry.get("not_before"), entry.get("not_after")
    return (start is None or _timestamp(start) <= at) and (end is None or at < _timestamp(end))


def encryption_key(directory: dict[str, Any], network: str, at: datetime) -> dict[str, Any] | None:
    """Section 16.4: the key an origin seals for ``network`` with: its newest valid one."""
    entry = next((n for n in directory["networks"] if n["id"] == network), None)
    valid = [k for k in (entry or {}).get("encryption_keys", []) if _valid_at(k, at)]
    return max(valid, key=lambda k: int(k["key_id"].split(":")[1]), default=None)


def seal_for(
    header: dict[str, Any], directory: dict[str, Any], here: str, at: datetime
) -> tuple[str, dict[str, Any]] | None:
    """Section 16.2: a message of a sealed kind is sealed for its target network when that
    network lists a valid encryption key; None: sent unsealed."""
    if header["kind"] not in SEALED_KINDS:
        return None
    target = target_of(header, directory, here)
    listed = encryption_key(directory, target, at) if target is not None else None
    return None if listed is None else (str(target), listed)


def _public_key(raw: str) -> hpke.MLKEM768X25519PublicKey:
    """Section 16.4: B64U of the ML-KEM-768 encapsulation key (1184) || X25519 public key (32)."""
    data = b64u_decode(raw)
    if len(data) != 1216:
        raise Refused("malformed_key")
    try:
        return hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(data[:1184]),
            x25519.X25519PublicKey.from_public_bytes(data[1184:]),
        )
    except ValueError:
        raise Refused("malformed_key") from None


def seal(plaintext: bytes, header_b64: str, public_key: str) -> bytes:
    """Section 16.5: ``enc || ciphertext``, HPKE base mode, single shot, empty aad."""
    return _HPKE.encrypt(plaintext, _public_key(public_key), info=seal_info(header_b64))


@dataclass(frozen=True)
class SealKey:
    """A network's private encryption key (section 16.4): the ML-KEM-768 seed (``d || z``, 64
    bytes) and the X25519 private key (32 bytes)."""

    network: str
    key_id: str
    mlkem_seed: bytes
    x25519_private: bytes

    def _parts(self) -> tuple[mlkem.MLKEM768PrivateKey, x25519.X25519PrivateKey]:
        return (
            mlkem.MLKEM768PrivateKey.from_seed_bytes(self.mlkem_seed),
            x25519.X25519PrivateKey.from_private_bytes(self.x25519_private),
        )

    def public_key(self) -> str:
        kem, dh = self._parts()
        return b64u_encode(kem.public_key().public_bytes_raw() + dh.public_key().public_bytes_raw())

    def open(self, sealed: bytes, header_b64: str) -> bytes:
        if len(sealed) < ENC_BYTES + TAG_BYTES:
            raise Refused("seal_does_not_open")
        try:
            private = hpke.MLKEM768X25519PrivateKey(*self._parts())
            return _HPKE.decrypt(sealed, private, info=seal_info(header_b64))
        except (InvalidTag, ValueError):
            raise Refused("seal_does_not_open") from None


def seal_key_file(text: str) -> SealKey:
    """Section 16.4: a ``<network>.seal.<n>.key`` file."""
    value = json.loads(text)
    seed, private = b64u_decode(value["mlkem768_seed"]), b64u_decode(value["x25519"])
    if value.get("suite") != SEAL_SUITE or len(seed) != 64 or len(private) != 32:
        raise Refused("malformed_key")
    return SealKey(value["network"], value["key_id"], seed, private)


@dataclass(frozen=True)
class Recipient:
    """The destination network as section 16.6 opens a payload: its id, the encryption keys its
    directory entry lists, its private keys by key id, and its ``require_sealed`` policy."""

    network: str
    listed: list[dict[str, Any]]
    keys: dict[str, SealKey]
    require_sealed: bool = False

    @classmethod
    def of(
        cls, directory: dict[str, Any], keys: Iterable[SealKey], require_sealed: bool = False
    ) -> Recipient:
        held = list(keys)
        network = held[0].network
        entry = next(n for n in directory["networks"] if n["id"] == network)
        return cls(
            network,
            list(entry.get("encryption_keys", [])),
            {k.key_id: k for k in held},
            require_sealed,
        )

    def unseal(self, header: dict[str, Any], header_b64: str, payload: bytes) -> bytes:
        """Section 16.6, in order; the plaintext (the payload itself when not sealed)."""
        sealed = header.get("sealed")
        if sealed is None:
            if self.require_sealed and header["kind"] in SEALED_KINDS:
                raise Refused("not_sealed")
            return payload
        if sealed["network"] != self.network:
            raise Refused("sealed_for_other_network")
        listed = next((k for k in self.listed if k["key_id"] == sealed["key_id"]), None)
        private = self.keys.get(sealed["key_id"])
        if listed is None or private is None:
            raise Refused("unknown_encryption_key")
        if listed.get("revoked_at") is not None:
            raise Refused("encryption_key_revoked")
        if not _valid_at(listed, _timestamp(header["created_at"])):
            raise Refused("unknown_encryption_key")
        if private.public_key() != listed["public_key"]:
            raise Refused("unknown_encryption_key")
        return private.open(payload, header_b64)
