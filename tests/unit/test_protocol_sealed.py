"""docs/PROTOCOL.md section 16, sealed payloads: the worked example is the vector
``tests/vectors/sealed.json``, opens by the documented steps alone (``tests/independent.py``)
and with the reference, and both give the documented verdict on every changed copy.

HPKE encryption is randomised, so the vector is not recomputed: it is opened. What is
recomputed is everything that is deterministic: EJN's public key from its seeds, the header's
bytes, ``info``, the origin signature and the content hash.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests import independent
from tests.independent import Refused
from tests.protocol_examples import DOC, EXAMPLES, SEALED, json_lines, keys, section, trust


def _ejn_key() -> independent.SealKey:
    """EJN's private encryption key, read from the document's key file."""
    return independent.seal_key_file(EXAMPLES["seal_key_file"])


def _listed() -> dict[str, Any]:
    value: dict[str, Any] = json.loads(EXAMPLES["sealed_listed"])["ejn"]
    return value


def _recipient(listed: dict[str, Any] | None = None) -> independent.Recipient:
    key = _ejn_key()
    return independent.Recipient("ejn", [listed or _listed()], {key.key_id: key})


def test_the_sealed_examples_are_the_vector() -> None:
    assert EXAMPLES["sealed_wire"] == SEALED["wire"]
    assert EXAMPLES["sealed_header"] == SEALED["header_bytes"]
    assert EXAMPLES["sealed_info"] == SEALED["info"]
    assert EXAMPLES["sealed_plaintext"] == SEALED["plaintext"]
    assert EXAMPLES["sealed_content_sha256"] == SEALED["content_sha256"]
    assert EXAMPLES["seal_key_file"] == SEALED["key_file"]
    assert _listed() == SEALED["listed"]
    assert json_lines("sealed_checks") == SEALED["cases"]
    assert f"one line, {len(SEALED['wire'])} bytes" in section("16.9")


def test_the_public_key_derives_from_the_documented_seeds() -> None:
    """The key file holds the seeds the text names (40 .. 7f, 80 .. 9f); the listed public key
    is derived from them, by the independent implementation and by the reference."""
    from mlanet.broker.seal import PrivateSealKey

    key = _ejn_key()
    assert key.mlkem_seed == bytes(range(0x40, 0x80))
    assert key.x25519_private == bytes(range(0x80, 0xA0))
    assert key.mlkem_seed.hex() == SEALED["destination_key"]["mlkem768_seed_hex"]
    assert key.x25519_private.hex() == SEALED["destination_key"]["x25519_private_hex"]
    assert key.public_key() == _listed()["public_key"] == SEALED["destination_key"]["public_key"]
    reference = PrivateSealKey("ejn", "hpke:1", key.mlkem_seed, key.x25519_private)
    assert reference.public_b64() == _listed()["public_key"]
    assert len(_listed()["public_key"]) == 1622  # section 16.4


def test_the_reference_loads_the_documented_key_file(tmp_path: Path) -> None:
    from mlanet.broker.seal import load_seal_key

    path = tmp_path / "ejn.seal.1.key"
    path.write_text(EXAMPLES["seal_key_file"], encoding="ascii")
    os.chmod(path, 0o600)
    loaded = load_seal_key(path)
    assert (loaded.network, loaded.key_id) == ("ejn", "hpke:1")
    assert loaded.public_b64() == _listed()["public_key"]


def test_the_example_opens_by_the_documented_steps_alone() -> None:
    """Section 16.9: SEAJust's signature (section 13's key) verifies over the sealed payload as
    sent, and EJN's key opens it, under ``info``, to exactly section 13's payload bytes."""
    learned = independent.open_envelope(
        EXAMPLES["sealed_wire"].encode("ascii"), keys("keys"), recipient=_recipient()
    )
    assert learned.header_bytes == EXAMPLES["sealed_header"].encode("ascii")
    assert learned.header["sealed"] == {
        "key_id": "hpke:1",
        "network": "ejn",
        "suite": independent.SEAL_SUITE,
    }
    frame = json.loads(EXAMPLES["sealed_wire"])
    assert independent.seal_info(frame["header"]) == EXAMPLES["sealed_info"].encode("ascii")
    assert learned.opened == EXAMPLES["sealed_plaintext"].encode("ascii")
    assert learned.opened == EXAMPLES["payload_bytes"].encode("ascii")  # section 13's
    assert learned.content_sha256 == EXAMPLES["sealed_content_sha256"]
    sealed = learned.payload_bytes
    assert len(sealed) == len(learned.opened) + 1120 + 16
    assert f"is {len(sealed)} bytes" in section("16.9")
    assert f"tag ({len(sealed) - 1120} bytes)" in section("16.9")
    # without the key, or with a header other than the one sent, it does not open
    with pytest.raises(Refused, match="unknown_encryption_key"):
        independent.open_envelope(EXAMPLES["sealed_wire"].encode("ascii"), keys("keys"))
    with pytest.raises(Refused, match="seal_does_not_open"):
        _ejn_key().open(sealed, independent.b64u_encode(b'{"kind":"notice"}'))


def test_the_example_opens_with_the_reference_implementation() -> None:
    from mlanet import broker
    from mlanet.broker.seal import PrivateSealKey, SealKeyring
    from mlanet.schemas.sealing import EncryptionKey

    message = broker.open_envelope(EXAMPLES["sealed_wire"].encode("ascii"), trust(keys("keys")))
    key = _ejn_key()
    keyring = SealKeyring(
        "ejn", {"hpke:1": PrivateSealKey("ejn", "hpke:1", key.mlkem_seed, key.x25519_private)}
    )
    listed = [EncryptionKey.model_validate(_listed())]
    plaintext = keyring.open(message.header, message.header_b64, message.payload_bytes, listed)
    assert plaintext == EXAMPLES["sealed_plaintext"].encode("ascii")
    assert message.content_sha256 == EXAMPLES["sealed_content_sha256"]
    payload = broker.decode_payload(replace(message, opened=plaintext))
    assert broker.canonical_bytes(payload.model_dump(mode="json", exclude_none=True)) == plaintext


def test_the_delivered_form_is_the_envelope_and_its_plaintext() -> None:
    """Section 16.7: the vector's delivered form is the envelope with ``opened``, and both
    implementations read it; without ``opened`` (or with it on an unsealed message) it is
    ``bad_envelope``."""
    from mlanet import broker

    delivered = json.loads(SEALED["delivered"])
    opened = delivered.pop("opened")
    assert delivered == json.loads(SEALED["wire"])
    assert independent.b64u_decode(opened) == SEALED["plaintext"].encode("ascii")
    mine = independent.open_delivered(SEALED["delivered"].encode("ascii"), keys("keys"))
    assert mine.opened == SEALED["plaintext"].encode("ascii")
    theirs = broker.open_delivered(SEALED["delivered"].encode("ascii"), trust(keys("keys")))
    assert theirs.plaintext == mine.opened
    for wrong in (SEALED["wire"], EXAMPLES["wire"][:-1] + f',"opened":"{opened}"}}'):
        with pytest.raises(Refused, match="bad_envelope"):
            independent.open_delivered(wrong.encode("ascii"), keys("keys"))
        with pytest.raises(broker.RefusedMessage) as refused:
            broker.open_delivered(wrong.encode("ascii"), trust(keys("keys")))
        assert refused.value.reason.value == "bad_envelope"


def _changed(line: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """The example with ``line``'s change: the wire (signed again by SEAJust when its header or
    payload changed) and EJN's key as its directory lists it."""
    frame = json.loads(EXAMPLES["sealed_wire"])
    header = json.loads(EXAMPLES["sealed_header"])
    sealed = independent.b64u_decode(frame["payload"])
    wire = EXAMPLES["sealed_wire"].encode("ascii")
    if "header" in line or "flip" in line:
        if "flip" in line:
            at = line["flip"]
            sealed = sealed[:at] + bytes([sealed[at] ^ 1]) + sealed[at + 1 :]
        seed = bytes.fromhex(SEALED["origin_key"]["seed_hex"])
        wire = independent.sign({**header, **line.get("header", {})}, sealed, seed)
    return wire, {**_listed(), **line.get("listed", {})}


