"""The example node configuration shipped with mlanet stays valid."""

from __future__ import annotations

from pathlib import Path

from mlanet.nodes.config import load_config

EXAMPLE = Path(__file__).parents[2] / "nodes" / "examples" / "node.toml"


def test_the_example_config_loads_and_names_its_peer() -> None:
    config = load_config(EXAMPLE)
    assert config.network == "seajust"
    assert [peer.network for peer in config.peers] == ["casc"]
    assert config.limits.max_message_bytes == 262144
    assert config.signing_key.is_absolute()
