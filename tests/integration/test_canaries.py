"""Case content never leaves the payload: unique canary strings planted in every case field of
every kind with free text, sent through a running federation of node processes (delivered ones,
and refused ones: schema-invalid, tampered, hostile identifiers), appear in no log line, no
metric, no dashboard, no quarantine header or error text, no state event and no audit record.

Positive controls show that the canaries did travel (the contact points read them; ``mlanet
quarantine show --payload`` prints one), so the absence elsewhere means something."""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from mlanet.broker import canonical_bytes, sign_message
from mlanet.broker.keys import b64u_decode, b64u_encode
from mlanet.broker.submission_signing import sign_submission
from mlanet.broker.transport import QUARANTINE, SUBMIT, SUBMIT_EXCHANGE, Transport
from mlanet.nodes.cli.contact import read_inbox, submit
from mlanet.nodes.config import NodeConfig
from mlanet.nodes.local.federation import Federation, NodeProcesses
from mlanet.nodes.state.quarantine_store import open_quarantine
from mlanet.nodes.state.store import open_node_store
from mlanet.schemas.submission import Submission
from tests.integration.kit import (
    ADMIN,
    config,
    credentials,
    depth,
    eventually,
    facilitation,
    inject,
    key,
)
from tests.integration.test_quarantine import mlanet

NETWORKS = ["seajust", "casc", "ejn"]
# Log events about one message: each binds its message id, origin and destination.
PER_MESSAGE = {
    "duplicate_not_delivered_again",
    "equivocation_detected",
    "receipt_received",
    "refusal_notice_not_routable",
    "refusal_notice_sent",
    "refusal_notice_withheld",
    "resend_failed",
    "submission_repeated",
    "transient_failure_requeued",
    "unexpected_failure_requeued",
}


class Canaries:
    """Unique upper-case markers (they fit case references too), one per planted field."""

    def __init__(self) -> None:
        self.run = secrets.token_hex(4).upper()
        self.planted: dict[str, str] = {}

    def __call__(self, field: str) -> str:
        value = (
            f"CANARY-{self.run}-{field.upper().replace('_', '-')}-{secrets.token_hex(3).upper()}"
        )
        self.planted[field] = value
        return value

    def forms(self) -> Iterator[tuple[str, str]]:
        """Each canary as it would look inside base64 (both alphabets, all three alignments),
        so that a logged raw payload would be caught too."""
        for field, value in self.planted.items():
            raw = value.encode()
            for offset in range(3):
                for encode in (base64.urlsafe_b64encode, base64.standard_b64encode):
                    encoded = encode(b"\0" * offset + raw).decode().rstrip("=")
                    yield field, encoded[4 if offset else 0 : -4]

    def found_in(self, text: str) -> list[str]:
        """The fields whose canary is in ``text``, in any letter case or base64-encoded."""
        lowered = text.lower()
        plain = {field for field, value in self.planted.items() if value.lower() in lowered}
        return sorted(plain | {field for field, form in self.forms() if form in text})


def _submission(
    kind: str, sender: str, destination: dict[str, str], payload: dict[str, Any]
) -> Submission:
    return Submission.model_validate(
        {
            "message_id": str(uuid.uuid4()),
            "kind": kind,
            "sender": sender,
            "destination": destination,
            "payload": payload,
        }
    )


