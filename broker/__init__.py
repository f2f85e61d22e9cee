"""mlanet's mechanisms: strict parsing, keys, signing, routing and the AMQP transport.

``broker`` depends on ``schemas`` and never on ``nodes``.
"""

from mlanet.broker.envelope import (
    DEFAULT_MAX_BYTES,
    SignedHop,
    SignedMessage,
    add_hop,
    decode_payload,
    open_delivered,
    open_envelope,
    sign_message,
)
from mlanet.broker.errors import (
    ConfigError,
    KeyRefused,
    MlanetError,
    Reason,
    RefusedMessage,
    TransportError,
)
from mlanet.broker.keys import (
    SigningKey,
    TrustStore,
    generate_key_files,
    load_signing_key,
    parse_public_key,
)
from mlanet.broker.strictjson import canonical_bytes, loads_strict

__all__ = [
    "DEFAULT_MAX_BYTES",
    "ConfigError",
    "KeyRefused",
    "MlanetError",
    "Reason",
    "RefusedMessage",
    "SignedHop",
    "SignedMessage",
    "SigningKey",
    "TransportError",
    "TrustStore",
    "add_hop",
    "canonical_bytes",
    "decode_payload",
    "generate_key_files",
    "load_signing_key",
    "loads_strict",
    "open_delivered",
    "open_envelope",
    "parse_public_key",
    "sign_message",
]
