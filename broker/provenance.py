"""Provenance: is a message from whom it says, and did it come the way its hop records say?

Pure functions of the signed header (and, at the destination, the payload), the hop records and
the federation directory. Signatures prove which *network* signed; these checks hold the network
to what the directory says it may claim (``docs/PROTOCOL.md``, sections 6, 7.3 and 10):

- :func:`check_origin`: the origin's country and contact point belong to the origin network at
  the message's time (``created_at``): ``origin_not_member``;
- :func:`check_payload_origin`: a facilitation request's ``requesting_country`` belongs to the
  origin network: ``origin_not_member``;
- :func:`check_addressee`: a receipt or a notice about a message counts only from the network
  that message was addressed to: ``unauthorised``;
- :func:`refused_copy` and :func:`check_refuser`: a refusal notice about a message counts only
  from a network that held that message (``docs/PROTOCOL.md`` section 10.1). The origin rebuilds
  the refused copy from its own envelope and the hop entries the notice carries, and opens it
  (a relay cannot forge another relay's hop signature: ``bad_hop_signature``,
  ``hop_chain_broken``, ...); the refusing network must then be the addressee, the ``to`` of
  the copy's last hop record, or, for a copy without hop records, the network the origin hands
  the message to: ``unauthorised`` otherwise;
- :func:`check_path`: the hop records describe a path a message can really take, in this order
  for each record: the origin never signs one (``hop_by_origin``); each record is signed by the
  network the one before it was addressed to (``hop_chain_broken``); no network appears twice
  (``loop_detected``); each step is a link of the directory (``unknown_link``); each time is
  within the clock skew of the receiving time and not earlier than the one before it by more
  than the skew (``clock_skew``). The last step, to the receiver, is the sending peer's, which
  is linked by definition (a network the directory does not link to is no peer).

Each check raises :class:`~mlanet.broker.errors.RefusedMessage`; its detail names networks, contact
points, countries and indexes only (never case content).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from mlanet.broker.envelope import SignedMessage, open_envelope
from mlanet.broker.errors import Reason, RefusedMessage
from mlanet.broker.keys import TrustStore
from mlanet.broker.strictjson import canonical_bytes
from mlanet.schemas import FacilitationRequest, Header, HopRecord, WireModel
from mlanet.schemas.directory import Directory, NetworkEntry
from mlanet.schemas.payloads import NoticeHop
from mlanet.schemas.validity import ended, not_yet

__all__ = [
    "check_addressee",
    "check_origin",
    "check_path",
    "check_payload_origin",
    "check_refuser",
    "linked",
    "refused_copy",
    "serving",
]


def serving(network: NetworkEntry, contact_point: str, at: datetime) -> bool:
    """Is ``contact_point`` one of ``network``'s contact points, serving at ``at``?

    It serves from its ``not_before`` until its ``not_after``; one with a ``successor`` and no
    ``not_after`` has handed over at once (as :meth:`NetworkEntry.as_of` resolves it)."""
    entry = network.contact_point(contact_point)
    if entry is None or not_yet(at, entry.not_before):
        return False
    if entry.not_after is None:
        return entry.successor is None
    return not ended(at, entry.not_after)


def _belongs(network: NetworkEntry, country: str) -> bool:
    """A member country of the network, or an observer country of it."""
    return country in network.members or country in network.observers


def check_origin(header: Header, directory: Directory) -> None:
    """The origin's country and contact point, when named, belong to the origin network."""
    origin = header.origin
    entry = directory.network(origin.network)
    if entry is None:
        raise RefusedMessage(Reason.ORIGIN_NOT_MEMBER, f"{origin.network} is not in the directory")
    if origin.country is not None and not _belongs(entry, origin.country):
        raise RefusedMessage(
            Reason.ORIGIN_NOT_MEMBER, f"{origin.country} is not a country of {origin.network}"
        )
    if origin.contact_point is not None and not serving(
        entry, origin.contact_point, header.created_at
    ):
        raise RefusedMessage(
            Reason.ORIGIN_NOT_MEMBER,
            f"{origin.contact_point} is not a contact point of {origin.network} at its time",
        )


