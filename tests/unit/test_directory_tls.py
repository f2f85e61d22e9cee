"""The CA certificates and AMQPS endpoints the directory publishes (docs/PROTOCOL.md 14.7): the
model and its lifecycle, every check a signed directory's CA certificates must pass (each
refusal with its own reason, when a node opens the directory and when the coordinator signs
it), and the coordinator's changes: add, rotate with an overlap, revoke, prune."""

from __future__ import annotations

import base64
import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from mlanet.broker import Reason, RefusedMessage
from mlanet.broker.directory_signing import (
    DIRECTORY_CONTEXT,
    coordinator_trust,
    open_directory,
    sign_directory,
)
from mlanet.broker.directory_tls import ca_entry, certificates
from mlanet.broker.keys import b64u_encode
from mlanet.broker.strictjson import canonical_bytes
from mlanet.nodes.directory import certificates as changes
from mlanet.nodes.directory.coordinator import KEEP_REVOKED, next_version
from mlanet.schemas.directory import AmqpsEndpoint, CaCertificate, Directory
from mlanet.schemas.validity import KeyState
from tests import independent
from tests.unit.wirekit import COORDINATOR, sample_directory

ISSUED = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # sample_directory's issued_at
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
START = datetime(2026, 1, 1, tzinfo=UTC)
END = datetime(2031, 1, 1, tzinfo=UTC)
P256 = ec.generate_private_key(ec.SECP256R1())
ENDPOINT = AmqpsEndpoint(host="127.0.0.1", port=5671, server_name="localhost")

Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def _pem(
    key: Key = P256,
    *,
    ca: bool | None = True,
    start: datetime = START,
    end: datetime = END,
    digest: hashes.HashAlgorithm | None = None,
    name: str = "test CA",
) -> str:
    """A self-signed certificate: a CA unless ``ca`` is False (None: no basicConstraints)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else digest or hashes.SHA256()
    certificate = builder.sign(key, algorithm)
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _entry(pem: str, ca_id: str = "casc-ca-1", **fields: Any) -> dict[str, Any]:
    certificate = x509.load_pem_x509_certificate(pem.encode())
    return {
        "id": ca_id,
        "pem": pem,
        "not_before": certificate.not_valid_before_utc,
        "not_after": certificate.not_valid_after_utc,
        **fields,
    }


def _document(cas: list[dict[str, Any]], link_cas: list[dict[str, Any]] | None = None) -> Any:
    """The sample directory (as JSON) with CASC's broker listing ``cas``."""
    value = sample_directory().directory.model_dump(mode="json", exclude_none=True)
    tls = {"endpoints": [ENDPOINT.model_dump(mode="json")], "cas": cas}
    value["networks"][0]["tls"] = json.loads(json.dumps(tls, default=_when))
    if link_cas is not None:
        value["link_cas"] = json.loads(json.dumps(link_cas, default=_when))
    return value


