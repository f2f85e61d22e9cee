"""mlanet: a federated message broker for judicial cooperation networks.

Signed, schema-validated mutual legal assistance (MLA) facilitation messages travel between the
networks' nodes over AMQP (RabbitMQ); routing rules forward each one to its counterpart network.
The package holds three layers, which depend one way (``docs/PROTOCOL.md`` is the wire format):

- ``mlanet.schemas``: the wire's data (header, payloads, directory), pure and strict;
- ``mlanet.broker``: the mechanisms (strict JSON, keys, signing, routing, transport, TLS);
- ``mlanet.nodes``: the running node, its state, the directory it trusts, the ``mlanet``
  command, the operator's surfaces and local federations.

What a second program needs to sign, open and check messages is re-exported here.
"""

from importlib.metadata import PackageNotFoundError, version

from mlanet.broker import (
    MlanetError,
    Reason,
    RefusedMessage,
    SignedMessage,
    SigningKey,
    TrustStore,
    add_hop,
    canonical_bytes,
    decode_payload,
    generate_key_files,
    load_signing_key,
    loads_strict,
    open_envelope,
    parse_public_key,
    sign_message,
)
from mlanet.schemas import Destination, Header, Origin, payload_model

try:
    __version__ = version("mlanet")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Destination",
    "Header",
    "MlanetError",
    "Origin",
    "Reason",
    "RefusedMessage",
    "SignedMessage",
    "SigningKey",
    "TrustStore",
    "__version__",
    "add_hop",
    "canonical_bytes",
    "decode_payload",
    "generate_key_files",
    "load_signing_key",
    "loads_strict",
    "open_envelope",
    "parse_public_key",
    "payload_model",
    "sign_message",
]
