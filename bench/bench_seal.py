"""Benchmark: what sealed payloads cost, per message and at a relay, against baselines measured
in the same run.

(a) per message, for a typical facilitation request payload (~1.5 KB) and a large information
    response (~100 KB): sealing and opening with mlanet's suite (``broker/seal.py``: HPKE base
    mode, KEM ML-KEM-768 + X25519, HKDF-SHA256, ChaCha20-Poly1305), beside HPKE with X25519
    alone (same KDF and AEAD, ``cryptography``'s ``hpke`` module) and beside the Ed25519
    signature the origin makes for every message anyway (``SigningKey.sign`` of the message's
    signing input), the yardstick; the origin's whole ``sign_message`` sealed and unsealed; and
    the bytes each KEM adds to a message (enc + AEAD tag; base64url on the wire).
(a') what a relay itself does per message (open the envelope, sign a hop record, write it out:
    ``bench_node.crypto_step``), in-process, on a request sealed and unsealed.
(b) at a relay: the casc node (without its links) relaying N facilitation requests seajust ->
    ejn that seajust signed, sealed for ejn or not, preloaded into casc's inbox; the rounds
    alternate (ABBA) in one run. msg/s and process CPU per message of each, the median of the
    rounds' ratios sealed / unsealed, and both envelopes' sizes. The relay never opens the
    payload: what differs is the envelope's size.

Every figure is the median of several rounds; each round times every operation once, in turn,
so that the machine's load moves them alike. Needs the local RabbitMQ for (b), like
``bench_node.py``. Usage: ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import bench_node
import cryptography
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import x25519

from mlanet.broker import SignedMessage, SigningKey, TrustStore, load_signing_key, sign_message
from mlanet.broker.seal import (
    ENC_BYTES,
    SEAL_OVERHEAD,
    PrivateSealKey,
    parse_encryption_key,
    seal_info,
    seal_key_files,
    seal_payload,
)
from mlanet.nodes.config import load_config
from mlanet.schemas import Destination, FacilitationRequest, Header, InformationResponse, Origin
from mlanet.schemas.base import WireModel
from mlanet.schemas.header import Kind
from mlanet.schemas.sealing import SEAL_SUITE, Sealed

X25519_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
HYBRID_SUITE = hpke.Suite(
    hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305
)
TAG_BYTES = 16  # ChaCha20-Poly1305
# ~1.2 KB of summary make a facilitation request payload of ~1.5 KB
SUMMARY = ("Benchmark request: no real case content. " * 30)[:1200]
# 20 answers of 4000 characters (the schema's most), some of them Cyrillic (\u escaped in
# canonical JSON): an information response of ~100 KB, about the largest payload there is
ANSWER = ("Benchmark answer, no case content. " * 4 + "Ответ без.") * 30


def _b64_chars(n: int) -> int:
    return (n * 8 + 5) // 6  # unpadded base64url


def _payloads() -> list[tuple[str, Kind, WireModel]]:
    request = FacilitationRequest(
        case_ref="KH-MLA-2020-0042",
        requesting_country="KH",
        requested_country="FR",
        offence_categories=["drug_trafficking", "money_laundering"],
        measures_sought=["evidence", "asset_freezing"],
        languages=["en", "fr"],
        summary=SUMMARY,
    )
    response = InformationResponse(case_ref="KH-MLA-2020-0042", answers=[ANSWER[:4000]] * 20)
    return [
        ("facilitation request", "facilitation_request", request),
        ("information response", "information_response", response),
    ]


def _header(key: SigningKey, kind: Kind, sealed: Sealed | None) -> Header:
    return Header(
        kind=kind,
        message_id=str(uuid.UUID(int=0x5B0C2F1E8D3A4C6B9E7F0A1B2C3D4E5F)),
        origin=Origin(network=key.network, country="KH", contact_point="kh-cp-1"),
        destination=Destination(network="ejn", country="FR", contact_point="fr-cp-1"),
        created_at=datetime(2026, 3, 2, 9, 30, tzinfo=UTC),
        key_id=key.key_id,
        sealed=sealed,
    )


def _rounds(
    calls: dict[str, Callable[[], object]], number: int, repeat: int
) -> dict[str, list[float]]:
    """Microseconds per call of each of ``calls``: ``repeat`` rounds, each timing a loop of
    ``number`` calls of every one in turn (after a warm-up)."""
    for call in calls.values():
        for _ in range(max(number // 10, 2)):
            call()
    runs: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeat):
        for name, call in calls.items():
            start = time.perf_counter_ns()
            for _ in range(number):
                call()
            runs[name].append((time.perf_counter_ns() - start) / number / 1000)
    return runs


SEAL_MLANET = "seal: mlanet seal_payload (key decoded, hybrid)"
SEAL_HYBRID = "seal: HPKE ML-KEM-768 + X25519, key decoded once"
SEAL_X25519 = "seal: HPKE X25519 alone"
OPEN_MLANET = "open: mlanet PrivateSealKey.open (hybrid)"
OPEN_X25519 = "open: HPKE X25519 alone"
SIGN = "Ed25519 sign of the signing input (SigningKey.sign)"


@dataclass(frozen=True)
class Keys:
    origin: SigningKey  # the origin's signing key
    hybrid: PrivateSealKey  # the destination's encryption key (mlanet's suite)
    hybrid_public: str  # its public key as the directory lists it
    hybrid_parsed: hpke.MLKEM768X25519PublicKey  # the same, decoded
    dh: x25519.X25519PrivateKey  # an X25519 key for the X25519-alone suite


def _operations(
    keys: Keys,
    payload: WireModel,
    plain: SignedMessage,
    sealed: SignedMessage,
    hybrid_sealed: bytes,
    x25519_sealed: bytes,
) -> dict[str, Callable[[], object]]:
    """The operations (a) times for one payload, by name."""
    plaintext, header_b64 = plain.payload_bytes, sealed.header_b64
    info = seal_info(header_b64)
    dh_public = keys.dh.public_key()
    return {
        SEAL_MLANET: lambda: seal_payload(plaintext, header_b64, keys.hybrid_public),
        SEAL_HYBRID: lambda: HYBRID_SUITE.encrypt(plaintext, keys.hybrid_parsed, info=info),
        SEAL_X25519: lambda: X25519_SUITE.encrypt(plaintext, dh_public, info=info),
        OPEN_MLANET: lambda: keys.hybrid.open(hybrid_sealed, header_b64),
        OPEN_X25519: lambda: X25519_SUITE.decrypt(x25519_sealed, keys.dh, info=info),
        SIGN: lambda: keys.origin.sign(plain.signing_input),
        "origin: sign_message, unsealed": lambda: sign_message(plain.header, payload, keys.origin),
        "origin: sign_message, sealed (hybrid)": lambda: sign_message(
            sealed.header, payload, keys.origin, seal_with=keys.hybrid_public
        ),
    }


def _ratio(runs: dict[str, list[float]], name: str, base: str) -> float:
    """The median of the rounds' ratios ``name`` / ``base`` (each round times both in turn)."""
    return statistics.median(a / b for a, b in zip(runs[name], runs[base], strict=True))


