"""The management API's listings race with deletions made meanwhile (real RabbitMQ).

RabbitMQ builds ``GET /api/users`` name by name; a user deleted between the two steps fails the
whole listing with 500. mlanet's nodes, provisioning and test teardowns list users while other
federations on the same broker delete theirs, so a listing is asked again instead of failing.
"""

from __future__ import annotations

import asyncio
import secrets

import pytest

from mlanet.broker.management import Management, ManagementEndpoint

pytestmark = pytest.mark.integration

ADMIN = ManagementEndpoint("http://127.0.0.1:15672", "guest", "guest")


async def test_listing_users_while_others_are_deleted_never_fails() -> None:
    prefix = f"race-{secrets.token_hex(4)}"
    names = [f"{prefix}-{n}" for n in range(150)]
    async with Management(ADMIN) as admin:
        await admin.import_definitions(
            {"users": [{"name": n, "password_hash": "", "tags": ""} for n in names]}
        )
        try:

            async def delete_one_by_one() -> None:
                for name in names:
                    await admin.delete_user(name)

            async def list_all_the_while(deleting: asyncio.Task[None]) -> int:
                listed = 0
                while not deleting.done():
                    await admin.users()  # raises TransportError if a 500 got through
                    listed += 1
                return listed

            deleting = asyncio.create_task(delete_one_by_one())
            try:
                listed = await list_all_the_while(deleting)
                await deleting
            finally:
                deleting.cancel()
            assert listed > 0
        finally:
            await admin.delete_users(names)