def _when(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _signed(document: Any) -> bytes:
    """``document`` signed by the coordinator as it stands (the model is not asked)."""
    body = b64u_encode(canonical_bytes(document))
    signature = b64u_encode(COORDINATOR.sign(DIRECTORY_CONTEXT + body.encode("ascii")))
    frame = {
        "mlanet_directory": 1,
        "signer": "unodc",
        "key_id": COORDINATOR.key_id,
        "document": body,
        "signature": signature,
    }
    return json.dumps(frame).encode("ascii")


def _open(document: Any) -> Directory:
    trust = coordinator_trust("unodc", [(COORDINATOR.key_id, COORDINATOR.public_b64())])
    return open_directory(_signed(document), trust, now=NOW).directory


def _refused(document: Any) -> tuple[Reason, str]:
    with pytest.raises(RefusedMessage) as caught:
        _open(document)
    return caught.value.reason, caught.value.detail


# --- the model ---------------------------------------------------------------------------------
def test_a_directory_with_endpoints_broker_cas_and_link_cas_opens_and_keeps_them() -> None:
    broker_ca, link_ca = _pem(name="casc CA"), _pem(name="unodc link CA")
    opened = _open(_document([_entry(broker_ca)], [_entry(link_ca, "unodc-link-1")]))
    casc = opened.network("casc")
    assert casc is not None
    assert casc.tls is not None
    assert casc.tls.endpoints == [ENDPOINT]
    assert [ca.id for ca in casc.tls.cas] == ["casc-ca-1"]
    assert casc.tls.cas[0].not_after == END
    assert opened.link_cas is not None
    assert opened.link_cas[0].pem == link_ca
    trusted = certificates(casc.tls.cas, NOW)
    assert [c.subject.rfc4514_string() for c in trusted] == ["CN=casc CA"]


def test_a_directory_without_tls_is_signed_as_before() -> None:
    """No ``tls`` and no ``link_cas`` member appears where none is published: a directory the
    coordinator signs without them is readable by nodes that predate them."""
    signed = sign_directory(sample_directory().directory, COORDINATOR)
    document = json.loads(base64.urlsafe_b64decode(signed.signed.document + "=="))
    assert "link_cas" not in document
    assert all("tls" not in network for network in document["networks"])
    assert signed.to_bytes() == sample_directory().to_bytes()


def test_a_ca_has_a_keys_lifecycle_with_retire_at_for_a_rotations_overlap() -> None:
    entry = CaCertificate.model_validate(
        _entry(_pem(), retire_at=NOW + timedelta(days=7)), strict=False
    )
    assert entry.state(START - timedelta(seconds=1)) is KeyState.NOT_YET_VALID
    assert entry.state(NOW) is KeyState.VALID
    assert entry.state(NOW + timedelta(days=7)) is KeyState.EXPIRED  # its overlap has ended
    assert entry.ends == NOW + timedelta(days=7)
    revoked = entry.model_copy(update={"revoked_at": NOW})
    assert revoked.state(NOW - timedelta(days=1)) is KeyState.REVOKED


@pytest.mark.parametrize(
    "change",
    [
        lambda e: {**e, "pem": e["pem"] + "A" * 6144},
        lambda e: {**e, "pem": e["pem"].replace("MII", "MII\u00e9")},
        lambda e: {**e, "id": "../ca"},
        lambda e: {**e, "not_after": e["not_before"]},
        lambda e: {**e, "fingerprint": "sha256:00"},
    ],
    ids=["oversized-pem", "non-ascii-pem", "bad-id", "window", "extra-member"],
)
def test_a_malformed_ca_entry_is_schema_invalid(change: Any) -> None:
    reason, detail = _refused(_document([change(_entry(_pem()))]))
    assert reason is Reason.SCHEMA_INVALID
    assert "networks.0.tls.cas.0" in detail


def test_a_ca_id_listed_twice_is_schema_invalid() -> None:
    pem = _pem()
    reason, _ = _refused(_document([_entry(pem), _entry(_pem())]))
    assert reason is Reason.SCHEMA_INVALID
    with pytest.raises(ValidationError):
        Directory.model_validate(_document([_entry(pem), _entry(_pem())]), strict=False)


# --- the checks a node makes when it opens a directory ------------------------------------------
def _leaf_pem() -> str:
    return _pem(ca=False, name="not a CA")


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (lambda: _entry(_pem(ca=False)), Reason.TLS_NOT_CA),
        (lambda: _entry(_pem(ca=None)), Reason.TLS_NOT_CA),
        (lambda: _entry(_pem(end=ISSUED - timedelta(days=1))), Reason.TLS_CA_EXPIRED),
        (lambda: _entry(_pem(), not_after=END - timedelta(days=1)), Reason.TLS_VALIDITY_MISMATCH),
        (
            lambda: _entry(_pem(), not_before=START + timedelta(hours=1)),
            Reason.TLS_VALIDITY_MISMATCH,
        ),
        (
            lambda: {
                **_entry(_pem()),
                "pem": _pem()
                + P256.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ).decode(),
            },
            Reason.TLS_PRIVATE_KEY,
        ),
        (
            lambda: {
                **_entry(_pem()),
                "pem": P256.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.TraditionalOpenSSL,
                    serialization.NoEncryption(),
                ).decode(),
            },
            Reason.TLS_PRIVATE_KEY,
        ),
        (lambda: {**_entry(_pem()), "pem": _pem() + _pem()}, Reason.TLS_BAD_CERTIFICATE),
        (
            lambda: {**_entry(_pem()), "pem": "trailing text " + _pem()},
            Reason.TLS_BAD_CERTIFICATE,
        ),
        (
            lambda: {**_entry(_pem()), "pem": _pem().replace("MII", "MIJ", 1)},
            Reason.TLS_BAD_CERTIFICATE,
        ),
        (
            lambda: _entry(_pem(rsa.generate_private_key(65537, 2048))),
            Reason.TLS_WEAK_CERTIFICATE,
        ),
        (
            lambda: _entry(_pem(ed25519.Ed25519PrivateKey.generate())),
            Reason.TLS_WEAK_CERTIFICATE,
        ),
        (
            lambda: _entry(_pem(ec.generate_private_key(ec.SECP521R1()))),
            Reason.TLS_WEAK_CERTIFICATE,
        ),
        (lambda: _entry(_pem(digest=hashes.SHA224())), Reason.TLS_WEAK_CERTIFICATE),
    ],
    ids=[
        "not-a-ca",
        "no-basic-constraints",
        "expired",
        "not-after-mismatch",
        "not-before-mismatch",
        "private-key-after-it",
        "private-key-only",
        "two-certificates",
        "text-outside",
        "does-not-parse",
        "rsa-2048",
        "ed25519",
        "p-521",
        "sha-224",
    ],
)
def test_a_ca_certificate_no_client_could_use_refuses_the_directory(
    entry: Any, reason: Reason
) -> None:
    """Each defect is refused with its own reason, for a network's broker CA and for the link
    CA alike; the detail names where, never the certificate's content."""
    listed = entry()
    refused, detail = _refused(_document([listed]))
    assert refused is reason
    with pytest.raises(independent.Refused, match=reason.value):  # as docs/PROTOCOL.md says
        independent.check_ca(json.loads(json.dumps(listed, default=_when)), _when(ISSUED))
    assert detail.startswith("network casc CA casc-ca-1")
    assert "BEGIN" not in detail
    as_link_ca, detail = _refused(_document([_entry(_pem())], [entry()]))
    assert as_link_ca is reason
    assert detail.startswith("link CA casc-ca-1")


