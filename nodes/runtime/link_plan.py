"""How this node links to each peer: over AMQPS with mutual TLS, in plaintext only when told
to (local development), or not at all, with the reason.

A link is a shovel on this network's own broker (``nodes/runtime/reconcile.py``), from
``mlanet.out.<peer>`` here to ``mlanet.inbox.from.<us>`` in our door at the peer. For each
peer the directory links us to, :func:`plan_link` decides from the peer's directory entry and
our ``[link]``:

- the peer's entry lists TLS (``tls``: AMQPS endpoints and CA certificates) and we have
  ``[link.tls]``: the shovel connects to the peer's endpoints over AMQPS, checks the peer
  broker's certificate against the CA certificates the directory lists as valid now (written
  to ``[link.tls] ca_folder``, a file named after its content, :func:`broker.tls.peer_ca_file`)
  and the endpoint's ``server_name``, presents our link certificate and logs in by it
  (EXTERNAL): no password crosses the link and none is in the shovel's definition;
- the peer's entry lists no TLS: a plaintext link with our link password, only when ``[link]
  allow_plaintext`` (a federation on one machine); the node logs each such link at start
  (``link_plaintext``) and ``mlanet status`` marks it;
- otherwise the link is refused (:class:`LinkRefusal`): no shovel runs, the node logs it and
  the ``link_refused`` alert names the peer and the reason.

A peer whose CA certificates the directory no longer lists as valid (expired, retired after a
rotation's overlap, or revoked) is refused too: its broker cannot be told from another.

:func:`diagnose` says why a TLS link that should run does not: it completes a handshake with
each endpoint as the shovel would, and names what the peer presented (another CA, another
name, an expired certificate) or that it does not answer.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from cryptography import x509

from mlanet.broker.directory_tls import certificates
from mlanet.broker.tls import TlsError, client_context, peer_ca_file, probe, shovel_uri
from mlanet.nodes.config import NodeConfig, PeerConfig
from mlanet.schemas.directory import AmqpsEndpoint, NetworkEntry

__all__ = [
    "LinkPlan",
    "LinkRefusal",
    "diagnose",
    "local_uri",
    "plan_link",
]

PROBE_WITHIN = 5.0  # seconds for one handshake of a diagnosis


class LinkRefusal(StrEnum):
    """Why a link is not made (the ``link_refused`` alert and log line carry it)."""

    PLAINTEXT_REFUSED = "link_plaintext_refused"  # the peer has no TLS; plaintext not allowed
    TLS_NOT_CONFIGURED = "link_tls_not_configured"  # the peer takes TLS; we have no [link.tls]
    NO_VALID_CA = "link_no_valid_ca"  # the directory lists no CA of the peer's valid now
    NOT_LISTED = "link_not_listed"  # the directory has no entry for the peer


@dataclass(frozen=True)
class LinkPlan:
    """One peer's link: how it goes, or why it does not."""

    peer: str
    transport: Literal["amqps", "plaintext"] | None  # None: refused
    refusal: LinkRefusal | None = None
    detail: str = ""
    endpoints: tuple[AmqpsEndpoint, ...] = ()
    cas: tuple[x509.Certificate, ...] = ()

    @property
    def refused(self) -> bool:
        return self.transport is None

    def describe(self) -> str:
        """One line for an operator: the refusal's code and detail, or how the link goes."""
        if self.refusal is not None:
            return f"{self.refusal.value}: {self.detail}"
        if self.transport == "plaintext":
            return "plaintext AMQP with a password ([link] allow_plaintext: development only)"
        return "AMQPS, mutual TLS, login by the link certificate"


def plan_link(
    config: NodeConfig, peer: PeerConfig, entry: NetworkEntry | None, at: datetime
) -> LinkPlan:
    """How the link to ``peer`` goes at ``at``, from its directory ``entry`` and our [link]."""
    name = peer.network
    if entry is None:
        return _refused(name, LinkRefusal.NOT_LISTED, f"the directory lists no {name}")
    link = config.link
    if entry.tls is not None:
        if link is None or link.tls is None:
            if _plaintext_allowed(config, peer):
                return LinkPlan(name, "plaintext")
            return _refused(
                name,
                LinkRefusal.TLS_NOT_CONFIGURED,
                f"{name}'s broker takes links over TLS and this node has no [link.tls]",
            )
        trusted = certificates(entry.tls.cas, at)
        if not trusted:
            return _refused(
                name,
                LinkRefusal.NO_VALID_CA,
                f"the directory lists no CA certificate of {name}'s broker valid now "
                "(expired, retired or revoked): its broker cannot be verified",
            )
        return LinkPlan(name, "amqps", endpoints=tuple(entry.tls.endpoints), cas=tuple(trusted))
    if _plaintext_allowed(config, peer):
        return LinkPlan(name, "plaintext")
    return _refused(
        name,
        LinkRefusal.PLAINTEXT_REFUSED,
        f"the directory lists no TLS endpoint for {name}'s broker, and plaintext links are "
        "refused ([link] allow_plaintext is for local development only)",
    )


def _plaintext_allowed(config: NodeConfig, peer: PeerConfig) -> bool:
    return (
        config.link is not None and config.link.allow_plaintext and peer.password_file is not None
    )


def _refused(peer: str, refusal: LinkRefusal, detail: str) -> LinkPlan:
    return LinkPlan(peer, None, refusal, detail)


def local_uri(vhost: str) -> str:
    """A shovel's URI for a vhost on the broker it runs on: a direct connection inside the
    broker, as the user that declared the shovel (no password, no TLS file in the definition)."""
    return f"amqp:///{quote(vhost, safe='')}"


def tls_uris(config: NodeConfig, plan: LinkPlan, vhost: str) -> tuple[str, ...]:
    """The AMQPS URIs of a TLS link's shovel (one per endpoint of the peer: the shovel tries
    them in turn), writing the peer's CA file in ``[link.tls] ca_folder``."""
    assert config.link is not None
    assert config.link.tls is not None
    assert plan.transport == "amqps"
    tls = config.link.tls
    ca_file = peer_ca_file(plan.cas, tls.ca_folder, plan.peer)
    return tuple(
        shovel_uri(
            endpoint.host,
            endpoint.port,
            vhost,
            cacertfile=ca_file,
            certfile=tls.cert_file,
            keyfile=tls.key_file,
            server_name=endpoint.server_name,
        )
        for endpoint in plan.endpoints
    )


def _probe_context(plan: LinkPlan, cert_file: Path | None, key_file: Path | None) -> ssl.SSLContext:
    try:
        return client_context(plan.cas, cert_file=cert_file, key_file=key_file)
    except (TlsError, OSError):  # the key is the broker's to read: check the server alone
        return client_context(plan.cas)


async def diagnose(config: NodeConfig, plan: LinkPlan) -> str | None:
    """Why a TLS link does not come up, as the shovel would find it: the first endpoint's
    refusal (``tls_<reason>: detail``), or None when an endpoint completes the handshake (the
    broker is the one the directory names; the fault is elsewhere)."""
    if plan.transport != "amqps" or config.link is None or config.link.tls is None:
        return None
    tls = config.link.tls
    context = _probe_context(plan, tls.cert_file, tls.key_file)
    found = None
    for endpoint in plan.endpoints:
        try:
            await probe(
                endpoint.host,
                endpoint.port,
                context,
                server_name=endpoint.server_name,
                within=PROBE_WITHIN,
            )
        except TlsError as exc:
            found = found or f"{exc.reason.value}: {exc.detail}"
            continue
        return None
    return found