@pytest.mark.parametrize("line", json_lines("sealed_checks"), ids=lambda line: line["change"])
def test_each_changed_copy_gets_the_documented_reason(line: dict[str, Any]) -> None:
    """Section 16.6 by both implementations: a payload moved into another header does not open,
    a seal for another network, an unknown, revoked or then invalid key are refused with their
    own codes, and a key that expired after the message was made still opens it."""
    from mlanet import broker
    from mlanet.broker.seal import PrivateSealKey, SealKeyring
    from mlanet.schemas.sealing import EncryptionKey

    wire, listed = _changed(line)
    try:
        independent.open_envelope(wire, keys("keys"), recipient=_recipient(listed))
        mine = "accepted"
    except Refused as refused:
        mine = refused.args[0]
    message = broker.open_envelope(wire, trust(keys("keys")))
    key = _ejn_key()
    keyring = SealKeyring(
        "ejn", {"hpke:1": PrivateSealKey("ejn", "hpke:1", key.mlkem_seed, key.x25519_private)}
    )
    try:
        keyring.open(
            message.header,
            message.header_b64,
            message.payload_bytes,
            [EncryptionKey.model_validate(listed)],
        )
        theirs = "accepted"
    except broker.RefusedMessage as refused:
        theirs = refused.reason.value
    assert mine == theirs == line["reason"]