def test_the_coordinator_does_not_sign_a_directory_a_node_would_refuse() -> None:
    directory = Directory.model_validate(_document([_entry(_pem(ca=False))]), strict=False)
    with pytest.raises(RefusedMessage) as caught:
        sign_directory(directory, COORDINATOR)
    assert caught.value.reason is Reason.TLS_NOT_CA


def test_allowed_keys_are_p256_p384_and_rsa_from_3072_bits() -> None:
    for key in (
        P256,
        ec.generate_private_key(ec.SECP384R1()),
        rsa.generate_private_key(65537, 3072),
    ):
        for digest in (hashes.SHA256(), hashes.SHA384(), hashes.SHA512()):
            assert _open(_document([_entry(_pem(key, digest=digest))])).network("casc")


def test_a_ca_that_expires_after_the_directory_was_issued_still_opens() -> None:
    """Expiry while a version is held is no refusal (status says so, critically); a CA that had
    expired when the directory was issued is."""
    ending = _pem(end=ISSUED + timedelta(days=1))
    assert _open(_document([_entry(ending)])).network("casc")


def test_ca_entry_takes_the_validity_from_the_certificate_and_strips_nothing_else() -> None:
    pem = _pem(start=START, end=END)
    entry = ca_entry(pem, "casc-ca-1")
    assert (entry.not_before, entry.not_after, entry.pem) == (START, END, pem)
    with pytest.raises(RefusedMessage) as caught:
        ca_entry(_leaf_pem(), "x")
    assert caught.value.reason is Reason.TLS_NOT_CA


# --- the coordinator's changes -------------------------------------------------------------------
def _base(*cas: CaCertificate) -> Directory:
    value = _document([c.model_dump(mode="json", exclude_none=True) for c in cas]) if cas else None
    if value is None:
        return sample_directory().directory
    return Directory.model_validate(value, strict=False)


def _ca(ca_id: str, *, end: datetime = END) -> CaCertificate:
    return ca_entry(_pem(end=end, name=ca_id), ca_id)


def _next(base: Directory, networks: Any, now: datetime = NOW) -> Directory:
    following = next_version(base, now, timedelta(days=30), networks=networks)
    sign_directory(following, COORDINATOR)  # every version the commands build would open
    return following


def test_endpoints_and_a_first_ca_are_published_together() -> None:
    base = _base()
    with pytest.raises(RefusedMessage, match="no broker CA yet"):
        changes.set_broker_endpoints(base, "casc", [ENDPOINT])
    first = _ca("casc-ca-1")
    listed = _next(base, changes.set_broker_endpoints(base, "casc", [ENDPOINT], first))
    casc = listed.network("casc")
    assert casc is not None
    assert casc.tls is not None
    assert casc.tls.cas == [first]
    assert casc.tls.endpoints == [ENDPOINT]
    moved = AmqpsEndpoint(host="mq.casc.example", port=5671, server_name="mq.casc.example")
    again = _next(listed, changes.set_broker_endpoints(listed, "casc", [moved]))
    assert again.network("casc").tls.endpoints == [moved]  # type: ignore[union-attr]
    assert again.network("casc").tls.cas == [first]  # type: ignore[union-attr]


