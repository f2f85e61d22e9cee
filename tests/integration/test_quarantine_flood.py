"""A peer floods the quarantine, on the real RabbitMQ, and every quarantine command still works.

The review's attack: one peer sent 5,000 junk messages in a few seconds, after which `mlanet
quarantine list` (and show, release, drop) failed, because each command held the whole quorum
queue unacked and RabbitMQ hands one consumer at most about 2,000. Here SEAJust sends 5,000 junk
bodies into CASC's inbox with its own broker user, EJN a few: the node takes each refusal into
its quarantine store, keeps SEAJust's bodies up to SEAJust's bound and the metadata of every
refusal beyond it, raises the refusal-rate and bound alerts for SEAJust only, and list (filtered
by reason, peer and time, paged), show, release and drop (one, and all that match) all work.
The bench for 100,000 entries is ``bench/bench_quarantine.py``.

Also here: a contact point's full delivery queue turns new deliveries into releasable
quarantine entries (nothing lost), and receipts for messages signed with a network's key around
its node are recorded and alerted on, not refused as the receipting peer's fault.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from mlanet.broker.transport import QUARANTINE
from mlanet.nodes.cli.contact import facilitation_request, read_inbox, submit
from mlanet.nodes.local.federation import Federation
from mlanet.nodes.state.audit import AuditLog
from mlanet.nodes.state.store import open_node_store
from tests.hostile.peer import amqp_url, publish_all
from tests.integration.kit import (
    config,
    credentials,
    depth,
    eventually,
    facilitation,
    inject,
    outbox_state,
    running,
)
from tests.integration.test_noisy_peer import limit_peer
from tests.integration.test_operator import status_cli
from tests.integration.test_quarantine import mlanet

FLOOD = 5000
BOUND = 1000  # SEAJust's bodies kept in CASC's quarantine
QUIET = 20


def _append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as out:
        out.write(text)


async def _flood(fed: Federation, sender: str, receiver: str, count: int, tag: bytes) -> None:
    """``count`` junk bodies into ``receiver``'s inbox as ``sender`` (its own broker user)."""
    url = amqp_url(fed.link_user(sender), fed.link_password(sender), fed.door(receiver, sender))
    for start in range(0, count, 1000):
        bodies = [b"%s junk %d {" % (tag, n) for n in range(start, min(count, start + 1000))]
        await publish_all(url, sender, bodies)