def _journeys(c: Canaries) -> list[tuple[str, Submission, str, str]]:
    """(submitting network, submission, receiving network, receiving contact point)."""
    soon = (datetime.now(UTC) + timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return [
        (
            "seajust",
            _submission(
                "facilitation_request",
                "kh-cp-1",
                {"country": "UZ"},
                {
                    "case_ref": c("facilitation_case_ref"),
                    "requesting_country": "KH",
                    "requested_country": "UZ",
                    "offence_categories": ["corruption"],
                    "measures_sought": ["asset_freezing"],
                    "languages": ["en"],
                    "summary": f"Summary {c('facilitation_summary')} ends here.",
                },
            ),
            "casc",
            "uz-cp-1",
        ),
        (
            "casc",
            _submission(
                "status_update",
                "uz-cp-1",
                {"country": "KH", "contact_point": "kh-cp-1"},
                {
                    "case_ref": c("status_case_ref"),
                    "status": "information_needed",
                    "note": f"Note {c('status_note')}",
                },
            ),
            "seajust",
            "kh-cp-1",
        ),
        (
            "seajust",
            _submission(
                "information_request",
                "kh-cp-1",
                {"country": "FR"},
                {
                    "case_ref": c("information_case_ref"),
                    "questions": [f"First {c('question_one')}?", f"Then {c('question_two')}?"],
                },
            ),
            "ejn",
            "fr-cp-1",
        ),
        (
            "ejn",
            _submission(
                "information_response",
                "fr-cp-1",
                {"country": "KH", "contact_point": "kh-cp-1"},
                {"case_ref": c("response_case_ref"), "answers": [f"Answer {c('answer')}."]},
            ),
            "seajust",
            "kh-cp-1",
        ),
        (
            "casc",
            _submission(
                "meeting_request",
                "uz-cp-1",
                {"country": "KH", "contact_point": "kh-cp-1"},
                {
                    "case_ref": c("meeting_case_ref"),
                    "purpose": f"Purpose {c('meeting_purpose')}",
                    "meeting_format": "video",
                    "proposed_slots": [soon],
                    "participant_countries": ["UZ", "KH"],
                },
            ),
            "seajust",
            "kh-cp-1",
        ),
        (
            "seajust",
            _submission(
                "notice",
                "kh-cp-1",
                {"country": "UZ", "contact_point": "uz-cp-1"},
                {
                    "topic": "working_group",
                    "title": f"Title {c('notice_title')}",
                    "body": f"Body {c('notice_body')}",
                },
            ),
            "casc",
            "uz-cp-1",
        ),
    ]


async def _refused(fed: Federation, c: Canaries) -> None:
    """Messages that must be refused, each carrying canaries where a careless error text or
    log line would repeat them."""
    over_long = {
        "message_id": str(uuid.uuid4()),
        "kind": "facilitation_request",
        "sender": "kh-cp-1",
        "destination": {"country": "UZ"},
        "payload": {
            "case_ref": c("refused_case_ref"),
            "requesting_country": "KH",
            "requested_country": "UZ",
            "offence_categories": ["other"],
            "measures_sought": ["evidence"],
            "languages": ["en"],
            "summary": c("over_long_summary") * 200,  # far over the 4000 characters allowed
        },
    }
    extra = json.loads(json.dumps(over_long)) | {"message_id": str(uuid.uuid4())}
    extra["payload"]["summary"] = "fine"
    extra["payload"][c("unexpected_field_name")] = c("unexpected_field_value")
    kh_cp_1 = credentials(fed, "kh-cp-1")  # signed by their sender: refused for what they hold
    async with Transport(kh_cp_1.amqp_url(config(fed, "seajust"))) as transport:
        for body in (over_long, extra):
            await transport.publish(
                SUBMIT,
                sign_submission(Submission.model_validate(body), kh_cp_1.key),
                message_id=body["message_id"],
                kind="x",
                exchange=SUBMIT_EXCHANGE,
            )

    # unsealed (taken, casc requires no sealing): its canary is in the bytes casc quarantines
    tampered = facilitation(
        fed, "seajust", "kh-cp-1", "UZ", summary=c("tampered_summary"), seal=False
    )
    payload = bytearray(tampered.payload_bytes)
    payload[payload.index(b"CANARY")] = ord("K")
    await inject(
        fed,
        "casc",
        "seajust",
        tampered.to_bytes().replace(
            tampered.payload_b64.encode(), b64u_encode(bytes(payload)).encode()
        ),
    )

    # A header naming a signer that cannot exist, and a case reference that breaks its grammar.
    honest = facilitation(fed, "seajust", "kh-cp-1", "UZ", seal=False)  # its canaries in clear
    header = json.loads(b64u_decode(honest.header_b64))
    header["key_id"] = c("hostile_key_id")
    header["origin"]["network"] = c("hostile_network").lower()
    header_b64 = b64u_encode(canonical_bytes(header))
    frame = json.loads(honest.to_bytes()) | {"header": header_b64}
    await inject(fed, "casc", "seajust", canonical_bytes(frame))
    honest_payload = json.loads(honest.payload_bytes)
    honest_payload["case_ref"] = c("invalid_case_ref").lower()  # lower case: not a case ref
    bad = sign_message(honest.header, canonical_bytes(honest_payload), key(fed, "seajust"))
    await inject(fed, "casc", "seajust", bad.to_bytes())


async def _get(client: httpx.AsyncClient, url: str) -> str:
    response = await client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    return response.text


def _operator_url(fed: Federation, network: str) -> str:
    for line in (fed.root / network / "node.log").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("event") == "operator_http_started":
            return str(record["url"])
    raise AssertionError(f"{network} logged no operator_http_started")


async def _operator_pages(fed: Federation, network: str) -> str:
    """/metrics (open), and the dashboard and status.json after logging in."""
    url = _operator_url(fed, network).rstrip("/")
    secret = (fed.root / "operator.secret").read_text(encoding="ascii").strip()
    async with httpx.AsyncClient(timeout=30) as client:
        pages = [await _get(client, f"{url}/metrics")]
        login = await client.post(
            f"{url}/login", data={"password": secret}, headers={"Origin": url}
        )
        assert login.status_code == 303, login.status_code
        pages.append(await _get(client, f"{url}/"))
        pages.append(await _get(client, f"{url}/status.json"))
    assert "mlanet_" in pages[0]
    return "\n".join(pages)


def _table_text(cfg: NodeConfig, query: str, *, quarantine: bool = False) -> str:
    """A query on the node's state (or its quarantine), wherever it is (SQLite or PostgreSQL),
    as text."""
    store = (
        open_quarantine(cfg, readonly=True) if quarantine else open_node_store(cfg, readonly=True)
    )
    try:
        return "\n".join(repr(row) for row in store._db.execute(query))
    finally:
        store.close()


async def test_canaries_in_case_fields_reach_contact_points_and_nothing_else(
    fed: Federation,
) -> None:
    c = Canaries()
    journeys = _journeys(c)
    processes = NodeProcesses(fed, ADMIN)
    try:
        for network in NETWORKS:
            processes.start(network)
        await processes.wait_ready(NETWORKS, within=90)
        for network, submission, _, _ in journeys:
            await submit(config(fed, network), credentials(fed, submission.sender), submission)
        await _refused(fed, c)

        expected = {
            (to, cp): {s.message_id for n, s, t, p in journeys if (t, p) == (to, cp)}
            for _, _, to, cp in journeys
        }
        delivered: dict[tuple[str, str], list[Any]] = {}

        async def all_delivered() -> bool:
            for (network, contact_point), ids in expected.items():
                items = await read_inbox(config(fed, network), credentials(fed, contact_point))
                delivered[(network, contact_point)] = items
                if not ids <= {item.message.header.message_id for item in items}:
                    return False
            return True

        await eventually(all_delivered, within=120, every=0.5)

        async def quarantined() -> bool:
            return (
                await depth(fed, "seajust", QUARANTINE) == 2
                and await depth(fed, "casc", QUARANTINE) == 3
            )

        await eventually(quarantined, within=60, every=0.5)
        pages = "\n".join([await _operator_pages(fed, network) for network in NETWORKS])

        # Positive controls: the canaries really travelled in the payloads.
        read = "\n".join(
            json.dumps(item.payload.model_dump(mode="json"))
            for items in delivered.values()
            for item in items
        )
        delivered_fields = {
            field
            for field in c.planted
            if not field.startswith(("refused", "over_long", "unexpected", "tampered", "hostile"))
            and field != "invalid_case_ref"
        }
        assert set(c.found_in(read)) == delivered_fields
        # As they travelled, requests, answers and updates were sealed for their destination:
        # only a notice (which every node may read) shows its fields. The delivered form the
        # destination's node handed its contact point holds them all (base64 forms are caught).
        wires = b"".join(item.message.to_bytes() for items in delivered.values() for item in items)
        notice_fields = {field for field in delivered_fields if field.startswith("notice")}
        assert notice_fields
        assert set(c.found_in(wires.decode())) == notice_fields
        assert all(
            item.message.header.sealed is not None
            for items in delivered.values()
            for item in items
            if item.message.header.kind != "notice"
        )
        opened = b"".join(
            item.message.to_delivered_bytes() for items in delivered.values() for item in items
        )
        assert set(c.found_in(opened.decode())) == delivered_fields

        listed = {
            network: await mlanet(fed, network, "quarantine", "list", "--json")
            for network in ("seajust", "casc")
        }
        shown = []
        for network, result in listed.items():
            assert result.code == 0, result.err
            for entry in result.json_lines():
                shown.append(await mlanet(fed, network, "quarantine", "show", entry["id"]))
        reasons = sorted(e["reason"] for r in listed.values() for e in r.json_lines())
        assert reasons == [
            "bad_signature",
            "schema_invalid",
            "schema_invalid",
            "schema_invalid",
            "unknown_key",
        ]
        over_long = next(e for e in listed["seajust"].json_lines() if "summary" in e["detail"])
        revealed = await mlanet(fed, "seajust", "quarantine", "show", over_long["id"], "--payload")
        assert "over_long_summary" in c.found_in(revealed.out)
        # every entry's metadata in the quarantine stores (the bodies are the messages)
        headers = "\n".join(
            _table_text(config(fed, n), "SELECT * FROM entries", quarantine=True)
            for n in ("seajust", "casc")
        )
    finally:
        processes.stop_all()

    logs = {n: (fed.root / n / "node.log").read_text(encoding="utf-8") for n in NETWORKS}
    for network, text in logs.items():
        assert c.found_in(text) == [], f"canary in {network}/node.log"
        records = [json.loads(line) for line in text.splitlines()]  # one JSON object a line
        per_message = [
            r for r in records if r["event"].startswith("message_") or r["event"] in PER_MESSAGE
        ]
        assert len(per_message) >= 3, f"{network} logged too few messages"
        for record in per_message:
            missing = {"message_id", "origin", "destination"} - set(record)
            assert not missing, f"{network}: {record['event']} without {sorted(missing)}"
    assert c.found_in(pages) == [], "canary in metrics, dashboard or status"
    assert c.found_in(headers) == [], "canary in quarantine headers"
    cli = "\n".join(r.out + r.err for r in [*listed.values(), *shown])
    assert c.found_in(cli) == [], "canary in quarantine list/show output"
    for network in NETWORKS:
        cfg = config(fed, network)
        audit = _table_text(cfg, "SELECT record FROM journal")
        assert "refused" in audit or network == "ejn"
        assert c.found_in(audit) == [], f"canary in {network}'s audit trail"
        columns = _table_text(
            cfg,
            "SELECT event, message_id, origin, destination, kind, source, target, by_network,"
            " reason, detail, via, quarantine_id, operator FROM journal",
        )
        assert c.found_in(columns) == [], f"canary in {network}'s journal columns"
