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

from broker import SignedMessage
from broker.management import ManagementEndpoint
from nodes import federation
from nodes.config import load_config
from nodes.contact import facilitation_request, read_inbox, submit, track
from nodes.store import TrackEvent
from schemas.submission import Submission

__all__ = ["journeys", "run_demo"]

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


def _line(network: str, event: TrackEvent) -> str:
    """One thing that happened at ``network``, said once ("forwarded to ejn (for ejn)", not
    "forwarded forwarded to ..."); at the origin a receipt is called one."""
    name, detail = event.event, event.detail
    detail = detail.removeprefix(f"{name} ")
    if name == "delivered" and detail.startswith("receipt "):
        name, detail = "receipt", detail.removeprefix("receipt ")
    return f"    {'[' + network + ']':<10} {name:<10} {detail}"


async def _journey(
    fed: federation.Federation,
    path: tuple[str, ...],
    message_id: str,
    say: Callable[[str], None],
    until: str = "delivered",
) -> None:
    """Wait until the origin (``path[0]``) holds its message as ``until`` (its receipt came
    back), then say what happened to it at every network on ``path``, in the order it
    happened."""
    configs = {network: load_config(fed.config_path(network)) for network in path}
    for _ in range(300):
        entry = track(configs[path[0]], message_id).entry
        if entry is not None and entry.state in (until, "failed", "undeliverable"):
            break
        await asyncio.sleep(0.1)
    else:
        raise RuntimeError(f"{message_id} did not reach '{until}' in time")
    happened = [
        (event.at, network, event)
        for network in path
        for event in track(configs[network], message_id).events
    ]
    for _, network, event in sorted(happened, key=lambda item: item[0]):
        say(_line(network, event))


def _hops(message: SignedMessage) -> str:
    """What the hop records say: none when the origin handed the message straight to the
    destination's network, one per network that relayed it."""
    relays = [hop.record.network for hop in message.hops]
    if not relays:
        return "no hop record (no network relayed it: the origin handed it straight over)"
    noun = "record" if len(relays) == 1 else "records"
    return f"{len(relays)} hop {noun} ({', '.join(relays)} relayed it)"


async def _inbox(
    fed: federation.Federation, network: str, contact_point: str, say: Callable[[str], None]
) -> None:
    config = load_config(fed.config_path(network))
    for _ in range(100):
        items = [item for item in await read_inbox(config, contact_point) if item.new]
        if items:
            for item in items:
                header = item.message.header
                path = " > ".join((*item.message.path, network))
                say(
                    f"    [{contact_point}] reads {header.kind} {header.message_id[:8]}, "
                    f"verified end to end ({path}): the origin's signature and "
                    f"{_hops(item.message)}"
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

        await journeys(fed, say)
    finally:
        nodes.stop_all()
        if not keep:
            await federation.teardown(fed, ADMIN)


async def journeys(fed: federation.Federation, say: Callable[[str], None]) -> None:
    """The three journeys, on a federation whose five networks' nodes run."""
    seajust = load_config(fed.config_path("seajust"))
    say("1. kh-cp-1 (Cambodia, SEAJust) sends a facilitation request to Uzbekistan (CASC)")
    request = _request("kh-cp-1", "UZ", "KH-MLA-2020-0042")
    await submit(seajust, request)
    await _journey(fed, ("seajust", "casc"), request.message_id, say)
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
    await submit(casc, update)
    await _journey(fed, ("casc", "seajust"), update.message_id, say)
    await _inbox(fed, "seajust", "kh-cp-1", say)

    say("\n3. kh-cp-1 asks France (EJN): no direct link, so CASC relays it")
    relayed = _request("kh-cp-1", "FR", "KH-MLA-2021-0007")
    await submit(seajust, relayed)
    await _journey(fed, ("seajust", "casc", "ejn"), relayed.message_id, say)
    await _inbox(fed, "ejn", "fr-cp-1", say)
    say(
        "\ndone: every message was signed at its origin, verified at every hop, delivered once"
        " and acknowledged by a signed receipt"
    )
