"""The handling rules of the signed header (docs/PROTOCOL.md section 16), each refused at the
hop that would break it, on the real RabbitMQ with nodes of a local federation.

The example links: unodc - seajust - casc - ejn, ejn - wacap, ejn - gljc, wacap - gljc.

- ``direct_only`` to France (EJN, which SEAJust reaches only through CASC): ``mlanet send
  --direct-only`` refuses it at once with the reason, in one line; a submission handed to the
  node anyway is refused there before it leaves (failed, its contact point told), and nothing
  reaches CASC; to Uzbekistan (CASC, linked) it is delivered, carrying the rule;
- a ``direct_only`` message, signed with SEAJust's real key, handed to CASC to relay: CASC
  refuses it (``direct_only_relayed``) and SEAJust's contact point is told; nothing reaches EJN;
  the refused message's retention period purges its body from CASC's quarantine later;
- one that a relay forwarded anyway (CASC's real hop record): EJN, its destination, refuses it
  and the origin is told;
- ``members_only`` for an observer country of EJN, handed to CASC: CASC refuses it
  (``not_for_observers``) and the origin is told (the origin and the destination refusing it are
  ``test_directory_contact_points.py``);
- a retention period: at the destination the content is purged once it has passed and the
  metadata kept, with no copy of the content left in the contact point's archive; the origin's
  ``[policy] max_retention_days`` gives a message a period, the destination's shortens it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from mlanet.broker import SignedMessage, add_hop, load_signing_key, sign_message
from mlanet.broker.directory_signing import sign_directory
from mlanet.nodes.cli.app import app
from mlanet.nodes.cli.contact import (
    ARCHIVE_FILE,
    facilitation_request,
    open_archive,
    purge_expired,
    read_inbox,
    read_purged,
    submit,
    track,
)
from mlanet.nodes.directory.book import DirectoryBook
from mlanet.nodes.local.federation import Federation
from mlanet.nodes.state.quarantine import Entry, Where
from mlanet.nodes.state.quarantine_store import QUARANTINE_FILE
from mlanet.nodes.state.store import open_node_store
from mlanet.schemas import Destination, FacilitationRequest, Header, Notice, Origin, WireModel
from mlanet.schemas.directory import Directory
from mlanet.schemas.submission import Submission
from tests.integration.kit import (
    config,
    credentials,
    depth,
    eventually,
    inject,
    key,
    mlanet_send,
    running,
)
from tests.integration.quarantine_kit import open_store

SUMMARY = "Handling test: no real case content."


def _entries(fed: Federation, network: str) -> list[Entry]:
    store = open_store(fed, network)
    if store is None:
        return []
    with store:
        return list(store.page(Where(), limit=1000).entries)


def _stored(fed: Federation, network: str, query: str) -> bytes:
    """With the state in PostgreSQL: the bytes a query on it returns (its rows as the database
    holds them; what it keeps of a row's earlier versions until a vacuum reuses their space is
    not read: docs/OPERATIONS.md, "Replicas")."""
    store = open_node_store(config(fed, network), readonly=True)
    try:
        return b"".join(bytes(row[0]) for row in store._db.execute(query))
    finally:
        store.close()


def _quarantine_bytes(fed: Federation, network: str) -> bytes:
    """What the quarantine holds: its SQLite files, byte for byte, or its bodies' table."""
    if config(fed, network).database is not None:
        return _stored(fed, network, "SELECT body FROM bodies")
    folder = config(fed, network).state_dir
    return b"".join(p.read_bytes() for p in folder.glob(QUARANTINE_FILE + "*"))


def _outbox(fed: Federation, network: str, message_id: str) -> tuple[str, str] | None:
    entry = track(config(fed, network), message_id).entry
    return (entry.state, entry.detail) if entry else None


async def _notices(fed: Federation, network: str, contact_point: str, about: str) -> list[Any]:
    """The notices about ``about`` in a contact point's inbox: (signer, reason)."""
    return [
        (item.message.header.origin.network, item.payload.reason)
        for item in await read_inbox(config(fed, network), credentials(fed, contact_point))
        if isinstance(item.payload, Notice) and item.payload.regarding == about
    ]


def _signed(
    fed: Federation, destination: Destination, payload: WireModel, kind: str, **rules: Any
) -> SignedMessage:
    """A message of SEAJust's kh-cp-1, signed with SEAJust's real key as its node would."""
    signing = key(fed, "seajust")
    header = Header.model_validate(
        {
            "kind": kind,
            "message_id": str(uuid.uuid4()),
            "origin": Origin(network="seajust", country="KH", contact_point="kh-cp-1"),
            "destination": destination,
            "created_at": datetime.now(UTC),
            "key_id": signing.key_id,
            **rules,
        }
    )
    return sign_message(header, payload, signing)


