"""The signed envelope: build, sign, add hop records, and open (verify first, parse second).

Wire form (one JSON object, UTF-8; ``docs/PROTOCOL.md`` is the normative text)::

    {"header": B64U(canonical header JSON), "hops": [{"record": B64U(..), "signature": B64U(..)}],
     "mlanet": 1, "payload": B64U(payload bytes), "signature": B64U(origin signature)}

Origin signing input: ``b"mlanet-v1:origin:" + header_b64 + b"." + payload_b64``.
Hop signing input:    ``b"mlanet-v1:hop:" + record_b64``.
Link digest of a signature: ``SHA-256(signing_input + b"." + signature_b64)``; a hop record's
``prev`` is the link digest of the signature before it (the origin's for the first hop).
The content hash (dedupe, receipts) is ``SHA-256(origin signing input)``.

A sealed payload (``header.sealed``, ``broker/seal.py``) is signed as sent, sealed; once the
destination has opened it, the node hands its contact points the *delivered form*: the same
envelope with one more member, ``"opened": B64U(plaintext)`` (section 16.5).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from mlanet.broker.errors import Reason, RefusedMessage, error_location
from mlanet.broker.keys import SigningKey, TrustStore, b64u_check, b64u_decode, b64u_encode
from mlanet.broker.seal import seal_payload
from mlanet.broker.strictjson import canonical_bytes, loads_strict
from mlanet.schemas import (
    FORMAT_VERSION,
    Header,
    HopRecord,
    WireModel,
    format_timestamp,
    payload_model,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "SignedHop",
    "SignedMessage",
    "add_hop",
    "decode_payload",
    "open_delivered",
    "open_envelope",
    "sign_message",
]

DEFAULT_MAX_BYTES = 256 * 1024
MAX_HEADER_BYTES = 2048
MAX_HOPS = 16
ORIGIN_CONTEXT = b"mlanet-v1:origin:"
HOP_CONTEXT = b"mlanet-v1:hop:"
_ENVELOPE_KEYS = {"mlanet", "header", "payload", "signature", "hops"}
_DELIVERED_KEYS = _ENVELOPE_KEYS | {"opened"}
_HOP_KEYS = {"record", "signature"}


@dataclass(frozen=True, slots=True)
class SignedHop:
    record: HopRecord
    record_b64: str
    signature_b64: str

    @property
    def signing_input(self) -> bytes:
        return HOP_CONTEXT + self.record_b64.encode("ascii")


@dataclass(frozen=True, slots=True)
class SignedMessage:
    """A message as signed by its origin, with the hop records relays added."""

    header: Header
    header_b64: str
    payload_b64: str
    signature_b64: str
    hops: tuple[SignedHop, ...] = ()
    # the plaintext of a sealed payload, once opened (by its destination, or the origin's own)
    opened: bytes | None = field(default=None, repr=False, compare=False)
    # content_sha256, once computed (dedupe, the store, a refusal's id each ask for it)
    _content_sha256: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def signing_input(self) -> bytes:
        return (
            ORIGIN_CONTEXT
            + self.header_b64.encode("ascii")
            + b"."
            + self.payload_b64.encode("ascii")
        )

    @property
    def content_sha256(self) -> str:
        """b64url SHA-256 of what the origin signed: equal iff header and payload are equal."""
        digest = self._content_sha256
        if digest is None:
            digest = b64u_encode(hashlib.sha256(self.signing_input).digest())
            object.__setattr__(self, "_content_sha256", digest)  # frozen: set once, here
        return digest

    @property
    def payload_bytes(self) -> bytes:
        return b64u_decode(self.payload_b64)

    @property
    def path(self) -> tuple[str, ...]:
        """The networks the message passed through, origin first."""
        return (self.header.origin.network, *(hop.record.network for hop in self.hops))

    @property
    def last_sender(self) -> str:
        """The network that should have handed this message to us."""
        return self.path[-1]

    def last_link_digest(self) -> str:
        if self.hops:
            last = self.hops[-1]
            return _link_digest(last.signing_input, last.signature_b64)
        return _link_digest(self.signing_input, self.signature_b64)

    def to_wire(self) -> dict[str, Any]:
        return {
            "mlanet": FORMAT_VERSION,
            "header": self.header_b64,
            "payload": self.payload_b64,
            "signature": self.signature_b64,
            "hops": [{"record": h.record_b64, "signature": h.signature_b64} for h in self.hops],
        }

    def to_bytes(self) -> bytes:
        return canonical_bytes(self.to_wire())

    def to_delivered_bytes(self) -> bytes:
        """What a contact point of the destination receives: the envelope as signed, and the
        opened plaintext of a sealed payload beside it."""
        wire = self.to_wire()
        if self.header.sealed is not None:
            if self.opened is None:
                raise ValueError("a sealed payload is delivered only once opened")
            wire["opened"] = b64u_encode(self.opened)
        return canonical_bytes(wire)

    @property
    def plaintext(self) -> bytes:
        """The payload's bytes to parse: the opened plaintext of a sealed payload."""
        if self.header.sealed is None:
            return self.payload_bytes
        if self.opened is None:
            raise RefusedMessage(Reason.SEAL_DOES_NOT_OPEN, "the sealed payload was not opened")
        return self.opened


