"""A peer's body above the node's size cap, on the real broker, is never read whole by the node
(``broker/amqp_decode.py``): its handler gets the first cap + 1 bytes with the whole size and
digest, quarantines what it keeps (as before), and its connection goes on with the next
message; also after the connection was closed under it and came back. (Bodies above the
broker's own max_message_size never reach it: test_hostile.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib

from mlanet.broker.keys import b64u_encode
from mlanet.broker.transport import CutBody, Incoming, body_size
from mlanet.nodes.local.federation import Federation
from mlanet.nodes.runtime.node import Node
from tests.integration.kit import (
    close_connections,
    config,
    depth,
    drain,
    eventually,
    facilitation,
    inject,
)

CAP = 16 * 1024
QUARANTINE = "mlanet.quarantine"
DELIVER = "mlanet.deliver.uz-cp-1"


def lower_the_cap(fed: Federation, network: str) -> None:
    path = fed.config_path(network)
    text = path.read_text(encoding="utf-8")
    assert "[limits]" not in text
    path.write_text(text + f"\n[limits]\nmax_message_bytes = {CAP}\n", encoding="utf-8")


async def test_a_body_above_the_cap_reaches_the_node_cut_and_is_quarantined(
    fed: Federation,
) -> None:
    lower_the_cap(fed, "casc")
    envelope = facilitation(fed, "seajust", "kh-cp-1", "UZ").to_bytes()
    big = envelope[:-1] + b" " * (200 * 1024 - len(envelope)) + b"}"  # valid JSON, 200 KiB
    good = facilitation(fed, "seajust", "kh-cp-1", "UZ")

    node = Node(config(fed, "casc"))
    handled: list[bytes] = []
    on_inbox = node.on_inbox

    async def watched(incoming: Incoming) -> None:  # what the node's handler is given
        handled.append(incoming.body)
        await on_inbox(incoming)

    node.on_inbox = watched  # type: ignore[method-assign]
    task = asyncio.create_task(node.run())
    try:
        await asyncio.wait_for(node.ready.wait(), 30)
        await inject(fed, "casc", "seajust", big)
        await inject(fed, "casc", "seajust", good.to_bytes())

        async def settled() -> bool:
            return await depth(fed, "casc", DELIVER) == 1 and len(handled) == 2

        await eventually(settled, within=60)

        await close_connections(fed, "casc")  # the robust connection comes back capped too
        await inject(fed, "casc", "seajust", big)

        async def handled_again() -> bool:
            return len(handled) == 3

        await eventually(handled_again, within=60)
        assert not task.done()
    finally:
        node.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 20)

    cuts = [body for body in handled if isinstance(body, CutBody)]
    assert len(cuts) == 2  # before and after the reconnection
    for cut in cuts:
        assert len(cut) == CAP + 1  # all the node ever held of it
        assert cut == big[: CAP + 1]
        assert (body_size(cut), cut.sha256) == (len(big), hashlib.sha256(big).digest())
    assert good.to_bytes() in handled  # the next message came whole, on the same connection

    entries = await drain(fed, "casc", QUARANTINE)
    assert len(entries) == 2
    for entry in entries:
        assert entry.headers["x-mlanet-reason"] == "oversized"
        assert entry.headers["x-mlanet-detail"] == f"{len(big)} bytes > {CAP}"
        assert entry.body == big[:CAP]
        assert entry.headers["x-mlanet-truncated"] == "true"
        assert entry.headers["x-mlanet-size"] == str(len(big))
        assert entry.headers["x-mlanet-sha256"] == b64u_encode(hashlib.sha256(big).digest())