def _to_france(fed: Federation, **rules: Any) -> SignedMessage:
    request = FacilitationRequest(
        case_ref="KH-MLA-2020-0042",
        requesting_country="KH",
        requested_country="FR",
        offence_categories=["drug_trafficking"],
        measures_sought=["evidence"],
        languages=["en"],
        summary=SUMMARY,
    )
    return _signed(
        fed, Destination(country="FR"), request, "facilitation_request", direct_only=True, **rules
    )


# --- direct_only ---------------------------------------------------------------------------
async def test_direct_only_behind_a_relay_is_refused_at_the_origin(fed: Federation) -> None:
    """SEAJust has no link to EJN: ``mlanet send --direct-only`` to France says why in one line
    and submits nothing; a submission that reaches the node anyway is refused there (failed,
    ``direct_only_relayed``, kh-cp-1 told) and never handed to CASC. To Uzbekistan (CASC is
    linked) the same rule is delivered, and the delivered header carries it."""
    async with running(fed, "seajust", "casc"):
        code, said = await mlanet_send(fed, "--to-country", "FR", "--direct-only", summary=SUMMARY)
        assert code == 1
        assert said == (
            "mlanet: not sent: direct only: no link to ejn (destination FR)"
            " (direct_only_relayed); nothing was submitted\n"
        )

        far = facilitation_request("kh-cp-1", "FR").model_copy(update={"direct_only": True})
        await submit(config(fed, "seajust"), credentials(fed, far.sender), far)

        async def failed() -> bool:
            return _outbox(fed, "seajust", far.message_id) == ("failed", "direct_only_relayed")

        await eventually(failed)
        told = await _notices(fed, "seajust", "kh-cp-1", far.message_id)
        assert told == [("seajust", "direct_only_relayed")]
        events = {event.event for event in track(config(fed, "seajust"), far.message_id).events}
        assert "forwarded" not in events
        assert await depth(fed, "seajust", "mlanet.out.casc") == 0
        assert _entries(fed, "casc") == []

        code, said = await mlanet_send(fed, "--to-country", "UZ", "--direct-only", summary=SUMMARY)
        assert code == 0, said
        near = said.strip()

        async def delivered() -> bool:
            found = _outbox(fed, "seajust", near)
            return found is not None and found[0] == "delivered"

        await eventually(delivered)
        (item,) = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
        assert item.message.header.message_id == near
        assert item.message.header.direct_only is True
        assert item.message.path == ("seajust",)


async def test_a_relay_handed_a_direct_only_message_refuses_it_and_the_origin_is_told(
    fed: Federation,
) -> None:
    """A direct_only request for France, signed by SEAJust, handed to CASC: CASC would have
    to relay it to EJN, so it refuses it (direct_only_relayed, one quarantine entry) and tells
    SEAJust's kh-cp-1; EJN never gets it. The request asked to be kept one day: a day later
    CASC's quarantine purges its body (recorded as content_purged) and keeps the entry."""
    async with running(fed, "seajust", "casc", "ejn") as nodes:
        message = _to_france(fed, retention_days=1)
        await inject(fed, "casc", "seajust", message.to_bytes())
        about = message.header.message_id

        async def told() -> bool:
            return await _notices(fed, "seajust", "kh-cp-1", about) == [
                ("casc", "direct_only_relayed")
            ]

        await eventually(told, within=60)
        (refused,) = _entries(fed, "casc")
        assert (refused.reason, refused.claim.message_id) == ("direct_only_relayed", about)
        assert await depth(fed, "casc", "mlanet.out.ejn") == 0
        assert _entries(fed, "ejn") == []
        assert await read_inbox(config(fed, "ejn"), credentials(fed, "fr-cp-1")) == []

        content = message.payload_b64.encode("ascii")
        assert content in _quarantine_bytes(fed, "casc")
        casc = nodes.nodes["casc"]
        assert casc.purge_quarantine(time.time()) == 0
        assert casc.purge_quarantine(time.time() + 2 * 86400) == 1
        store = open_store(fed, "casc")
        assert store is not None
        with store:
            kept = store.get(refused.id)
        assert kept is not None
        assert (kept.body, kept.body_kept, kept.reason) == (None, False, "direct_only_relayed")
        events = [e.event for e in track(config(fed, "casc"), about).events]
        assert "content_purged" in events
        assert content not in _quarantine_bytes(fed, "casc")


