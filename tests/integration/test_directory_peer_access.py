"""Peer access from the directory on the real broker: a peer's link user created from the
published password hash can log in with the password only its owner has, may write exactly its
inbox exchange, and a local account is never changed."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest

from mlanet.broker.management import Management
from mlanet.broker.peer_access import PEER_TAG, grant_peer, rabbit_password_hash, revoke_peer
from mlanet.schemas.directory import LinkUser
from tests.integration.kit import ADMIN


@pytest.fixture
async def vhost() -> AsyncIterator[str]:
    name = "p" + uuid.uuid4().hex[:10]
    async with Management(ADMIN) as management:
        await management.put_vhost(name)
        await management.put_permissions(name, ADMIN.user, configure=".*", write=".*", read=".*")
    try:
        yield name
    finally:
        async with Management(ADMIN) as management:
            await management.delete_vhost(name)
            for user in (f"{name}-peer", f"{name}-local"):
                await management.delete_user(user)


async def _can_write(vhost: str, user: str, password: str, exchange: str) -> bool:
    url = f"amqp://{user}:{password}@127.0.0.1:5672/{vhost}"
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        try:
            target = await channel.get_exchange(exchange, ensure=False)
            await target.publish(aio_pika.Message(b"{}"), routing_key="")
        except aio_pika.exceptions.ChannelClosed:
            return False
    return True


async def test_a_peer_user_is_created_from_the_hash_and_may_only_write_its_inbox(
    vhost: str,
) -> None:
    password = secrets.token_urlsafe(24)
    link_user = LinkUser(name=f"{vhost}-peer", password_hash=rabbit_password_hash(password))
    async with Management(ADMIN) as management:
        await management.put_vhost(vhost)
        admin_url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
        async with await aio_pika.connect(admin_url) as connection:
            channel = await connection.channel()
            for name in ("mlanet.inbox.from.pilon", "mlanet.inbox.from.casc"):
                await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT, durable=True)
        assert await grant_peer(management, vhost, "pilon", link_user) == "granted"
        assert await grant_peer(management, vhost, "pilon", link_user) == "unchanged"
        user = await management.user(link_user.name)
        assert user is not None
        assert PEER_TAG in str(user["tags"])

    assert await _can_write(vhost, link_user.name, password, "mlanet.inbox.from.pilon")
    assert not await _can_write(vhost, link_user.name, password, "mlanet.inbox.from.casc")
    with pytest.raises(aio_pika.exceptions.ProbableAuthenticationError):
        await aio_pika.connect(f"amqp://{link_user.name}:wrong@127.0.0.1:5672/{vhost}")

    async with Management(ADMIN) as management:
        assert await revoke_peer(management, vhost, "pilon", link_user.name)
        assert await management.permissions(vhost, link_user.name) is None


async def test_a_local_account_is_never_changed_by_a_directory(vhost: str) -> None:
    """A directory naming an existing local user (with rights in this vhost) as a link user:
    neither its password nor its permissions change."""
    local = f"{vhost}-local"
    async with Management(ADMIN) as management:
        await management.put_user(local, "local-secret", "policymaker")
        await management.put_permissions(vhost, local, configure=".*", write=".*", read=".*")
        hostile = LinkUser(name=local, password_hash=rabbit_password_hash("attacker"))
        assert await grant_peer(management, vhost, "pilon", hostile) == "kept"
        assert await grant_peer(management, vhost, "pilon", hostile, protected=[local]) == "kept"
        assert (await management.permissions(vhost, local) or {})["write"] == ".*"
    connection = await aio_pika.connect(f"amqp://{local}:local-secret@127.0.0.1:5672/{vhost}")
    await connection.close()
