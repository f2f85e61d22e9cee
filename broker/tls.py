"""A network's TLS identity: its CA, its broker's server certificate, its link user's client
certificate, and what a client needs to check a peer broker.

Trust anchor (docs: issue 13, point 2): the directory publishes each network's **CA
certificate** (PEM), not a certificate fingerprint. RabbitMQ's shovel can only verify a peer by
a CA file (its URI's ``cacertfile`` with ``verify=verify_peer`` and ``server_name_indication``);
it has no way to pin a fingerprint, so a fingerprint in the directory would be checked by no one
on the link itself. A CA also lets the broker renew its server certificate without a directory
version, and lets a CA rotate with overlap: the directory lists the old and the new CA for a
while and :func:`ca_bundle` writes both into the one ``cacertfile``. Fingerprints are still
computed here (:func:`fingerprint`, :func:`spki_fingerprint`): they are how operators and
``status`` name a certificate, and :func:`probe` can pin one when a caller wants that too.

Link users (issue 13, point 2): a peer's broker logs the link user in by its client
certificate (RabbitMQ's EXTERNAL mechanism, ``ssl_cert_login_from = common_name``), not by a
password over TLS. RabbitMQ maps the certificate's CN to a user whatever CA issued it, so a
broker must accept client certificates only from issuers that may name that user: its own
network's CA (its operators administer that broker anyway) and the coordinator's **link CA**,
which issues each network's link certificate with the link user named in the directory the
coordinator signs. A broker that trusted its peers' network CAs would let any peer mint a
certificate for another peer's link user. With EXTERNAL no secret sits in a shovel URI (which
the broker keeps in its runtime parameters), nothing about a password is published, every link
credential expires, and it rotates with overlap like a signing key: two certificates with the
same CN are both valid until the old one expires.

Erlang caches a PEM file by its path for minutes: a peer's CA file is named by its content
(:func:`peer_ca_file`), so a rotated CA is a new path in a new shovel URI and takes effect at
once; a broker's own ``ssl_options.cacertfile`` rewritten in place needs the cache cleared.

Keys are ECDSA P-256 (every TLS stack involved, Erlang's included, speaks it); certificates
carry SHA-256 signatures. Private keys are written 0600, unencrypted PEM: the broker reads them
at start and the shovel at every connect, both without a passphrase.

Nothing here imports aio-pika: the context from :func:`client_context` is handed to whatever
connects. Errors are :class:`TlsError` with a reason code (:class:`TlsReason`) and a short text
that never holds key material.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import ipaddress
import os
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import quote, urlencode

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mlanet.broker.errors import MlanetError

__all__ = [
    "CertificateAuthority",
    "Issued",
    "PeerCertificate",
    "TlsError",
    "TlsFiles",
    "TlsIdentity",
    "TlsReason",
    "ca_bundle",
    "client_context",
    "fingerprint",
    "generate_ca",
    "generate_identity",
    "handshake_refusal",
    "issue_client_certificate",
    "issue_server_certificate",
    "load_certificates",
    "load_identity",
    "not_after",
    "not_before",
    "peer_ca_file",
    "probe",
    "shovel_uri",
    "spki_fingerprint",
    "write_identity",
    "write_issued",
]

CA_DAYS = 5 * 365
LEAF_DAYS = 365
_BACKDATE = dt.timedelta(minutes=5)  # tolerate a peer clock a little behind ours


class TlsReason(StrEnum):
    """Why a TLS identity or a peer's certificate was not accepted."""

    UNREACHABLE = "tls_unreachable"
    UNKNOWN_CA = "tls_unknown_ca"  # the peer's certificate is not from the expected CA
    NAME_MISMATCH = "tls_name_mismatch"  # from the CA, but not for this broker's name
    EXPIRED = "tls_expired"
    FINGERPRINT_MISMATCH = "tls_fingerprint_mismatch"
    HANDSHAKE_FAILED = "tls_handshake_failed"  # anything else the TLS stack refused
    BAD_FILE = "tls_bad_file"


