"""``[broker.tls]``: the node's TLS settings for its own broker are checked when the config is
loaded, each problem one ConfigError line naming what to fix, and they shape every URL and API
client the node and its commands make (never plaintext, never unverified)."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiormq
import pytest

from mlanet.broker.errors import ConfigError
from mlanet.broker.tls import (
    TlsReason,
    ca_bundle,
    generate_ca,
    handshake_refusal,
    issue_client_certificate,
    write_issued,
)
from mlanet.broker.transport import Transport, with_vhost
from mlanet.nodes.config import load_config

NODE_USER = "mlanet-seajust"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    ca = generate_ca("mlanet seajust CA")
    ca_bundle([ca.certificate], tmp_path / "ca.pem")
    write_issued(
        issue_client_certificate(ca, NODE_USER), tmp_path / "node.pem", tmp_path / "node.key"
    )
    other = issue_client_certificate(ca, "someone-else")
    write_issued(other, tmp_path / "other.pem", tmp_path / "other.key")
    (tmp_path / "broker.password").write_text("secret\n", encoding="utf-8")
    return tmp_path


def _write(folder: Path, broker_extra: str = "", tls: str | None = 'ca_file = "ca.pem"\n') -> Path:
    text = (
        'network = "seajust"\nsigning_key = "seajust.key"\ndirectory = "directory.json"\n'
        'state_dir = "state"\n\n[broker]\nhost = "broker.seajust.example"\n'
        f'vhost = "mlanet-seajust"\nuser = "{NODE_USER}"\npassword_file = "broker.password"\n'
        f"{broker_extra}"
    )
    if tls is not None:
        text += f"\n[broker.tls]\n{tls}"
    path = folder / "node.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def test_tls_defaults_to_amqps_and_https_with_the_ca_file_in_the_url(folder: Path) -> None:
    """With only ``ca_file``: port 5671, management over https on 15671, an ``amqps`` URL that
    names the CA file (resolved beside the config) and verifies the peer, password login, no
    client certificate."""
    config = load_config(_write(folder))
    assert config.broker.port == 5671
    assert config.broker.management_url == "https://broker.seajust.example:15671"
    url = config.amqp_url()
    assert url.startswith(f"amqps://{NODE_USER}:secret@broker.seajust.example:5671/")
    query = _query(url)
    assert query["cacertfile"] == [str(folder / "ca.pem")]
    assert query["verify"] == ["verify_peer"]
    assert "certfile" not in query
    assert "auth_mechanism" not in query
    endpoint = config.management_endpoint()
    assert endpoint.verify is not None
    assert Transport(url).tls


def test_without_tls_nothing_changes(folder: Path) -> None:
    """No ``[broker.tls]``: plaintext AMQP on 5672 and the http management URL, as before."""
    config = load_config(_write(folder, tls=None))
    assert config.amqp_url().startswith("amqp://")
    assert config.broker.management_url == "http://127.0.0.1:15672"
    assert config.management_endpoint().verify is None
    assert not Transport(config.amqp_url()).tls


def test_certificate_login_uses_external_and_no_password(folder: Path) -> None:
    """``login = "certificate"``: the node's URL carries no user or password, presents its
    certificate and asks for EXTERNAL; a contact point's URL on the same broker presents no
    certificate of the node's and logs in with its own password."""
    tls = (
        'ca_file = "ca.pem"\ncert_file = "node.pem"\nkey_file = "node.key"\nlogin = "certificate"\n'
    )
    config = load_config(_write(folder, tls=tls))
    url = config.amqp_url()
    assert url.startswith("amqps://broker.seajust.example:5671/")
    query = _query(url)
    assert query["auth_mechanism"] == ["external"]
    assert query["certfile"] == [str(folder / "node.pem")]
    contact = config.broker.url("mlanet-seajust-cp-kh-cp-1", "its-own")
    assert contact.startswith("amqps://mlanet-seajust-cp-kh-cp-1:its-own@")
    assert "certfile" not in _query(contact)
    assert "auth_mechanism" not in _query(contact)


