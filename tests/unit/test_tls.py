"""A network's TLS identity (``broker/tls.py``) and the configuration of a broker of its own
(``nodes/local/brokers.py``), without a broker: files and their modes, names in certificates,
fingerprints, the shovel URI and the generated rabbitmq.conf."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import ssl
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mlanet.broker.tls import (
    TlsError,
    TlsFiles,
    TlsReason,
    client_context,
    fingerprint,
    generate_ca,
    generate_identity,
    issue_client_certificate,
    issue_server_certificate,
    load_identity,
    not_after,
    not_before,
    peer_ca_file,
    shovel_uri,
    spki_fingerprint,
    write_identity,
    write_issued,
)
from mlanet.nodes.local.brokers import (
    MAX_MESSAGE_SIZE,
    BrokerTlsFiles,
    LocalBroker,
    LocalBrokerSpec,
    Ports,
    render_config,
)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_identity_files_are_owner_only_and_load_back(tmp_path: Path) -> None:
    """Every file of an identity is 0600 in a 0700 folder, and loading it gives the same
    certificates (by fingerprint) with keys that match them."""
    identity = generate_identity("seajust", "mlanet-seajust-link")
    files = write_identity(identity, tmp_path / "tls")
    assert _mode(files.folder) == 0o700
    for path in (
        files.ca_cert,
        files.ca_key,
        files.server_cert,
        files.server_key,
        files.client_cert,
        files.client_key,
    ):
        assert _mode(path) == 0o600, path.name
    loaded = load_identity(files.folder)
    for before, after in (
        (identity.ca.certificate, loaded.ca.certificate),
        (identity.server.certificate, loaded.server.certificate),
        (identity.client.certificate, loaded.client.certificate),
    ):
        assert fingerprint(before) == fingerprint(after)


def test_a_key_that_does_not_match_its_certificate_is_refused(tmp_path: Path) -> None:
    """Loading an identity whose client key belongs to another certificate says which file."""
    files = write_identity(generate_identity("casc", "mlanet-casc-link"), tmp_path / "tls")
    other = TlsFiles.in_folder(tmp_path / "other")
    write_identity(generate_identity("casc", "mlanet-casc-link"), other.folder)
    files.client_key.write_bytes(other.client_key.read_bytes())
    with pytest.raises(TlsError) as refused:
        load_identity(files.folder)
    assert refused.value.reason is TlsReason.BAD_FILE
    assert "client.key" in str(refused.value)
    assert "PRIVATE" not in str(refused.value)


def test_unreadable_or_empty_files_are_refused_with_a_reason(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    with pytest.raises(TlsError) as missing:
        load_identity(tmp_path / "tls")
    assert missing.value.reason is TlsReason.BAD_FILE
    (tmp_path / "tls" / "ca.pem").write_text("not a certificate", encoding="ascii")
    with pytest.raises(TlsError, match="holds no PEM certificate"):
        load_identity(tmp_path / "tls")


def test_certificates_carry_the_names_the_broker_and_rabbitmq_need() -> None:
    """The CA may sign only leaves; the server certificate is for localhost, 127.0.0.1 and the
    given names; the client certificate's subject is exactly CN=<link user>, for clients."""
    ca = generate_ca("mlanet wacap CA")
    constraints = ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca
    assert constraints.path_length == 0

    server = issue_server_certificate(ca, ["broker.wacap.example", "10.0.0.7"]).certificate
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "broker.wacap.example"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.0.0.7"),
    ]
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]

    client = issue_client_certificate(ca, "mlanet-wacap-link").certificate
    assert client.subject.rfc4514_string() == "CN=mlanet-wacap-link"
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "mlanet-wacap-link"
    )
    assert client.issuer == ca.certificate.subject
    usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_link_certificate_comes_from_the_link_ca_when_given() -> None:
    """In a federation the coordinator's link CA issues the link certificate; the network's
    own CA still issues its broker's."""
    link_ca = generate_ca("mlanet federation link CA")
    identity = generate_identity("gljc", "mlanet-gljc-link", link_ca=link_ca)
    assert identity.client.certificate.issuer == link_ca.certificate.subject
    assert identity.server.certificate.issuer == identity.ca.certificate.subject


def test_fingerprints_and_expiry_dates() -> None:
    """``sha256:<hex>`` of the DER, and of the SubjectPublicKeyInfo; validity as asked."""
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    ca = generate_ca("mlanet ejn CA", not_before=start, days=30)
    certificate = ca.certificate
    der = certificate.public_bytes(serialization.Encoding.DER)
    assert fingerprint(certificate) == "sha256:" + hashlib.sha256(der).hexdigest()
    assert fingerprint(der) == fingerprint(certificate)
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert spki_fingerprint(certificate) == "sha256:" + hashlib.sha256(spki).hexdigest()
    assert not_before(certificate) == start
    assert not_after(certificate) == start + dt.timedelta(days=30)
    with pytest.raises(ValueError, match="end after it starts"):
        issue_client_certificate(ca, "x", not_before=start, not_after=start)


def test_peer_ca_file_is_named_by_its_content(tmp_path: Path) -> None:
    """The same CAs give the same file; a rotated set (old and new CA) gives a new file name,
    so a shovel URI changes with it and Erlang's cache of the old path does not matter."""
    old, new = generate_ca("mlanet casc CA"), generate_ca("mlanet casc CA")
    first = peer_ca_file([old.certificate], tmp_path, "casc")
    assert peer_ca_file([old.certificate], tmp_path, "casc") == first
    rotated = peer_ca_file([old.certificate, new.certificate], tmp_path, "casc")
    assert rotated != first
    assert rotated.name.startswith("peer-casc-")
    assert _mode(rotated) == 0o644
    assert len(x509.load_pem_x509_certificates(rotated.read_bytes())) == 2