def check_payload_origin(header: Header, payload: WireModel, directory: Directory) -> None:
    """What the payload says about who asks belongs to the origin network too."""
    if not isinstance(payload, FacilitationRequest):
        return
    entry = directory.network(header.origin.network)
    if entry is None or not _belongs(entry, payload.requesting_country):
        raise RefusedMessage(
            Reason.ORIGIN_NOT_MEMBER,
            f"requesting country {payload.requesting_country} is not a country of "
            f"{header.origin.network}",
        )


def check_addressee(kind: str, signer: str, addressee: str | None) -> None:
    """A ``kind`` (receipt or notice) about a message, signed by ``signer``, counts only when
    ``signer`` is the network the message was addressed to (``addressee``; None when the
    sender cannot tell where the message went: then nobody's does)."""
    if signer != addressee:
        raise RefusedMessage(
            Reason.UNAUTHORISED, f"{kind} from {signer}, not the network the message was sent to"
        )


def refused_copy(
    sent: SignedMessage,
    content_sha256: str | None,
    hops: Sequence[NoticeHop],
    trust: TrustStore,
    *,
    now: datetime,
) -> SignedMessage:
    """The copy of our message ``sent`` that a refusal notice speaks of: the notice's content
    hash must be ``sent``'s (``unauthorised``), and ``sent`` with the notice's hop entries must
    open as any received message does (section 9: each hop signature verifies under its relay's
    key at ``now``, and each record chains to the one before, the first to ``sent``'s origin
    signature)."""
    if content_sha256 != sent.content_sha256:
        raise RefusedMessage(
            Reason.UNAUTHORISED, "refusal notice does not name the content of the message sent"
        )
    frame = sent.to_wire() | {
        "hops": [{"record": hop.record, "signature": hop.signature} for hop in hops]
    }
    rebuilt = canonical_bytes(frame)  # bounded: our own message and at most 16 hop entries
    return open_envelope(rebuilt, trust, max_bytes=len(rebuilt), now=now)


def check_refuser(
    refuser: str, copy: SignedMessage, *, addressee: str | None, first_step: str | None
) -> None:
    """A refusal notice signed by ``refuser`` about ``copy`` (from :func:`refused_copy`, its
    path checked with :func:`check_path`) counts only when ``refuser`` held that copy: it is
    the network the message was addressed to, or the copy's last hop record was addressed to
    it, or the copy has no hop records and ``first_step`` (the network the origin hands the
    message to) is ``refuser``."""
    if refuser == addressee:
        return
    if copy.hops and copy.hops[-1].record.to == refuser:
        return
    if not copy.hops and refuser == first_step:
        return
    raise RefusedMessage(
        Reason.UNAUTHORISED, f"refusal notice from {refuser}, which never held the message"
    )


def linked(directory: Directory, a: str, b: str) -> bool:
    """Does the directory list a link between ``a`` and ``b`` (either way round)?"""
    return (a, b) in directory.links or (b, a) in directory.links


def check_path(
    header: Header,
    hops: Sequence[HopRecord],
    directory: Directory,
    *,
    now: datetime,
    skew: timedelta,
) -> None:
    """The hop records chain from the origin over the directory's links, in time. (Who handed
    the message over, and that the last record is addressed to the receiver, is the
    authorisation's ``wrong_sender``; a receiver already on the path is routing's
    ``loop_detected``.)"""
    origin = header.origin.network
    here, before = origin, header.created_at
    on_path = {origin}
    for index, record in enumerate(hops):
        if record.network == origin:
            raise RefusedMessage(Reason.HOP_BY_ORIGIN, f"hop {index} is signed by the origin")
        if index > 0 and hops[index - 1].to != record.network:
            raise RefusedMessage(
                Reason.HOP_CHAIN_BROKEN,
                f"hop {index - 1} is addressed to {hops[index - 1].to}, "
                f"hop {index} is signed by {record.network}",
            )
        if record.network in on_path:
            raise RefusedMessage(
                Reason.LOOP_DETECTED, f"{record.network} appears twice on the path"
            )
        if not linked(directory, here, record.network):
            raise RefusedMessage(
                Reason.UNKNOWN_LINK, f"hop {index}: no link {here}-{record.network}"
            )
        if record.at > now + skew:
            raise RefusedMessage(Reason.CLOCK_SKEW, f"hop {index} is in the future")
        if record.at < before - skew:
            raise RefusedMessage(Reason.CLOCK_SKEW, f"hop {index} is earlier than what precedes it")
        on_path.add(record.network)
        here, before = record.network, record.at