async def test_the_destination_refuses_a_direct_only_message_a_relay_forwarded_anyway(
    fed: Federation,
) -> None:
    """CASC (misbehaving) relays SEAJust's direct_only request to EJN with its real hop
    record: EJN, the destination, sees it came through a third network and refuses it; the
    notice goes back through CASC and SEAJust takes it (EJN is the hop record's ``to``)."""
    async with running(fed, "seajust", "casc", "ejn"):
        message = _to_france(fed)
        relayed = add_hop(message, key(fed, "casc"), to="ejn", at=datetime.now(UTC))
        await inject(fed, "ejn", "casc", relayed.to_bytes())
        about = message.header.message_id

        async def told() -> bool:
            return await _notices(fed, "seajust", "kh-cp-1", about) == [
                ("ejn", "direct_only_relayed")
            ]

        await eventually(told, within=60)
        (refused,) = _entries(fed, "ejn")
        assert refused.reason == "direct_only_relayed"
        assert await read_inbox(config(fed, "ejn"), credentials(fed, "fr-cp-1")) == []


async def test_the_origins_policy_makes_the_rules_mandatory(fed: Federation) -> None:
    """SEAJust's [policy] makes every message direct_only and members_only: ``mlanet send``
    to France without asking for either is refused at once (direct_only_relayed); one to
    Uzbekistan is delivered carrying both rules."""
    _with_policy(fed, "seajust", "direct_only = true\nmembers_only = true")
    async with running(fed, "seajust", "casc"):
        code, said = await mlanet_send(fed, "--to-country", "FR", summary=SUMMARY)
        assert code == 1
        assert "(direct_only_relayed); nothing was submitted" in said
        plain = facilitation_request("kh-cp-1", "UZ")
        await submit(config(fed, "seajust"), credentials(fed, plain.sender), plain)
        items: list[Any] = []

        async def arrived() -> bool:
            items[:] = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
            return len(items) == 1

        await eventually(arrived, within=60)
        header = items[0].message.header
        assert (header.message_id, header.direct_only, header.members_only) == (
            plain.message_id,
            True,
            True,
        )


# --- members_only -------------------------------------------------------------------------
def _observer_country(fed: Federation, network: str, country: str) -> None:
    """Re-issue directory version 1 with ``country`` an observer of ``network`` (before any
    node holds one), signed with the coordinator's key as ``build`` signs it."""
    held = DirectoryBook.load(config(fed, "seajust"), persist=False).held.directory
    data = held.model_dump(mode="json", exclude_none=True)
    for entry in data["networks"]:
        if entry["id"] == network:
            entry["observers"] = [country]
    directory = Directory.model_validate(data, strict=False)
    signed = sign_directory(directory, load_signing_key(fed.coordinator_key()))
    (fed.root / "directory.json").write_bytes(signed.to_bytes())


async def test_a_relay_refuses_a_members_only_message_for_an_observer(fed: Federation) -> None:
    """Mongolia observes EJN. A members_only notice for it, signed by SEAJust and handed to
    CASC (SEAJust's own routing would have refused it): CASC would forward it to an observer,
    so it refuses it (not_for_observers) and tells kh-cp-1."""
    _observer_country(fed, "ejn", "MN")
    async with running(fed, "seajust", "casc"):
        secret = _signed(
            fed,
            Destination(country="MN"),
            Notice(topic="plenary", title="Members only"),
            "notice",
            members_only=True,
        )
        await inject(fed, "casc", "seajust", secret.to_bytes())
        about = secret.header.message_id

        async def told() -> bool:
            return await _notices(fed, "seajust", "kh-cp-1", about) == [
                ("casc", "not_for_observers")
            ]

        await eventually(told, within=60)
        (refused,) = _entries(fed, "casc")
        assert refused.reason == "not_for_observers"
        assert await depth(fed, "casc", "mlanet.out.ejn") == 0


# --- retention ----------------------------------------------------------------------------
def _with_policy(fed: Federation, network: str, table: str) -> None:
    path = fed.config_path(network)
    path.write_text(path.read_text(encoding="utf-8") + f"\n[policy]\n{table}\n", encoding="utf-8")


def _request(to: str, marker: str, **rules: Any) -> Submission:
    return facilitation_request(
        "kh-cp-1", to, summary=f"{marker}: no real case content."
    ).model_copy(update=rules)


def _archive_bytes(fed: Federation, contact_point: str) -> bytes:
    """What a contact point's archive holds: its SQLite files, byte for byte, or its rows."""
    network = next(
        n for n in fed.nodes if fed.credentials(contact_point).is_relative_to(fed.root / n)
    )
    if config(fed, network).database is not None:
        return _stored(fed, network, "SELECT wire FROM inbox")
    folder = fed.credentials(contact_point)
    return b"".join(p.read_bytes() for p in folder.glob(ARCHIVE_FILE + "*"))