def test_shovel_uri_verifies_the_peer_and_logs_in_by_certificate() -> None:
    """The shovel's destination: amqps, verify_peer, the name checked, the client certificate,
    EXTERNAL, and no password anywhere in the URI."""
    uri = shovel_uri(
        "broker.casc.example",
        5671,
        "mlanet-casc",
        cacertfile=Path("/etc/mlanet/peer-casc-0a.pem"),
        certfile=Path("/etc/mlanet/tls/client.pem"),
        keyfile=Path("/etc/mlanet/tls/client.key"),
    )
    parts = urlsplit(uri)
    assert (parts.scheme, parts.hostname, parts.port, parts.path) == (
        "amqps",
        "broker.casc.example",
        5671,
        "/mlanet-casc",
    )
    assert parts.username is None
    assert parts.password is None
    assert parse_qs(parts.query) == {
        "cacertfile": ["/etc/mlanet/peer-casc-0a.pem"],
        "certfile": ["/etc/mlanet/tls/client.pem"],
        "keyfile": ["/etc/mlanet/tls/client.key"],
        "verify": ["verify_peer"],
        "server_name_indication": ["broker.casc.example"],
        "auth_mechanism": ["external"],
    }


def test_client_context_trusts_only_the_given_cas(tmp_path: Path) -> None:
    """The context verifies the peer and its name against the given CA only, never the
    system's store, and presents the client certificate."""
    identity = generate_identity("seajust", "mlanet-seajust-link")
    files = write_identity(identity, tmp_path / "tls")
    context = client_context(
        [identity.ca.certificate], cert_file=files.client_cert, key_file=files.client_key
    )
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert len(context.get_ca_certs()) == 1
    with pytest.raises(ValueError, match="at least one trusted CA"):
        client_context([])
    with pytest.raises(TlsError, match=r"cannot use client\.pem"):
        client_context(
            [identity.ca.certificate], cert_file=files.client_cert, key_file=files.server_key
        )


# --- the broker's configuration ------------------------------------------------------------------
def _spec(tmp_path: Path, *, plaintext: bool = False) -> LocalBrokerSpec:
    tls = BrokerTlsFiles(
        server_ca=tmp_path / "ca.pem",
        certfile=tmp_path / "server.pem",
        keyfile=tmp_path / "server.key",
        client_cas=tmp_path / "client-cas.pem",
    )
    return LocalBrokerSpec("seajust", tmp_path / "broker", tls, plaintext=plaintext)


def test_generated_config_is_tls_only_with_external_login(tmp_path: Path) -> None:
    """TLS listeners with verify_peer and a required client certificate, no plaintext AMQP,
    EXTERNAL by common name, HTTPS management on the loopback, mlanet's message size cap."""
    config = render_config(_spec(tmp_path), Ports(5671, 15671, 25672, None), "pw", tmp_path)
    lines = set(config.splitlines())
    assert {
        "listeners.tcp = none",
        "listeners.ssl.1 = 127.0.0.1:5671",
        f"ssl_options.cacertfile = {tmp_path / 'client-cas.pem'}",
        f"ssl_options.certfile = {tmp_path / 'server.pem'}",
        f"ssl_options.keyfile = {tmp_path / 'server.key'}",
        "ssl_options.verify = verify_peer",
        "ssl_options.fail_if_no_peer_cert = true",
        "auth_mechanisms.1 = EXTERNAL",
        "ssl_cert_login_from = common_name",
        "management.ssl.port = 15671",
        "management.ssl.ip = 127.0.0.1",
        f"max_message_size = {MAX_MESSAGE_SIZE}",
    } <= lines
    assert not any(line.startswith("management.tcp") for line in lines)
    plain = render_config(
        _spec(tmp_path, plaintext=True), Ports(5671, 15671, 25672, 5672), "pw", tmp_path
    )
    assert "listeners.tcp.1 = 127.0.0.1:5672" in plain.splitlines()


def test_broker_folder_holds_its_config_and_admin_password_owner_only(tmp_path: Path) -> None:
    """Preparing a broker (not starting it) writes its config, plugin list and administrator
    password; the files with the password are 0600 and the root 0700."""
    broker = LocalBroker(_spec(tmp_path))
    assert _mode(broker.root) == 0o700
    assert _mode(broker.config_file) == 0o600
    assert _mode(broker.root / "admin.password") == 0o600
    assert (broker.root / "admin.password").read_text(encoding="ascii").strip() == (
        broker.admin.password
    )
    plugins = (broker.root / "enabled_plugins").read_text(encoding="ascii")
    for plugin in ("rabbitmq_management", "rabbitmq_shovel", "rabbitmq_auth_mechanism_ssl"):
        assert plugin in plugins
    assert broker.nodename.startswith("mlanet-seajust-")
    assert broker.ports.amqp is None
    assert len({broker.ports.amqps, broker.ports.management, broker.ports.dist}) == 3


def test_write_issued_writes_a_ca_owner_only(tmp_path: Path) -> None:
    ca = generate_ca("mlanet federation link CA")
    write_issued(ca, tmp_path / "link-ca.pem", tmp_path / "link-ca.key")
    assert _mode(tmp_path / "link-ca.key") == 0o600
    assert _mode(tmp_path / "link-ca.pem") == 0o600
