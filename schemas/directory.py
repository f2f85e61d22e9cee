"""The federation directory: networks, their members, contact points, keys, brokers and links.

Every node routes by the directory and takes its trust store from it. The coordinator signs it
(:class:`SignedDirectory`, ``broker/directory_signing.py``) and distributes it over the
federation; nodes refuse one that is older than what they hold, unsigned, or signed by a key
that is not the coordinator's. Networks ask to join, and to rotate their keys, with signed
requests (:class:`JoinRequest`, :class:`KeyRotationRequest`).

Time-dependent parts (contact points' validity windows and handovers) are resolved by
:meth:`Directory.as_of`, which gives the directory as it stands at one instant; routing works on
that view and stays a pure function.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Self

from pydantic import Field, model_validator

from mlanet.schemas.base import (
    ContactPointId,
    CountryCode,
    KeyId,
    NetworkId,
    ShortText,
    Timestamp,
    WireModel,
)
from mlanet.schemas.sealing import EncryptionKey
from mlanet.schemas.validity import KeyState, ListedKey, ended, in_window, key_state, not_yet

__all__ = [
    "AmqpsEndpoint",
    "BrokerAddress",
    "BrokerTls",
    "CaCertificate",
    "ContactPointEntry",
    "Directory",
    "JoinRequest",
    "KeyRotationRequest",
    "LinkUser",
    "NetworkEntry",
    "NetworkKey",
    "SignedDirectory",
    "SignedRequest",
    "SignedRequestSignature",
]

_B64U_SIGNATURE = r"^[A-Za-z0-9_-]{86}$"
_B64U_SIGNATURE_OR_NONE = r"^(?:[A-Za-z0-9_-]{86})?$"
# A signed directory document fits a message (the 256 KiB cap) with room for the envelope.
MAX_DOCUMENT_CHARS = 240_000
_MAX_SUCCESSORS = 8
# A CA certificate's PEM: an RSA-8192 CA is about 3.8 KB, a P-256 one about 0.7 KB.
MAX_CA_PEM_CHARS = 6144
_MAX_CAS = 4


class ContactPointEntry(WireModel):
    """A contact point: its country and role, when it serves, and who stands in for it.

    ``successor`` names the contact point that replaces this one from ``not_after`` (at once when
    ``not_after`` is absent); ``alternates`` stand in when this one's window has passed without
    a successor.
    """

    id: ContactPointId
    country: CountryCode
    role: ShortText = "contact point"
    not_before: Timestamp | None = None
    not_after: Timestamp | None = None
    successor: ContactPointId | None = None
    alternates: list[ContactPointId] = Field(default_factory=list, max_length=8)

    @model_validator(mode="after")
    def _prefix(self) -> Self:
        if self.id[:2] != self.country.lower():
            raise ValueError("a contact point id starts with its country code")
        if self.successor == self.id or self.id in self.alternates:
            raise ValueError("a contact point cannot stand in for itself")
        if self.not_before and self.not_after and self.not_after <= self.not_before:
            raise ValueError("a contact point's window must end after it starts")
        return self

    def active(self, at: datetime) -> bool:
        return in_window(at, self.not_before, self.not_after)


class NetworkKey(ListedKey):
    """A public key with its validity window; a revoked key is refused from then on."""

    key_id: KeyId
    public_key: str = Field(pattern=r"^[A-Za-z0-9_-]{43}$")


class LinkUser(WireModel):
    """The broker user a network's links log in as at its peers' brokers.

    Only a salted hash of the password is published (RabbitMQ's
    ``rabbit_password_hashing_sha256``: base64 of a 4-byte salt and SHA-256(salt + password));
    the password itself is a 192-bit random secret that never leaves its network.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    password_hash: str = Field(pattern=r"^[A-Za-z0-9+/]{48}$")
    hashing_algorithm: Literal["rabbit_password_hashing_sha256"] = "rabbit_password_hashing_sha256"