def test_the_documented_sealed_kinds_are_the_reference_ones() -> None:
    from mlanet.schemas.sealing import OPEN_KINDS, SEALED_KINDS

    sealed: set[str] = set()
    never: set[str] = set()
    for row in re.findall(r"^\| (`[a-z_`, ]+`) \| (yes|never)", section("16.1"), re.MULTILINE):
        names = set(re.findall(r"`([a-z_]+)`", row[0]))
        (sealed if row[1] == "yes" else never).update(names)
    assert sealed == set(SEALED_KINDS) == set(independent.SEALED_KINDS)
    assert never == set(OPEN_KINDS) == {"directory_update", "notice"}
    kinds = set(re.findall(r"^\| `([a-z_]+)` \|", section("8"), re.MULTILINE))
    assert sealed | never == kinds


def test_the_documented_suite_and_sizes_are_the_references() -> None:
    from mlanet.broker import seal
    from mlanet.schemas import sealing

    assert f"`{sealing.SEAL_SUITE}`" in section("16.3")
    assert sealing.SEAL_SUITE == independent.SEAL_SUITE
    assert f"`{seal.SEAL_CONTEXT.decode()}`" in section("16.5")
    assert seal.ENC_BYTES == independent.ENC_BYTES == 1120
    assert f"{seal.SEAL_OVERHEAD} bytes longer" in section("16.3")
    assert f"{sealing.ENCRYPTION_PUBLIC_KEY_BYTES} bytes" in section("16.4")
    assert sealing.ENCRYPTION_KEY_ID_PATTERN.replace("|", "\\|") in section("16.4")


def test_the_order_of_checks_names_every_seal_reason_in_the_references_order() -> None:
    documented = re.findall(r"^\d\. .*?(?=^\d\. |\Z)", section("16.6"), re.MULTILINE | re.DOTALL)
    codes = [re.findall(r"`([a-z_]+)`", step.replace("\n", " "))[-1] for step in documented]
    assert codes == [
        "not_sealed",
        "sealed_for_other_network",
        "unknown_encryption_key",
        "encryption_key_revoked",
        "unknown_encryption_key",
        "unknown_encryption_key",
        "seal_does_not_open",
    ]
    assert "#16-sealed-payloads" in section("11")
    assert "## 16. Sealed payloads" in DOC
