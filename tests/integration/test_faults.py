"""Faults that must lose nothing and deliver nothing twice: a peer away for a while, its
connections closed under load, and a node killed with SIGKILL mid-stream."""

from __future__ import annotations

from mlanet.nodes.cli.contact import facilitation_request, read_inbox, submit
from mlanet.nodes.local.federation import Federation, NodeProcesses
from mlanet.nodes.state.store import open_node_store
from mlanet.schemas.submission import Submission
from tests.integration.kit import ADMIN, close_connections, config, credentials, eventually, running


def _request(sender: str, country: str, n: int) -> Submission:
    return facilitation_request(
        sender,
        country,
        case_ref=f"KH-MLA-2026-{n:04d}",
        summary="Test request: no real case content. " * 10,
        offences=("cybercrime",),
        measures=("e_evidence_preservation",),
    )


def _states(fed: Federation, network: str, ids: list[str]) -> dict[str, int]:
    store = open_node_store(config(fed, network))
    try:
        counts: dict[str, int] = {}
        for message_id in ids:
            entry = store.outbox_get(message_id)
            state = entry.state if entry else "missing"
            counts[state] = counts.get(state, 0) + 1
        return counts
    finally:
        store.close()


async def _all_receipted(fed: Federation, ids: list[str]) -> bool:
    return _states(fed, "seajust", ids) == {"delivered": len(ids)}


async def _exactly_once(fed: Federation, ids: list[str]) -> None:
    items = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
    delivered = [item.message.header.message_id for item in items]
    assert sorted(delivered) == sorted(ids), "lost or unexpected messages at the contact point"
    assert len(set(delivered)) == len(delivered), "a message reached the contact point twice"


async def test_a_peer_away_for_a_while_loses_nothing(fed: Federation) -> None:
    """CASC's node is down while SEAJust sends: the requests wait in CASC's inbox, and when it
    returns every one is delivered once and receipted back at the origin."""
    async with running(fed, "seajust", "casc") as nodes:
        await nodes.stop("casc")
        ids = []
        for n in range(30):
            request = _request("kh-cp-1", "UZ", n)
            await submit(config(fed, "seajust"), credentials(fed, request.sender), request)
            ids.append(request.message_id)

        async def all_forwarded() -> bool:  # and held in CASC's inbox while it is away
            return _states(fed, "seajust", ids) == {"forwarded": 30}

        await eventually(all_forwarded, within=30)
        await nodes.start("casc")
        await eventually(lambda: _all_receipted(fed, ids), within=60)
        await _exactly_once(fed, ids)


async def test_closed_connections_under_load_lose_nothing(fed: Federation) -> None:
    """Every connection of both networks' vhosts is closed twice while messages flow (nodes and
    shovels alike): they reconnect, and every message arrives once with its receipt."""
    async with running(fed, "seajust", "casc"):
        ids = []
        for n in range(60):
            request = _request("kh-cp-1", "UZ", n)
            await submit(config(fed, "seajust"), credentials(fed, request.sender), request)
            ids.append(request.message_id)
            if n in (20, 40):
                for network in ("seajust", "casc"):
                    await close_connections(fed, network)
        await eventually(lambda: _all_receipted(fed, ids), within=90)
        await _exactly_once(fed, ids)


async def test_a_node_killed_mid_stream_loses_nothing_and_delivers_nothing_twice(
    fed: Federation,
) -> None:
    """CASC's node process is SIGKILLed while it works through a stream of requests, then
    restarted: unacked deliveries come back, dedupe holds, every request is delivered once."""
    processes = NodeProcesses(fed, ADMIN)
    try:
        processes.start("seajust")
        processes.start("casc")
        await processes.wait_ready()
        ids = []
        for n in range(150):
            request = _request("kh-cp-1", "UZ", n)
            await submit(config(fed, "seajust"), credentials(fed, request.sender), request)
            ids.append(request.message_id)
            if n == 75:
                processes.kill("casc")
                processes.start("casc")
        await processes.wait_ready(["casc"])
        await eventually(lambda: _all_receipted(fed, ids), within=120)
        await _exactly_once(fed, ids)
    finally:
        processes.stop_all()
