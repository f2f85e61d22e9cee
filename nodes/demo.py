"""The README's main job: a local federation of the five example networks, and the seed's
journey through it: a Cambodian contact point asks the Uzbek one for help with a pending MLA
matter; SEAJust routes it to CASC, CASC delivers it, a signed receipt comes back, and the Uzbek
side answers with a status update. Then a three-network journey (Cambodia -> France via CASC)."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from broker.management import ManagementEndpoint
from nodes import federation
from nodes.config import load_config
from nodes.contact import facilitation_request, read_inbox, submit, track
from nodes.contact_points import Credentials
from schemas.submission import Submission

__all__ = ["run_demo"]

ADMIN = ManagementEndpoint("http://127.0.0.1:15672", "guest", "guest")


def _request(sender: str, country: str, case_ref: str) -> Submission:
    return facilitation_request(
        sender,
        country,
        case_ref=case_ref,
        summary="Demonstration request: no real case content.",
        offences=("drug_trafficking", "money_laundering"),
        measures=("evidence", "asset_freezing"),
        languages=("en", "ru"),
    )


async def _follow(
    fed: federation.Federation,
    network: str,
    message_id: str,
    say: Callable[[str], None],
    until: str = "delivered",
) -> None:
    config = load_config(fed.config_path(network))
    shown = 0
    for _ in range(300):
        found = track(config, message_id)
        for event in found.events[shown:]:
            say(f"    [{network}] {event.event:<10} {event.detail}")
        shown = len(found.events)
        if found.entry is not None and found.entry.state in (until, "failed", "undeliverable"):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{message_id} did not reach '{until}' in time")


async def _inbox(
    fed: federation.Federation, network: str, contact_point: str, say: Callable[[str], None]
) -> None:
    config = load_config(fed.config_path(network))
    reader = Credentials.load(fed.credentials(contact_point))  # its own user: its queue only
    for _ in range(100):
        items = [item for item in await read_inbox(config, reader) if item.new]
        if items:
            for item in items:
                header = item.message.header
                path = " > ".join((*item.message.path, network))
                say(
                    f"    [{contact_point}] {header.kind} {header.message_id[:8]} verified end to"
                    f" end: origin signature and {len(item.message.hops)} hop record(s), {path}"
                )
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"nothing reached {contact_point}")


def fresh_folder(root: Path) -> None:
    if root.exists():
        shutil.rmtree(root)


async def run_demo(root: Path, *, say: Callable[[str], None], keep: bool = False) -> None:
    fed = federation.build(root, prefix="mlanet-demo", receipts={"retry_after_seconds": 10.0})
    await federation.provision(fed, ADMIN)
    say(f"federation of {', '.join(fed.networks)} provisioned on the local RabbitMQ")
    say("links: " + ", ".join(f"{a}-{b}" for a, b in fed.links))
    nodes = federation.NodeProcesses(fed, ADMIN)
    try:
        for network in fed.networks:
            nodes.start(network)
        await nodes.wait_ready()
        say("all five nodes are running\n")

        seajust = load_config(fed.config_path("seajust"))
        kh_cp_1 = Credentials.load(fed.credentials("kh-cp-1"))
        say("1. kh-cp-1 (Cambodia, SEAJust) sends a facilitation request to Uzbekistan (CASC),")
        say("   signed with its own key and handed in as its own broker user")
        request = _request("kh-cp-1", "UZ", "KH-MLA-2020-0042")
        await submit(seajust, kh_cp_1, request)
        await _follow(fed, "seajust", request.message_id, say)
        await _inbox(fed, "casc", "uz-cp-1", say)

        say("\n2. uz-cp-1 answers with a status update; it travels back the same way")
        casc = load_config(fed.config_path("casc"))
        update = Submission.model_validate(
            {
                "message_id": str(uuid.uuid4()),
                "kind": "status_update",
                "sender": "uz-cp-1",
                "destination": {"country": "KH", "contact_point": "kh-cp-1"},
                "in_reply_to": request.message_id,
                "payload": {
                    "case_ref": "KH-MLA-2020-0042",
                    "status": "in_progress",
                    "regarding": request.message_id,
                },
            }
        )
        await submit(casc, Credentials.load(fed.credentials("uz-cp-1")), update)
        await _follow(fed, "casc", update.message_id, say)
        await _inbox(fed, "seajust", "kh-cp-1", say)

        say("\n3. kh-cp-1 asks France (EJN): no direct link, so CASC relays it")
        relayed = _request("kh-cp-1", "FR", "KH-MLA-2021-0007")
        await submit(seajust, kh_cp_1, relayed)
        await _follow(fed, "seajust", relayed.message_id, say)
        for event in track(load_config(fed.config_path("casc")), relayed.message_id).events:
            say(f"    [casc] {event.event:<10} {event.detail}")
        await _inbox(fed, "ejn", "fr-cp-1", say)
        say(
            "\ndone: every message was signed at its origin, verified at every hop, delivered once"
            " and acknowledged by a signed receipt"
        )
    finally:
        nodes.stop_all()
        if not keep:
            await federation.teardown(fed, ADMIN)
