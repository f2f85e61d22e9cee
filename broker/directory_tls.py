"""The CA certificates a directory publishes, checked: each network's broker CAs and the
coordinator's link CAs (``docs/PROTOCOL.md`` section 14.7).

``schemas/directory.py`` holds them as data (a bounded PEM text and its validity fields); here
the PEM is parsed, whenever a directory is signed or opened (``broker/directory_signing.py``),
and each certificate must be:

- exactly one PEM ``CERTIFICATE`` block and nothing else (``tls_bad_certificate``); a block of
  private key material anywhere in it is ``tls_private_key``, named apart because it means a
  secret was published;
- a CA: basicConstraints with CA true (``tls_not_ca``); a self-issued one must verify under its
  own key (``tls_bad_certificate``);
- of an allowed key and signature (``tls_weak_certificate``): ECDSA P-256 or P-384, or RSA of
  3072 to 8192 bits, signed with SHA-256, SHA-384 or SHA-512. These are what every TLS stack on
  a link speaks in TLS 1.2 and 1.3 (Erlang's ssl in the shovel, OpenSSL in the node). Ed25519 is
  refused: Erlang accepts EdDSA certificates only in some versions and handshakes, so a peer's
  shovel could fail to use a CA the directory lists. RSA below 3072 bits is short of the 128-bit
  strength that a CA living for years needs;
- as the directory describes it: ``not_before`` and ``not_after`` equal the certificate's own
  (``tls_validity_mismatch``), so that every view of its expiry reads the directory;
- not expired when the directory was issued (``tls_ca_expired``): the coordinator never
  publishes a CA that has already ended. One that expires while a version is held is not a
  refusal (the version stays usable, its other parts included): status and alerts say so.

:func:`ca_entry` turns a PEM file the coordinator is given into a directory entry, refusing the
same defects; :func:`certificates` gives the parsed CAs a client trusts (``broker/tls.py``).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.utils import CryptographyDeprecationWarning

from mlanet.broker.errors import Reason, RefusedMessage
from mlanet.schemas.directory import CaCertificate, Directory

__all__ = ["ca_entry", "certificates", "check_listed_certificates", "parse_ca"]

_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]{1,40})-----\s*([A-Za-z0-9+/=\s]*?)-----END \1-----")
_CURVES = (ec.SECP256R1, ec.SECP384R1)
_RSA_BITS = range(3072, 8193)
_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)


def _refuse(reason: Reason, detail: str) -> RefusedMessage:
    return RefusedMessage(reason, detail)


def _one_block(pem: str, what: str) -> bytes:
    """The one CERTIFICATE block of ``pem``, as PEM bytes; anything else is refused."""
    blocks = list(_BLOCK.finditer(pem))
    if any("PRIVATE" in block.group(1) for block in blocks) or "PRIVATE KEY" in pem:
        raise _refuse(Reason.TLS_PRIVATE_KEY, f"{what} holds private key material")
    if len(blocks) != 1 or blocks[0].group(1) != "CERTIFICATE":
        raise _refuse(Reason.TLS_BAD_CERTIFICATE, f"{what} is not exactly one PEM certificate")
    outside = pem[: blocks[0].start()] + pem[blocks[0].end() :]
    if outside.strip():
        raise _refuse(Reason.TLS_BAD_CERTIFICATE, f"{what} holds text outside its certificate")
    return blocks[0].group(0).encode("ascii")


def _check_strength(certificate: x509.Certificate, what: str) -> None:
    try:
        public = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise _refuse(Reason.TLS_WEAK_CERTIFICATE, f"{what}: unsupported key") from None
    if isinstance(public, ec.EllipticCurvePublicKey):
        allowed = isinstance(public.curve, _CURVES)
    else:
        allowed = isinstance(public, rsa.RSAPublicKey) and public.key_size in _RSA_BITS
    if not allowed:
        raise _refuse(
            Reason.TLS_WEAK_CERTIFICATE, f"{what}: key not ECDSA P-256/P-384 or RSA 3072-8192"
        )
    try:
        digest = certificate.signature_hash_algorithm
    except UnsupportedAlgorithm:
        digest = None
    if not isinstance(digest, _HASHES):
        raise _refuse(Reason.TLS_WEAK_CERTIFICATE, f"{what}: not signed with SHA-256/384/512")


def _check_ca(certificate: x509.Certificate, what: str) -> None:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        raise _refuse(Reason.TLS_NOT_CA, f"{what} has no basicConstraints") from None
    except ValueError:
        raise _refuse(Reason.TLS_BAD_CERTIFICATE, f"{what}: malformed extensions") from None
    if not constraints.value.ca:
        raise _refuse(Reason.TLS_NOT_CA, f"{what} is not a CA certificate")
    if certificate.issuer == certificate.subject:
        try:
            certificate.verify_directly_issued_by(certificate)
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
            raise _refuse(
                Reason.TLS_BAD_CERTIFICATE, f"{what}: its self-signature does not verify"
            ) from None


def parse_ca(pem: str, what: str = "CA certificate") -> x509.Certificate:
    """The one CA certificate in ``pem``, checked (module docstring); or RefusedMessage."""
    data = _one_block(pem, what)
    try:
        with warnings.catch_warnings():
            # what the library only warns of (a serial number that is not positive) breaks
            # RFC 5280 all the same, and a later release refuses it: refused here now
            warnings.simplefilter("error", CryptographyDeprecationWarning)
            certificate = x509.load_pem_x509_certificate(data)
            _check_strength(certificate, what)
            _check_ca(certificate, what)
    except (
        ValueError,
        TypeError,
        UnsupportedAlgorithm,
        x509.InvalidVersion,
        CryptographyDeprecationWarning,
    ):  # parts of a certificate are parsed when read
        raise _refuse(Reason.TLS_BAD_CERTIFICATE, f"{what} does not parse") from None
    return certificate


def _check_entry(entry: CaCertificate, what: str, issued_at: datetime) -> x509.Certificate:
    certificate = parse_ca(entry.pem, what)
    if (entry.not_before, entry.not_after) != (
        certificate.not_valid_before_utc,
        certificate.not_valid_after_utc,
    ):
        raise _refuse(
            Reason.TLS_VALIDITY_MISMATCH, f"{what}: not_before/not_after are not the certificate's"
        )
    if entry.not_after <= issued_at:
        raise _refuse(Reason.TLS_CA_EXPIRED, f"{what} had expired when the directory was issued")
    return certificate


def _listed(directory: Directory) -> Iterable[tuple[str, CaCertificate]]:
    for ca in directory.link_cas or []:
        yield f"link CA {ca.id}", ca
    for network in directory.networks:
        for ca in network.tls.cas if network.tls is not None else []:
            yield f"network {network.id} CA {ca.id}", ca


def check_listed_certificates(directory: Directory) -> None:
    """Raise RefusedMessage (a ``tls_*`` reason) unless every CA certificate the directory lists
    passes the checks of the module docstring. Ids are schema-checked: a detail holds no input."""
    for what, entry in _listed(directory):
        _check_entry(entry, what, directory.issued_at)


def ca_entry(pem: str, ca_id: str) -> CaCertificate:
    """A directory entry for the CA certificate in ``pem``: the certificate in PEM as the
    library writes it (whatever line ends the file had), its validity taken from it."""
    certificate = parse_ca(pem)
    return CaCertificate(
        id=ca_id,
        pem=certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
    )


def certificates(entries: Iterable[CaCertificate], at: datetime) -> list[x509.Certificate]:
    """The parsed certificates of ``entries`` valid at ``at`` (what a client trusts then)."""
    return [parse_ca(entry.pem) for entry in entries if entry.valid_at(at)]
