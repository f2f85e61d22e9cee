"""Write tests/vectors/protocol.json: the worked examples of docs/PROTOCOL.md beyond the golden
message, from fixed seeds: EJN's receipt for the golden message, a small signed directory, the
routing and local delivery cases over it, key and password files, and the edge cases of the
header's size cap and of numbers in the header.

Run once (``.venv/bin/python tests/vectors/make_protocol.py``); the file is then frozen and
``tests/unit/test_protocol_*.py`` check every value against the document, against an
independent implementation of the document (``tests/independent.py``) and against the
reference. Regenerating (``--force``) changes what other implementations are tested with.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlanet.broker import RefusedMessage, SigningKey, TrustStore, open_envelope, sign_message
from mlanet.broker.directory_signing import sign_directory
from mlanet.broker.keys import b64u_encode
from mlanet.broker.peer_access import rabbit_password_hash
from mlanet.broker.routing import Deliver, Forward, RouteRule, route
from mlanet.schemas import Destination, Header, Origin, Receipt
from mlanet.schemas.directory import Directory

OUT = Path(__file__).with_name("protocol.json")
GOLDEN = Path(__file__).with_name("golden.json")

# Seeds: the bytes 32k .. 32k+31 (k = 0 and 1 are the golden vector's SEAJust and CASC keys).
SEED_INDEX = {
    "seajust": 0,
    "casc": 1,
    "ejn": 2,
    "wacap": 3,
    "gljc": 4,
    "iberred": 5,
    "unodc": 6,
}
COORDINATOR_SEED_INDEX = 7
PASSWORD = "ZXhhbXBsZSBvbmx5OiBub3QgYSBzZWNy"  # 32 characters, as `mlanet init` writes them
SALT = bytes([1, 2, 3, 4])
AT = "2026-03-02T09:30:00.000Z"  # the instant the routing cases are decided at
# Two CA certificates (ECDSA P-256, 2026-01-01 to 2031-01-01) made once with
# mlanet.broker.tls.generate_ca and frozen here: an ECDSA signature is not reproducible.
SEAJUST_BROKER_CA = """-----BEGIN CERTIFICATE-----
MIIBoTCCAUegAwIBAgIUXF3BGxKYZy7zdUuI6m0a/3bblYowCgYIKoZIzj0EAwIw
LTEaMBgGA1UEAwwRc2VhanVzdCBicm9rZXIgQ0ExDzANBgNVBAoMBm1sYW5ldDAe
Fw0yNjAxMDEwMDAwMDBaFw0zMTAxMDEwMDAwMDBaMC0xGjAYBgNVBAMMEXNlYWp1
c3QgYnJva2VyIENBMQ8wDQYDVQQKDAZtbGFuZXQwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAAR1vF1LUyIP7omvo/KC7E+cZIA4GwemrDgcjtnBm6gF2ZhRgfxFWdb5
y5ImlF94iEw06jIddmgvWLJQzI4aRm+Fo0UwQzASBgNVHRMBAf8ECDAGAQH/AgEA
MA4GA1UdDwEB/wQEAwIBBjAdBgNVHQ4EFgQUmdDL1J3dNBA/9M8DP4agnzZmWSsw
CgYIKoZIzj0EAwIDSAAwRQIhAMIY7Q3WxDk/eJu5GQODN3FB44kISj9WnWQrTvKW
2TsAAiBqyhmV4iAl46wVpXG8On9xQZ3xBD6wry8mtWlHp9WarA==
-----END CERTIFICATE-----
"""
UNODC_LINK_CA = """-----BEGIN CERTIFICATE-----
MIIBmTCCAT+gAwIBAgIUSj5mKsigbDhv/2v2Qt+Onato0VIwCgYIKoZIzj0EAwIw
KTEWMBQGA1UEAwwNdW5vZGMgbGluayBDQTEPMA0GA1UECgwGbWxhbmV0MB4XDTI2
MDEwMTAwMDAwMFoXDTMxMDEwMTAwMDAwMFowKTEWMBQGA1UEAwwNdW5vZGMgbGlu
ayBDQTEPMA0GA1UECgwGbWxhbmV0MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE
cR6I9OKMrD0Z+HNmvEUYFFLvivO+D1816Xon5a/WF4XD3XY905McpIa7DhS4vcKs
vg+5Twk9RtWG64oD0JHO3aNFMEMwEgYDVR0TAQH/BAgwBgEB/wIBADAOBgNVHQ8B
Af8EBAMCAQYwHQYDVR0OBBYEFBrRRNV7lC3+LAWstix7cFnKJ5N3MAoGCCqGSM49
BAMCA0gAMEUCIEFCxzR8sZ+Aq4x661TZyI/K1c9d14w9GYmeWkTRli1KAiEAw9ap
Cn4rVBmSfSHI6+agwxJXDdxlF94A9XzlX4+o8Dw=
-----END CERTIFICATE-----
"""
CA_WINDOW = {"not_before": "2026-01-01T00:00:00.000Z", "not_after": "2031-01-01T00:00:00.000Z"}


def _seed(index: int) -> bytes:
    return bytes(range(32 * index, 32 * index + 32))


def _key(network: str) -> SigningKey:
    return SigningKey.from_seed(network, "ed25519:1", _seed(SEED_INDEX[network]))


def _cp(cp_id: str, role: str = "contact point", **extra: Any) -> dict[str, Any]:
    return {"id": cp_id, "country": cp_id[:2].upper(), "role": role, **extra}


def _network(
    network: str, name: str, members: list[str], points: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    return {
        "id": network,
        "name": name,
        "members": members,
        "contact_points": points,
        "keys": [{"key_id": "ed25519:1", "public_key": _key(network).public_b64()}],
        "broker": {"host": f"mq.{network}.example", "port": 5671, "vhost": "mlanet"},
        **extra,
    }


def directory() -> Directory:
    coordinator = SigningKey.from_seed("unodc", "ed25519:1", _seed(COORDINATOR_SEED_INDEX))
    link_user = {"name": "seajust-link", "password_hash": rabbit_password_hash(PASSWORD, SALT)}
    value = {
        "version": 7,
        "issued_at": "2026-03-01T00:00:00.000Z",
        "valid_until": "2026-03-31T00:00:00.000Z",
        "coordinator": "unodc",
        "coordinator_keys": [{"key_id": "ed25519:1", "public_key": coordinator.public_b64()}],
        "networks": [
            _network(
                "seajust",
                "South East Asia Justice Network",
                ["KH", "LA", "TH"],
                [
                    _cp("kh-ago-1", "Central authority"),
                    _cp("kh-moj-1"),
                    _cp("th-oag-1"),
                    _cp("jp-moj-1"),
                ],
                observers=["JP"],
                link_user=link_user,
                tls={
                    "endpoints": [
                        {
                            "host": "mq.seajust.example",
                            "port": 5671,
                            "server_name": "mq.seajust.example",
                        }
                    ],
                    "cas": [{"id": "seajust-ca-1", "pem": SEAJUST_BROKER_CA, **CA_WINDOW}],
                },
            ),
            _network(
                "casc",
                "Central Asia and Southern Caucasus Network",
                ["KZ", "UZ"],
                [
                    _cp("kz-gpo-1", not_after="2026-02-01T00:00:00.000Z", successor="kz-gpo-2"),
                    _cp("kz-gpo-2"),
                    _cp("uz-gpo-1"),
                ],
            ),
            _network(
                "ejn",
                "European Judicial Network",
                ["DE", "FR"],
                [_cp("de-bfj-1"), _cp("fr-dacg-1")],
            ),
            _network(
                "gljc",
                "Great Lakes Judicial Cooperation",
                ["KE", "UG"],
                [_cp("ke-odpp-1"), _cp("ug-dpp-1")],
            ),
            _network("iberred", "IberRed", ["ES"], [_cp("es-mj-1")], role="observer"),
            _network("unodc", "UNODC (coordinator)", [], []),
            _network(
                "wacap", "West African Network", ["KE", "SN"], [_cp("ke-ag-1"), _cp("sn-mj-1")]
            ),
        ],
        "links": [
            ["seajust", "casc"],
            ["casc", "ejn"],
            ["seajust", "wacap"],
            ["wacap", "ejn"],
            ["ejn", "gljc"],
            ["wacap", "gljc"],
            ["iberred", "seajust"],
            ["iberred", "ejn"],
            ["unodc", "seajust"],
        ],
        "link_cas": [{"id": "unodc-link-ca-1", "pem": UNODC_LINK_CA, **CA_WINDOW}],
    }
    return Directory.model_validate(value, strict=False)


REQUEST = "facilitation_request"
# (at, path, kind, destination, extra header members, rules)
CASES: list[tuple[str, list[str], str, dict[str, str], dict[str, Any], list[dict[str, Any]]]] = [
    ("seajust", [], REQUEST, {"country": "DE"}, {}, []),
    (
        "seajust",
        [],
        REQUEST,
        {"country": "DE"},
        {"urgency": "urgent"},
        [{"via": "wacap", "urgency": "urgent"}],
    ),
    ("seajust", [], REQUEST, {"country": "DE"}, {}, [{"via": "iberred"}, {"via": "gljc"}]),
    ("seajust", ["casc"], REQUEST, {"country": "DE"}, {}, []),
    ("ejn", [], REQUEST, {"country": "TH"}, {}, []),
    ("casc", [], REQUEST, {"country": "KE"}, {}, []),
    ("seajust", [], REQUEST, {"country": "KE"}, {}, []),
    ("wacap", ["seajust"], REQUEST, {"country": "KE"}, {}, []),
    ("casc", ["seajust", "ejn"], REQUEST, {"country": "KE"}, {"hop_limit": 1}, []),
    ("seajust", ["casc"], REQUEST, {"country": "UZ"}, {}, []),
    ("gljc", ["wacap", "ejn"], "status_update", {"network": "casc"}, {}, []),
    ("seajust", [], REQUEST, {"country": "US"}, {}, []),
    ("casc", [], REQUEST, {"country": "JP"}, {}, []),
    ("casc", [], "notice", {"country": "JP"}, {}, []),
    ("casc", [], "notice", {"country": "JP"}, {"members_only": True}, []),
    ("ejn", [], REQUEST, {"country": "ES"}, {}, []),
    ("casc", [], "notice", {"country": "ES"}, {}, []),
    ("seajust", ["casc"], REQUEST, {"country": "KH"}, {}, []),
    ("seajust", ["casc"], REQUEST, {"country": "KH", "contact_point": "kh-moj-1"}, {}, []),
    ("seajust", ["casc"], REQUEST, {"network": "seajust"}, {}, []),
    ("seajust", ["casc"], "notice", {"network": "seajust"}, {}, []),
    ("seajust", ["casc"], "notice", {"country": "JP"}, {}, []),
    ("casc", ["seajust"], REQUEST, {"country": "KZ", "contact_point": "kz-gpo-1"}, {}, []),
    ("casc", ["seajust"], REQUEST, {"country": "KZ"}, {}, []),
    ("seajust", ["casc"], REQUEST, {"country": "LA"}, {}, []),
    ("seajust", ["casc"], REQUEST, {"country": "KH", "contact_point": "kh-xyz-1"}, {}, []),
    ("unodc", ["seajust"], "notice", {"network": "unodc"}, {}, []),
    ("seajust", [], REQUEST, {"country": "UZ"}, {"direct_only": True}, [{"via": "wacap"}]),
    ("seajust", [], REQUEST, {"country": "DE"}, {"direct_only": True}, []),
    ("casc", ["seajust"], REQUEST, {"country": "DE"}, {"direct_only": True}, []),
    ("ejn", ["casc"], REQUEST, {"country": "DE"}, {"direct_only": True}, []),
    ("ejn", ["seajust", "casc"], REQUEST, {"country": "DE"}, {"direct_only": True}, []),
]


def routing_cases(listed: Directory) -> list[dict[str, Any]]:
    view = listed.as_of(datetime.fromisoformat(AT))
    out = []
    for at, path, kind, destination, extra, rules in CASES:
        origin = path[0] if path else at
        header = Header.model_validate(
            {
                "kind": kind,
                "message_id": "00000000-0000-4000-8000-000000000000",
                "origin": {"network": origin},
                "destination": destination,
                "created_at": AT,
                "key_id": "ed25519:1",
                **extra,
            },
            strict=False,
        )
        decided = route(
            header,
            tuple(path),
            view,
            tuple(RouteRule.model_validate(rule) for rule in rules),
            at,
        )
        if isinstance(decided, Forward):
            outcome: dict[str, Any] = {"forward": decided.peer}
        elif isinstance(decided, Deliver):
            outcome = {"deliver": list(decided.contact_points)}
        else:
            outcome = {"refuse": decided.reason.value}
        case: dict[str, Any] = {"at": at, "path": path, "kind": kind, "destination": destination}
        case.update(extra)
        if rules:
            case["rules"] = rules
        case.update(outcome)
        out.append(case)
    return out


def receipt(golden: dict[str, Any]) -> dict[str, Any]:
    """EJN's receipt for the golden message, as EJN's node signs it."""
    original = golden["header"]
    header = Header(
        kind="receipt",
        message_id="9b2e4c71-0d3f-4a58-b6e1-7c8d9e0f1a2b",
        origin=Origin(network="ejn"),
        destination=Destination.model_validate(original["origin"]),
        created_at=datetime(2026, 3, 2, 9, 30, 2, 250000, tzinfo=UTC),
        key_id="ed25519:1",
        in_reply_to=original["message_id"],
    )
    payload = Receipt(
        receipt_for=original["message_id"],
        content_sha256=golden["content_sha256"],
        received_at=datetime(2026, 3, 2, 9, 30, 2, 0, tzinfo=UTC),
        received_by="node",
        delivered_to="de-bfj-1",
    )
    message = sign_message(header, payload, _key("ejn"))
    return {
        "wire": message.to_bytes().decode("ascii"),
        "header": header.model_dump(mode="json", exclude_none=True),
        "payload": payload.model_dump(mode="json", exclude_none=True),
    }


def _signed_header(header_text: str) -> bytes:
    key = _key("seajust")
    header_b64 = b64u_encode(header_text.encode("ascii"))
    payload_b64 = b64u_encode(b"{}")
    signature = b64u_encode(
        key.sign(f"mlanet-v1:origin:{header_b64}.{payload_b64}".encode("ascii"))
    )
    frame = {"header": header_b64, "hops": [], "mlanet": 1, "payload": payload_b64}
    return json.dumps({**frame, "signature": signature}).encode("ascii")


def _verdict(wire: bytes) -> str:
    trust = TrustStore()
    trust.add("seajust", "ed25519:1", _key("seajust").public_b64())
    try:
        open_envelope(wire, trust)
    except RefusedMessage as refused:
        return refused.reason.value
    return "accepted"


def edges(golden: dict[str, Any]) -> dict[str, Any]:
    """Header texts around the size cap, and numbers in the header, with the reference's
    verdicts."""
    sizes = []
    for chars in (2731, 2732, 2733, 2734, 2735):
        raw_bytes = chars * 3 // 4  # what a text of this length decodes to (when it decodes)
        filler = "a" * (raw_bytes - len('{"x":""}'))
        text = b64u_encode(('{"x":"' + filler + '"}').encode("ascii"))
        text = (text + "A" * chars)[:chars]  # 2733: one character more than a whole group
        frame = json.loads(_signed_header("{}"))
        wire = json.dumps({**frame, "header": text}).encode("ascii")
        sizes.append({"characters": chars, "reason": _verdict(wire)})
    numbers = []
    header_bytes = golden["header_bytes"]
    for member, literal in (
        ("hop_limit", "6"),
        ("hop_limit", "6.0"),
        ("hop_limit", "6e0"),
        ("hop_limit", "6.5"),
        ("hop_limit", "1e+16"),
        ("format", "1.0"),
        ("hop_limit", "-0"),
        ("hop_limit", "600000000000000000000"),
    ):
        text = header_bytes.replace(
            f'"{member}":' + ("6" if member == "hop_limit" else "1"), f'"{member}":{literal}'
        )
        assert text != header_bytes or literal == "6"
        numbers.append(
            {"member": member, "literal": literal, "reason": _verdict(_signed_header(text))}
        )
    return {"header_sizes": sizes, "header_numbers": numbers}


def files() -> dict[str, Any]:
    key = _key("seajust")
    secret = {"network": "seajust", "key_id": "ed25519:1", "seed": b64u_encode(_seed(0))}
    public = {"network": "seajust", "key_id": "ed25519:1", "public_key": key.public_b64()}
    return {
        "key_file": json.dumps(secret),
        "pub_file": json.dumps(public, indent=2) + "\n",
        "password_file": PASSWORD + "\n",
        "password_salt_hex": SALT.hex(),
        "password_hash": rabbit_password_hash(PASSWORD, SALT),
    }


def build() -> dict[str, Any]:
    golden = json.loads(GOLDEN.read_text(encoding="ascii"))
    listed = directory()
    coordinator = SigningKey.from_seed("unodc", "ed25519:1", _seed(COORDINATOR_SEED_INDEX))
    signed = sign_directory(listed, coordinator)
    return {
        "about": "mlanet format 1 worked examples; see docs/PROTOCOL.md. Do not edit by hand.",
        "keys": {
            network: {
                "key_id": "ed25519:1",
                "seed_hex": _seed(i).hex(),
                "public_key": _key(network).public_b64(),
            }
            for network, i in SEED_INDEX.items()
        }
        | {
            "unodc (directory)": {
                "key_id": "ed25519:1",
                "seed_hex": _seed(COORDINATOR_SEED_INDEX).hex(),
                "public_key": coordinator.public_b64(),
            }
        },
        "receipt": receipt(golden),
        "directory": listed.model_dump(mode="json", exclude_none=True),
        "signed_directory": signed.signed.model_dump(mode="json"),
        "routing_at": AT,
        "routing": routing_cases(listed),
        "files": files(),
        "edges": edges(golden),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = parser.parse_args()
    if OUT.exists() and not args.force:
        print(f"{OUT.name} exists; it is frozen (use --force to change the worked examples)")
        return 1
    OUT.write_text(json.dumps(build(), indent=2, sort_keys=True) + "\n", encoding="ascii")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
