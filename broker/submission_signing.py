"""What a contact point hands its own node, signed with its own key: a submission, or a delivered
message it hands back. Local to one network (``mlanet.submit``); never sent between networks.

A signed submission is one JSON object (``mlanet.schemas.submission.SignedSubmission``)::

    {"contact_point": "kh-cp-1", "key_id": "ed25519:1", "mlanet_submission": 1,
     "signature": B64U(Ed25519 over b"mlanet-v1:submission:" + submission),
     "submission": B64U(the submission's JSON bytes)}

A returned delivery (``mlanet.schemas.submission.ReturnedDelivery``) is signed over
``b"mlanet-v1:returned:" + reason + b"." + message``, ``message`` being B64U of the delivered
bytes. The contexts differ, so neither signature can pass for the other, nor for a message's,
a hop's, the directory's or the audit trail's.

Opening follows the envelope's rule, verify first and parse second: the frame is parsed strictly
(duplicate keys refused), the signature is checked over the exact ``submission`` text with the key
the node vouches for that contact point (a
``mlanet.broker.contact_point_keys.ContactPointKeyring``), and only then is the submission decoded,
parsed strictly and validated. Refusals: ``unsigned_submission`` (a bare submission, or a frame
without a signature), ``bad_envelope`` (members missing or added), ``schema_invalid``,
``unknown_key`` (the contact point has no key at this node, or not that one), ``malformed_key`` /
``weak_key`` (its key file is unusable), ``bad_signature``, ``wrong_sender`` (signed by one contact
point, sent as another), and the strict JSON and base64 codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from mlanet.broker.contact_point_keys import ContactPointKey, ContactPointKeyring
from mlanet.broker.errors import KeyRefused, Reason, RefusedMessage, error_location
from mlanet.broker.keys import b64u_decode, b64u_encode
from mlanet.broker.strictjson import canonical_bytes, loads_strict
from mlanet.schemas.submission import ReturnedDelivery, SignedSubmission, Submission

__all__ = [
    "RETURNED_CONTEXT",
    "SUBMISSION_CONTEXT",
    "Returned",
    "Signed",
    "frame_cap",
    "open_submission",
    "sign_returned",
    "sign_submission",
    "signed_inner",
]

SUBMISSION_CONTEXT = b"mlanet-v1:submission:"
RETURNED_CONTEXT = b"mlanet-v1:returned:"
_SUBMISSION_KEYS = frozenset(SignedSubmission.model_fields)
_RETURNED_KEYS = frozenset(ReturnedDelivery.model_fields)
M = TypeVar("M", bound=BaseModel)


def frame_cap(max_message_bytes: int) -> int:
    """The largest frame that can carry ``max_message_bytes`` (B64U, plus the other members)."""
    return (max_message_bytes * 4 + 2) // 3 + 1024


@dataclass(frozen=True)
class Signed:
    """A submission whose signature verified: ``contact_point`` signed it and is its sender."""

    contact_point: str
    submission: Submission


@dataclass(frozen=True)
class Returned:
    """A delivered message its contact point handed back (signature verified)."""

    contact_point: str
    reason: Reason
    message: bytes


def sign_submission(submission: Submission, key: ContactPointKey) -> bytes:
    """The frame ``mlanet send`` publishes: the submission signed by its sender's key."""
    if submission.sender != key.contact_point:
        raise ValueError("a submission is signed by its sender's key")
    document = b64u_encode(canonical_bytes(submission.model_dump(mode="json", exclude_none=True)))
    signature = b64u_encode(key.sign(SUBMISSION_CONTEXT + document.encode("ascii")))
    frame = SignedSubmission(
        mlanet_submission=1,
        contact_point=key.contact_point,
        key_id=key.key_id,
        submission=document,
        signature=signature,
    )
    return canonical_bytes(frame.model_dump(mode="json"))


def sign_returned(message: bytes, reason: Reason, key: ContactPointKey) -> bytes:
    """The frame that hands a delivered ``message`` back to the node, refused for ``reason``."""
    encoded = b64u_encode(message)
    signed = RETURNED_CONTEXT + f"{reason.value}.{encoded}".encode("ascii")
    frame = ReturnedDelivery(
        mlanet_returned=1,
        contact_point=key.contact_point,
        key_id=key.key_id,
        reason=reason.value,
        message=encoded,
        signature=b64u_encode(key.sign(signed)),
    )
    return canonical_bytes(frame.model_dump(mode="json"))


