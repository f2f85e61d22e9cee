"""Doors on the real broker: each peer's link lands in a vhost of its own at the receiving
network (``nodes/runtime/doors.py``), and what an older version left in the node's own vhost is not
lost on the way there."""

from __future__ import annotations

import aio_pika

from mlanet.broker.management import Management
from mlanet.broker.transport import CONTENT_TYPE, peer_inbox
from mlanet.nodes.cli.contact import read_inbox
from mlanet.nodes.local.federation import Federation
from tests.integration.kit import (
    ADMIN,
    amqp,
    config,
    credentials,
    eventually,
    facilitation,
    inject,
    running,
)


async def test_what_an_older_version_left_in_the_nodes_vhost_moves_into_the_door(
    fed: Federation,
) -> None:
    """Before doors, each peer's inbox queue was in the node's own vhost. A message left there
    is moved by the node into the peer's door, through the peer's inbox exchange (so the node
    sees the same sender), and delivered; the old queue is deleted once it is empty, and the
    shovel that moved it deletes itself."""
    legacy = peer_inbox("seajust")
    message = facilitation(fed, "seajust", "kh-cp-1", "UZ")
    async with await aio_pika.connect(amqp(fed, "casc")) as connection:  # as it was left
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(
            legacy,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": 5,
                "x-dead-letter-exchange": "mlanet.unroutable",
            },
        )
        await channel.default_exchange.publish(
            aio_pika.Message(
                message.to_bytes(),
                content_type=CONTENT_TYPE,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=legacy,
        )
    async with running(fed, "casc"):

        async def delivered() -> bool:
            items = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
            return [i.message.header.message_id for i in items] == [message.header.message_id]

        await eventually(delivered, within=60, every=0.5)

        async def cleared() -> bool:
            async with Management(ADMIN) as management:
                queues = {q["name"] for q in await management.queues(fed.vhost("casc"))}
                shovels = await management.shovel_names(fed.vhost("casc"))
            return legacy not in queues and "mlanet-move-seajust" not in shovels

        await eventually(cleared, within=60, every=0.5)


async def test_a_delivery_count_set_by_the_peer_is_not_the_brokers(fed: Federation) -> None:
    """A door's queue has no delivery limit of the broker's; the node counts deliveries by the
    ``x-delivery-count`` header, which the broker writes only when it hands a message out
    again. On a first delivery the header is the publisher's (a peer's shovel copies the count
    of its own out queue): a message arriving with a high count is handled, not quarantined."""
    message = facilitation(fed, "seajust", "kh-cp-1", "UZ")
    async with running(fed, "casc"):
        await inject(fed, "casc", "seajust", message.to_bytes(), headers={"x-delivery-count": 99})

        async def delivered() -> bool:
            items = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
            return [i.message.header.message_id for i in items] == [message.header.message_id]

        await eventually(delivered, within=60, every=0.5)