def test_a_rotated_broker_ca_keeps_the_old_one_trusted_until_the_overlap_ends() -> None:
    old, new = _ca("casc-ca-1"), _ca("casc-ca-2")
    base = _base(old)
    rotated = _next(base, changes.rotate_broker_ca(base, "casc", new, NOW, timedelta(days=7)))
    tls = rotated.network("casc").tls  # type: ignore[union-attr]
    assert tls is not None
    assert [ca.id for ca in tls.valid_cas(NOW)] == ["casc-ca-1", "casc-ca-2"]
    later = NOW + timedelta(days=7)
    assert [ca.id for ca in tls.valid_cas(later)] == ["casc-ca-2"]
    assert tls.cas[0].retire_at == later
    assert tls.cas[0].not_after == END
    pruned = _next(rotated, None, later)
    assert [ca.id for ca in pruned.network("casc").tls.cas] == ["casc-ca-2"]  # type: ignore[union-attr]
    with pytest.raises(RefusedMessage, match="listed already"):
        changes.rotate_broker_ca(rotated, "casc", new, NOW, timedelta(days=7))


def test_a_revoked_broker_ca_is_untrusted_at_once_and_listed_a_while() -> None:
    old, spare = _ca("casc-ca-1"), _ca("casc-ca-2")
    base = _base(old, spare)
    revoked = _next(base, changes.revoke_broker_ca(base, "casc", "casc-ca-1", NOW))
    tls = revoked.network("casc").tls  # type: ignore[union-attr]
    assert tls is not None
    assert [ca.id for ca in tls.valid_cas(NOW)] == ["casc-ca-2"]
    assert tls.cas[0].state(NOW - timedelta(days=1)) is KeyState.REVOKED
    kept = _next(revoked, None, NOW + timedelta(days=30))
    assert len(kept.network("casc").tls.cas) == 2  # type: ignore[union-attr]
    gone = _next(revoked, None, NOW + KEEP_REVOKED + timedelta(days=1))
    assert [ca.id for ca in gone.network("casc").tls.cas] == ["casc-ca-2"]  # type: ignore[union-attr]
    with pytest.raises(RefusedMessage, match="no broker CA casc-ca-9"):
        changes.revoke_broker_ca(base, "casc", "casc-ca-9", NOW)


def test_an_expired_ca_is_never_listed_again_and_a_network_without_one_loses_its_tls() -> None:
    """A certificate that has expired would make the next version tls_ca_expired: pruning
    takes it out, and with the last one the network's TLS listing."""
    ending = _ca("casc-ca-1", end=NOW + timedelta(days=1))
    base = _base(ending)
    after = _next(base, None, NOW + timedelta(days=2))
    assert after.network("casc").tls is None  # type: ignore[union-attr]


def test_the_link_ca_is_set_then_rotated_with_an_overlap_then_revoked() -> None:
    base = _base()
    first, second = _ca("unodc-link-1"), _ca("unodc-link-2")
    listed = base.model_copy(
        update={"link_cas": changes.set_link_ca(base, first, NOW, timedelta(days=7))}
    )
    one = _next(listed, None)
    assert one.link_cas == [first]
    rotated = one.model_copy(
        update={"link_cas": changes.set_link_ca(one, second, NOW, timedelta(days=7))}
    )
    two = _next(rotated, None)
    assert two.link_cas is not None
    assert [ca.id for ca in two.link_cas if ca.valid_at(NOW)] == ["unodc-link-1", "unodc-link-2"]
    assert [ca.id for ca in two.link_cas if ca.valid_at(NOW + timedelta(days=7))] == [
        "unodc-link-2"
    ]
    revoked = changes.revoke_link_ca(two, "unodc-link-2", NOW)
    assert revoked[1].revoked_at == NOW
    with pytest.raises(RefusedMessage, match="no link CA"):
        changes.revoke_link_ca(base, "unodc-link-1", NOW)


def test_damaged_certificates_are_refused_with_a_reason_never_an_unexpected_error() -> None:
    """Every byte of a CA certificate's DER changed in turn, three ways (hostile or damaged
    input): the directory opens (the byte did not matter) or is refused with a tls_* reason,
    never with another error."""
    der = x509.load_pem_x509_certificate(_pem().encode()).public_bytes(serialization.Encoding.DER)
    seen: set[Reason] = set()
    for index, mask in itertools.product(range(len(der)), (0x01, 0x41, 0xFF)):
        damaged = der[:index] + bytes([der[index] ^ mask]) + der[index + 1 :]
        body = base64.encodebytes(damaged).decode("ascii").replace("\n", "")
        lines = [body[i : i + 64] for i in range(0, len(body), 64)]
        pem = "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"
        entry = {**_entry(_pem()), "pem": pem}
        try:
            _open(_document([entry]))
        except RefusedMessage as refused:
            seen.add(refused.reason)
    assert Reason.TLS_BAD_CERTIFICATE in seen
    assert all(reason.value.startswith("tls_") for reason in seen), seen