class TlsError(MlanetError):
    """A certificate or key cannot be used, or a peer's certificate is not the expected one."""

    def __init__(self, reason: TlsReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class CertificateAuthority:
    """A network's CA: it issues its broker's server certificate and its link user's client
    certificate. Its certificate is what the directory publishes."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class TlsIdentity:
    """Everything one network's broker and link need: the CA, the broker's server certificate
    and the link user's client certificate."""

    ca: CertificateAuthority
    server: Issued
    client: Issued


@dataclass(frozen=True)
class TlsFiles:
    """Where :func:`write_identity` put each file (what rabbitmq.conf and a shovel URI name)."""

    folder: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def in_folder(cls, folder: Path) -> TlsFiles:
        return cls(
            folder=folder,
            ca_cert=folder / "ca.pem",
            ca_key=folder / "ca.key",
            server_cert=folder / "server.pem",
            server_key=folder / "server.key",
            client_cert=folder / "client.pem",
            client_key=folder / "client.key",
        )


@dataclass(frozen=True)
class PeerCertificate:
    """What :func:`probe` saw of a peer broker that passed every check."""

    subject: str
    fingerprint: str
    not_after: dt.datetime


# --- issuing -------------------------------------------------------------------------------------
def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, organisation: str | None = None) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organisation is not None:
        parts.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation))
    return x509.Name(parts)


def _window(
    not_before: dt.datetime | None, days: int, not_after: dt.datetime | None
) -> tuple[dt.datetime, dt.datetime]:
    start = not_before if not_before is not None else _now() - _BACKDATE
    end = not_after if not_after is not None else start + dt.timedelta(days=days)
    if end <= start:
        raise ValueError("a certificate must end after it starts")
    return start, end


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates (and CRLs) only; a leaf signs handshakes (ECDHE) only."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def generate_ca(
    common_name: str,
    *,
    days: int = CA_DAYS,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> CertificateAuthority:
    """A self-signed CA that may issue end-entity certificates only (path length 0)."""
    key = _new_key()
    start, end = _window(not_before, days, not_after)
    name = _name(common_name, "mlanet")
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(certificate, key)


