"""A node puts back the queues and bindings an operator deletes under it, keeps working when a
queue exists with other arguments, and its consumers come back with their queues (found by the
fault battery: a deleted queue wedged the node for good). On the battery's own broker."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import aio_pika
import httpx
import pytest

from mlanet.broker.transport import (
    SUBMIT,
    SUBMIT_EXCHANGE,
    Topology,
    Transport,
    deliver_queue,
    inbox_exchange,
    out_queue,
    peer_inbox,
)
from mlanet.nodes.cli.contact import read_inbox, submit
from mlanet.nodes.local.federation import Federation, build, provision, teardown
from mlanet.schemas.submission import Submission
from tests.battery.rabbit import ScratchBroker
from tests.battery.workload import admin_url
from tests.integration.kit import config, credentials, eventually, outbox_state, running

pytestmark = pytest.mark.integration


@pytest.fixture
async def fed(tmp_path: Path, battery_broker: ScratchBroker) -> AsyncIterator[Federation]:
    federation = build(
        tmp_path / "federation",
        prefix="r" + uuid.uuid4().hex[:10],
        port=battery_broker.amqp_port,
        management_url=battery_broker.admin.url,
        receipts={"retry_after_seconds": 3.0, "check_every_seconds": 0.5},
    )
    await provision(federation, battery_broker.admin)
    try:
        yield federation
    finally:
        await teardown(federation, battery_broker.admin)


class Broker:
    """The management API and an administrator's AMQP connection, for one network (its vhost,
    or the door of its peer ``door``)."""

    def __init__(self, fed: Federation, broker: ScratchBroker, network: str) -> None:
        self.fed, self.broker, self.network = fed, broker, network

    def _vhost(self, door: str | None) -> str:
        vhost = self.fed.vhost(self.network) if door is None else self.fed.door(self.network, door)
        return quote(vhost, safe="")

    async def api(self, method: str, path: str) -> httpx.Response:
        admin = self.broker.admin
        async with httpx.AsyncClient(
            base_url=admin.url + "/api", auth=(admin.user, admin.password), timeout=30
        ) as client:
            return await client.request(method, path)

    async def has_queue(self, queue: str, door: str | None = None) -> bool:
        found = await self.api("GET", f"/queues/{self._vhost(door)}/{queue}")
        return found.status_code == 200

    async def delete_queue(self, queue: str, door: str | None = None) -> None:
        found = await self.api("DELETE", f"/queues/{self._vhost(door)}/{queue}")
        assert found.status_code == 204, found.status_code

    async def bindings(self, exchange: str, queue: str, door: str | None = None) -> list[str]:
        found = await self.api("GET", f"/bindings/{self._vhost(door)}/e/{exchange}/q/{queue}")
        return [b["properties_key"] for b in found.json()] if found.status_code == 200 else []

    async def unbind(self, exchange: str, queue: str, door: str | None = None) -> None:
        for key in await self.bindings(exchange, queue, door):
            path = f"/bindings/{self._vhost(door)}/e/{exchange}/q/{queue}/{key}"
            assert (await self.api("DELETE", path)).status_code == 204

    async def consumers(self, queue: str, door: str | None = None) -> int:
        url = admin_url(self.fed, self.network, self.broker.admin, door=door)
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            declared = await channel.declare_queue(queue, passive=True)
            return int(declared.declaration_result.consumer_count or 0)


def _request(country: str) -> Submission:
    return Submission.model_validate(
        {
            "message_id": str(uuid.uuid4()),
            "kind": "facilitation_request",
            "sender": "kh-cp-1",
            "destination": {"country": country},
            "payload": {
                "case_ref": "KH-MLA-2026-0001",
                "requesting_country": "KH",
                "requested_country": country,
                "offence_categories": ["cybercrime"],
                "measures_sought": ["evidence"],
                "languages": ["en"],
                "summary": "Test request: no real case content.",
            },
        }
    )


async def test_a_queue_of_other_arguments_is_reported_and_the_rest_is_declared(
    fed: Federation, battery_broker: ScratchBroker
) -> None:
    """A shovel re-creates a deleted source queue as a classic queue: declaring the topology
    names that queue instead of failing, and declares everything else."""
    casc = Broker(fed, battery_broker, "casc")
    url = admin_url(fed, "casc", battery_broker.admin)
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(out_queue("ejn"), durable=True)  # classic
    topology = Topology(peers=("seajust", "ejn"), contact_points=("uz-cp-1",))
    async with Transport(url) as transport:
        assert await transport.declare(topology) == [out_queue("ejn")]
        assert await transport.declare(topology) == [out_queue("ejn")]
        door = await transport.door(fed.door("casc", "ejn"))  # the peer's inbox: in its door
        assert await door.declare_inbox("ejn") == []
    for queue in (out_queue("seajust"), deliver_queue("uz-cp-1"), SUBMIT):
        assert await casc.has_queue(queue), queue
    assert not await casc.has_queue(peer_inbox("ejn"))
    assert await casc.has_queue(peer_inbox("ejn"), door="ejn")
    assert await casc.bindings(inbox_exchange("ejn"), peer_inbox("ejn"), door="ejn")
    assert await casc.bindings(SUBMIT_EXCHANGE, SUBMIT)  # contact points' only way in


async def test_queues_and_bindings_deleted_under_a_node_come_back_and_messages_flow(
    fed: Federation, battery_broker: ScratchBroker
) -> None:
    """Under a running CASC node an operator deletes its inbox queue for SEAJust (consumed, in
    SEAJust's door), the binding that feeds it, its delivery queue for Uzbekistan and its submission
    queue (consumed; its binding to the contact points' ``mlanet.submit`` exchange goes with it):
    the node declares them again, binds and consumes again, and a request from SEAJust is delivered
    and receipted."""
    casc = Broker(fed, battery_broker, "casc")
    async with running(fed, "seajust", "casc"):
        deleted = [deliver_queue("uz-cp-1"), SUBMIT]
        for queue in deleted:
            await casc.delete_queue(queue)
        await casc.delete_queue(peer_inbox("seajust"), door="seajust")
        await casc.unbind(inbox_exchange("seajust"), peer_inbox("seajust"), door="seajust")

        async def repaired() -> bool:
            for queue in deleted:
                if not await casc.has_queue(queue):
                    return False
            inbox = inbox_exchange("seajust"), peer_inbox("seajust")
            return (
                await casc.has_queue(peer_inbox("seajust"), door="seajust")
                and bool(await casc.bindings(*inbox, door="seajust"))
                and bool(await casc.bindings(SUBMIT_EXCHANGE, SUBMIT))  # put back with it
                and await casc.consumers(peer_inbox("seajust"), door="seajust") > 0
                and await casc.consumers(SUBMIT) > 0
            )

        await eventually(repaired, within=60, every=0.5)
        request = _request("UZ")
        await submit(config(fed, "seajust"), credentials(fed, request.sender), request)

        async def receipted() -> bool:
            return outbox_state(fed, "seajust", request.message_id) == "delivered"

        await eventually(receipted, within=60)
        items = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
        assert [item.message.header.message_id for item in items] == [request.message_id]
