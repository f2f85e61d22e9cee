"""A contact point's broker user on its own network's broker: what it may do, given and taken back.

Each contact point logs in as a user of its own (``<node user>-cp-<contact point>``), created
from a salted hash of its password (the password stays in the contact point's credentials
folder), tagged ``mlanet-contact-point`` (no management tag: the management API refuses it),
with exactly these rights in the node's vhost:

- write on the exchange ``mlanet.submit``, bound to the node's ``mlanet.submit`` queue: it can
  hand in submissions (and hand back deliveries it refuses), nothing else; not the default
  exchange, through which it could publish into any queue;
- read on its own delivery queue ``mlanet.deliver.<contact point>``: no other contact point's;
- configure nothing.

A user that exists and was not created this way (a local account, an operator, the node's own
user) is never changed. Needs the broker's administrator (operator commands only).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mlanet.broker.management import Management
from mlanet.broker.transport import SUBMIT_EXCHANGE, deliver_queue

__all__ = [
    "CONTACT_POINT_TAG",
    "ContactPointUser",
    "deliver_read_pattern",
    "grant_contact_points",
    "revoke_contact_points",
    "submit_write_pattern",
]

CONTACT_POINT_TAG = "mlanet-contact-point"
NONE = "^$"
RABBIT_SHA256 = "rabbit_password_hashing_sha256"


def submit_write_pattern() -> str:
    return f"^{re.escape(SUBMIT_EXCHANGE)}$"


def deliver_read_pattern(contact_point: str) -> str:
    return f"^{re.escape(deliver_queue(contact_point))}$"


@dataclass(frozen=True)
class ContactPointUser:
    """A contact point's broker user, as its node's operator vouched for it."""

    vhost: str
    contact_point: str
    name: str
    password_hash: str  # RabbitMQ's rabbit_password_hashing_sha256 (mlanet.broker.peer_access)
    hashing_algorithm: str = RABBIT_SHA256


def _tags(user: dict[str, Any]) -> set[str]:
    tags = user.get("tags", [])
    if isinstance(tags, str):
        return {tag.strip() for tag in tags.split(",") if tag.strip()}
    return {str(tag) for tag in tags}


async def grant_contact_points(
    management: Management, users: Iterable[ContactPointUser], *, protected: Iterable[str] = ()
) -> list[str]:
    """Create or update each contact point's user and give it exactly its rights, in one request
    to the management API; returns what was done, one line each."""
    kept = set(protected)
    existing = {str(user.get("name")): user for user in await management.users()}
    definitions: dict[str, list[dict[str, Any]]] = {"users": [], "permissions": []}
    done = []
    for user in users:
        found = existing.get(user.name)
        if user.name in kept or (found is not None and CONTACT_POINT_TAG not in _tags(found)):
            done.append(f"contact point {user.contact_point} ({user.name}): kept, not ours")
            continue
        definitions["users"].append(
            {
                "name": user.name,
                "password_hash": user.password_hash,
                "hashing_algorithm": user.hashing_algorithm,
                "tags": CONTACT_POINT_TAG,
            }
        )
        definitions["permissions"].append(
            {
                "user": user.name,
                "vhost": user.vhost,
                "configure": NONE,
                "write": submit_write_pattern(),
                "read": deliver_read_pattern(user.contact_point),
            }
        )
        done.append(f"contact point {user.contact_point} ({user.name}): granted")
    if definitions["users"]:
        await management.import_definitions(definitions)
    return done


async def revoke_contact_points(
    management: Management, vhost: str, keep: Iterable[str], *, protected: Iterable[str] = ()
) -> list[str]:
    """Take every right in ``vhost`` from a contact point's user not in ``keep`` (a contact
    point its node no longer vouches for), and delete that user; returns what was done."""
    spared = set(keep) | set(protected)
    existing = {str(user.get("name")): user for user in await management.users()}
    done = []
    for grant in await management.vhost_permissions(vhost):
        name = str(grant.get("user"))
        found = existing.get(name)
        if name in spared or found is None or CONTACT_POINT_TAG not in _tags(found):
            continue
        await management.delete_permissions(vhost, name)
        await management.delete_users([name])
        done.append(f"former contact point ({name}): access removed")
    return done