def _link_digest(signing_input: bytes, signature_b64: str) -> str:
    return b64u_encode(
        hashlib.sha256(signing_input + b"." + signature_b64.encode("ascii")).digest()
    )


def _canonical_model(model: WireModel) -> bytes:
    return canonical_bytes(model.model_dump(mode="json", exclude_none=True))


def sign_message(
    header: Header,
    payload: WireModel | bytes,
    key: SigningKey,
    *,
    seal_with: str | None = None,
) -> SignedMessage:
    """The origin signs ``header`` and ``payload`` (a model, or bytes sent as they are).

    A header that says ``sealed`` needs ``seal_with``, the public encryption key it names: the
    payload is sealed under the header's bytes and signed as sealed (``broker/seal.py``)."""
    if header.origin.network != key.network or header.key_id != key.key_id:
        raise ValueError("header origin and key id must name the signing key")
    if (header.sealed is None) != (seal_with is None):
        raise ValueError("a sealed header needs the encryption key it names, and only it")
    payload_bytes = payload if isinstance(payload, bytes) else _canonical_model(payload)
    header_b64 = b64u_encode(_canonical_model(header))
    opened = None
    if seal_with is not None:
        opened, payload_bytes = payload_bytes, seal_payload(payload_bytes, header_b64, seal_with)
    payload_b64 = b64u_encode(payload_bytes)
    unsigned = SignedMessage(header, header_b64, payload_b64, "", opened=opened)
    return replace(unsigned, signature_b64=b64u_encode(key.sign(unsigned.signing_input)))


