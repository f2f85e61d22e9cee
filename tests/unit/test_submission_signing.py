"""A contact point's signed submissions and returned deliveries: the format (pinned by a golden
vector from a fixed seed and checked with an independent Ed25519 implementation), and every
refusal with its own reason code. The node refuses what these refuse (nodes/runtime/outbox.py)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from mlanet.broker import KeyRefused, Reason, RefusedMessage
from mlanet.broker.contact_point_keys import (
    ContactPointKey,
    ContactPointKeyring,
    KeyFolder,
    VouchedKey,
    generate_contact_point_key,
    load_contact_point_key,
)
from mlanet.broker.keys import b64u_decode, b64u_encode, generate_key_files, load_signing_key
from mlanet.broker.strictjson import canonical_bytes
from mlanet.broker.submission_signing import (
    RETURNED_CONTEXT,
    SUBMISSION_CONTEXT,
    Returned,
    Signed,
    open_submission,
    sign_returned,
    sign_submission,
)
from mlanet.schemas.submission import Submission

MAX = 256 * 1024
KH = ContactPointKey.from_seed("kh-cp-1", "ed25519:1", bytes(range(0x40, 0x60)))
LA = ContactPointKey.from_seed("la-cp-1", "ed25519:1", bytes(range(0x60, 0x80)))
# The golden vector: kh-cp-1's fixed-seed key signs this submission into exactly this frame.
GOLDEN_PUBLIC = "JUO5L_EJVRFHatyDadtt3JM2ZaEZeN2hQE7hBmypVZ0"
GOLDEN_SIGNATURE = (
    "GkTDOykg1SQNhu7pZSo-yFmTPl60bg8pdGJIcy5Ui9ibS1cewd7F_6rV9kq2CYloO50pvgtkGq5gephUxMkAAg"
)


class Keyring:
    """The keys a node vouches for, in memory."""

    def __init__(self, *keys: ContactPointKey) -> None:
        self.keys = {
            k.contact_point: VouchedKey(k.contact_point, k.key_id, k.public_b64()) for k in keys
        }

    def key(self, contact_point: str) -> VouchedKey | None:
        return self.keys.get(contact_point)


def _submission(sender: str = "kh-cp-1", **changes: Any) -> Submission:
    value: dict[str, Any] = {
        "message_id": "0b6c5a54-7c1e-4c8e-9f3a-2d1e0c9b8a71",
        "kind": "facilitation_request",
        "sender": sender,
        "destination": {"country": "UZ"},
        "payload": {
            "case_ref": "KH-MLA-2020-0042",
            "requesting_country": "KH",
            "requested_country": "UZ",
            "offence_categories": ["drug_trafficking"],
            "measures_sought": ["evidence"],
            "languages": ["en"],
            "summary": "Test request: no real case content.",
        },
    }
    return Submission.model_validate(value | changes)


def _refused(body: bytes, keyring: ContactPointKeyring | None = None) -> RefusedMessage:
    with pytest.raises(RefusedMessage) as caught:
        open_submission(body, keyring or Keyring(KH, LA), max_bytes=MAX)
    return caught.value


def _frame(body: bytes) -> dict[str, Any]:
    return dict(json.loads(body))


def _signed_frame(raw: bytes, key: ContactPointKey, signer: str | None = None) -> bytes:
    """A frame over arbitrary bytes, signed by ``key`` and naming ``signer``."""
    document = b64u_encode(raw)
    return canonical_bytes(
        {
            "mlanet_submission": 1,
            "contact_point": signer or key.contact_point,
            "key_id": key.key_id,
            "submission": document,
            "signature": b64u_encode(key.sign(SUBMISSION_CONTEXT + document.encode())),
        }
    )


def test_the_golden_frame_is_pinned_and_verifies_with_an_independent_implementation() -> None:
    body = sign_submission(_submission(), KH)
    frame = _frame(body)
    assert KH.public_b64() == GOLDEN_PUBLIC
    assert frame["signature"] == GOLDEN_SIGNATURE
    assert sorted(frame) == [
        "contact_point",
        "key_id",
        "mlanet_submission",
        "signature",
        "submission",
    ]
    public = Ed25519PublicKey.from_public_bytes(b64u_decode(GOLDEN_PUBLIC))
    public.verify(  # raises unless the signature is over the context and the exact text
        b64u_decode(GOLDEN_SIGNATURE), b"mlanet-v1:submission:" + frame["submission"].encode()
    )
    assert json.loads(b64u_decode(frame["submission"]))["sender"] == "kh-cp-1"


def test_a_signed_submission_opens_to_its_sender_and_content() -> None:
    opened = open_submission(sign_submission(_submission(), KH), Keyring(KH), max_bytes=MAX)
    assert opened == Signed("kh-cp-1", _submission())


def test_only_the_senders_own_key_signs_its_submission() -> None:
    with pytest.raises(ValueError, match="sender"):
        sign_submission(_submission("kh-cp-1"), LA)


def test_an_unsigned_submission_is_refused_as_unsigned() -> None:
    bare = canonical_bytes(_submission().model_dump(mode="json", exclude_none=True))
    assert _refused(bare).reason is Reason.UNSIGNED_SUBMISSION
    frame = _frame(sign_submission(_submission(), KH))
    for unsigned in (
        {k: v for k, v in frame.items() if k != "signature"},
        frame | {"signature": ""},
    ):
        assert _refused(canonical_bytes(unsigned)).reason is Reason.UNSIGNED_SUBMISSION
    assert _refused(b"[1, 2]").reason is Reason.UNSIGNED_SUBMISSION


def test_a_submission_signed_by_another_contact_point_is_refused() -> None:
    """la-cp-1's key on a submission sent as kh-cp-1: refused whether the frame names la-cp-1
    (wrong_sender) or kh-cp-1 (bad_signature)."""
    as_kh = _submission("kh-cp-1")
    raw = canonical_bytes(as_kh.model_dump(mode="json", exclude_none=True))
    honest_signer = _refused(_signed_frame(raw, LA))
    assert honest_signer.reason is Reason.WRONG_SENDER
    assert honest_signer.detail == "signed by la-cp-1, sent as kh-cp-1"
    claimed_signer = _refused(_signed_frame(raw, LA, signer="kh-cp-1"))
    assert claimed_signer.reason is Reason.BAD_SIGNATURE
    assert claimed_signer.detail == "signature by kh-cp-1 ed25519:1 does not verify"


def test_a_contact_point_without_a_key_here_or_with_another_key_is_refused() -> None:
    body = sign_submission(_submission(), KH)
    unknown = _refused(body, Keyring(LA))
    assert (unknown.reason, unknown.detail) == (
        Reason.UNKNOWN_KEY,
        "no key for contact point kh-cp-1 here",
    )
    other_id = ContactPointKey.from_seed("kh-cp-1", "ed25519:2", bytes(range(0x40, 0x60)))
    assert _refused(sign_submission(_submission(), other_id), Keyring(KH)).reason is (
        Reason.UNKNOWN_KEY
    )


def test_a_tampered_submission_is_refused_before_it_is_parsed() -> None:
    frame = _frame(sign_submission(_submission(), KH))
    raw = bytearray(b64u_decode(frame["submission"]))
    raw[raw.index(b"UZ")] = ord("V")
    tampered = frame | {"submission": b64u_encode(bytes(raw))}
    assert _refused(canonical_bytes(tampered)).reason is Reason.BAD_SIGNATURE
    garbage = frame | {"submission": b64u_encode(b"{not json")}
    assert _refused(canonical_bytes(garbage)).reason is Reason.BAD_SIGNATURE  # not parsed


def test_frames_are_parsed_strictly() -> None:
    body = sign_submission(_submission(), KH)
    frame = _frame(body)
    duplicated = body.replace(
        b'{"contact_point":"kh-cp-1",', b'{"contact_point":"kh-cp-1","contact_point":"kh-cp-1",'
    )
    assert _refused(duplicated).reason is Reason.DUPLICATE_KEY
    assert _refused(canonical_bytes(frame | {"extra": 1})).reason is Reason.BAD_ENVELOPE
    without = {k: v for k, v in frame.items() if k != "key_id"}
    assert _refused(canonical_bytes(without)).reason is Reason.BAD_ENVELOPE
    for change in ({"contact_point": "KH-CP-1"}, {"mlanet_submission": 2}, {"key_id": 1}):
        assert _refused(canonical_bytes(frame | change)).reason is Reason.SCHEMA_INVALID
    # 64 bytes leave 4 unused low bits in the last character: "B" sets one (non-canonical)
    loose = frame | {"signature": frame["signature"][:-1] + "B"}
    assert _refused(canonical_bytes(loose)).reason is Reason.BAD_BASE64
    assert _refused(b" " * (MAX * 2)).reason is Reason.OVERSIZED


def test_what_a_contact_point_signs_is_parsed_strictly_after_its_signature() -> None:
    raw = canonical_bytes(_submission().model_dump(mode="json", exclude_none=True))
    twice = raw.replace(b'"kind":', b'"kind":"notice","kind":', 1)
    assert _refused(_signed_frame(twice, KH)).reason is Reason.DUPLICATE_KEY
    value = json.loads(raw) | {"sender": "kh-cp-1", "surprise": True}
    invalid = _refused(_signed_frame(canonical_bytes(value), KH))
    assert (invalid.reason, invalid.detail) == (Reason.SCHEMA_INVALID, "(unexpected field)")


def test_a_returned_delivery_opens_and_its_signature_is_no_submissions() -> None:
    body = sign_returned(b'{"delivered":"bytes"}', Reason.KEY_REVOKED, KH)
    opened = open_submission(body, Keyring(KH), max_bytes=MAX)
    assert opened == Returned("kh-cp-1", Reason.KEY_REVOKED, b'{"delivered":"bytes"}')
    frame = _frame(body)
    tampered = frame | {"reason": "expired"}
    assert _refused(canonical_bytes(tampered)).reason is Reason.BAD_SIGNATURE
    # the same signature over the same text under the other context does not pass
    as_submission = {
        "mlanet_submission": 1,
        "contact_point": "kh-cp-1",
        "key_id": "ed25519:1",
        "submission": frame["message"],
        "signature": frame["signature"],
    }
    assert _refused(canonical_bytes(as_submission)).reason is Reason.BAD_SIGNATURE
    made_up = "not_a_reason"
    signed = b64u_encode(KH.sign(RETURNED_CONTEXT + f"{made_up}.{frame['message']}".encode()))
    unknown = frame | {"reason": made_up, "signature": signed}
    assert _refused(canonical_bytes(unknown)).reason is Reason.SCHEMA_INVALID


def test_contact_point_key_files(tmp_path: Path) -> None:
    """Written 0600 (private) beside a public file; a key file others may read is refused, and
    a network's key file is not a contact point's (nor the other way round)."""
    private, public = tmp_path / "cp" / "contact-point.key", tmp_path / "keys" / "kh-cp-1.pub"
    key = generate_contact_point_key(private, public, "kh-cp-1")
    assert private.stat().st_mode & 0o777 == 0o600
    loaded = load_contact_point_key(private)
    assert (loaded.contact_point, loaded.key_id, loaded.public_b64()) == (
        "kh-cp-1",
        "ed25519:1",
        key.public_b64(),
    )
    assert KeyFolder(tmp_path / "keys").key("kh-cp-1") == VouchedKey(
        "kh-cp-1", "ed25519:1", key.public_b64()
    )
    with pytest.raises(FileExistsError):
        generate_contact_point_key(private, tmp_path / "other.pub", "kh-cp-1")
    private.chmod(0o640)
    with pytest.raises(KeyRefused, match="readable by others"):
        load_contact_point_key(private)
    network_key, _ = generate_key_files(tmp_path / "net", "seajust")
    with pytest.raises(KeyRefused):
        load_contact_point_key(network_key)
    private.chmod(0o600)
    with pytest.raises(KeyRefused):
        load_signing_key(private)
    with pytest.raises(KeyRefused):
        ContactPointKey.from_seed("../etc", "ed25519:1", bytes(32))


def test_the_node_follows_its_key_folder_without_a_restart(tmp_path: Path) -> None:
    """A key added, replaced or removed takes effect with the next submission; an unusable key
    file (another contact point's, a weak key) is refused with its reason."""
    folder = KeyFolder(tmp_path)
    body = sign_submission(_submission(), KH)
    assert _refused(body, folder).reason is Reason.UNKNOWN_KEY
    vouched = {"contact_point": "kh-cp-1", "key_id": "ed25519:1", "public_key": KH.public_b64()}
    (tmp_path / "kh-cp-1.pub").write_text(json.dumps(vouched), encoding="ascii")
    assert isinstance(open_submission(body, folder, max_bytes=MAX), Signed)
    (tmp_path / "kh-cp-1.pub").write_text(
        json.dumps(vouched | {"public_key": LA.public_b64()}) + " ", encoding="ascii"
    )
    assert _refused(body, folder).reason is Reason.BAD_SIGNATURE
    (tmp_path / "kh-cp-1.pub").write_text(
        json.dumps(vouched | {"contact_point": "la-cp-1"}), encoding="ascii"
    )
    assert _refused(body, folder).reason is Reason.MALFORMED_KEY
    small_order = b64u_encode(bytes([1] + [0] * 31))
    (tmp_path / "kh-cp-1.pub").write_text(
        json.dumps(vouched | {"public_key": small_order}), encoding="ascii"
    )
    assert _refused(body, folder).reason is Reason.WEAK_KEY
    (tmp_path / "kh-cp-1.pub").unlink()
    assert _refused(body, folder).reason is Reason.UNKNOWN_KEY


_GOLDEN = sign_submission(_submission(), KH)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


def _only_refused(body: bytes) -> None:
    with contextlib.suppress(RefusedMessage):
        open_submission(body, Keyring(KH, LA), max_bytes=MAX)


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=600), st.integers(min_value=0, max_value=len(_GOLDEN)))
def test_whatever_reaches_mlanet_submit_opens_or_is_refused_with_a_reason(
    noise: bytes, at: int
) -> None:
    """Random bytes, and the golden frame with bytes spliced in: no other exception escapes (the
    node quarantines every refusal with its reason code)."""
    _only_refused(noise)
    _only_refused(_GOLDEN[:at] + noise + _GOLDEN[at:])


@settings(max_examples=300, deadline=None, database=None)
@given(st.sampled_from(sorted(_frame(_GOLDEN))), _JSON)
def test_any_value_in_any_member_of_a_frame_is_refused_with_a_reason(
    member: str, value: Any
) -> None:
    for frame in (_frame(_GOLDEN), _frame(sign_returned(b"{}", Reason.EXPIRED, KH))):
        _only_refused(canonical_bytes(frame | {member: value}))
