"""How the node links to each peer (``nodes/runtime/link_plan.py``): over AMQPS with the link
certificate when the directory lists the peer's broker with TLS, in plaintext only with ``[link]
allow_plaintext``, else refused with its reason, which the status and a ``link_refused`` alert
name; and the shovel definitions that follow (no password, no node file, in a TLS link's)."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.hazmat.primitives import serialization

from mlanet.broker.management import QueueFigures
from mlanet.broker.tls import (
    generate_ca,
    issue_client_certificate,
    load_certificates,
    not_after,
    write_issued,
)
from mlanet.nodes.config import NodeConfig
from mlanet.nodes.operator.links import LinkView
from mlanet.nodes.operator.status import BrokerView, build_status, render_text
from mlanet.nodes.runtime.link_plan import LinkRefusal, diagnose, plan_link
from mlanet.nodes.runtime.reconcile import expected_shovels, link_plans
from mlanet.schemas.directory import Directory

NOW = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)
START = datetime(2026, 1, 1, tzinfo=UTC)
END = datetime(2030, 1, 1, tzinfo=UTC)
PUBLIC = "A6EHv_POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg"
LINK_CA = generate_ca("link CA", not_before=START, not_after=END)


def _ca(
    ca_id: str, *, start: datetime = START, end: datetime = END, **fields: Any
) -> dict[str, Any]:
    ca = generate_ca(ca_id, not_before=start, not_after=end)
    pem = ca.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
    return {"id": ca_id, "pem": pem, "not_before": start, "not_after": end, **fields}


def _directory(casc_tls: list[dict[str, Any]] | None) -> Directory:
    def entry(network: str, country: str) -> dict[str, Any]:
        found: dict[str, Any] = {
            "id": network,
            "name": network.upper(),
            "members": [country],
            "contact_points": [{"id": f"{country.lower()}-cp-1", "country": country}],
            "keys": [{"key_id": "ed25519:1", "public_key": PUBLIC}],
            "broker": {"host": "127.0.0.1", "port": 5671, "vhost": f"v-{network}"},
        }
        if network == "casc" and casc_tls is not None:
            found["tls"] = {
                "endpoints": [
                    {"host": "127.0.0.1", "port": 5671, "server_name": "broker.casc"},
                    {"host": "127.0.0.2", "port": 5681, "server_name": "broker2.casc"},
                ],
                "cas": casc_tls,
            }
        return found

    return Directory.model_validate(
        {
            "version": 3,
            "issued_at": NOW - timedelta(days=1),
            "valid_until": NOW + timedelta(days=30),
            "networks": [entry("seajust", "KH"), entry("casc", "UZ")],
            "links": [["seajust", "casc"]],
        },
        strict=False,
    )


def _config(
    tmp_path: Path, *, tls: bool = True, allow_plaintext: bool = False, password: bool = True
) -> NodeConfig:
    (tmp_path / "link.password").write_text("link-secret-123\n")
    link: dict[str, Any] = {"user": "seajust-link", "allow_plaintext": allow_plaintext}
    if password:
        link["password_file"] = str(tmp_path / "link.password")
    if tls:
        issued = issue_client_certificate(LINK_CA, "seajust-link")
        write_issued(issued, tmp_path / "link.pem", tmp_path / "link.key")
        link["tls"] = {
            "cert_file": str(tmp_path / "link.pem"),
            "key_file": str(tmp_path / "link.key"),
            "ca_folder": str(tmp_path / "peers"),
        }
    peer = {"network": "casc", "user": "seajust-link"}
    if password:
        peer["password_file"] = str(tmp_path / "link.password")
    return NodeConfig.model_validate(
        {
            "network": "seajust",
            "signing_key": str(tmp_path / "k"),
            "directory": str(tmp_path / "d"),
            "state_dir": str(tmp_path / "state"),
            "broker": {"vhost": "v-seajust", "user": "seajust", "password_file": "p"},
            "link": link,
            "peers": [peer],
        }
    )


def _plan(config: NodeConfig, directory: Directory, at: datetime = NOW) -> Any:
    return link_plans(config, directory, at)["casc"]


def test_a_peer_listed_with_tls_is_linked_over_amqps_with_the_link_certificate(
    tmp_path: Path,
) -> None:
    """Each endpoint gets a URI that verifies the peer against the directory's CA (in a file
    of its own, named by content), checks the endpoint's name, presents our link certificate
    and logs in by it: the definition holds no password, and its source is a direct
    connection inside our broker."""
    config = _config(tmp_path)
    directory = _directory([_ca("casc-ca-1")])
    plan = _plan(config, directory)
    assert (plan.transport, plan.refusal) == ("amqps", None)
    spec = expected_shovels(config, directory, NOW)["mlanet-link-casc"]
    assert spec.src_uri == "amqp:///v-seajust"
    assert isinstance(spec.dest_uri, tuple)
    assert len(spec.dest_uri) == 2
    first = urlsplit(spec.dest_uri[0])
    query = {k: v[0] for k, v in parse_qs(first.query).items()}
    assert (first.scheme, first.hostname, first.port, first.path) == (
        "amqps",
        "127.0.0.1",
        5671,
        "/v-casc%3Adoor%3Aseajust",
    )
    assert query["auth_mechanism"] == "external"
    assert query["verify"] == "verify_peer"
    assert query["server_name_indication"] == "broker.casc"
    assert query["certfile"] == str(tmp_path / "link.pem")
    assert Path(query["cacertfile"]).parent == tmp_path / "peers"
    assert [c.subject for c in load_certificates(Path(query["cacertfile"]))] == [
        c.subject for c in plan.cas
    ]
    assert "server_name_indication=broker2.casc" in spec.dest_uri[1]
    definition = json.dumps(spec.definition())
    assert "link-secret" not in definition
    assert first.username is None


def test_a_rotation_lists_both_cas_and_the_retired_one_goes_with_a_new_file(
    tmp_path: Path,
) -> None:
    """During the overlap both CAs are trusted; once the old one is retired the CA file (and
    so the shovel's URI) changes: Erlang caches a PEM file by its path."""
    config = _config(tmp_path)
    retire = NOW + timedelta(days=2)
    directory = _directory([_ca("casc-ca-1", retire_at=retire), _ca("casc-ca-2")])
    during = expected_shovels(config, directory, NOW)["mlanet-link-casc"].dest_uri
    after = expected_shovels(config, directory, retire + timedelta(hours=1))[
        "mlanet-link-casc"
    ].dest_uri
    ca_during = parse_qs(urlsplit(during[0]).query)["cacertfile"][0]
    ca_after = parse_qs(urlsplit(after[0]).query)["cacertfile"][0]
    assert len(load_certificates(Path(ca_during))) == 2
    assert len(load_certificates(Path(ca_after))) == 1
    assert ca_during != ca_after


@pytest.mark.parametrize(
    ("cas", "why"),
    [
        ([_ca("casc-ca-1", revoked_at=NOW - timedelta(days=1))], "revoked"),
        ([_ca("casc-ca-1", retire_at=NOW - timedelta(hours=1))], "retired"),
        (
            [_ca("casc-ca-1", start=START, end=NOW - timedelta(hours=1))],
            "expired",
        ),
    ],
)
def test_a_peer_without_a_ca_valid_now_is_refused(
    tmp_path: Path, cas: list[dict[str, Any]], why: str
) -> None:
    config = _config(tmp_path)
    plan = _plan(config, _directory(cas))
    assert plan.refusal is LinkRefusal.NO_VALID_CA, why
    assert "mlanet-link-casc" not in expected_shovels(config, _directory(cas), NOW)


def test_plaintext_is_refused_unless_allowed_for_development(tmp_path: Path) -> None:
    directory = _directory(None)
    refused = _plan(_config(tmp_path, tls=False), directory)
    assert refused.refusal is LinkRefusal.PLAINTEXT_REFUSED
    assert "allow_plaintext" in refused.describe()
    assert expected_shovels(_config(tmp_path, tls=False), directory, NOW) == {}

    allowed = _config(tmp_path, tls=False, allow_plaintext=True)
    assert _plan(allowed, directory).transport == "plaintext"
    dest = expected_shovels(allowed, directory, NOW)["mlanet-link-casc"].dest_uri
    assert isinstance(dest, str)
    assert dest.startswith("amqp://seajust-link:link-secret-123@127.0.0.1:5671/")


def test_a_peer_that_takes_tls_is_refused_to_a_node_without_a_link_certificate(
    tmp_path: Path,
) -> None:
    plan = _plan(_config(tmp_path, tls=False), _directory([_ca("casc-ca-1")]))
    assert plan.refusal is LinkRefusal.TLS_NOT_CONFIGURED


def test_a_link_config_needs_tls_or_a_password() -> None:
    with pytest.raises(ValueError, match=r"\[link\] needs \[link.tls\]"):
        NodeConfig.model_validate(
            {
                "network": "seajust",
                "signing_key": "k",
                "directory": "d",
                "state_dir": "s",
                "broker": {"vhost": "v", "user": "u", "password_file": "p"},
                "link": {"user": "seajust-link"},
            }
        )


def _status(config: NodeConfig, directory: Directory, link: LinkView) -> Any:
    view = BrokerView(
        {"mlanet.inbox": QueueFigures("mlanet.inbox", 0, 0, 0, 1, 0.0, 0.0, 0)}, {}, None
    )
    return build_status(config, directory, view, None, [link], NOW.timestamp())


def _link(**fields: Any) -> LinkView:
    base: dict[str, Any] = {
        "peer": "casc",
        "state": "down",
        "shovel": "missing",
        "reason": None,
        "backlog": 0,
        "last_success": None,
        "oldest_waiting": None,
        "oldest_at_least": False,
        "down_since": NOW.timestamp(),
    }
    return LinkView(**{**base, **fields})


def test_a_refused_link_is_a_critical_alert_at_once_naming_peer_and_reason(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, tls=False)
    directory = _directory(None)
    reason = plan_link(config, config.peers[0], directory.network("casc"), NOW).describe()
    status = _status(config, directory, _link(transport="refused", reason=reason))
    refused = [a for a in status.alerts if a.code == "link_refused"]
    assert [(a.severity, a.subject) for a in refused] == [("critical", "casc")]
    assert refused[0].text.startswith("link_plaintext_refused: ")
    assert not [a for a in status.alerts if a.code == "link_down"]
    handshake = _status(
        config,
        directory,
        _link(transport="amqps", reason="tls_unknown_ca: the peer's certificate is not ..."),
    )
    assert [a.text for a in handshake.alerts if a.code == "link_refused"] == [
        "tls_unknown_ca: the peer's certificate is not ..."
    ]


def test_status_marks_a_plaintext_link(tmp_path: Path) -> None:
    config = _config(tmp_path, tls=False, allow_plaintext=True)
    status = _status(config, _directory(None), _link(state="up", transport="plaintext"))
    text = render_text(status)
    assert "plaintext" in text
    assert "PLAINTEXT link ([link] allow_plaintext: local development only)" in text
    assert not [a for a in status.alerts if a.code.startswith("link_")]


async def test_a_diagnosis_names_an_endpoint_that_does_not_answer(tmp_path: Path) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    config = _config(tmp_path)
    cas = [_ca("casc-ca-1")]
    directory = _directory(cas)
    entry = directory.network("casc")
    assert entry is not None
    assert entry.tls is not None
    endpoints = [e.model_copy(update={"port": port}) for e in entry.tls.endpoints[:1]]
    moved = entry.model_copy(update={"tls": entry.tls.model_copy(update={"endpoints": endpoints})})
    plan = plan_link(config, config.peers[0], moved, NOW)
    found = await diagnose(config, plan)
    assert found is not None
    assert found.startswith("tls_unreachable: ")


def test_our_link_certificate_expiring_is_shown_and_alerted(tmp_path: Path) -> None:
    """Status shows when this node's link certificate expires, warns within key_expiry_days,
    and is critical once it has expired."""
    config = _config(tmp_path)
    ends = not_after(load_certificates(tmp_path / "link.pem")[0]).timestamp()
    directory = _directory([_ca("casc-ca-1")])
    far = _status(config, directory, _link(state="up", transport="amqps"))
    assert "our link certificate: expires" in render_text(far)
    view = BrokerView(
        {"mlanet.inbox": QueueFigures("mlanet.inbox", 0, 0, 0, 1, 0.0, 0.0, 0)}, {}, None
    )

    def codes(at: float) -> list[tuple[str, str]]:
        status = build_status(config, directory, view, None, [], at)
        return [(a.code, a.severity) for a in status.alerts if a.code == "tls_certificate_expiry"]

    assert codes(ends - 60 * 86400) == []
    assert codes(ends - 86400) == [("tls_certificate_expiry", "warning")]
    assert codes(ends + 1) == [("tls_certificate_expiry", "critical")]


def test_a_link_certificate_for_another_user_or_expired_is_refused_at_load(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    assert config.link is not None
    other = issue_client_certificate(LINK_CA, "casc-link")
    write_issued(other, tmp_path / "other.pem", tmp_path / "other.key")
    raw = config.model_dump(mode="json")
    raw["link"]["tls"]["cert_file"] = str(tmp_path / "other.pem")
    with pytest.raises(ValueError, match="names 'casc-link', not the \\[link\\] user"):
        NodeConfig.model_validate(raw)
    old = issue_client_certificate(
        LINK_CA,
        "seajust-link",
        not_before=START,
        not_after=datetime.now(UTC) - timedelta(days=1),
    )
    write_issued(old, tmp_path / "old.pem", tmp_path / "old.key")
    raw["link"]["tls"]["cert_file"] = str(tmp_path / "old.pem")
    with pytest.raises(ValueError, match="has expired"):
        NodeConfig.model_validate(raw)
