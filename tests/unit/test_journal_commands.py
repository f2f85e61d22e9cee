"""An operator's command that changes the node's state or trust records it in the node's
journal (with the operator), signed, and the trail still verifies; before the node ever ran
there is no journal, and the command creates none."""

from __future__ import annotations

from pathlib import Path

from mlanet.broker import TrustStore
from mlanet.broker.keys import generate_key_files, load_signing_key
from mlanet.nodes.cli.journal import record_command
from mlanet.nodes.config import NodeConfig
from mlanet.nodes.state.audit import AuditLog, verify_audit
from mlanet.nodes.state.store import Store


def _config(tmp_path: Path) -> NodeConfig:
    key_path, _ = generate_key_files(tmp_path / "keys", "casc", "ed25519:1")
    return NodeConfig.model_validate(
        {
            "network": "casc",
            "signing_key": str(key_path),
            "directory": str(tmp_path / "d"),
            "state_dir": str(tmp_path / "state"),
            "broker": {"vhost": "v", "user": "u", "password_file": str(tmp_path / "p")},
        }
    )


def test_a_state_changing_command_is_a_signed_row_of_the_journal(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert not record_command(config, "contact_point_added", to="kh-cp-9")
    assert not (config.state_dir / "node.sqlite3").exists()  # no journal made up

    key = load_signing_key(config.signing_key)
    node = Store(config.state_dir / "node.sqlite3", key=key)  # the node, running
    node.group_commits()
    node.event("m-1", "duplicate", "already delivered; not again")
    node.commit()

    assert record_command(config, "contact_point_added", to="kh-cp-9")
    assert record_command(config, "directory_issued", version=7)
    node.event("m-2", "duplicate", "already delivered; not again")  # the node goes on
    node.commit()
    node.close()

    trust = TrustStore()
    trust.add_signing_key(key)
    with AuditLog(config.state_dir / "node.sqlite3", readonly=True) as journal:
        records = journal.records()
        assert verify_audit(journal, trust, "casc").ok
    assert [r.event for r in records] == [
        "duplicate",
        "contact_point_added",
        "directory_issued",
        "duplicate",
    ]
    assert records[1].meta["to"] == "kh-cp-9"
    assert records[1].meta["operator"]
    assert records[2].meta["version"] == 7
