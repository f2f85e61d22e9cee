"""mlanet's wire data: pure models, no I/O, no transport.

``schemas`` never imports ``broker`` or ``nodes``.
"""

from mlanet.schemas.base import (
    CaseReference,
    ContactPointId,
    CountryCode,
    KeyId,
    MessageId,
    NetworkId,
    Timestamp,
    WireModel,
    format_timestamp,
    parse_timestamp,
)
from mlanet.schemas.catalogue import PAYLOADS, json_schemas, payload_model, write_json_schemas
from mlanet.schemas.header import (
    FORMAT_VERSION,
    KINDS,
    Destination,
    Header,
    HopRecord,
    Kind,
    Origin,
    Urgency,
)
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

__all__ = [
    "FORMAT_VERSION",
    "KINDS",
    "PAYLOADS",
    "CaseReference",
    "ContactPointId",
    "CountryCode",
    "Destination",
    "DirectoryUpdate",
    "FacilitationRequest",
    "Header",
    "HopRecord",
    "InformationRequest",
    "InformationResponse",
    "KeyId",
    "Kind",
    "MeetingRequest",
    "MessageId",
    "NetworkId",
    "Notice",
    "Origin",
    "Receipt",
    "StatusUpdate",
    "Timestamp",
    "Urgency",
    "WireModel",
    "format_timestamp",
    "json_schemas",
    "parse_timestamp",
    "payload_model",
    "write_json_schemas",
]