def per_message_phase(number: int, repeat: int) -> None:
    """(a): seal and open per message, both KEMs, beside an Ed25519 signature."""
    origin = SigningKey.from_seed("seajust", "ed25519:1", bytes(range(32)))
    hybrid_key = PrivateSealKey("ejn", "hpke:1", bytes(range(64)), bytes(range(64, 96)))
    hybrid_public = hybrid_key.public_b64()
    hybrid_parsed = parse_encryption_key(hybrid_public)
    dh_private = x25519.X25519PrivateKey.from_private_bytes(bytes(range(96, 128)))
    dh_public = dh_private.public_key()
    statement = Sealed(suite=SEAL_SUITE, network="ejn", key_id="hpke:1")
    print(
        f"(a) per message: median of {repeat} rounds; {number} calls per loop for the request,"
        f" {max(number // 20, 1)} for the ~100 KB response"
    )
    print(
        f"    {'operation':<52}{'us/op':>10}{'/ X25519':>10}{'/ Ed25519':>11}"
        "   (medians of the rounds' ratios)"
    )
    for label, kind, payload in _payloads():
        plain = sign_message(_header(origin, kind, None), payload, origin)
        sealed_message = sign_message(
            _header(origin, kind, statement), payload, origin, seal_with=hybrid_public
        )
        plaintext = plain.payload_bytes
        header_b64 = sealed_message.header_b64
        info = seal_info(header_b64)
        hybrid_sealed = seal_payload(plaintext, header_b64, hybrid_public)
        x25519_sealed = X25519_SUITE.encrypt(plaintext, dh_public, info=info)
        if hybrid_key.open(hybrid_sealed, header_b64) != plaintext:
            raise RuntimeError("the hybrid seal does not open")
        if X25519_SUITE.decrypt(x25519_sealed, dh_private, info=info) != plaintext:
            raise RuntimeError("the X25519 seal does not open")
        calls = _operations(
            Keys(origin, hybrid_key, hybrid_public, hybrid_parsed, dh_private),
            payload,
            plain,
            sealed_message,
            hybrid_sealed,
            x25519_sealed,
        )
        loops = number if kind == "facilitation_request" else max(number // 20, 1)
        runs = _rounds(calls, loops, repeat)
        us = {name: statistics.median(times) for name, times in runs.items()}
        baseline = {"seal": SEAL_X25519, "open": OPEN_X25519}

        print(
            f"  {label}: payload {len(plaintext):,} B; envelope {len(plain.to_bytes()):,} B"
            f" unsealed, {len(sealed_message.to_bytes()):,} B sealed (hybrid)"
        )
        for name, value in us.items():
            base = baseline.get(name.split(":")[0])
            versus = f"{_ratio(runs, name, base):9.2f}x" if base is not None else f"{'':10}"
            print(f"    {name:<52}{value:10.1f}{versus}{_ratio(runs, name, SIGN):10.2f}x")
        print(
            f"    hybrid - X25519: seal {us[SEAL_MLANET] - us[SEAL_X25519]:+.1f} us"
            f" ({us[SEAL_HYBRID] - us[SEAL_X25519]:+.1f} us with the key decoded once),"
            f" open {us[OPEN_MLANET] - us[OPEN_X25519]:+.1f} us (differences of the medians)"
        )
    x25519_added = hpke.KEM.X25519.enc_length() + TAG_BYTES
    print(
        f"    bytes added per message (enc + {TAG_BYTES}-byte tag): hybrid {SEAL_OVERHEAD:,}"
        f" ({ENC_BYTES:,} + {TAG_BYTES}), X25519 alone {x25519_added}"
        f" ({x25519_added - TAG_BYTES} + {TAG_BYTES});"
        f" base64url on the wire: {_b64_chars(SEAL_OVERHEAD):,} and {_b64_chars(x25519_added)}"
        " characters"
    )


def relay_step_phase(number: int, repeat: int) -> None:
    """(a'): what every relay does per message that grows with the envelope, in-process: open
    it (strict parse, the origin's signature checked), sign a hop record, write it out
    (``bench_node.crypto_step``, the cryptographic floor of ``bench_node.py``), on the same
    request sealed and unsealed."""
    origin = SigningKey.from_seed("seajust", "ed25519:1", bytes(range(32)))
    relay = SigningKey.from_seed("casc", "ed25519:1", bytes(range(32, 64)))
    trust = TrustStore()
    trust.add_signing_key(origin)
    public = PrivateSealKey("ejn", "hpke:1", bytes(range(64)), bytes(range(64, 96))).public_b64()
    plain, sealed = (
        bench_node.signed_requests(origin, 1, "FR", seal_for=seal_for, summary=SUMMARY)[0]
        for seal_for in (None, ("ejn", "hpke:1", public))
    )
    plain_bytes, sealed_bytes = plain.to_bytes(), sealed.to_bytes()
    step = bench_node.crypto_step(relay, trust)
    runs = _rounds(
        {"unsealed": lambda: step(plain_bytes), "sealed": lambda: step(sealed_bytes)},
        number,
        repeat,
    )
    print(
        "(a') a relay's own work on one request (open_envelope, add_hop, to_bytes), in-process:"
        f" unsealed ({len(plain_bytes):,} B) {statistics.median(runs['unsealed']):.1f} us,"
        f" sealed ({len(sealed_bytes):,} B) {statistics.median(runs['sealed']):.1f} us;"
        f" sealed / unsealed {_ratio(runs, 'sealed', 'unsealed'):.2f}"
    )


async def relay_phase(messages: int, rounds: int, prefix: str | None, prefetch: int) -> None:
    """(b): casc relaying sealed and unsealed requests, alternating rounds (ABBA)."""
    measured: dict[str, list[bench_node.Throughput]] = {"sealed": [], "unsealed": []}
    sizes: dict[str, int] = {}
    async with bench_node.relay_federation(prefix, prefetch) as bench:
        fed = bench.fed
        key = load_signing_key(fed.root / "seajust" / "seajust.1.key")
        _, public = seal_key_files(fed.root / "ejn", "ejn", "hpke:1")
        listed = json.loads(public.read_text(encoding="ascii"))
        seal_for = ("ejn", listed["key_id"], listed["public_key"])
        depth = load_config(fed.config_path("casc")).limits.prefetch
        for round_ in range(rounds):  # ABBA: drift over the run hits both alike
            order = ("sealed", "unsealed") if round_ % 2 == 0 else ("unsealed", "sealed")
            for variant in order:
                signed = bench_node.signed_requests(
                    key,
                    messages,
                    "FR",
                    seal_for=seal_for if variant == "sealed" else None,
                    summary=SUMMARY,
                )
                bodies = [message.to_bytes() for message in signed]
                sizes[variant] = len(bodies[0])
                measured[variant].append(await bench_node.relay(bench, bodies))
    print(
        f"(b) relay: casc forwarding {messages} facilitation requests seajust -> ejn, signed by"
        f" seajust, prefetch {depth}, {rounds} alternating rounds each; envelope"
        f" {sizes['unsealed']:,} B unsealed, {sizes['sealed']:,} B sealed for ejn"
        f" ({sizes['sealed'] / sizes['unsealed']:.2f}x)"
    )
    for variant, runs in measured.items():
        shown = ", ".join(f"{run.rate:,.0f} ({run.cpu * 1e6:,.0f} us)" for run in runs)
        print(f"    rounds {variant:<8}: {shown} msg/s (CPU per message)")
    for variant, runs in measured.items():
        rate = statistics.median(run.rate for run in runs)
        cpu = statistics.median(run.cpu for run in runs)
        print(f"    {variant:<8} {rate:8,.0f} msg/s   CPU {cpu * 1e6:6,.0f} us/msg   (median)")
    pairs = list(zip(measured["sealed"], measured["unsealed"], strict=True))
    by_rate = statistics.median(sealed.rate / plain.rate for sealed, plain in pairs)
    by_cpu = statistics.median(sealed.cpu / plain.cpu for sealed, plain in pairs)
    print(
        f"    ratio sealed / unsealed (median of the rounds' ratios): rate {by_rate:.2f},"
        f" CPU per message {by_cpu:.2f}"
    )


async def main(args: argparse.Namespace) -> None:
    print(
        f"mlanet sealed payload benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; Python"
        f" {platform.python_version()} ({platform.machine()}), cryptography"
        f" {cryptography.__version__}"
    )
    per_message_phase(args.number, args.repeat)
    relay_step_phase(args.number, args.repeat)
    if not args.skip_relay:
        await relay_phase(args.messages, args.rounds, args.prefix, args.prefetch)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--number",
        type=int,
        default=1000,
        help="calls per timed loop in (a) for the request (a twentieth for the ~100 KB one)",
    )
    parser.add_argument("--repeat", type=int, default=7, help="rounds in (a) (median reported)")
    parser.add_argument("--messages", type=int, default=3000, help="messages per round in (b)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of each variant in (b)")
    parser.add_argument(
        "--prefetch",
        type=int,
        default=0,
        help="casc's limits.prefetch in (b) (default 0: the node's own default)",
    )
    parser.add_argument("--skip-relay", action="store_true", help="run (a) only (no broker)")
    parser.add_argument(
        "--prefix", help="the federation's prefix on the broker in (b) (default: a unique one)"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