async def test_the_destination_purges_the_content_after_the_retention_and_keeps_metadata(
    fed: Federation,
) -> None:
    """SEAJust's policy caps retention at 30 days; CASC's keeps what arrives at most 3. A
    request kept 1 day, one given 30 by SEAJust's policy, and one asking for 10 reach uz-cp-1;
    read as of 2 days later, the first is purged; as of 4 days later, all three. A purged
    message is listed by its metadata (origin, id, kind, content hash, times), its content (the
    payload's text as the envelope carries it) is in no file of the archive, and ``mlanet
    inbox`` says it was purged."""
    _with_policy(fed, "seajust", "max_retention_days = 30")
    _with_policy(fed, "casc", "max_retention_days = 3")
    short = _request("UZ", "RETENTION-SHORT", retention_days=1)
    capped = _request("UZ", "RETENTION-CAPPED")
    longer = _request("UZ", "RETENTION-LONGER", retention_days=10)
    async with running(fed, "seajust", "casc"):
        for request in (short, capped, longer):
            await submit(config(fed, "seajust"), credentials(fed, "kh-cp-1"), request)
        sent = {short.message_id, capped.message_id, longer.message_id}
        items: list[Any] = []

        async def arrived() -> bool:
            items.extend(await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1")))
            return {i.message.header.message_id for i in items} == sent

        await eventually(arrived, within=60)
    headers = {i.message.header.message_id: i.message.header for i in items}
    assert headers[short.message_id].retention_days == 1
    assert headers[capped.message_id].retention_days == 30  # the origin's policy gave it 30
    assert headers[longer.message_id].retention_days == 10
    contents = [i.message.payload_b64.encode("ascii") for i in items]  # as the archive has it
    assert all(content in _archive_bytes(fed, "uz-cp-1") for content in contents)

    casc = config(fed, "casc")
    reader = credentials(fed, "uz-cp-1")
    now = datetime.now(UTC)
    archive = open_archive(casc, reader)
    try:
        (first,) = purge_expired(casc, archive, "uz-cp-1", now=now + timedelta(days=2))
        assert first.message_id == short.message_id
        later = purge_expired(casc, archive, "uz-cp-1", now=now + timedelta(days=4))
        assert {p.message_id for p in later} == {capped.message_id, longer.message_id}
    finally:
        archive.close()

    assert await read_inbox(casc, reader) == []
    kept = {p.message_id: p for p in read_purged(casc, reader)}
    assert set(kept) == sent
    for item in items:
        header = item.message.header
        metadata = kept[header.message_id]
        assert (metadata.origin, metadata.kind, metadata.content_sha256) == (
            "seajust",
            "facilitation_request",
            item.message.content_sha256,
        )
        assert metadata.created_at == header.created_at.timestamp()
    archived = _archive_bytes(fed, "uz-cp-1")
    assert not any(content in archived for content in contents)

    shown = await asyncio.to_thread(
        CliRunner().invoke,
        app,
        ["inbox", "--config", str(fed.config_path("casc")), "--credentials", str(reader.folder)],
    )
    assert shown.exit_code == 0, shown.output
    assert f"{short.message_id} facilitation_request from seajust: content purged" in shown.output
    assert "RETENTION" not in shown.output
    listed = await asyncio.to_thread(
        CliRunner().invoke,
        app,
        ["inbox", "--json", "--config", str(fed.config_path("casc")), "--credentials",
         str(reader.folder)],
    )  # fmt: skip
    assert listed.exit_code == 0, listed.output
    records = {r["message_id"]: r for r in map(json.loads, listed.output.splitlines())}
    assert set(records) == sent
    assert all("payload" not in r and "purged_at" in r for r in records.values())
    assert records[short.message_id]["content_sha256"] == kept[short.message_id].content_sha256


async def test_a_message_without_a_retention_period_is_kept(
    fed: Federation, tmp_path: Path
) -> None:
    """Without a period and without a policy nothing is purged, however late it is read."""
    plain = _request("UZ", "RETENTION-NONE")
    async with running(fed, "seajust", "casc"):
        await submit(config(fed, "seajust"), credentials(fed, "kh-cp-1"), plain)

        items: list[Any] = []

        async def arrived() -> bool:
            items[:] = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
            return [i.message.header.message_id for i in items] == [plain.message_id]

        await eventually(arrived, within=60)
    casc = config(fed, "casc")
    reader = credentials(fed, "uz-cp-1")
    archive = open_archive(casc, reader)
    try:
        far = datetime.now(UTC) + timedelta(days=36500)
        assert purge_expired(casc, archive, "uz-cp-1", now=far) == []
    finally:
        archive.close()
    assert items[0].message.payload_b64.encode("ascii") in _archive_bytes(fed, "uz-cp-1")
    assert [i.message.header.message_id for i in await read_inbox(casc, reader)] == [
        plain.message_id
    ]