def add_hop(message: SignedMessage, key: SigningKey, *, to: str, at: datetime) -> SignedMessage:
    """A relay appends its signed hop record; the origin's signature is untouched."""
    # Built directly (no validation round trip: every field is this node's own, on the hot
    # path of every relay); the canonical bytes are what _canonical_model would produce.
    at = at.replace(microsecond=at.microsecond // 1000 * 1000)  # the wire keeps milliseconds
    prev = message.last_link_digest()
    record_b64 = b64u_encode(
        canonical_bytes(
            {
                "at": format_timestamp(at),
                "key_id": key.key_id,
                "network": key.network,
                "prev": prev,
                "to": to,
            }
        )
    )
    record = HopRecord.model_construct(
        network=key.network, key_id=key.key_id, at=at, to=to, prev=prev
    )
    signature = key.sign(HOP_CONTEXT + record_b64.encode("ascii"))
    hop = SignedHop(record, record_b64, b64u_encode(signature))
    return replace(message, hops=(*message.hops, hop))


# --- opening: verify first, parse second -------------------------------------------------------


def _b64_field(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise RefusedMessage(Reason.BAD_ENVELOPE, f"{name} must be a string")
    return value


def _has_fraction(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_fraction(item) for item in value.values())
    return isinstance(value, list) and any(_has_fraction(item) for item in value)


def _signed_json(b64: str, name: str) -> tuple[bytes, dict[str, Any]]:
    """Decode a base64url JSON part, strictly, and insist on its canonical form."""
    if len(b64) > MAX_HEADER_BYTES * 4 // 3 + 4:
        raise RefusedMessage(Reason.OVERSIZED, f"{name} too large")
    raw = b64u_decode(b64)
    value = loads_strict(raw, max_bytes=MAX_HEADER_BYTES, max_depth=4)
    if not isinstance(value, dict):
        raise RefusedMessage(Reason.BAD_ENVELOPE, f"{name} is not an object")
    # Canonical JSON writes integers only: a fraction or an exponent has no canonical form.
    if _has_fraction(value) or canonical_bytes(value) != raw:
        raise RefusedMessage(Reason.NON_CANONICAL_HEADER, f"{name} is not in canonical form")
    return raw, value


def _signer(value: dict[str, Any], network: object, name: str) -> tuple[str, str]:
    key_id = value.get("key_id")
    if not isinstance(network, str) or not isinstance(key_id, str):
        raise RefusedMessage(Reason.SCHEMA_INVALID, f"{name} does not name its signer")
    return network, key_id


def _validate(model: type[WireModel], value: Any, name: str) -> Any:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        # Field locations and error types only: never the offending input.
        where = ", ".join(
            f"{error_location(err)}:{err['type']}"
            for err in exc.errors(include_input=False, include_url=False)[:5]
        )
        raise RefusedMessage(Reason.SCHEMA_INVALID, f"{name}: {where}") from None


def open_envelope(
    data: bytes,
    trust: TrustStore,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    now: datetime | None = None,
) -> SignedMessage:
    """Check the exact bytes received and return the message, or raise RefusedMessage.

    Order: size cap, strict JSON of the frame, the header's canonical bytes, the origin
    signature (before any header field is trusted), the header schema, then every hop record
    (signature, schema, chain). The payload is not parsed here: see :func:`decode_payload`.
    With ``now``, every signing key must also be inside its validity window at that time.
    """
    frame = loads_strict(data, max_bytes=max_bytes, max_depth=4)
    if not isinstance(frame, dict) or set(frame) != _ENVELOPE_KEYS:
        raise RefusedMessage(
            Reason.BAD_ENVELOPE, "envelope must hold exactly " + ",".join(sorted(_ENVELOPE_KEYS))
        )
    return _open_frame(frame, trust, now)


def open_delivered(
    data: bytes,
    trust: TrustStore,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    now: datetime | None = None,
) -> SignedMessage:
    """A message in its delivered form (what a contact point receives): the envelope, checked
    as :func:`open_envelope` does, and for a sealed payload its ``opened`` plaintext, which
    :attr:`SignedMessage.plaintext` then returns. The plaintext comes from the network's own
    node (only it may write a delivery queue); it is parsed as strictly as any payload."""
    frame = loads_strict(data, max_bytes=max_bytes * 2, max_depth=4)
    if not isinstance(frame, dict) or not _ENVELOPE_KEYS <= set(frame) <= _DELIVERED_KEYS:
        raise RefusedMessage(
            Reason.BAD_ENVELOPE, "a delivered envelope holds " + ",".join(sorted(_DELIVERED_KEYS))
        )
    opened_b64 = frame.pop("opened", None)
    message = _open_frame(frame, trust, now)
    if (opened_b64 is None) != (message.header.sealed is None):
        raise RefusedMessage(Reason.BAD_ENVELOPE, "opened goes with a sealed payload, and only")
    if opened_b64 is None:
        return message
    return replace(message, opened=b64u_decode(_b64_field(opened_b64, "opened")))


def _open_frame(frame: dict[str, Any], trust: TrustStore, now: datetime | None) -> SignedMessage:
    if frame["mlanet"] != FORMAT_VERSION or type(frame["mlanet"]) is not int:
        raise RefusedMessage(Reason.UNSUPPORTED_VERSION, "only format 1 is understood")
    header_b64 = _b64_field(frame["header"], "header")
    payload_b64 = _b64_field(frame["payload"], "payload")
    signature_b64 = _b64_field(frame["signature"], "signature")
    hops = frame["hops"]
    if not isinstance(hops, list) or len(hops) > MAX_HOPS:
        raise RefusedMessage(Reason.BAD_ENVELOPE, f"hops must be a list of at most {MAX_HOPS}")

    _, raw_header = _signed_json(header_b64, "header")
    origin = raw_header.get("origin")
    network, key_id = _signer(
        raw_header, origin.get("network") if isinstance(origin, dict) else None, "header"
    )
    b64u_check(payload_b64)  # the payload must at least be well-formed base64url
    signing_input = ORIGIN_CONTEXT + header_b64.encode("ascii") + b"." + payload_b64.encode("ascii")
    trust.verify(
        network,
        key_id,
        b64u_decode(signature_b64),
        signing_input,
        reason=Reason.BAD_SIGNATURE,
        at=now,
    )

    header = _validate(Header, raw_header, "header")
    message = SignedMessage(header, header_b64, payload_b64, signature_b64)
    if not hops:
        return message

    prev = message.last_link_digest()
    signed_hops: list[SignedHop] = []
    for index, hop in enumerate(hops):
        if not isinstance(hop, dict) or set(hop) != _HOP_KEYS:
            raise RefusedMessage(Reason.BAD_ENVELOPE, f"hop {index} must hold record,signature")
        record_b64 = _b64_field(hop["record"], f"hop {index}")
        hop_sig_b64 = _b64_field(hop["signature"], f"hop {index} signature")
        _, raw_record = _signed_json(record_b64, f"hop {index}")
        hop_network, hop_key = _signer(raw_record, raw_record.get("network"), f"hop {index}")
        trust.verify(
            hop_network,
            hop_key,
            b64u_decode(hop_sig_b64),
            HOP_CONTEXT + record_b64.encode("ascii"),
            reason=Reason.BAD_HOP_SIGNATURE,
            at=now,
        )
        record = _validate(HopRecord, raw_record, f"hop {index}")
        if record.prev != prev:
            raise RefusedMessage(Reason.HOP_CHAIN_BROKEN, f"hop {index} does not follow the chain")
        signed = SignedHop(record, record_b64, hop_sig_b64)
        prev = _link_digest(signed.signing_input, hop_sig_b64)
        signed_hops.append(signed)
    return replace(message, hops=tuple(signed_hops))


def decode_payload(message: SignedMessage, *, max_bytes: int = DEFAULT_MAX_BYTES) -> WireModel:
    """Strictly parse and validate the payload against the model of the header's kind."""
    value = loads_strict(message.plaintext, max_bytes=max_bytes)
    return _validate(payload_model(message.header.kind), value, "payload")  # type: ignore[no-any-return]
