"""A message refused when a contact point reads it (``mlanet inbox`` finds its signing key
revoked since the node delivered it) is in the audit trail, as ``mlanet track`` and the
quarantine already had it: one ``refused`` record naming the quarantine entry, the reason and
the delivery queue, metadata only; the trail still verifies."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta

from mlanet.broker import load_signing_key
from mlanet.broker.directory_signing import sign_directory
from mlanet.nodes.cli.contact import facilitation_request, submit, track
from mlanet.nodes.directory.book import DirectoryBook
from mlanet.nodes.directory.coordinator import next_version, revoke_key
from mlanet.nodes.local.federation import Federation
from mlanet.nodes.state.audit import AUDIT_FILE, AuditLog
from tests.integration.kit import (
    config,
    credentials,
    depth,
    drain,
    eventually,
    outbox_state,
    running,
)

SUMMARY = "Delivered before the revocation: no real case content."
QUEUE = "mlanet.deliver.uz-cp-1"


def revoke_seajust_key(fed: Federation) -> None:
    """The coordinator's next directory, with SEAJust's key revoked, where CASC's config
    names its directory file."""
    now = datetime.now(UTC)
    directory = DirectoryBook.load(config(fed, "casc"), persist=False).held.directory
    networks = revoke_key(directory, "seajust", "ed25519:1", now)
    revoked = next_version(directory, now, timedelta(days=30), networks=networks)
    signed = sign_directory(revoked, load_signing_key(fed.coordinator_key()))
    config(fed, "casc").directory.write_bytes(signed.to_bytes())


async def mlanet(*args: str) -> tuple[int, str, str]:
    """An ``mlanet`` command as an operator types it, in a process of its own."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mlanet",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_a_refusal_when_the_contact_point_reads_it_is_in_the_audit_trail(
    fed: Federation,
) -> None:
    request = facilitation_request("kh-cp-1", "UZ", summary=SUMMARY)
    casc = str(fed.config_path("casc"))
    async with running(fed, "seajust", "casc"):
        await submit(config(fed, "seajust"), credentials(fed, request.sender), request)

        async def delivered() -> bool:
            return outbox_state(fed, "seajust", request.message_id) == "delivered"

        await eventually(delivered, within=60)
        assert await depth(fed, "casc", QUEUE) == 1  # waiting for the contact point

        revoke_seajust_key(fed)
        # Read while CASC's node runs: two writers of the audit trail at once.
        code, out, err = await mlanet(
            "inbox", "--config", casc, "--credentials", fed.credentials("uz-cp-1")
        )
        assert code == 0, err
        assert request.message_id not in out  # not handed to the contact point

    (entry,) = await drain(fed, "casc", "mlanet.quarantine")
    assert entry.headers["x-mlanet-reason"] == "key_revoked"
    assert entry.headers["x-mlanet-via"] == QUEUE
    assert await depth(fed, "casc", QUEUE) == 0

    with AuditLog.of(config(fed, "casc"), readonly=True) as audit:
        (record,) = audit.records(event="refused")
        assert audit.about_quarantine(str(entry.message_id)) == [record]
        trail = b"".join(p.read_bytes() for p in audit.path.parent.glob(AUDIT_FILE + "*"))
    assert record.meta == {
        "message_id": request.message_id,
        "origin": "seajust",
        "destination": "UZ",
        "kind": "facilitation_request",
        "quarantine_id": entry.message_id,
        "reason": "key_revoked",
        "detail": entry.headers["x-mlanet-detail"],
        "via": QUEUE,
    }
    assert SUMMARY.encode() not in trail
    assert [e.event for e in track(config(fed, "casc"), request.message_id).events][-1] == (
        "refused"
    )
    code, out, err = await mlanet("audit", "verify", "--config", casc)
    assert code == 0, out + err
    assert out.startswith("audit trail of casc ok:")