@pytest.mark.parametrize(
    ("tls", "broker_extra", "says"),
    [
        ('ca_file = "missing.pem"\n', "", "ca_file: cannot read missing.pem"),
        ('ca_file = "broker.password"\n', "", "broker.password holds no PEM certificate"),
        ('ca_file = "ca.pem"\ncert_file = "node.pem"\n', "", "give both or neither"),
        (
            'ca_file = "ca.pem"\ncert_file = "node.pem"\nkey_file = "other.key"\n',
            "",
            "key_file other.key is not the key of cert_file node.pem",
        ),
        ('ca_file = "ca.pem"\nlogin = "certificate"\n', "", "needs cert_file and key_file"),
        (
            'ca_file = "ca.pem"\ncert_file = "other.pem"\nkey_file = "other.key"\n'
            'login = "certificate"\n',
            "",
            "common name is 'someone-else', not user 'mlanet-seajust'",
        ),
        (
            'ca_file = "ca.pem"\n',
            'management_url = "http://broker.seajust.example:15672"\n',
            "management_url must be https://",
        ),
        ('ca_file = "ca.pem"\nverify = false\n', "", "broker.tls.verify: Extra inputs"),
    ],
    ids=[
        "no-ca-file",
        "not-a-certificate",
        "cert-without-key",
        "key-of-another-certificate",
        "certificate-login-without-certificate",
        "certificate-for-another-user",
        "plaintext-management",
        "no-way-to-turn-off-verification",
    ],
)
def test_unusable_tls_settings_are_one_config_error(
    folder: Path, tls: str, broker_extra: str, says: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(_write(folder, broker_extra, tls))
    message = str(refused.value)
    assert says in message
    assert "\n" not in message
    assert "secret" not in message


def test_a_key_others_can_read_is_refused_with_the_chmod_to_run(folder: Path) -> None:
    (folder / "node.key").chmod(0o640)
    tls = 'ca_file = "ca.pem"\ncert_file = "node.pem"\nkey_file = "node.key"\n'
    with pytest.raises(ConfigError, match=r"open to other users \(mode 0640\): run chmod 600"):
        load_config(_write(folder, tls=tls))


def test_an_expired_client_certificate_is_refused_at_load(folder: Path) -> None:
    ca = generate_ca("mlanet seajust CA")
    now = dt.datetime.now(dt.UTC)
    expired = issue_client_certificate(
        ca, NODE_USER, not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)
    )
    write_issued(expired, folder / "old.pem", folder / "old.key")
    tls = 'ca_file = "ca.pem"\ncert_file = "old.pem"\nkey_file = "old.key"\n'
    with pytest.raises(ConfigError, match=r"cert_file old\.pem has expired: renew it"):
        load_config(_write(folder, tls=tls))


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("amqps://u:p@h:5671/v", "must name the CA file"),
        ("amqps://u:p@h:5671/v?cacertfile={ca}&verify=verify_none", "always verified"),
        ("amqp://u:p@h:5672/v?cacertfile={ca}", "must be amqps://"),
        ("amqps://h:5671/v?cacertfile={ca}&auth_mechanism=external", "needs certfile"),
    ],
    ids=["amqps-without-ca", "verify-none", "tls-files-on-plaintext", "external-without-cert"],
)
def test_transport_refuses_a_url_that_would_not_verify_the_broker(
    folder: Path, url: str, says: str
) -> None:
    """Plaintext or an unverified handshake is never tried for a broker configured for TLS."""
    with pytest.raises(ConfigError, match=says):
        Transport(url.format(ca=folder / "ca.pem"))


def test_a_door_is_opened_with_the_same_tls_settings(folder: Path) -> None:
    """A peer's door vhost is reached with the node's URL for another vhost: its CA file, its
    certificate login and its heartbeat stay."""
    tls = (
        'ca_file = "ca.pem"\ncert_file = "node.pem"\nkey_file = "node.key"\nlogin = "certificate"\n'
    )
    url = load_config(_write(folder, tls=tls)).amqp_url()
    door = with_vhost(url, "mlanet-seajust:door:casc")
    assert urlsplit(door).path == "/mlanet-seajust:door:casc"
    assert _query(door) == _query(url)
    assert Transport(door).tls


def test_a_refused_handshake_is_named_through_the_client_library_wrapping() -> None:
    """aiormq and httpx wrap the ssl module's error: the reason is found in the chain."""
    unknown = ssl.SSLCertVerificationError(1, "certificate verify failed")
    unknown.verify_message = "unable to get local issuer certificate"
    try:
        try:
            raise unknown
        except OSError as exc:
            raise aiormq.exceptions.AMQPConnectionError(*exc.args) from exc
    except aiormq.exceptions.AMQPConnectionError as wrapped:
        found = handshake_refusal(wrapped)
    assert found is not None
    assert found.reason is TlsReason.UNKNOWN_CA
    assert handshake_refusal(ConnectionRefusedError(111, "refused")) is None