def _audit_counts(fed: Federation, network: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    with AuditLog.of(config(fed, network), readonly=True) as audit:
        for record in audit.records():
            counts[record.event] = counts.get(record.event, 0) + 1
    return counts


def _alerts(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(alert["code"], alert["subject"]) for alert in document["alerts"]}


@pytest.mark.timeout(600)
async def test_a_peers_flood_leaves_every_quarantine_command_working_bounded_and_alerted(
    fed: Federation,
) -> None:
    """5,000 junk messages from SEAJust and 20 from EJN: every refusal has its entry (bodies
    kept up to SEAJust's bound of 1,000, metadata beyond), the alerts name SEAJust only, and
    list/filter/page/show/release/drop work on the flooded quarantine; every refusal and every
    operator action is in the audit trail, which still verifies."""
    path = fed.config_path("casc")
    limit_peer(path, "seajust", {"rate": 20000.0, "burst": 20000, "quarantine_messages": BOUND})
    _append(path, "\n[operator.alerts]\nrefusals_per_minute = 1000\n")
    started = time.time()
    async with running(fed, "casc"):
        await _flood(fed, "seajust", "casc", FLOOD, b"seajust")
        await _flood(fed, "ejn", "casc", QUIET, b"ejn")

        async def all_in() -> bool:
            return await depth(fed, "casc", QUARANTINE) == FLOOD + QUIET

        await eventually(all_in, within=300, every=1.0)

        # the alerts: SEAJust refused past the rate and over its bound; EJN neither
        _, status = await status_cli(path)
        peers = status["quarantine"]["peers"]
        assert peers["seajust"]["waiting"] == FLOOD
        assert peers["seajust"]["without_body"] == FLOOD - BOUND
        assert peers["seajust"]["last_minute"] >= 1000
        assert (peers["ejn"]["waiting"], peers["ejn"]["without_body"]) == (QUIET, 0)
        assert {("quarantine_rate", "seajust"), ("quarantine_bound", "seajust")} <= _alerts(status)
        assert not {a for a in _alerts(status) if a[1] == "ejn"}, status["alerts"]
        assert status["quarantine"]["depth"] == FLOOD + QUIET

        # list: a page at a time, filtered by peer, reason and time
        first = await mlanet(
            fed, "casc", "quarantine", "list", "--peer", "seajust", "--limit", "100"
        )
        assert first.code == 0, first.err
        assert f"100 of {FLOOD} quarantined message(s) at casc; next page: --after " in first.out
        after = first.out.rsplit("--after ", 1)[1].strip()
        page1 = await mlanet(
            fed, "casc", "quarantine", "list", "--peer", "seajust", "--limit", "100", "--json"
        )
        page2 = await mlanet(
            fed,
            "casc",
            "quarantine",
            "list",
            "--peer",
            "seajust",
            "--limit",
            "100",
            "--after",
            after,
            "--json",
        )
        ids1 = [e["id"] for e in page1.json_lines()]
        ids2 = [e["id"] for e in page2.json_lines()]
        assert ids1[-1] == after
        assert len(ids1) == len(ids2) == 100
        assert not set(ids1) & set(ids2)
        times = [e["at"] for e in page1.json_lines() + page2.json_lines()]
        assert times == sorted(times)
        quiet = await mlanet(
            fed, "casc", "quarantine", "list", "--peer", "ejn", "--reason", "invalid_json", "--json"
        )
        assert len(quiet.json_lines()) == QUIET
        assert {e["peer"] for e in quiet.json_lines()} == {"ejn"}
        before = await mlanet(
            fed,
            "casc",
            "quarantine",
            "list",
            "--until",
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started - 60)),
        )
        assert "has nothing that matches" in before.out
        recent = await mlanet(
            fed, "casc", "quarantine", "list", "--since", "1h", "--limit", "1", "--json"
        )
        assert len(recent.json_lines()) == 1

        # show and release: a kept body, and one kept as metadata only
        everything = (
            await mlanet(
                fed, "casc", "quarantine", "list", "--peer", "seajust", "--limit", "5000", "--json"
            )
        ).json_lines()
        assert len(everything) == FLOOD
        kept = [e for e in everything if e["body_kept"]]
        bare = [e for e in everything if not e["body_kept"]]
        assert (len(kept), len(bare)) == (BOUND, FLOOD - BOUND)
        shown = await mlanet(fed, "casc", "quarantine", "show", kept[0]["id"], "--payload")
        assert shown.code == 0, shown.err
        assert "invalid_json" in shown.out
        assert "seajust junk" in shown.out
        shown_bare = await mlanet(fed, "casc", "quarantine", "show", bare[0]["id"], "--payload")
        assert "metadata only" in shown_bare.out
        assert "(the body was not kept)" in shown_bare.out
        not_sent = await mlanet(fed, "casc", "quarantine", "release", bare[0]["id"])
        assert not_sent.code == 1
        assert "only its metadata was kept" in not_sent.err
        released = await mlanet(fed, "casc", "quarantine", "release", kept[0]["id"])
        assert released.code == 0, released.err

        async def refused_again() -> bool:  # the same junk, refused again under a new id
            return await depth(fed, "casc", QUARANTINE) == FLOOD + QUIET

        await eventually(refused_again, within=60)

        # drop: one, then every junk entry of SEAJust at once
        dropped = await mlanet(fed, "casc", "quarantine", "drop", bare[0]["id"], "--yes")
        assert dropped.code == 0, dropped.err
        bulk = await mlanet(
            fed,
            "casc",
            "quarantine",
            "drop",
            "--all-matching",
            "--peer",
            "seajust",
            "--reason",
            "invalid_json",
            "--yes",
        )
        assert bulk.code == 0, bulk.err
        assert f"dropped {FLOOD - 1} quarantined message(s) at casc" in bulk.out
        left = (await mlanet(fed, "casc", "quarantine", "list", "--json")).json_lines()
        assert {e["peer"] for e in left} == {"ejn"}
        assert len(left) == QUIET

    counts = _audit_counts(fed, "casc")
    assert counts["refused"] == FLOOD + QUIET + 1  # every refusal, the released one twice
    assert counts["quarantine_dropped"] == FLOOD  # one by one and in bulk, each recorded
    assert counts["quarantine_released"] == 1
    verified = await mlanet(fed, "casc", "audit", "verify")
    assert verified.code == 0, verified.out + verified.err


