"""The catalogue: which payload model each kind carries, and the JSON Schemas generated from them.

The JSON Schemas in ``schemas/json/`` are generated from these models (``mlanet schemas write``)
so that a node written in another language can validate the same messages; a test fails when
the files drift from the models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlanet.schemas.base import WireModel
from mlanet.schemas.directory import Directory, SignedDirectory
from mlanet.schemas.header import FORMAT_VERSION, KINDS, Header, HopRecord, Kind
from mlanet.schemas.payloads import (
    DirectoryUpdate,
    FacilitationRequest,
    InformationRequest,
    InformationResponse,
    MeetingRequest,
    Notice,
    Receipt,
    StatusUpdate,
)

__all__ = ["JSON_SCHEMA_DIR", "PAYLOADS", "json_schemas", "payload_model", "write_json_schemas"]

PAYLOADS: dict[Kind, type[WireModel]] = {
    "facilitation_request": FacilitationRequest,
    "receipt": Receipt,
    "status_update": StatusUpdate,
    "information_request": InformationRequest,
    "information_response": InformationResponse,
    "meeting_request": MeetingRequest,
    "directory_update": DirectoryUpdate,
    "notice": Notice,
}
assert set(PAYLOADS) == set(KINDS)

JSON_SCHEMA_DIR = Path(__file__).parent / "json"
_ID_BASE = f"https://mlanet.invalid/schemas/v{FORMAT_VERSION}/"


def payload_model(kind: Kind) -> type[WireModel]:
    return PAYLOADS[kind]


def json_schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema (draft 2020-12) for the header, the hop record, every payload
    kind, the federation directory (the document the coordinator signs) and the signed
    directory around it."""
    models: dict[str, type[WireModel]] = {"header": Header, "hop_record": HopRecord}
    models.update({str(kind): model for kind, model in PAYLOADS.items()})
    models.update({"directory": Directory, "signed_directory": SignedDirectory})
    out: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        schema = model.model_json_schema(mode="validation")
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"{_ID_BASE}{name}.json",
            "x-mlanet-format": FORMAT_VERSION,
            **schema,
        }
        out[f"{name}.json"] = schema
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=True) + "\n"


def write_json_schemas(directory: Path = JSON_SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = directory / name
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written
