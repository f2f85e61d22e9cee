"""The hostile-input corpus: messages a misbehaving peer sends, each with the outcome it must get.

The scene: the receiving node is ``casc``; its peers are ``seajust`` (the hostile one, who
sends everything below with its own broker credentials) and ``ejn`` (honest). ``casc``'s config
forbids ``seajust`` to send ``directory_update`` (see :func:`restrict_kinds`). Every entry has a
name, the layer it attacks, how it is built, a builder and the outcome:

- ``Quarantined(reason)``: the node refuses it into ``mlanet.quarantine`` with exactly that
  ``x-mlanet-reason``, and nothing is delivered or forwarded;
- ``Refused(code)``: the broker itself refuses the publish (the channel is closed with that
  AMQP reply code), so the node never sees it;
- ``Deduplicated()``: a replay of a message already delivered: acknowledged, never delivered
  twice, not quarantined;
- ``Recorded(event)``: acknowledged and recorded in the node's tracking as ``event``, neither
  delivered nor quarantined (nothing in it to act on, nor anyone to blame for certain);
- ``Delivered()``: a valid message whose AMQP properties carry bytes the node's AMQP client
  could not decode before the hardening (``broker/amqp_decode.py``); properties are only hints,
  so it is delivered once, and the node's connection survives. Also the honest sealed request
  (``sealed_request``): the baseline the sealing entries differ from, delivered once, opened.

Entries with ``setup`` publish those messages first (each must be delivered) and the hostile
one after. The builders take a :class:`Scene` (the federation's signing keys, the networks'
public encryption keys as the directory lists them, and the receiver's limits) so that the
same corpus drives the integration battery, the unit check through
``mlanet.nodes.runtime.pipeline.receive`` and ``bench/bench_hostile.py``.

Every network of the scene lists an encryption key (``hpke:1``) and honest origins seal the
sealed kinds for their destination network (``docs/PROTOCOL.md`` section 16); the ``sealing``
entries attack that. Most other entries send their request unsealed: ``casc`` has no
``[policy] require_sealed``, so an unsealed request still passes the ``unseal`` step and each
of them still reaches the step it attacks (the payload attacks included: their bytes are
parsed as they were before sealing existed; the ``sealing`` entries repeat them inside a seal).
"""

from __future__ import annotations

import os
import tomllib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from mlanet.broker import Reason, SigningKey, canonical_bytes, load_signing_key
from mlanet.broker.keys import b64u_decode, b64u_encode
from mlanet.nodes.config import load_config
from mlanet.nodes.local.federation import Federation, signed_directory
from mlanet.schemas import KINDS
from mlanet.schemas.sealing import EncryptionKey
from tests.hostile.forge import (
    Frame,
    facilitation_payload,
    header,
    hop,
    receipt_payload,
    seal_and_sign,
    sealed,
    sign,
    text,
    wire,
)
from tests.hostile.peer import FarTimestamp, Publication, RawText

__all__ = [
    "CORPUS",
    "HONEST",
    "HOSTILE",
    "RECEIVER",
    "Attack",
    "Deduplicated",
    "Delivered",
    "Hostile",
    "Quarantined",
    "Recorded",
    "Refused",
    "Scene",
    "restrict_kinds",
]

RECEIVER = "casc"
HOSTILE = "seajust"
HONEST = "ejn"
RESTRICTED = "directory_update"  # casc does not take this kind from seajust
CONTACT_POINT = "uz-cp-1"  # where casc delivers messages for UZ

ACCESS_REFUSED = 403
PRECONDITION_FAILED = 406


@dataclass(frozen=True)
class Quarantined:
    reason: Reason


@dataclass(frozen=True)
class Refused:
    code: int


@dataclass(frozen=True)
class Deduplicated:
    pass


@dataclass(frozen=True)
class Delivered:
    pass


@dataclass(frozen=True)
class Recorded:
    event: str


Outcome = Quarantined | Refused | Deduplicated | Delivered | Recorded


@dataclass(frozen=True)
class Scene:
    """What the builders need: the federation's signing keys, the broker users, the time, the
    receiver's and the broker's size limits, and each network's public encryption keys: the
    one an honest origin seals for it with (``encryption``: the newest valid one its directory
    entry lists) and all it lists (``encryption_keys``, revoked ones included)."""

    keys: Mapping[str, SigningKey]
    users: Mapping[str, str]
    now: datetime
    max_bytes: int
    encryption: Mapping[str, EncryptionKey]
    encryption_keys: Mapping[str, tuple[EncryptionKey, ...]]
    broker_max_bytes: int = 128 * 1024 * 1024

    @classmethod
    def of(cls, federation: Federation, now: datetime) -> Scene:
        """The scene of a local federation (``nodes/local/federation.py``) as it stands on
        disk: its networks' signing keys, its directory (after :func:`harness.rotate`, if
        called before) and the receiver's config."""
        keys = {}
        for network in federation.networks:
            path = federation.root / network / f"{network}.1.key"
            if path.exists():
                keys[network] = load_signing_key(path)
        encryption = {}
        networks = signed_directory(federation).networks
        for entry in networks:
            newest = entry.encryption_key(now)
            if newest is not None:
                encryption[entry.id] = newest
        return cls(
            keys=keys,
            users={network: federation.link_user(network) for network in federation.networks},
            now=now,
            max_bytes=load_config(federation.config_path(RECEIVER)).limits.max_message_bytes,
            encryption=encryption,
            encryption_keys={entry.id: tuple(entry.encryption_keys) for entry in networks},
        )

    def public_key(self, network: str) -> str:
        """``network``'s public encryption key, base64url as its directory entry lists it."""
        return self.encryption[network].public_key

    def encryption_key(self, network: str, key_id: str) -> EncryptionKey:
        """``network``'s encryption key ``key_id`` as its directory entry lists it."""
        return next(key for key in self.encryption_keys[network] if key.key_id == key_id)