async def test_a_full_delivery_queue_sends_new_deliveries_to_quarantine_and_loses_none(
    fed: Federation,
) -> None:
    """UZ's contact point reads nothing and its queue is bounded at 2 (a quorum queue turns
    full one message late: it refuses once it holds more than its bound). Requests keep coming:
    the first one the broker refuses at delivery is handed back and, at the delivery limit,
    dead-lettered into the quarantine (delivery_limit), with a critical alert for the full
    queue. Once the contact point has read its queue, the operator releases it and it is
    delivered: every request arrives, each once."""
    path = fed.config_path("casc")
    _append(path, "\n[limits]\ndeliver_queue_messages = 2\ndelivery_limit = 2\n")
    requests = []
    async with running(fed, "casc"):
        for _ in range(5):  # until one is refused: at most the bound and one more get in
            request = facilitation(fed, "seajust", "kh-cp-1", "UZ")
            requests.append(request)
            waiting = await depth(fed, "casc", "mlanet.deliver.uz-cp-1")
            await inject(fed, "casc", "seajust", request.to_bytes())

            async def handled(before: int = waiting) -> bool:
                delivered = await depth(fed, "casc", "mlanet.deliver.uz-cp-1") > before
                return delivered or await depth(fed, "casc", QUARANTINE) == 1

            await eventually(handled, within=60)
            if await depth(fed, "casc", QUARANTINE) == 1:
                break
        assert await depth(fed, "casc", "mlanet.deliver.uz-cp-1") in (2, 3)  # nothing dropped
        (entry,) = (await mlanet(fed, "casc", "quarantine", "list", "--json")).json_lines()
        assert entry["reason"] == "delivery_limit"
        assert entry["via"] == "mlanet.inbox.from.seajust"
        assert entry["claimed"]["message_id"] == requests[-1].header.message_id
        seen: dict[str, Any] = {}

        async def full_alert() -> bool:
            _, seen["status"] = await status_cli(path)
            return ("delivery_queue", "uz-cp-1") in _alerts(seen["status"])

        await eventually(full_alert, within=60, every=1.0)
        alert = next(a for a in seen["status"]["alerts"] if a["code"] == "delivery_queue")
        assert alert["severity"] == "critical"

        items = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
        assert len(items) == len(requests) - 1
        released = await mlanet(fed, "casc", "quarantine", "release", entry["id"])
        assert released.code == 0, released.err

        async def all_arrived() -> bool:
            found = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
            return len(found) == len(requests)

        await eventually(all_arrived, within=60)
        found = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
        assert sorted(i.message.header.message_id for i in found) == sorted(
            r.header.message_id for r in requests
        )
        assert await depth(fed, "casc", QUARANTINE) == 0


async def test_receipts_for_messages_signed_around_the_node_are_recorded_not_refused(
    fed: Federation,
) -> None:
    """The review's second observation: valid requests signed with SEAJust's key but not sent
    by SEAJust's node (a tool holding the key) reach CASC, which delivers them and sends its
    receipts back; SEAJust's node has no record of those messages. The receipts used to land
    in SEAJust's quarantine as `unauthorised`, blaming CASC. Now each is recorded
    (receipt_unmatched), SEAJust's quarantine stays empty and its status alerts on it; a request
    its node did send gets its receipt as before."""
    around = [facilitation(fed, "seajust", "kh-cp-1", "UZ") for _ in range(10)]
    async with running(fed, "seajust", "casc"):
        for message in around:
            await inject(fed, "casc", "seajust", message.to_bytes())
        own = facilitation_request("kh-cp-1", "UZ")
        await submit(config(fed, "seajust"), credentials(fed, own.sender), own)

        def unmatched() -> int:
            store = open_node_store(config(fed, "seajust"), readonly=True)
            try:
                return store.count_events("receipt_unmatched", 0.0)
            finally:
                store.close()

        async def receipts_back() -> bool:
            return (
                unmatched() == len(around)
                and outbox_state(fed, "seajust", own.message_id) == "delivered"
            )

        await eventually(receipts_back, within=90, every=0.5)
        assert await depth(fed, "seajust", QUARANTINE) == 0
        _, status = await status_cli(fed.config_path("seajust"))
        assert ("receipts_unmatched", "") in _alerts(status)
        assert status["receipts"]["unmatched"] == len(around)

    with AuditLog.of(config(fed, "seajust"), readonly=True) as audit:
        events = [record.event for record in audit.records()]
    assert "refused" not in events
    assert events.count("accepted") >= len(around)  # each receipt's acceptance is recorded