def _locations(exc: ValidationError) -> str:
    errors = exc.errors(include_input=False, include_url=False)
    return ", ".join(error_location(e) for e in errors[:5])


def _frame(data: bytes, max_bytes: int) -> dict[str, Any]:
    value = loads_strict(data, max_bytes=frame_cap(max_bytes))
    marked = isinstance(value, dict) and (
        "mlanet_submission" in value or "mlanet_returned" in value
    )
    if not marked or not value.get("signature"):
        raise RefusedMessage(
            Reason.UNSIGNED_SUBMISSION,
            "not signed by its contact point (mlanet send signs with --credentials)",
        )
    assert isinstance(value, dict)
    return value


def _model(model: type[M], frame: dict[str, Any], keys: frozenset[str]) -> M:
    if set(frame) != keys:
        raise RefusedMessage(
            Reason.BAD_ENVELOPE, "the frame holds exactly " + ",".join(sorted(keys))
        )
    try:
        return model.model_validate(frame)
    except ValidationError as exc:
        raise RefusedMessage(Reason.SCHEMA_INVALID, f"frame: {_locations(exc)}") from None


def _verify(
    keys: ContactPointKeyring, contact_point: str, key_id: str, signature: str, data: bytes
) -> None:
    try:
        vouched = keys.key(contact_point)
    except KeyRefused as exc:
        raise RefusedMessage(exc.reason, f"the key file of {contact_point} is unusable") from None
    if vouched is None:
        raise RefusedMessage(Reason.UNKNOWN_KEY, f"no key for contact point {contact_point} here")
    if vouched.key_id != key_id:
        raise RefusedMessage(Reason.UNKNOWN_KEY, f"{contact_point} has no key {key_id} here")
    if not vouched.check(b64u_decode(signature), data):
        raise RefusedMessage(
            Reason.BAD_SIGNATURE, f"signature by {contact_point} {key_id} does not verify"
        )


def open_submission(data: bytes, keys: ContactPointKeyring, *, max_bytes: int) -> Signed | Returned:
    """Verify a contact point's signature, then parse what it signed; or raise RefusedMessage.
    ``max_bytes`` bounds the submission (or the returned message) itself."""
    frame = _frame(data, max_bytes)
    if "mlanet_returned" in frame:
        returned = _model(ReturnedDelivery, frame, _RETURNED_KEYS)
        signed = f"{returned.reason}.{returned.message}".encode("ascii")
        _verify(
            keys,
            returned.contact_point,
            returned.key_id,
            returned.signature,
            RETURNED_CONTEXT + signed,
        )
        try:
            reason = Reason(returned.reason)
        except ValueError:
            raise RefusedMessage(Reason.SCHEMA_INVALID, "frame: reason") from None
        return Returned(returned.contact_point, reason, b64u_decode(returned.message))
    framed = _model(SignedSubmission, frame, _SUBMISSION_KEYS)
    _verify(
        keys,
        framed.contact_point,
        framed.key_id,
        framed.signature,
        SUBMISSION_CONTEXT + framed.submission.encode("ascii"),
    )
    value = loads_strict(b64u_decode(framed.submission), max_bytes=max_bytes)
    try:
        submission = Submission.model_validate(value)
    except ValidationError as exc:
        raise RefusedMessage(Reason.SCHEMA_INVALID, _locations(exc)) from None
    if submission.sender != framed.contact_point:
        raise RefusedMessage(
            Reason.WRONG_SENDER,
            f"signed by {framed.contact_point}, sent as {submission.sender}",
        )
    return Signed(framed.contact_point, submission)


def signed_inner(frame: object) -> bytes | None:
    """What a parsed frame carries, unverified (a submission's or a returned message's bytes),
    for tools that show what a quarantined frame claims; None for anything else."""
    if not isinstance(frame, dict):
        return None
    if "mlanet_submission" in frame:
        inner = frame.get("submission")
    elif "mlanet_returned" in frame:
        inner = frame.get("message")
    else:
        return None
    if not isinstance(inner, str):
        return None
    try:
        return b64u_decode(inner)
    except RefusedMessage:
        return None