@dataclass(frozen=True)
class Attack:
    hostile: Publication
    setup: tuple[Publication, ...] = ()


@dataclass(frozen=True)
class Hostile:
    name: str
    layer: str
    how: str
    build: Callable[[Scene], Attack]
    expect: Outcome
    big: bool = False  # 128 MiB through the broker: the integration battery only
    node_only: bool = False  # refused by the running node after the pipeline accepted it

    @property
    def at_amqp_layer(self) -> bool:
        """Needs the broker to be seen (properties, exchanges, frames): not for receive()."""
        return self.layer == "transport"


# Keys nobody trusts, from fixed seeds.
UNLISTED_SEAJUST = SigningKey.from_seed("seajust", "ed25519:7", bytes(range(160, 192)))
ATLANTIS = SigningKey.from_seed("atlantis", "ed25519:1", bytes(range(192, 224)))
# seajust's keys from before a rotation: the scene's directory lists them (harness.rotate), one
# whose validity ended yesterday and one the coordinator revoked yesterday.
ROTATED_OUT = SigningKey.from_seed("seajust", "ed25519:8", bytes(range(224, 256)))
REVOKED = SigningKey.from_seed("seajust", "ed25519:9", bytes(range(0, 64, 2)))


def _valid(scene: Scene, **changes: Any) -> Frame:
    """A valid facilitation request from seajust for UZ: casc delivers it to uz-cp-1."""
    return sign(header(_k(scene), scene.now, **changes), facilitation_payload(), _k(scene))


def _k(scene: Scene, network: str = HOSTILE) -> SigningKey:
    return scene.keys[network]


def _body(body: bytes, **properties: Any) -> Attack:
    return Attack(Publication(body, properties=properties))


def _frame(frame: Frame, **properties: Any) -> Attack:
    return _body(wire(frame), **properties)


def _signed_payload(scene: Scene, payload: dict[str, Any] | bytes) -> Attack:
    # Unsealed, as before sealed payloads: casc (no [policy] require_sealed) takes an unsealed
    # request and parses its payload as sent; the *_inside_a_seal entries do the same in a seal.
    return _frame(sign(header(_k(scene), scene.now), payload, _k(scene)))


def _signed_header(scene: Scene, value: dict[str, Any] | bytes) -> Attack:
    return _frame(sign(value, facilitation_payload(), _k(scene)))


