"""The federation directory: networks, their members, contact points, keys, brokers and links.

Every node routes by the directory and takes its trust store from it. Today each node reads it
from a file its operator installs; the directory is plain data so that it can be signed and
distributed over the federation without changing its shape.
"""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator

from schemas.base import (
    ContactPointId,
    CountryCode,
    KeyId,
    NetworkId,
    ShortText,
    Timestamp,
    WireModel,
)

__all__ = ["BrokerAddress", "ContactPointEntry", "Directory", "NetworkEntry", "NetworkKey"]


class ContactPointEntry(WireModel):
    id: ContactPointId
    country: CountryCode
    role: ShortText = "contact point"

    @model_validator(mode="after")
    def _prefix(self) -> Self:
        if self.id[:2] != self.country.lower():
            raise ValueError("a contact point id starts with its country code")
        return self


class NetworkKey(WireModel):
    key_id: KeyId
    public_key: str = Field(pattern=r"^[A-Za-z0-9_-]{43}$")
    not_before: Timestamp | None = None
    not_after: Timestamp | None = None


class BrokerAddress(WireModel):
    """How a network's broker is reached; the peer's own credentials live in its node config."""

    host: str = Field(pattern=r"^[A-Za-z0-9.:-]{1,253}$")
    port: int = Field(default=5672, ge=1, le=65535)
    vhost: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")


class NetworkEntry(WireModel):
    id: NetworkId
    name: ShortText
    members: list[CountryCode] = Field(max_length=100)
    observers: list[CountryCode] = Field(default_factory=list, max_length=100)
    contact_points: list[ContactPointEntry] = Field(max_length=1000)
    keys: list[NetworkKey] = Field(min_length=1, max_length=8)
    broker: BrokerAddress

    @model_validator(mode="after")
    def _contact_points_are_members(self) -> Self:
        for contact_point in self.contact_points:
            if contact_point.country not in self.members:
                raise ValueError(f"contact point {contact_point.id} is not in a member country")
        return self

    def contact_points_of(self, country: str) -> list[str]:
        return [cp.id for cp in self.contact_points if cp.country == country]


class Directory(WireModel):
    version: int = Field(ge=1)
    issued_at: Timestamp
    networks: list[NetworkEntry] = Field(min_length=1, max_length=200)
    links: list[tuple[NetworkId, NetworkId]] = Field(max_length=2000)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        ids = [network.id for network in self.networks]
        if len(set(ids)) != len(ids):
            raise ValueError("a network is listed twice")
        for a, b in self.links:
            if a not in ids or b not in ids or a == b:
                raise ValueError(f"link {a}-{b} names an unknown network or itself")
        return self

    def network(self, network_id: str) -> NetworkEntry | None:
        for network in self.networks:
            if network.id == network_id:
                return network
        return None

    def neighbours(self, network_id: str) -> list[str]:
        found = {b for a, b in self.links if a == network_id}
        found |= {a for a, b in self.links if b == network_id}
        return sorted(found)

    def serving(self, country: str) -> list[str]:
        """The networks that have ``country`` as a member, in id order."""
        return sorted(network.id for network in self.networks if country in network.members)