class BrokerAddress(WireModel):
    """How a network's broker is reached; the peer's own credentials live in its node config."""

    host: str = Field(pattern=r"^[A-Za-z0-9.:-]{1,253}$")
    port: int = Field(default=5672, ge=1, le=65535)
    vhost: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")


class AmqpsEndpoint(WireModel):
    """Where a network's broker takes links over AMQPS: the address to connect to and the name
    its server certificate is checked against (sent as SNI)."""

    host: str = Field(pattern=r"^[A-Za-z0-9.:-]{1,253}$")
    port: int = Field(default=5671, ge=1, le=65535)
    server_name: str = Field(pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


class CaCertificate(WireModel):
    """A CA certificate the directory publishes (PEM, public only), with the lifecycle of a key.

    ``not_before`` and ``not_after`` repeat the certificate's own validity (a directory where
    they differ is refused, ``broker/directory_tls.py``), so that every view of its expiry reads
    the directory and not the certificate. ``retire_at`` is when the coordinator stops listing
    it as trusted although the certificate is still valid: the end of a rotation's overlap. A
    revoked CA is refused from then on, whatever the time.
    """

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    pem: str = Field(min_length=64, max_length=MAX_CA_PEM_CHARS, pattern=r"^[A-Za-z0-9+/=\n -]+$")
    not_before: Timestamp
    not_after: Timestamp
    retire_at: Timestamp | None = None
    revoked_at: Timestamp | None = None

    @model_validator(mode="after")
    def _window(self) -> Self:
        if self.not_after <= self.not_before:
            raise ValueError("a certificate's validity must end after it starts")
        return self

    @property
    def ends(self) -> datetime:
        """When it stops being trusted: its expiry, or the end of a rotation's overlap."""
        return self.not_after if self.retire_at is None else min(self.not_after, self.retire_at)

    def state(self, at: datetime) -> KeyState:
        """This CA at ``at`` (``schemas/validity.py``, the rule of a key)."""
        return key_state(
            at,
            not_before=self.not_before,
            not_after=self.ends,
            revoked=self.revoked_at is not None,
        )

    def valid_at(self, at: datetime) -> bool:
        return self.state(at) is KeyState.VALID


def _unique_ids(cas: list[CaCertificate]) -> None:
    ids = [ca.id for ca in cas]
    if len(set(ids)) != len(ids):
        raise ValueError("a CA certificate id is listed twice")


class BrokerTls(WireModel):
    """A network's broker over TLS: its AMQPS endpoints and the CA certificates its server
    certificate is checked against (old and new side by side while a CA rotates)."""

    endpoints: list[AmqpsEndpoint] = Field(min_length=1, max_length=4)
    cas: list[CaCertificate] = Field(min_length=1, max_length=_MAX_CAS)

    @model_validator(mode="after")
    def _ids(self) -> Self:
        _unique_ids(self.cas)
        return self

    def valid_cas(self, at: datetime) -> list[CaCertificate]:
        return [ca for ca in self.cas if ca.valid_at(at)]


class NetworkEntry(WireModel):
    """A network: members and observer countries, contact points, keys, broker, link user.

    ``role`` is ``observer`` for a network that attends the federation as an observer: it
    receives notices only, and never a message marked ``members_only``.
    """

    id: NetworkId
    name: ShortText
    role: Literal["member", "observer"] = "member"
    members: list[CountryCode] = Field(max_length=100)
    observers: list[CountryCode] = Field(default_factory=list, max_length=100)
    contact_points: list[ContactPointEntry] = Field(max_length=1000)
    keys: list[NetworkKey] = Field(min_length=1, max_length=8)
    broker: BrokerAddress
    link_user: LinkUser | None = None
    tls: BrokerTls | None = None
    # what origins seal this network's payloads for (section 16); old and new during a rotation
    encryption_keys: list[EncryptionKey] = Field(default_factory=list, max_length=4)

    @model_validator(mode="after")
    def _contact_points_are_members(self) -> Self:
        ids = {contact_point.id for contact_point in self.contact_points}
        if len(ids) != len(self.contact_points):
            raise ValueError("a contact point is listed twice")
        for contact_point in self.contact_points:
            if contact_point.country not in self.members + self.observers:
                raise ValueError(f"contact point {contact_point.id} is not in a member country")
            for other in (contact_point.successor, *contact_point.alternates):
                if other is not None and other not in ids:
                    raise ValueError(f"contact point {contact_point.id} names an unknown one")
        if set(self.members) & set(self.observers):
            raise ValueError("a country is either a member or an observer of a network")
        key_ids = [key.key_id for key in self.keys]
        if len(set(key_ids)) != len(key_ids):
            raise ValueError("a key id is listed twice")
        sealing_ids = [key.key_id for key in self.encryption_keys]
        if len(set(sealing_ids)) != len(sealing_ids):
            raise ValueError("an encryption key id is listed twice")
        return self

    def encryption_key(self, at: datetime) -> EncryptionKey | None:
        """The key an origin seals this network's payloads with at ``at``: the newest valid."""
        valid = [key for key in self.encryption_keys if key.valid_at(at)]
        return max(valid, key=lambda key: int(key.key_id.split(":")[1]), default=None)

    def contact_points_of(self, country: str) -> list[str]:
        """The contact points serving ``country`` now (not replaced), in directory order."""
        return [
            cp.id for cp in self.contact_points if cp.country == country and cp.successor is None
        ]

    def contact_point(self, contact_point_id: str) -> ContactPointEntry | None:
        for contact_point in self.contact_points:
            if contact_point.id == contact_point_id:
                return contact_point
        return None

    def active_contact_points(self) -> list[str]:
        return [cp.id for cp in self.contact_points if cp.successor is None]

    def resolve(self, contact_point_id: str) -> str | None:
        """The contact point that receives what is addressed to ``contact_point_id``: itself,
        or its successor (followed to the end of the chain); None when unknown or circular."""
        current = self.contact_point(contact_point_id)
        for _ in range(_MAX_SUCCESSORS):
            if current is None:
                return None
            if current.successor is None:
                return current.id
            current = self.contact_point(current.successor)
        return None

    def is_observer(self, country: str) -> bool:
        """An observer country of this network (or any country of an observer network)."""
        return self.role == "observer" or (
            country in self.observers and country not in self.members
        )

    def as_of(self, at: datetime) -> NetworkEntry:
        """This entry at ``at``: a contact point whose window has passed hands over to its
        successor (or its first active alternate); one not yet appointed is left out."""
        by_id = {cp.id: cp for cp in self.contact_points}
        out: list[ContactPointEntry] = []
        for cp in self.contact_points:
            if not_yet(at, cp.not_before):
                continue
            over = ended(at, cp.not_after)
            if cp.successor is not None and not over and cp.not_after is not None:
                out.append(cp.model_copy(update={"successor": None}))  # handover not yet due
            elif over and cp.successor is None:
                standing_in = [a for a in cp.alternates if by_id[a].active(at)]
                if standing_in:
                    out.append(cp.model_copy(update={"successor": standing_in[0]}))
            else:
                out.append(cp)
        # A handover to someone not (or no longer) serving leads nowhere: leave it out too.
        while dangling := [cp for cp in out if cp.successor not in {None, *(c.id for c in out)}]:
            out = [cp for cp in out if cp not in dangling]
        return self.model_copy(update={"contact_points": out})


class Directory(WireModel):
    """The federation directory, as the coordinator signs it.

    ``coordinator`` names the network whose keys (``coordinator_keys``) sign the directory;
    ``valid_until`` is when a node stops trusting this version for new messages; ``link_cas``
    are the coordinator's link CA certificates, which issue each network's link client
    certificate (a broker accepts client certificates from its own CA and these only).
    """

    version: int = Field(ge=1)
    issued_at: Timestamp
    valid_until: Timestamp | None = None
    coordinator: NetworkId | None = None
    coordinator_keys: list[NetworkKey] = Field(default_factory=list, max_length=8)
    networks: list[NetworkEntry] = Field(min_length=1, max_length=200)
    links: list[tuple[NetworkId, NetworkId]] = Field(max_length=2000)
    link_cas: list[CaCertificate] | None = Field(default=None, min_length=1, max_length=_MAX_CAS)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        ids = [network.id for network in self.networks]
        if len(set(ids)) != len(ids):
            raise ValueError("a network is listed twice")
        for a, b in self.links:
            if a not in ids or b not in ids or a == b:
                raise ValueError(f"link {a}-{b} names an unknown network or itself")
        if self.valid_until is not None and self.valid_until <= self.issued_at:
            raise ValueError("valid_until must be after issued_at")
        if self.coordinator_keys and self.coordinator is None:
            raise ValueError("coordinator keys need the coordinator's id")
        if self.link_cas is not None:
            _unique_ids(self.link_cas)
        return self

    def as_of(self, at: datetime) -> Directory:
        """The directory as it stands at ``at`` (see :meth:`NetworkEntry.as_of`)."""
        return self.model_copy(update={"networks": [n.as_of(at) for n in self.networks]})

    def observing(self, country: str) -> list[str]:
        """The networks that have ``country`` as an observer, in id order."""
        return sorted(network.id for network in self.networks if country in network.observers)

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


class SignedDirectory(WireModel):
    """A directory as the coordinator signed it: ``document`` is B64U of the directory's JSON
    bytes, ``signature`` B64U of Ed25519 over ``mlanet-v1:directory:`` + ``document``.

    A missing or empty ``signature`` is well formed here, so that opening the directory
    (``broker/directory_signing.py``) refuses it with its own reason, ``unsigned_directory``,
    wherever it arrives (a file, the local queue, a ``directory_update`` from a peer)."""

    mlanet_directory: Literal[1]
    signer: NetworkId
    key_id: KeyId
    document: str = Field(pattern=r"^[A-Za-z0-9_-]+$", max_length=MAX_DOCUMENT_CHARS)
    signature: str = Field(default="", pattern=_B64U_SIGNATURE_OR_NONE)


class JoinRequest(WireModel):
    """A new network asks the coordinator to be listed: its entry as it proposes it (one key,
    at most one encryption key, so that it is sealed for from the start; its broker, its link
    user) and the networks it asks to be linked to."""

    type: Literal["join"]
    network: NetworkEntry
    links: list[NetworkId] = Field(max_length=50)
    requested_at: Timestamp

    @model_validator(mode="after")
    def _one_key(self) -> Self:
        if len(self.network.keys) != 1 or self.network.link_user is None:
            raise ValueError("a join request carries exactly one key and its link user")
        if len(self.network.encryption_keys) > 1:
            raise ValueError("a join request carries at most one encryption key")
        return self


class KeyRotationRequest(WireModel):
    """A network asks for a new signing key (``new_key``), a new encryption key
    (``new_encryption_key``), or both; signed by its current key ``current_key_id`` and by a new
    signing key. A new encryption key is vouched for by that signature: the network's own word
    that it holds the private key."""

    type: Literal["key_rotation"]
    network: NetworkId
    current_key_id: KeyId
    new_key: NetworkKey | None = None
    new_encryption_key: EncryptionKey | None = None
    requested_at: Timestamp

    @model_validator(mode="after")
    def _something_new(self) -> Self:
        if self.new_key is None and self.new_encryption_key is None:
            raise ValueError("a key rotation request names a new key or a new encryption key")
        return self


class SignedRequestSignature(WireModel):
    key_id: KeyId
    signature: str = Field(pattern=_B64U_SIGNATURE)


class SignedRequest(WireModel):
    """A join or key rotation request: ``request`` is B64U of its JSON bytes; each signature is
    Ed25519 over ``mlanet-v1:request:`` + ``request`` by the requesting network's key."""

    mlanet_request: Literal[1]
    network: NetworkId
    request: str = Field(pattern=r"^[A-Za-z0-9_-]+$", max_length=65536)
    signatures: list[SignedRequestSignature] = Field(min_length=1, max_length=2)
