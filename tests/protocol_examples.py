"""The worked examples of docs/PROTOCOL.md, as the protocol tests read them: every fenced block
after an ``<!-- mlanet-example: NAME -->`` marker, and the frozen vectors they come from
(``tests/vectors/golden.json``, ``tests/vectors/protocol.json``, ``tests/vectors/sealed.json``)."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from tests import independent

ROOT = Path(__file__).parents[1]
DOC = (ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
GOLDEN = json.loads((ROOT / "tests" / "vectors" / "golden.json").read_text(encoding="ascii"))
VECTORS = json.loads((ROOT / "tests" / "vectors" / "protocol.json").read_text(encoding="ascii"))
SEALED = json.loads((ROOT / "tests" / "vectors" / "sealed.json").read_text(encoding="ascii"))
_BLOCK = re.compile(r"<!-- mlanet-example: (\w+) -->\n```\w*\n(.*?)\n```\n", re.DOTALL)


def _examples() -> dict[str, str]:
    blocks: dict[str, str] = {}
    for name, text in _BLOCK.findall(DOC):
        assert name not in blocks, f"two example blocks named {name}"
        blocks[name] = text
    return blocks


EXAMPLES = _examples()


def json_lines(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in EXAMPLES[name].splitlines()]


def keys(*blocks: str) -> independent.Keys:
    """The public keys the named key blocks list, by (network, key id)."""
    found: independent.Keys = {}
    for block in blocks:
        for network, entry in json.loads(EXAMPLES[block]).items():
            found[(network, entry["key_id"])] = entry["public_key"]
    return found


def trust(listed: independent.Keys) -> Any:
    """The reference's trust store of ``listed``."""
    from mlanet import broker

    store = broker.TrustStore()
    for (network, key_id), public in listed.items():
        store.add(network, key_id, public)
    return store


def section(number: str) -> str:
    """The text of section ``number`` (e.g. ``8.1``) up to the next heading."""
    start = re.search(rf"^#+ {re.escape(number)}\.? ", DOC, re.MULTILINE)
    assert start is not None, number
    end = re.search(r"^#+ \d", DOC[start.end() :], re.MULTILINE)
    return DOC[start.start() : start.end() + (end.start() if end else len(DOC))]


def directory() -> dict[str, Any]:
    """The directory of section 14.1 (the document, as a JSON value)."""
    value: dict[str, Any] = json.loads(EXAMPLES["directory"])
    return value


def at() -> datetime:
    """The instant the routing examples of section 10.3 are decided at."""
    return datetime.fromisoformat(VECTORS["routing_at"])
