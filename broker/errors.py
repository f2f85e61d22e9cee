"""mlanet's errors and the reason codes a refused message carries.

Every exception mlanet defines descends from :class:`MlanetError` (``tests/unit/
test_exception_tree.py`` walks every module and holds this drawing to what it finds). The tree::

    MlanetError                    root of everything mlanet raises on purpose
    ├── RefusedMessage             a message is refused; carries a Reason (a wire reason code)
    │   └── OlderDirectory         nodes/directory/book.py: older than the directory held
    ├── KeyRefused                 a key file or public key cannot be used (carries a Reason)
    ├── ConfigError                a node's configuration is invalid
    ├── TransportError             the broker could not do what was asked (transient)
    ├── JournalError               nodes/state/journal.py: the journal cannot be written or read
    │   └── StateUnavailable       its database is out of reach for now: wait, then try again
    ├── QuarantineError            nodes/state/quarantine.py: a quarantine command failed
    │   ├── NotInQuarantine        no entry has that id (any longer)
    │   └── QuarantineBusy         another command holds the entry: try again
    ├── TlsError                   broker/tls.py: a certificate unusable or not the expected one
    ├── LocalBrokerError           nodes/local/brokers.py: a broker of its own failed to start/stop
    ├── NodeFailed                 nodes/local/federation.py: a local federation's node failed
    └── DemoFailed                 nodes/local/demo.py: the demo could not go on

What a peer or an operator is told is the reason code and a short fixed text; never a traceback
and never case content. ``detail`` strings are built by mlanet from metadata only. Third-party
errors are translated at the edge (``raise ... from exc``); an exception nobody expected is
logged by its type and place only (``nodes/logs.py``, ``error_fields``: file, line, function),
never by its text or values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

__all__ = [
    "ConfigError",
    "KeyRefused",
    "MlanetError",
    "Reason",
    "RefusedMessage",
    "TransportError",
    "error_location",
]


class Reason(StrEnum):
    """Why a message (or a key) was refused. The values are the wire reason codes."""

    # size and encoding
    OVERSIZED = "oversized"
    NOT_UTF8 = "not_utf8"
    BYTE_ORDER_MARK = "byte_order_mark"
    LONE_SURROGATE = "lone_surrogate"
    # JSON syntax and numbers
    INVALID_JSON = "invalid_json"
    DUPLICATE_KEY = "duplicate_key"
    TOO_DEEP = "too_deep"
    NON_FINITE_NUMBER = "non_finite_number"
    NUMBER_TOO_LONG = "number_too_long"
    # envelope structure
    BAD_ENVELOPE = "bad_envelope"
    UNSUPPORTED_VERSION = "unsupported_version"
    BAD_BASE64 = "bad_base64"
    NON_CANONICAL_HEADER = "non_canonical_header"
    # signatures and keys
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    BAD_HOP_SIGNATURE = "bad_hop_signature"
    HOP_CHAIN_BROKEN = "hop_chain_broken"
    HOP_BY_ORIGIN = "hop_by_origin"
    UNKNOWN_LINK = "unknown_link"
    MALFORMED_KEY = "malformed_key"
    WEAK_KEY = "weak_key"
    # schema and policy
    SCHEMA_INVALID = "schema_invalid"
    UNAUTHORISED = "unauthorised"
    WRONG_SENDER = "wrong_sender"
    ORIGIN_NOT_MEMBER = "origin_not_member"
    CLOCK_SKEW = "clock_skew"
    EXPIRED = "expired"
    EQUIVOCATION = "equivocation"
    HOP_LIMIT_EXCEEDED = "hop_limit_exceeded"
    LOOP_DETECTED = "loop_detected"
    NO_ROUTE = "no_route"
    BAD_TRANSPORT = "bad_transport"
    UNDELIVERABLE = "undeliverable"
    DELIVERY_LIMIT = "delivery_limit"
    UNROUTABLE = "unroutable"
    RELEASED_BY_OPERATOR = "released_by_operator"
    # the federation directory
    KEY_REVOKED = "key_revoked"
    UNSIGNED_DIRECTORY = "unsigned_directory"
    STALE_DIRECTORY = "stale_directory"
    DIRECTORY_EXPIRED = "directory_expired"
    NOT_FOR_OBSERVERS = "not_for_observers"
    # sealed payloads (docs/PROTOCOL.md section 16)
    NOT_SEALED = "not_sealed"
    SEALED_FOR_OTHER_NETWORK = "sealed_for_other_network"
    UNKNOWN_ENCRYPTION_KEY = "unknown_encryption_key"
    ENCRYPTION_KEY_REVOKED = "encryption_key_revoked"
    SEAL_DOES_NOT_OPEN = "seal_does_not_open"
    NO_ENCRYPTION_KEY = "no_encryption_key"
    # handling rules of the signed header (docs/PROTOCOL.md, "Handling rules")
    DIRECT_ONLY_RELAYED = "direct_only_relayed"
    # CA certificates the directory lists (broker/directory_tls.py)
    TLS_BAD_CERTIFICATE = "tls_bad_certificate"
    TLS_PRIVATE_KEY = "tls_private_key"
    TLS_NOT_CA = "tls_not_ca"
    TLS_WEAK_CERTIFICATE = "tls_weak_certificate"
    TLS_VALIDITY_MISMATCH = "tls_validity_mismatch"
    TLS_CA_EXPIRED = "tls_ca_expired"
    # local submissions
    UNSIGNED_SUBMISSION = "unsigned_submission"


class MlanetError(Exception):
    """Root of every error mlanet raises on purpose."""


class RefusedMessage(MlanetError):
    """A message is refused. ``reason`` is the wire code; ``detail`` is metadata-only text."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)


class KeyRefused(MlanetError):
    """A key file or a public key cannot be used."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)


class ConfigError(MlanetError):
    """A node's configuration is invalid."""


class TransportError(MlanetError):
    """The broker could not do what was asked; the caller may retry."""


_FIELD_NAME = re.compile(r"[a-z_][a-z0-9_]{0,39}")


def error_location(error: Mapping[str, Any]) -> str:
    """Where a validation error is, as dotted field names and list indexes, for a ``detail``.

    A location can hold the sender's own text: the name of a field it should not have sent, or a
    key of a mapping. That is never repeated (it may be case content): an unexpected field shows
    as ``(unexpected field)`` and any part that is not a plain field name as ``(field)``.
    """
    parts = [
        str(part) if isinstance(part, int) or _FIELD_NAME.fullmatch(str(part)) else "(field)"
        for part in error["loc"]
    ]
    if error.get("type") == "extra_forbidden" and parts:
        parts[-1] = "(unexpected field)"
    return ".".join(parts) or "(root)"
