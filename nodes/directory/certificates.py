"""The coordinator's changes to the CA certificates and AMQPS endpoints the directory publishes
(``docs/PROTOCOL.md`` section 14.7): each network's broker CAs and endpoints, and the
coordinator's link CA. Pure functions from one directory to the next one's parts, like the key
changes in ``nodes/directory/coordinator.py``.

A CA rotates as a signing key does: the new CA is listed beside the current one, and the
current one stays trusted for ``overlap`` more (its ``retire_at``), long enough for every node
to trust the new CA and for the broker to switch its server certificate (or, for the link CA,
for every network to switch its link certificate); then it is no longer trusted, and a later
version leaves it out (:func:`prune`). A CA's own validity is its certificate's, never changed
here. Revocation is at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from mlanet.broker.errors import Reason, RefusedMessage
from mlanet.schemas.directory import (
    AmqpsEndpoint,
    BrokerTls,
    CaCertificate,
    Directory,
    NetworkEntry,
)
from mlanet.schemas.validity import ended

__all__ = [
    "LinkCasChange",
    "NetworksChange",
    "add_broker_ca",
    "prune",
    "prune_link_cas",
    "revoke_broker_ca",
    "revoke_link_ca",
    "rotate_broker_ca",
    "set_broker_endpoints",
    "set_link_ca",
]

# A change, given the base directory and the time: the networks, or the link CAs, it makes.
NetworksChange = Callable[[Directory, datetime], list[NetworkEntry]]
LinkCasChange = Callable[[Directory, datetime], list[CaCertificate]]


def _refuse(detail: str) -> RefusedMessage:
    return RefusedMessage(Reason.UNAUTHORISED, detail)


def _entry(directory: Directory, network: str) -> NetworkEntry:
    entry = directory.network(network)
    if entry is None:
        raise _refuse(f"{network} is not in the directory")
    return entry


def _with_tls(directory: Directory, entry: NetworkEntry, tls: BrokerTls) -> list[NetworkEntry]:
    changed = entry.model_copy(update={"tls": BrokerTls.model_validate(tls.model_dump())})
    return [changed if n.id == entry.id else n for n in directory.networks]


def _retired(cas: Sequence[CaCertificate], at: datetime) -> list[CaCertificate]:
    """``cas`` with every one still trusted after ``at`` retired at ``at``."""
    return [
        ca.model_copy(update={"retire_at": at}) if ca.revoked_at is None and ca.ends > at else ca
        for ca in cas
    ]


def _added(cas: Sequence[CaCertificate], new: CaCertificate) -> list[CaCertificate]:
    if any(ca.id == new.id for ca in cas):
        raise _refuse(f"a CA certificate {new.id} is listed already")
    if any(ca.pem == new.pem for ca in cas):
        raise _refuse("that CA certificate is listed already")
    return [*cas, new]


def set_broker_endpoints(
    directory: Directory,
    network: str,
    endpoints: Sequence[AmqpsEndpoint],
    ca: CaCertificate | None = None,
) -> list[NetworkEntry]:
    """Publish where ``network``'s broker takes links over AMQPS (replacing what was listed);
    a network without TLS yet needs its first CA (``ca``) with them."""
    entry = _entry(directory, network)
    if entry.tls is None:
        if ca is None:
            raise _refuse(f"{network} has no broker CA yet: give its CA certificate too")
        return _with_tls(directory, entry, BrokerTls(endpoints=list(endpoints), cas=[ca]))
    cas = entry.tls.cas if ca is None else _added(entry.tls.cas, ca)
    return _with_tls(directory, entry, BrokerTls(endpoints=list(endpoints), cas=cas))


def add_broker_ca(directory: Directory, network: str, ca: CaCertificate) -> list[NetworkEntry]:
    """List one more CA for ``network``'s broker, trusted beside the ones listed."""
    entry = _entry(directory, network)
    if entry.tls is None:
        raise _refuse(f"{network} has no broker endpoints yet: publish them with its first CA")
    cas = _added(entry.tls.cas, ca)
    return _with_tls(directory, entry, entry.tls.model_copy(update={"cas": cas}))


def rotate_broker_ca(
    directory: Directory, network: str, ca: CaCertificate, now: datetime, overlap: timedelta
) -> list[NetworkEntry]:
    """``ca`` replaces ``network``'s broker CA: the current ones stay trusted until ``now`` +
    ``overlap`` (the broker switches its server certificate within it), the new one from now."""
    entry = _entry(directory, network)
    if entry.tls is None:
        raise _refuse(f"{network} has no broker CA to rotate")
    cas = _added(_retired(entry.tls.cas, now + overlap), ca)
    return _with_tls(directory, entry, entry.tls.model_copy(update={"cas": cas}))


def revoke_broker_ca(
    directory: Directory, network: str, ca_id: str, now: datetime
) -> list[NetworkEntry]:
    """Emergency revocation: from the moment a node holds this version, it no longer trusts a
    broker certificate from this CA."""
    entry = _entry(directory, network)
    if entry.tls is None or not any(ca.id == ca_id for ca in entry.tls.cas):
        raise _refuse(f"{network} has no broker CA {ca_id}")
    cas = [
        ca.model_copy(update={"revoked_at": now}) if ca.id == ca_id else ca for ca in entry.tls.cas
    ]
    return _with_tls(directory, entry, entry.tls.model_copy(update={"cas": cas}))


def set_link_ca(
    directory: Directory, ca: CaCertificate, now: datetime, overlap: timedelta
) -> list[CaCertificate]:
    """The coordinator's link CA: the first one, or a new one that replaces the current ones
    after ``overlap`` (every network gets a link certificate from it within that time)."""
    return _added(_retired(directory.link_cas or [], now + overlap), ca)


def revoke_link_ca(directory: Directory, ca_id: str, now: datetime) -> list[CaCertificate]:
    """Revoke a link CA at once: no broker accepts a link certificate it issued any more."""
    cas = directory.link_cas or []
    if not any(ca.id == ca_id for ca in cas):
        raise _refuse(f"the directory lists no link CA {ca_id}")
    return [ca.model_copy(update={"revoked_at": now}) if ca.id == ca_id else ca for ca in cas]


def _kept(
    cas: Sequence[CaCertificate], now: datetime, keep_revoked: timedelta
) -> list[CaCertificate]:
    """CAs worth listing at ``now``: not ended (expired or past a rotation's overlap), and a
    revoked one for ``keep_revoked`` (nodes that hold it learn it is revoked). A certificate
    that has expired is never listed again: a directory carrying it would be
    ``tls_ca_expired``."""
    return [
        ca
        for ca in cas
        if not ended(now, ca.not_after)
        and (
            not ended(now, ca.ends) if ca.revoked_at is None else ca.revoked_at > now - keep_revoked
        )
    ]


def prune(network: NetworkEntry, now: datetime, keep_revoked: timedelta) -> NetworkEntry:
    """``network`` with its broker CAs that have ended left out (see :func:`_kept`); when none
    is left, its TLS listing goes too (its peers could not check its broker any more)."""
    if network.tls is None:
        return network
    cas = _kept(network.tls.cas, now, keep_revoked)
    tls = network.tls.model_copy(update={"cas": cas}) if cas else None
    return network.model_copy(update={"tls": tls})


def prune_link_cas(
    directory: Directory, now: datetime, keep_revoked: timedelta
) -> list[CaCertificate] | None:
    """The link CAs worth listing in the next version (see :func:`_kept`); None when none is."""
    return _kept(directory.link_cas or [], now, keep_revoked) or None