def _leaf(
    ca: CertificateAuthority,
    common_name: str,
    usage: x509.ObjectIdentifier,
    names: Sequence[x509.GeneralName],
    days: int,
    not_before: dt.datetime | None,
    not_after: dt.datetime | None,
) -> Issued:
    key = _new_key()
    start, end = _window(not_before, days, not_after)
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.certificate.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def issue_server_certificate(
    ca: CertificateAuthority,
    names: Iterable[str] = (),
    *,
    days: int = LEAF_DAYS,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """The broker's certificate: SAN 127.0.0.1 and localhost, plus ``names`` (host names or IP
    addresses its peers connect to)."""
    given = list(names)
    unique = list(dict.fromkeys(["localhost", "127.0.0.1", *given]))
    return _leaf(
        ca,
        given[0] if given else "localhost",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [_general_name(name) for name in unique],
        days,
        not_before,
        not_after,
    )


def issue_client_certificate(
    ca: CertificateAuthority,
    user: str,
    *,
    days: int = LEAF_DAYS,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """A client certificate whose subject is only ``CN=<user>``: with RabbitMQ's EXTERNAL
    mechanism and ``ssl_cert_login_from = common_name`` the broker logs it in as ``user``."""
    return _leaf(ca, user, ExtendedKeyUsageOID.CLIENT_AUTH, [], days, not_before, not_after)


def generate_identity(
    network: str,
    link_user: str,
    *,
    link_ca: CertificateAuthority | None = None,
    server_names: Iterable[str] = (),
) -> TlsIdentity:
    """A fresh CA for ``network``, its broker's server certificate and its link user's client
    certificate. In a federation the link certificate comes from the coordinator's link CA
    (``link_ca``), which every broker trusts for client certificates: a network's own CA must
    not be able to name another network's link user (see the module's docstring). Without
    ``link_ca`` the network's CA issues it: for a broker that only its own network uses."""
    ca = generate_ca(f"mlanet {network} CA")
    return TlsIdentity(
        ca=ca,
        server=issue_server_certificate(ca, server_names),
        client=issue_client_certificate(link_ca or ca, link_user),
    )


# --- files ---------------------------------------------------------------------------------------
def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a file only its owner can read, created 0600 (never wider first)."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)


def write_identity(identity: TlsIdentity, folder: Path) -> TlsFiles:
    """Write the identity as PEM files, every one 0600, into ``folder`` (made 0700)."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    files = TlsFiles.in_folder(folder)
    _write_private(files.ca_cert, _pem(identity.ca.certificate))
    _write_private(files.ca_key, _key_pem(identity.ca.key))
    _write_private(files.server_cert, _pem(identity.server.certificate))
    _write_private(files.server_key, _key_pem(identity.server.key))
    _write_private(files.client_cert, _pem(identity.client.certificate))
    _write_private(files.client_key, _key_pem(identity.client.key))
    return files


def write_issued(issued: Issued | CertificateAuthority, cert_path: Path, key_path: Path) -> None:
    """Write one certificate (a CA's too) and its key, both 0600."""
    _write_private(cert_path, _pem(issued.certificate))
    _write_private(key_path, _key_pem(issued.key))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(TlsReason.BAD_FILE, f"cannot read {path.name}") from exc


def load_certificates(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM file (a CA bundle holds more than one during a rotation)."""
    try:
        found = x509.load_pem_x509_certificates(_read(path))
    except (ValueError, x509.InvalidVersion) as exc:  # parts are parsed when read
        what = f"{path.name} holds no PEM certificate it can read"
        raise TlsError(TlsReason.BAD_FILE, what) from exc
    return found


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError) as exc:
        raise TlsError(TlsReason.BAD_FILE, f"{path.name} holds no usable private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TlsError(TlsReason.BAD_FILE, f"{path.name} is not an ECDSA key")
    return key


def _load_one(cert_path: Path, key_path: Path) -> Issued:
    certificate = load_certificates(cert_path)[0]
    key = _load_key(key_path)
    if certificate.public_key() != key.public_key():
        raise TlsError(TlsReason.BAD_FILE, f"{key_path.name} does not match {cert_path.name}")
    return Issued(certificate, key)


def load_identity(folder: Path) -> TlsIdentity:
    """Read back what :func:`write_identity` wrote; each key must match its certificate."""
    files = TlsFiles.in_folder(folder)
    ca = _load_one(files.ca_cert, files.ca_key)
    return TlsIdentity(
        ca=CertificateAuthority(ca.certificate, ca.key),
        server=_load_one(files.server_cert, files.server_key),
        client=_load_one(files.client_cert, files.client_key),
    )


def ca_bundle(certificates: Iterable[x509.Certificate], path: Path) -> Path:
    """One ``cacertfile`` holding every given CA (the old and the new one while a CA rotates);
    CA certificates are public, so the file is 0644."""
    data = b"".join(_pem(certificate) for certificate in certificates)
    if not data:
        raise ValueError("a CA bundle needs at least one certificate")
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_bytes(data)
    temporary.chmod(0o644)
    temporary.replace(path)
    return path


def peer_ca_file(certificates: Iterable[x509.Certificate], folder: Path, peer: str) -> Path:
    """The ``cacertfile`` a shovel to ``peer`` names: the peer's CA certificates as the
    directory lists them, in a file named after its content (``peer-<peer>-<digest>.pem``).
    Erlang caches a PEM file by its path for minutes, so a rotated CA written over the old file
    would not be seen at once; a new file name (and so a new shovel URI) is."""
    data = b"".join(_pem(certificate) for certificate in certificates)
    if not data:
        raise ValueError("a peer's CA file needs at least one certificate")
    folder.mkdir(parents=True, exist_ok=True)
    return ca_bundle(
        x509.load_pem_x509_certificates(data),
        folder / f"peer-{peer}-{hashlib.sha256(data).hexdigest()[:16]}.pem",
    )


# --- naming a certificate ------------------------------------------------------------------------
def _hex(digest: bytes) -> str:
    return "sha256:" + digest.hex()


def fingerprint(certificate: x509.Certificate | bytes) -> str:
    """``sha256:<hex>`` of the certificate's DER (or of DER bytes as a peer sent them)."""
    der = (
        certificate
        if isinstance(certificate, bytes)
        else certificate.public_bytes(serialization.Encoding.DER)
    )
    return _hex(hashlib.sha256(der).digest())


def spki_fingerprint(certificate: x509.Certificate) -> str:
    """``sha256:<hex>`` of the SubjectPublicKeyInfo: stays the same when a certificate is
    renewed for the same key."""
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _hex(hashlib.sha256(spki).digest())


def not_after(certificate: x509.Certificate) -> dt.datetime:
    """When the certificate expires (UTC)."""
    return certificate.not_valid_after_utc


def not_before(certificate: x509.Certificate) -> dt.datetime:
    """When the certificate starts to be valid (UTC)."""
    return certificate.not_valid_before_utc


# --- clients -------------------------------------------------------------------------------------
def client_context(
    trusted: Sequence[x509.Certificate],
    *,
    cert_file: Path | None = None,
    key_file: Path | None = None,
) -> ssl.SSLContext:
    """A client context that trusts only ``trusted`` (the peer network's CA certificates, from
    the directory; never the system's store), checks the broker's name, and presents the client
    certificate in ``cert_file``/``key_file`` when given. TLS 1.2 at least."""
    if not trusted:
        raise ValueError("a client context needs at least one trusted CA")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies and checks host names
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata="".join(_pem(c).decode("ascii") for c in trusted))
    if cert_file is not None:
        if key_file is None:
            raise ValueError("a client certificate needs its key file")
        try:
            context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(TlsReason.BAD_FILE, f"cannot use {cert_file.name}") from exc
    return context


def _refusal(exc: ssl.SSLError | ssl.CertificateError) -> TlsError:
    text = str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = exc.verify_message or text
        if "expired" in message:
            return TlsError(TlsReason.EXPIRED, "the peer's certificate has expired")
        if "mismatch" in message or "match" in message:
            return TlsError(
                TlsReason.NAME_MISMATCH, "the peer's certificate is not for this broker's name"
            )
        return TlsError(
            TlsReason.UNKNOWN_CA, "the peer's certificate is not issued by the expected CA"
        )
    return TlsError(TlsReason.HANDSHAKE_FAILED, f"TLS handshake refused ({exc.reason or text})")


def handshake_refusal(exc: BaseException) -> TlsError | None:
    """Why a connection failed in its TLS handshake, as :func:`probe` would say it (unknown CA,
    wrong name, expired, refused), found anywhere in ``exc``'s chain of causes (client libraries
    wrap the ``ssl`` module's error); None when the failure was not a TLS one."""
    cause: BaseException | None = exc
    for _ in range(8):
        if cause is None:
            return None
        if isinstance(cause, ssl.SSLError | ssl.CertificateError):
            return _refusal(cause)
        cause = cause.__cause__ or cause.__context__
    return None


async def probe(
    host: str,
    port: int,
    context: ssl.SSLContext,
    *,
    server_name: str | None = None,
    pinned: Iterable[str] = (),
    within: float = 10.0,
) -> PeerCertificate:
    """Complete a TLS handshake with a peer broker and say what it presented. Raises
    :class:`TlsError` naming why the peer is not the expected one: unreachable, a certificate
    from another CA, for another name, expired, or (when ``pinned`` lists fingerprints) a
    certificate that is none of them."""
    try:
        async with asyncio.timeout(within):
            _, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=server_name or host
            )
    except (ssl.SSLError, ssl.CertificateError) as exc:
        raise _refusal(exc) from exc
    except (OSError, TimeoutError) as exc:
        raise TlsError(TlsReason.UNREACHABLE, f"no TLS answer from {host}:{port}") from exc
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der is None:
            raise TlsError(TlsReason.HANDSHAKE_FAILED, "the peer presented no certificate")
        seen = fingerprint(der)
        allowed = set(pinned)
        if allowed and seen not in allowed:
            raise TlsError(
                TlsReason.FINGERPRINT_MISMATCH,
                f"the peer presented {seen}, not a pinned certificate",
            )
        certificate = x509.load_der_x509_certificate(der)
        return PeerCertificate(certificate.subject.rfc4514_string(), seen, not_after(certificate))
    finally:
        writer.close()
        # the peer may close first; the handshake's answer is what counted
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


# --- RabbitMQ's shovel ---------------------------------------------------------------------------
def shovel_uri(
    host: str,
    port: int,
    vhost: str,
    *,
    cacertfile: Path,
    certfile: Path,
    keyfile: Path,
    server_name: str | None = None,
) -> str:
    """An ``amqps://`` URI for a shovel's destination: the peer is verified against
    ``cacertfile`` (``verify=verify_peer``, host name checked against ``server_name``, default
    ``host``), the shovel presents ``certfile`` and logs in with EXTERNAL (no password in the
    URI). The files are paths on the broker that runs the shovel."""
    query = urlencode(
        [
            ("cacertfile", str(cacertfile)),
            ("certfile", str(certfile)),
            ("keyfile", str(keyfile)),
            ("verify", "verify_peer"),
            ("server_name_indication", server_name or host),
            ("auth_mechanism", "external"),
        ]
    )
    return f"amqps://{host}:{port}/{quote(vhost, safe='')}?{query}"
