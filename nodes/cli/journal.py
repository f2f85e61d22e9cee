"""What an operator's command changed, recorded in the node's journal (``nodes/state/journal.py``).

A command that changes the node's state or trust (a contact point added, a directory version
issued, a key rotation requested) records one row, with the operator who ran it, signed with
the node's key under a checkpoint of its own, like the quarantine commands' rows. Only where
the command has the node's state folder: before the node ever ran there is no journal yet,
and nothing to add to.
"""

from __future__ import annotations

import getpass

import typer

from mlanet.broker import MlanetError
from mlanet.broker.keys import load_signing_key
from mlanet.nodes.config import NodeConfig
from mlanet.nodes.state.audit import AuditLog
from mlanet.nodes.state.journal import MetaValue

__all__ = ["record_command"]


def record_command(config: NodeConfig, event: str, **fields: MetaValue) -> bool:
    """Record ``event`` with ``fields`` in the node's journal; False (and a warning on stderr)
    when it could not be, True when written, False when there is no journal yet."""
    if not AuditLog.exists(config):
        return False
    try:
        with AuditLog.of(config, load_signing_key(config.signing_key)) as journal:
            journal.record(event, operator=getpass.getuser(), **fields)
    except (MlanetError, OSError) as exc:
        typer.echo(f"warning: not recorded in the node's journal: {exc}", err=True)
        return False
    return True
