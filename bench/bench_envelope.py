"""How much mlanet's envelope costs on top of the raw primitives, per ~1 KB message.

Measures, in one run and on the same bytes:

- sign: ``sign_message`` (canonical header and payload, base64url, Ed25519), against a bare
  ``Ed25519PrivateKey.sign`` of the same signing input;
- verify: ``open_envelope`` (strict parse of the frame and header, canonical check, Ed25519,
  header schema), against a bare ``Ed25519PublicKey.verify``; also with two hop records, against
  three bare verifications;
- strict parse: ``loads_strict`` of the payload plus ``decode_payload`` (strict parse and schema
  validation), against ``json.loads`` of the same payload bytes.

Each figure is the median over several repetitions of the per-call time of a timed loop, after a
warm-up, with ``time.perf_counter_ns``. Run: ``.venv/bin/python bench/bench_envelope.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import cryptography
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mlanet.broker import (
    SignedMessage,
    SigningKey,
    TrustStore,
    add_hop,
    decode_payload,
    loads_strict,
    open_envelope,
    sign_message,
)
from mlanet.schemas import Destination, FacilitationRequest, Header, Origin

TARGET_WIRE_BYTES = 1024


def _header(key: SigningKey) -> Header:
    return Header(
        kind="facilitation_request",
        message_id=str(uuid.UUID(int=0x5B0C2F1E8D3A4C6B9E7F0A1B2C3D4E5F)),
        origin=Origin(network=key.network, country="KH", contact_point="kh-ago-1"),
        destination=Destination(network="casc", country="UZ", contact_point="uz-gpo-1"),
        created_at=datetime(2026, 3, 2, 9, 30, tzinfo=UTC),
        key_id=key.key_id,
    )


def _payload(summary_chars: int) -> FacilitationRequest:
    text = ("Benchmark text, no case content. " * (summary_chars // 33 + 1))[:summary_chars]
    return FacilitationRequest(
        case_ref="KH-MLA-2020-0042",
        requesting_country="KH",
        requested_country="UZ",
        offence_categories=["drug_trafficking", "money_laundering"],
        measures_sought=["evidence", "asset_freezing"],
        languages=["en", "ru"],
        summary=text.strip() or "x",
    )


def _message_near(target: int, key: SigningKey) -> tuple[Header, FacilitationRequest]:
    """The header and payload whose signed envelope is closest to ``target`` bytes."""
    header = _header(key)
    best = min(
        range(1, 2000, 3),
        key=lambda n: abs(len(sign_message(header, _payload(n), key).to_bytes()) - target),
    )
    return header, _payload(best)


def _per_call_ns(call: Callable[[], object], number: int, repeat: int) -> float:
    for _ in range(max(number // 10, 10)):  # warm-up
        call()
    runs = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(number):
            call()
        runs.append((time.perf_counter_ns() - start) / number)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=2000, help="calls per timed loop")
    parser.add_argument("--repeat", type=int, default=7, help="timed loops (median is reported)")
    args = parser.parse_args()

    origin = SigningKey.from_seed("seajust", "ed25519:1", bytes(range(32)))
    relays = [
        SigningKey.from_seed("casc", "ed25519:1", bytes(range(32, 64))),
        SigningKey.from_seed("wacap", "ed25519:1", bytes(range(64, 96))),
    ]
    trust = TrustStore()
    for key in (origin, *relays):
        trust.add_signing_key(key)

    header, payload = _message_near(TARGET_WIRE_BYTES, origin)
    message = sign_message(header, payload, origin)
    wire = message.to_bytes()
    relayed: SignedMessage = message
    for key, to in zip(relays, ("wacap", "ejn"), strict=True):
        relayed = add_hop(relayed, key, to=to, at=datetime(2026, 3, 2, 9, 31, tzinfo=UTC))
    relayed_wire = relayed.to_bytes()
    payload_bytes = message.payload_bytes
    opened = open_envelope(wire, trust)

    data = message.signing_input
    # the bare baseline: OpenSSL through cryptography, from the same seeds
    private = Ed25519PrivateKey.from_private_bytes(bytes(origin.private))
    public = private.public_key()
    signature = private.sign(data)
    hop_checks = [(public, signature, data)] + [
        (
            Ed25519PublicKey.from_public_bytes(key.public_raw()),
            key.sign(hop.signing_input),
            hop.signing_input,
        )
        for key, hop in zip(relays, relayed.hops, strict=True)
    ]

    def three_verifies() -> None:
        for key, sig, signed_data in hop_checks:
            key.verify(sig, signed_data)

    def strict_parse() -> None:
        loads_strict(payload_bytes, max_bytes=256 * 1024)
        decode_payload(opened)

    def measure(call: Callable[[], object]) -> float:
        return _per_call_ns(call, args.number, args.repeat)

    rows = [
        (
            "sign (sign_message)",
            measure(lambda: sign_message(header, payload, origin)),
            "Ed25519PrivateKey.sign",
            measure(lambda: private.sign(data)),
        ),
        (
            "verify (open_envelope)",
            measure(lambda: open_envelope(wire, trust)),
            "Ed25519PublicKey.verify",
            measure(lambda: public.verify(signature, data)),
        ),
        (
            "verify, 2 hops (open_envelope)",
            measure(lambda: open_envelope(relayed_wire, trust)),
            "3 x Ed25519PublicKey.verify",
            measure(three_verifies),
        ),
        (
            "strict parse (loads_strict + decode_payload)",
            measure(strict_parse),
            "json.loads",
            measure(lambda: json.loads(payload_bytes)),
        ),
    ]

    print(
        f"mlanet envelope benchmark: wire {len(wire)} bytes (payload {len(payload_bytes)}, "
        f"2-hop wire {len(relayed_wire)}); median of {args.repeat} loops x {args.number} calls"
    )
    print(
        f"Python {platform.python_version()} ({platform.machine()}), "
        f"cryptography {cryptography.__version__}"
    )
    print()
    print(f"{'operation':<46}{'us/msg':>9}   {'baseline':<30}{'us/op':>9}{'ratio':>9}")
    for name, ns, base_name, base_ns in rows:
        ratio = ns / base_ns
        print(f"{name:<46}{ns / 1000:>9.1f}   {base_name:<30}{base_ns / 1000:>9.1f}{ratio:>8.1f}x")


if __name__ == "__main__":
    main()