def _nest(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def _deep_headers(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"n": value}
    return value


def _relayed(scene: Scene, origin: str, relay: str, to: str, **hop_changes: Any) -> Frame:
    """A message from ``origin`` for UZ with one hop record by ``relay`` addressed to ``to``."""
    frame = sign(header(_k(scene, origin), scene.now), facilitation_payload(), _k(scene, origin))
    return hop(frame, _k(scene, relay), to=to, at=scene.now, **hop_changes)


def _replay_same(scene: Scene) -> Attack:
    original = Publication(wire(_valid(scene)))
    return Attack(original, setup=(original,))


def _equivocation(scene: Scene) -> Attack:
    first = header(_k(scene), scene.now)
    honest = sign(first, facilitation_payload(), _k(scene))
    other = sign(first, facilitation_payload(summary="Other text, same id."), _k(scene))
    return Attack(Publication(wire(other)), setup=(Publication(wire(honest)),))


def _replayed_by_another_peer(scene: Scene) -> Attack:
    """ejn's own message (from France), delivered by ejn; seajust sends the same bytes again."""
    original = wire(
        sign(
            header(_k(scene, HONEST), scene.now),
            facilitation_payload(requesting_country="FR"),
            _k(scene, HONEST),
        )
    )
    return Attack(Publication(original), setup=(Publication(original, as_network=HONEST),))


def _over_the_cap(scene: Scene) -> Attack:
    frame = _valid(scene)
    body = wire(frame)
    padding = scene.max_bytes + 1 - len(body)
    return _body(body[:-1] + b" " * padding + b"}")


def _at_the_broker_maximum(scene: Scene) -> Attack:
    body = wire(_valid(scene))
    return _body(body[:-1] + b" " * (scene.broker_max_bytes - len(body)) + b"}")


def _canonical_header(scene: Scene) -> bytes:
    return canonical_bytes(header(scene.keys[HOSTILE], scene.now))


def _canonical_payload() -> bytes:
    return canonical_bytes(facilitation_payload())


def _bad_signature(scene: Scene) -> Attack:
    frame = _valid(scene)
    return _frame({**frame, "signature": _flip(frame["signature"])})


def _receipt_for_unsent(scene: Scene) -> Attack:
    never_sent = str(uuid.uuid4())
    value = header(
        _k(scene),
        scene.now,
        kind="receipt",
        destination={"network": RECEIVER},
        in_reply_to=never_sent,
    )
    return _frame(sign(value, receipt_payload(never_sent, scene.now), _k(scene)))


# --- sealed payloads --------------------------------------------------------------------------
# casc's encryption key from before a rotation, revoked yesterday: the scene's directory lists it
# and casc's node holds its private half (harness.rotate). An encryption key id casc does not
# list, and a suite nobody defines.
REVOKED_ENCRYPTION_KEY = "hpke:2"
UNLISTED_ENCRYPTION_KEY = "hpke:9"
UNKNOWN_SUITE = "hpke-x25519-hkdfsha256-aes128gcm"
# Long enough to hold the KEM's enc (1120 bytes) and the AEAD tag, and random: opens with no key.
RANDOM_SEAL_BYTES = 2048


def _sealed_request(
    scene: Scene,
    plaintext: dict[str, Any] | bytes | None = None,
    *,
    origin: str = HOSTILE,
    sealed_for: str = RECEIVER,
    key_id: str | None = None,
    with_key: EncryptionKey | None = None,
    **changes: Any,
) -> Frame:
    """A request from ``origin`` for UZ whose payload (default: a valid request) is sealed
    with ``sealed_for``'s real public encryption key (``with_key``, default: the one honest
    origins use); the header says ``sealed_for`` and ``key_id`` (default: the key it was
    sealed with)."""
    listed = with_key or scene.encryption[sealed_for]
    value = header(
        _k(scene, origin),
        scene.now,
        sealed=sealed(sealed_for, key_id or listed.key_id),
        **changes,
    )
    if plaintext is None:
        country = value["origin"]["country"]
        plaintext = facilitation_payload(requesting_country=country)
    return seal_and_sign(value, plaintext, _k(scene, origin), listed.public_key)


def _sealed_bytes(scene: Scene, payload: bytes) -> Frame:
    """seajust's header that says sealed for casc with hpke:1, over ``payload`` as it is."""
    statement = sealed(RECEIVER, scene.encryption[RECEIVER].key_id)
    return sign(header(_k(scene), scene.now, sealed=statement), payload, _k(scene))


def _seal_moved(scene: Scene) -> Attack:
    """ejn's request sealed for casc (one seajust may have relayed): its sealed payload, as it
    is, in a new header by seajust (new id, seajust's origin), re-signed by seajust."""
    lifted = _sealed_request(scene, origin=HONEST)
    return _frame(_sealed_bytes(scene, b64u_decode(lifted["payload"])))


def _sealed_replay(scene: Scene) -> Attack:
    original = Publication(wire(_sealed_request(scene)))
    return Attack(original, setup=(original,))


def _opened_by_the_peer(scene: Scene) -> Attack:
    """A seal that opens with no key, sent in the form a destination hands its contact points
    (``"opened"``: the plaintext beside it): the node must open seals itself, never read this."""
    frame = _sealed_bytes(scene, os.urandom(RANDOM_SEAL_BYTES))
    opened = b64u_encode(canonical_bytes(facilitation_payload()))
    return _frame({**frame, "opened": opened})


def _sealed_notice(scene: Scene) -> Attack:
    value = header(
        _k(scene),
        scene.now,
        kind="notice",
        sealed=sealed(RECEIVER, scene.encryption[RECEIVER].key_id),
    )
    notice = {"title": "Plenary", "topic": "plenary"}
    return _frame(seal_and_sign(value, notice, _k(scene), scene.public_key(RECEIVER)))


def _flip(text_value: str) -> str:
    return ("B" if text_value[0] != "B" else "C") + text_value[1:]


CORPUS: tuple[Hostile, ...] = (
    # --- transport: properties, exchanges, frames ------------------------------------------
    Hostile(
        "content_type_json",
        "transport",
        "a valid envelope with content_type application/json",
        lambda s: _frame(_valid(s), content_type="application/json"),
        Quarantined(Reason.BAD_TRANSPORT),
    ),
    Hostile(
        "content_type_missing",
        "transport",
        "a valid envelope with no content_type property",
        lambda s: _frame(_valid(s), content_type=None),
        Quarantined(Reason.BAD_TRANSPORT),
    ),
    Hostile(
        "content_type_not_utf8",
        "transport",
        "the envelope's content type followed by the byte 0xff (decoded as U+FFFD)",
        lambda s: _frame(
            _valid(s), content_type=RawText.of(b"application/vnd.mlanet+json; v=1\xff")
        ),
        Quarantined(Reason.BAD_TRANSPORT),
    ),
    Hostile(
        "content_encoding_gzip",
        "transport",
        "a valid envelope claiming content_encoding gzip",
        lambda s: _frame(_valid(s), content_encoding="gzip"),
        Quarantined(Reason.BAD_TRANSPORT),
    ),
    Hostile(
        "expiration_set",
        "transport",
        "a valid envelope with expiration 60000 ms (it would expire out of the inbox unrefused)",
        lambda s: _frame(_valid(s), expiration="60000"),
        Quarantined(Reason.BAD_TRANSPORT),
    ),
    Hostile(
        "headers_claim_another_sender",
        "transport",
        "ejn's message pushed by seajust, with x-mlanet-sender/x-mlanet-via/app_id naming ejn",
        lambda s: Attack(
            Publication(
                wire(sign(header(_k(s, HONEST), s.now), facilitation_payload(), _k(s, HONEST))),
                properties={
                    "headers": {
                        "x-mlanet-sender": HONEST,
                        "x-mlanet-via": f"mlanet.inbox.from.{HONEST}",
                    },
                    "app_id": f"mlanet-{HONEST}",
                },
            )
        ),
        Quarantined(Reason.WRONG_SENDER),
    ),
    Hostile(
        "message_id_not_utf8",
        "transport",
        "a valid envelope whose AMQP message_id is the bytes ff fe (not UTF-8)",
        lambda s: _frame(_valid(s), message_id=RawText.of(b"\xff\xfe")),
        Delivered(),
    ),
    Hostile(
        "timestamp_beyond_9999",
        "transport",
        "a valid envelope whose AMQP timestamp property is 2**63 seconds",
        lambda s: _frame(_valid(s), timestamp=FarTimestamp(2026, 1, 1)),
        Delivered(),
    ),
    Hostile(
        "header_table_hostile",
        "transport",
        "a valid envelope whose AMQP headers have a non-UTF-8 name and tables nested 300 deep",
        lambda s: _frame(
            _valid(s), headers={RawText.of(b"x-\xc3\x28"): 1, "deep": _deep_headers(300)}
        ),
        Delivered(),
    ),
    Hostile(
        "routing_key_not_utf8",
        "transport",
        "a valid envelope published with the routing key bytes c3 28 (not UTF-8)",
        lambda s: Attack(Publication(wire(_valid(s)), routing_key=RawText.of(b"\xc3\x28"))),
        Delivered(),
    ),
    Hostile(
        "exchange_of_another_peer",
        "transport",
        "seajust publishes into mlanet.inbox.from.ejn (to pass as ejn)",
        lambda s: Attack(Publication(wire(_valid(s)), exchange=f"mlanet.inbox.from.{HONEST}")),
        Refused(ACCESS_REFUSED),
    ),
    Hostile(
        "default_exchange_to_the_inbox",
        "transport",
        "seajust publishes through the default exchange straight to the queue mlanet.inbox",
        lambda s: Attack(Publication(wire(_valid(s)), exchange="", routing_key="mlanet.inbox")),
        Refused(ACCESS_REFUSED),
    ),
    Hostile(
        "user_id_of_another_network",
        "transport",
        "a valid envelope whose user_id property names ejn's broker user",
        lambda s: _frame(_valid(s), user_id=s.users[HONEST]),
        Refused(PRECONDITION_FAILED),
    ),
    # --- encoding --------------------------------------------------------------------------
    Hostile(
        "invalid_utf8",
        "encoding",
        "a valid envelope with a stray 0xff byte in the frame",
        lambda s: _body(wire(_valid(s)).replace(b'"hops"', b'"h\xffops"')),
        Quarantined(Reason.NOT_UTF8),
    ),
    Hostile(
        "overlong_utf8",
        "encoding",
        "an overlong two-byte encoding of '/' (c0 af) inside a string",
        lambda s: _body(wire(_valid(s)).replace(b'"hops"', b'"ho\xc0\xafps"')),
        Quarantined(Reason.NOT_UTF8),
    ),
    Hostile(
        "utf8_byte_order_mark",
        "encoding",
        "a valid envelope preceded by the UTF-8 BOM ef bb bf",
        lambda s: _body(b"\xef\xbb\xbf" + wire(_valid(s))),
        Quarantined(Reason.BYTE_ORDER_MARK),
    ),
    Hostile(
        "utf16_with_bom",
        "encoding",
        "a valid envelope encoded as UTF-16 with its BOM",
        lambda s: _body(wire(_valid(s)).decode("ascii").encode("utf-16")),
        Quarantined(Reason.BYTE_ORDER_MARK),
    ),
    Hostile(
        "utf16le_without_bom",
        "encoding",
        "a valid envelope encoded as UTF-16LE without a BOM (NUL bytes between characters)",
        lambda s: _body(wire(_valid(s)).decode("ascii").encode("utf-16-le")),
        Quarantined(Reason.INVALID_JSON),
    ),
    # --- JSON syntax -----------------------------------------------------------------------
    Hostile(
        "truncated",
        "json",
        "a valid envelope cut in the middle",
        lambda s: _body(wire(_valid(s))[:300]),
        Quarantined(Reason.INVALID_JSON),
    ),
    Hostile(
        "trailing_data",
        "json",
        "a valid envelope followed by a second JSON value",
        lambda s: _body(wire(_valid(s)) + b"{}"),
        Quarantined(Reason.INVALID_JSON),
    ),
    Hostile(
        "duplicate_frame_key",
        "json",
        "a frame with two 'signature' members, the second one forged",
        lambda s: _body(wire(_valid(s))[:-1] + b',"signature":"' + b"A" * 86 + b'"}'),
        Quarantined(Reason.DUPLICATE_KEY),
    ),
    Hostile(
        "duplicate_key_in_signed_header",
        "json",
        "a validly signed header that names 'kind' twice",
        lambda s: _signed_header(
            s,
            b'{"kind":"notice",' + _canonical_header(s)[1:],
        ),
        Quarantined(Reason.DUPLICATE_KEY),
    ),
    # --- numbers ---------------------------------------------------------------------------
    Hostile(
        "nan_version",
        "numbers",
        "the frame's mlanet member is NaN",
        lambda s: _body(wire(_valid(s)).replace(b'"mlanet":1', b'"mlanet":NaN')),
        Quarantined(Reason.NON_FINITE_NUMBER),
    ),
    Hostile(
        "huge_exponent",
        "numbers",
        "the frame's mlanet member is 1e99999 (overflows to infinity)",
        lambda s: _body(wire(_valid(s)).replace(b'"mlanet":1', b'"mlanet":1e99999')),
        Quarantined(Reason.NON_FINITE_NUMBER),
    ),
    Hostile(
        "long_number_literal",
        "numbers",
        "the frame's mlanet member is 1 followed by a 40-digit fraction",
        lambda s: _body(wire(_valid(s)).replace(b'"mlanet":1', b'"mlanet":1.' + b"0" * 40)),
        Quarantined(Reason.NUMBER_TOO_LONG),
    ),
    Hostile(
        "version_as_float",
        "numbers",
        "the frame's mlanet member is 1.0",
        lambda s: _body(wire(_valid(s)).replace(b'"mlanet":1', b'"mlanet":1.0')),
        Quarantined(Reason.UNSUPPORTED_VERSION),
    ),
    Hostile(
        "huge_exponent_in_signed_payload",
        "numbers",
        "a validly signed payload with an extra member 1e400",
        lambda s: _signed_payload(s, _canonical_payload()[:-1] + b',"x":1e400}'),
        Quarantined(Reason.NON_FINITE_NUMBER),
    ),
    # --- unicode ---------------------------------------------------------------------------
    Hostile(
        "lone_surrogate_in_signed_payload",
        "unicode",
        "a validly signed payload whose summary escapes a lone high surrogate \\ud800",
        lambda s: _signed_payload(
            s, _canonical_payload().replace(b'"Test request', b'"\\ud800Test request')
        ),
        Quarantined(Reason.LONE_SURROGATE),
    ),
    Hostile(
        "control_character_in_summary",
        "unicode",
        "a validly signed payload whose summary holds BEL (U+0007)",
        lambda s: _signed_payload(s, facilitation_payload(summary="Test\u0007request")),
        Quarantined(Reason.SCHEMA_INVALID),
    ),
    Hostile(
        "confusable_origin_network",
        "unicode",
        "a header whose origin network is 'seaju\\u0455t' (Cyrillic dze), signed by seajust's key",
        lambda s: _signed_header(
            s,
            header(_k(s), s.now, origin={"country": "KH", "network": "seaju\u0455t"}),
        ),
        Quarantined(Reason.UNKNOWN_KEY),
    ),
    Hostile(
        "confusable_contact_point",
        "unicode",
        "a validly signed header for contact point 'uz-c\\u0440-1' (Cyrillic er)",
        lambda s: _signed_header(
            s,
            header(
                _k(s),
                s.now,
                destination={"contact_point": "uz-c\u0440-1", "country": "UZ"},
            ),
        ),
        Quarantined(Reason.SCHEMA_INVALID),
    ),
    # --- structure -------------------------------------------------------------------------
    Hostile(
        "missing_hops",
        "structure",
        "a validly signed envelope without its 'hops' member",
        lambda s: _body(wire({k: v for k, v in _valid(s).items() if k != "hops"})),
        Quarantined(Reason.BAD_ENVELOPE),
    ),
    Hostile(
        "extra_envelope_member",
        "structure",
        "a validly signed envelope with an extra 'route' member",
        lambda s: _frame({**_valid(s), "route": ["casc"]}),
        Quarantined(Reason.BAD_ENVELOPE),
    ),
    Hostile(
        "frame_is_an_array",
        "structure",
        "the envelope's members in a JSON array",
        lambda s: _body(text(list(_valid(s).values()))),
        Quarantined(Reason.BAD_ENVELOPE),
    ),
    Hostile(
        "deep_nesting",
        "structure",
        "50,000 nested arrays as the body",
        lambda s: _body(b"[" * 50_000 + b"]" * 50_000),
        Quarantined(Reason.TOO_DEEP),
    ),
    Hostile(
        "deep_nesting_in_signed_payload",
        "structure",
        "a validly signed payload with a member nested 40 arrays deep",
        lambda s: _signed_payload(s, facilitation_payload(summary=_nest(40))),
        Quarantined(Reason.TOO_DEEP),
    ),
    Hostile(
        "huge_hops_array",
        "structure",
        "a validly signed envelope with 20,000 empty hop entries",
        lambda s: _frame({**_valid(s), "hops": [{}] * 20_000}),
        Quarantined(Reason.BAD_ENVELOPE),
    ),
    Hostile(
        "huge_array_in_signed_payload",
        "structure",
        "a validly signed payload with 15,000 measures (the schema allows 8)",
        lambda s: _signed_payload(s, facilitation_payload(measures_sought=["evidence"] * 15_000)),
        Quarantined(Reason.SCHEMA_INVALID),
    ),
    Hostile(
        "non_canonical_signed_header",
        "structure",
        "a validly signed header written with spaces (not canonical JSON)",
        lambda s: _signed_header(s, _canonical_header(s).replace(b",", b", ")),
        Quarantined(Reason.NON_CANONICAL_HEADER),
    ),
    Hostile(
        "padded_base64",
        "structure",
        "the payload member in padded base64url",
        lambda s: _frame({**_valid(s), "payload": _valid(s)["payload"] + "=="}),
        Quarantined(Reason.BAD_BASE64),
    ),
    # --- signatures and keys ---------------------------------------------------------------
    Hostile(
        "bad_signature",
        "signatures",
        "a valid envelope whose origin signature has its first character changed",
        _bad_signature,
        Quarantined(Reason.BAD_SIGNATURE),
    ),
    Hostile(
        "unknown_key_id",
        "signatures",
        "signed by a seajust key ed25519:7 that the directory does not list",
        lambda s: _frame(
            sign(header(UNLISTED_SEAJUST, s.now), facilitation_payload(), UNLISTED_SEAJUST)
        ),
        Quarantined(Reason.UNKNOWN_KEY),
    ),
    Hostile(
        "key_of_another_network",
        "signatures",
        "a seajust header (key ed25519:1) signed with ejn's key",
        lambda s: _frame(sign(header(_k(s), s.now), facilitation_payload(), _k(s, HONEST))),
        Quarantined(Reason.BAD_SIGNATURE),
    ),
    Hostile(
        "hop_signed_by_a_network_not_on_the_path",
        "signatures",
        "ejn's message with a hop record naming seajust but signed with gljc's key",
        lambda s: _frame(
            hop(
                sign(header(_k(s, HONEST), s.now), facilitation_payload(), _k(s, HONEST)),
                _k(s),
                to=RECEIVER,
                at=s.now,
                signer=_k(s, "gljc"),
            )
        ),
        Quarantined(Reason.BAD_HOP_SIGNATURE),
    ),
    Hostile(
        "origin_not_in_the_directory",
        "authorisation",
        "relayed by seajust for an origin network 'atlantis' the directory does not list",
        lambda s: _frame(
            hop(
                sign(header(ATLANTIS, s.now), facilitation_payload(), ATLANTIS),
                _k(s),
                to=RECEIVER,
                at=s.now,
            )
        ),
        Quarantined(Reason.UNKNOWN_KEY),
    ),
    # --- replays ---------------------------------------------------------------------------
    Hostile(
        "replay_same_destination",
        "replay",
        "a message casc already delivered, sent again unchanged",
        _replay_same,
        Deduplicated(),
    ),
    Hostile(
        "replay_by_another_peer",
        "replay",
        "ejn's message that ejn already handed to casc, sent again by seajust",
        _replayed_by_another_peer,
        Quarantined(Reason.WRONG_SENDER),
    ),
    Hostile(
        "replay_of_a_message_for_another_network",
        "replay",
        "ejn's message for Nigeria (wacap), never meant for casc, re-sent to casc by seajust",
        lambda s: _frame(
            sign(
                header(_k(s, HONEST), s.now, to_country="NG"),
                facilitation_payload(requested_country="NG"),
                _k(s, HONEST),
            )
        ),
        Quarantined(Reason.WRONG_SENDER),
    ),
    Hostile(
        "replay_of_a_relayed_message_to_another_network",
        "replay",
        "gljc's message that seajust relayed to wacap (hop to=wacap), re-sent to casc",
        lambda s: _frame(_relayed(s, "gljc", HOSTILE, "wacap")),
        Quarantined(Reason.WRONG_SENDER),
    ),
    Hostile(
        "replay_after_key_rotation",
        "replay",
        "a message seajust signed 3 days ago with its key ed25519:8, rotated out yesterday",
        lambda s: _frame(
            sign(
                header(ROTATED_OUT, s.now - timedelta(days=3)),
                facilitation_payload(),
                ROTATED_OUT,
            )
        ),
        Quarantined(Reason.EXPIRED),
    ),
    Hostile(
        "signed_with_a_revoked_key",
        "signatures",
        "a message signed an hour ago with seajust's key ed25519:9, revoked yesterday",
        lambda s: _frame(
            sign(
                header(REVOKED, s.now - timedelta(hours=1)),
                facilitation_payload(),
                REVOKED,
            )
        ),
        Quarantined(Reason.KEY_REVOKED),
    ),
    Hostile(
        "equivocation",
        "replay",
        "the id of a message casc delivered, with another summary, validly signed",
        _equivocation,
        Quarantined(Reason.EQUIVOCATION),
    ),
    Hostile(
        "replay_older_than_the_maximum_age",
        "replay",
        "a validly signed message created 31 days ago",
        lambda s: _frame(
            sign(header(_k(s), s.now - timedelta(days=31)), facilitation_payload(), _k(s))
        ),
        Quarantined(Reason.EXPIRED),
    ),
    Hostile(
        "created_in_the_future",
        "replay",
        "a validly signed message created one hour from now",
        lambda s: _frame(
            sign(header(_k(s), s.now + timedelta(hours=1)), facilitation_payload(), _k(s))
        ),
        Quarantined(Reason.CLOCK_SKEW),
    ),
    # --- hop fields ------------------------------------------------------------------------
    Hostile(
        "hop_addressed_to_another_network",
        "hops",
        "ejn's message with seajust's valid hop record addressed to wacap",
        lambda s: _frame(_relayed(s, HONEST, HOSTILE, "wacap")),
        Quarantined(Reason.WRONG_SENDER),
    ),
    Hostile(
        "hop_chain_broken",
        "hops",
        "ejn's message with seajust's valid hop whose prev digests another signature",
        lambda s: _frame(_relayed(s, HONEST, HOSTILE, RECEIVER, prev=b64u_encode(b"\x07" * 32))),
        Quarantined(Reason.HOP_CHAIN_BROKEN),
    ),
    Hostile(
        "hop_count_over_the_limit",
        "hops",
        "hop_limit 1, with two valid hop records (wacap, then seajust to casc)",
        lambda s: _frame(
            hop(
                hop(
                    sign(
                        header(_k(s, HONEST), s.now, hop_limit=1),
                        facilitation_payload(),
                        _k(s, HONEST),
                    ),
                    _k(s, "wacap"),
                    to=HOSTILE,
                    at=s.now,
                ),
                _k(s),
                to=RECEIVER,
                at=s.now,
            )
        ),
        Quarantined(Reason.HOP_LIMIT_EXCEEDED),
    ),
    Hostile(
        "loop_through_the_receiver",
        "hops",
        "casc's own message, relayed back to casc by seajust",
        lambda s: _frame(
            hop(
                sign(
                    header(_k(s, RECEIVER), s.now, to_country="KH"),
                    facilitation_payload(requested_country="KH"),
                    _k(s, RECEIVER),
                ),
                _k(s),
                to=RECEIVER,
                at=s.now,
            )
        ),
        Quarantined(Reason.LOOP_DETECTED),
    ),
    # --- authorisation ---------------------------------------------------------------------
    Hostile(
        "kind_the_peer_may_not_send",
        "authorisation",
        f"a {RESTRICTED} from seajust, which casc's config does not allow (refused before the"
        " payload is read)",
        lambda s: _frame(sign(header(_k(s), s.now, kind=RESTRICTED), {"document": {}}, _k(s))),
        Quarantined(Reason.UNAUTHORISED),
    ),
    Hostile(
        "receipt_for_a_message_never_sent",
        "authorisation",
        "a valid receipt to casc's node for a message id casc never sent (an honest peer's"
        " receipt for a message signed with casc's key outside casc's node looks the same, so"
        " it is recorded and alerted on, not refused as the peer's fault)",
        _receipt_for_unsent,
        Recorded("receipt_unmatched"),
        node_only=True,
    ),
    # --- sealing: payloads sealed for the destination network (PROTOCOL.md section 16) --------
    Hostile(
        "sealed_request",
        "sealing",
        "a valid request from seajust sealed for casc with its key hpke:1, as honest origins"
        " send them",
        lambda s: _frame(_sealed_request(s)),
        Delivered(),
    ),
    Hostile(
        "replay_of_a_sealed_request",
        "sealing",
        "a sealed request casc already delivered, sent again unchanged",
        _sealed_replay,
        Deduplicated(),
    ),
    Hostile(
        "seal_of_random_bytes",
        "sealing",
        f"a header that says sealed for casc with hpke:1 over {RANDOM_SEAL_BYTES} random bytes",
        lambda s: _frame(_sealed_bytes(s, os.urandom(RANDOM_SEAL_BYTES))),
        Quarantined(Reason.SEAL_DOES_NOT_OPEN),
    ),
    Hostile(
        "seal_shorter_than_the_kem_enc",
        "sealing",
        "a header that says sealed for casc over 3 bytes (the KEM's enc alone is 1120)",
        lambda s: _frame(_sealed_bytes(s, b"\x01\x02\x03")),
        Quarantined(Reason.SEAL_DOES_NOT_OPEN),
    ),
    Hostile(
        "seal_moved_into_another_header",
        "sealing",
        "the sealed payload of ejn's valid request for casc, in a new header by seajust (the"
        " seal is bound to the header it was made under), re-signed by seajust",
        _seal_moved,
        Quarantined(Reason.SEAL_DOES_NOT_OPEN),
    ),
    Hostile(
        "sealed_for_another_network",
        "sealing",
        "a request for UZ (casc's) sealed for ejn with ejn's real key, the header saying so",
        lambda s: _frame(_sealed_request(s, sealed_for=HONEST)),
        Quarantined(Reason.SEALED_FOR_OTHER_NETWORK),
    ),
    Hostile(
        "sealed_with_an_unlisted_key",
        "sealing",
        f"a request sealed for casc whose header names the key {UNLISTED_ENCRYPTION_KEY}, which"
        " casc does not list",
        lambda s: _frame(_sealed_request(s, key_id=UNLISTED_ENCRYPTION_KEY)),
        Quarantined(Reason.UNKNOWN_ENCRYPTION_KEY),
    ),
    Hostile(
        "sealed_with_a_revoked_encryption_key",
        "sealing",
        f"a request sealed for casc with its key {REVOKED_ENCRYPTION_KEY}, which casc revoked"
        " yesterday (its node still holds the private key)",
        lambda s: _frame(
            _sealed_request(s, with_key=s.encryption_key(RECEIVER, REVOKED_ENCRYPTION_KEY))
        ),
        Quarantined(Reason.ENCRYPTION_KEY_REVOKED),
    ),
    Hostile(
        "sealed_notice",
        "sealing",
        "a notice (a kind every node reads, never sealed) sealed for casc, the header saying so",
        _sealed_notice,
        Quarantined(Reason.SCHEMA_INVALID),
    ),
    Hostile(
        "sealed_with_an_unknown_suite",
        "sealing",
        f"a request whose header's sealed names the suite '{UNKNOWN_SUITE}'",
        lambda s: _frame(
            sign(
                header(_k(s), s.now, sealed=sealed(RECEIVER, suite=UNKNOWN_SUITE)),
                os.urandom(RANDOM_SEAL_BYTES),
                _k(s),
            )
        ),
        Quarantined(Reason.SCHEMA_INVALID),
    ),
    Hostile(
        "opened_member_from_a_peer",
        "sealing",
        "a seal of random bytes with an 'opened' member beside it (the form a destination"
        " hands its contact points) holding a valid request",
        _opened_by_the_peer,
        Quarantined(Reason.BAD_ENVELOPE),
    ),
    # The payload attacks above, inside a seal that opens: opened first, then parsed strictly.
    Hostile(
        "duplicate_key_inside_a_seal",
        "sealing",
        "a request sealed for casc whose plaintext names 'summary' twice",
        lambda s: _frame(
            _sealed_request(s, _canonical_payload()[:-1] + b',"summary":"Second summary."}')
        ),
        Quarantined(Reason.DUPLICATE_KEY),
    ),
    Hostile(
        "deep_nesting_inside_a_seal",
        "sealing",
        "a request sealed for casc whose plaintext's summary is 10,000 nested arrays",
        lambda s: _frame(
            _sealed_request(
                s,
                _canonical_payload().replace(
                    b'"Test request: no real case content."', b"[" * 10_000 + b"]" * 10_000
                ),
            )
        ),
        Quarantined(Reason.TOO_DEEP),
    ),
    Hostile(
        "lone_surrogate_inside_a_seal",
        "sealing",
        "a request sealed for casc whose plaintext's summary escapes a lone surrogate \\ud800",
        lambda s: _frame(
            _sealed_request(
                s, _canonical_payload().replace(b'"Test request', b'"\\ud800Test request')
            )
        ),
        Quarantined(Reason.LONE_SURROGATE),
    ),
    # --- size ------------------------------------------------------------------------------
    Hostile(
        "one_byte_over_the_cap",
        "size",
        "a valid envelope padded with spaces to the node's cap plus one byte",
        _over_the_cap,
        Quarantined(Reason.OVERSIZED),
    ),
    Hostile(
        "amqp_body_at_the_broker_maximum",
        "size",
        "a valid envelope padded to RabbitMQ's max_message_size (128 MiB by default)",
        _at_the_broker_maximum,
        Quarantined(Reason.OVERSIZED),
        big=True,
    ),
)


def restrict_kinds(node_toml: Path, peer: str = HOSTILE, without: str = RESTRICTED) -> None:
    """Let ``peer`` send every kind but ``without`` to the node of ``node_toml``.

    Adds a ``[[peers]]`` table for ``peer`` (with the ``[link]`` credentials the file already
    names), which the node applies to that linked network (``nodes/directory/book.py``).
    """
    config = tomllib.loads(node_toml.read_text(encoding="utf-8"))
    if any(entry.get("network") == peer for entry in config.get("peers", [])):
        raise AssertionError(f"{node_toml.name} already has a [[peers]] table for {peer}")
    link = config["link"]
    allowed = ", ".join(f'"{kind}"' for kind in KINDS if kind != without)
    with node_toml.open("a", encoding="utf-8") as out:
        out.write(
            f'\n[[peers]]\nnetwork = "{peer}"\nuser = "{link["user"]}"\n'
            f'password_file = "{link["password_file"]}"\nkinds = [{allowed}]\n'
        )
