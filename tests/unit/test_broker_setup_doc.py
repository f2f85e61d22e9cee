"""OPERATIONS.md shows the broker configuration that ``mlanet federation init --own-brokers``
generates as the tested example of a network's broker for mlanet: the block in the document is
what ``nodes/local/brokers.py`` renders for the paths and ports it names."""

from __future__ import annotations

import re
from pathlib import Path

from mlanet.nodes.local.brokers import BrokerTlsFiles, LocalBrokerSpec, Ports, render_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md"
TLS = Path("/etc/rabbitmq/tls")


def _documented() -> str:
    text = DOC.read_text(encoding="utf-8")
    found = re.search(r"<!-- mlanet-example: rabbitmq.conf -->\n```ini\n(.*?)```", text, re.S)
    assert found is not None, "OPERATIONS.md has no rabbitmq.conf example"
    return found.group(1)


def test_the_documented_broker_configuration_is_the_generated_one() -> None:
    spec = LocalBrokerSpec(
        "seajust",
        Path("/var/lib/rabbitmq"),
        BrokerTlsFiles(
            TLS / "ca.pem", TLS / "server.pem", TLS / "server.key", TLS / "client-cas.pem"
        ),
    )
    rendered = render_config(
        spec,
        Ports(5671, 15671, 25672, None),
        "<set at first start, then removed>",
        Path("/var/log/rabbitmq"),
    )
    assert _documented() == rendered


def test_the_documented_configuration_has_no_plaintext_listener_and_mutual_tls() -> None:
    settings = dict(line.split(" = ", 1) for line in _documented().splitlines() if " = " in line)
    assert settings["listeners.tcp"] == "none"
    assert settings["ssl_options.verify"] == "verify_peer"
    assert settings["ssl_options.fail_if_no_peer_cert"] == "true"
    assert settings["auth_mechanisms.1"] == "EXTERNAL"
    assert int(settings["max_message_size"]) == 327680
