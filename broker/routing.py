"""Routing: a pure function of (message header, path, directory, rules, this network).

Decisions, in order:

1. loop: this network is already on the path -> ``loop_detected``;
2. the target network: the destination's network, else the network that serves its country
   (this network first when it is a member); none -> ``no_route``; this network: delivered
   here, unless ``direct_only`` and it came through a relay -> ``direct_only_relayed``;
3. the target is already on the path -> ``loop_detected`` (the route leads back);
4. forwarding would exceed the origin's hop limit -> ``hop_limit_exceeded``;
4a. ``direct_only``: straight to the target when this network is the origin and linked to it,
   else ``direct_only_relayed``;
5. an explicit rule (first match by kind, country, network, urgency) names the next hop;
6. otherwise the target itself when linked, else the first step of a shortest path through
   linked networks that avoids every network already on the path;
7. nothing found: ``loop_detected`` when a link path to the target exists but every one goes
   back through a network already on the path, else ``no_route``.

Contact points that were replaced hand over to their successor (the directory given is the
view at the current time, ``Directory.as_of``). Observers (observer countries of a network,
and observer networks) are entitled to notices (and receipts for what they sent) only, never
to a message marked ``members_only``: anything else for them is ``not_for_observers``, and no
path goes through an observer network (an observer network that is handed one to relay refuses it
when it is not entitled to it).

A message marked ``direct_only`` goes from its origin straight to its target network over their
own link, never through a third network: the origin refuses it when it has no link to the
target, and any other network refuses it unless it is the target and the message came straight
from its origin (``direct_only_relayed``). Routing rules never apply to it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from mlanet.broker.errors import Reason
from mlanet.schemas import Header, NetworkId
from mlanet.schemas.directory import Directory, NetworkEntry

__all__ = ["Deliver", "Forward", "Refuse", "RouteRule", "Routing", "route", "target_network"]


class RouteRule(BaseModel):
    """Send matching messages through ``via``. Empty match lists match everything."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    via: NetworkId
    kinds: tuple[str, ...] = ()
    countries: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()
    urgency: str | None = None

    def matches(self, header: Header, target: str | None) -> bool:
        return (
            (not self.kinds or header.kind in self.kinds)
            and (not self.countries or header.destination.country in self.countries)
            and (not self.networks or target in self.networks)
            and (self.urgency is None or header.urgency == self.urgency)
        )


@dataclass(frozen=True, slots=True)
class Deliver:
    """Deliver locally to these contact points."""

    contact_points: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Forward:
    """Hand the message to this linked peer network."""

    peer: str
    target: str


@dataclass(frozen=True, slots=True)
class Refuse:
    reason: Reason
    detail: str


Routing = Deliver | Forward | Refuse


OBSERVER_KINDS = frozenset({"notice", "receipt"})


def entitled(header: Header, network: NetworkEntry, country: str | None) -> bool:
    """May this message reach ``country`` of ``network`` (or the network as a whole)?"""
    observer = network.role == "observer" or (country is not None and network.is_observer(country))
    return not observer or (header.kind in OBSERVER_KINDS and header.members_only is None)


def _not_for_observers(where: str) -> Refuse:
    return Refuse(Reason.NOT_FOR_OBSERVERS, f"{where} is an observer: notices only")


def target_network(header: Header, directory: Directory, self_network: str) -> str | None:
    """The network a message is addressed to: the destination's network, else the network
    that serves (or observes) its country, this network first; None when there is none."""
    destination = header.destination
    if destination.network is not None:
        return destination.network
    assert destination.country is not None  # the Destination model guarantees one of the two
    serving = directory.serving(destination.country) or directory.observing(destination.country)
    if self_network in serving:
        return self_network
    return serving[0] if serving else None


def _local(header: Header, directory: Directory, self_network: str) -> Routing:
    me = directory.network(self_network)
    destination = header.destination
    if me is None:
        return Refuse(Reason.NO_ROUTE, f"{self_network} is not in the directory")
    if destination.contact_point is not None:
        resolved = me.resolve(destination.contact_point)
        entry = me.contact_point(resolved) if resolved is not None else None
        if entry is None:
            return Refuse(Reason.NO_ROUTE, f"no contact point {destination.contact_point} here")
        if not entitled(header, me, entry.country):
            return _not_for_observers(entry.id)
        return Deliver((entry.id,))
    if destination.country is not None:
        found = me.contact_points_of(destination.country)
        if found and not entitled(header, me, destination.country):
            return _not_for_observers(destination.country)
        if found:
            return Deliver((found[0],))
        return Refuse(Reason.NO_ROUTE, f"no contact point for {destination.country} here")
    active = [cp for cp in me.contact_points if cp.successor is None]
    recipients = tuple(cp.id for cp in active if entitled(header, me, cp.country))
    if recipients:
        return Deliver(recipients)
    if active:
        return _not_for_observers(self_network)
    return Refuse(Reason.NO_ROUTE, f"{self_network} has no contact points")


def _first_step(directory: Directory, start: str, goal: str, avoid: set[str]) -> str | None:
    """First hop of a shortest path start -> goal through links, never entering ``avoid``."""
    previous: dict[str, str] = {}
    queue = deque([start])
    seen = {start} | avoid
    while queue:
        here = queue.popleft()
        for neighbour in directory.neighbours(here):
            if neighbour in seen:
                continue
            previous[neighbour] = here
            if neighbour == goal:
                step = neighbour
                while previous[step] != start:
                    step = previous[step]
                return step
            seen.add(neighbour)
            queue.append(neighbour)
    return None


def route(
    header: Header,
    path: tuple[str, ...],
    directory: Directory,
    rules: tuple[RouteRule, ...],
    self_network: str,
) -> Routing:
    """Decide what this network does with a message that has travelled ``path``.

    ``path`` lists the networks that already handled the message, origin first; it is empty
    for a message this network originates.
    """
    if self_network in path:
        return Refuse(Reason.LOOP_DETECTED, f"{self_network} is already on the path")
    target = target_network(header, directory, self_network)
    if target == self_network:
        if header.direct_only and len(path) > 1:
            return Refuse(Reason.DIRECT_ONLY_RELAYED, f"direct only, but relayed through {path[1]}")
        return _local(header, directory, self_network)
    entry = directory.network(target) if target is not None else None
    if target is None or entry is None:
        return Refuse(Reason.NO_ROUTE, "no network serves the destination")
    if not entitled(header, entry, header.destination.country):
        return _not_for_observers(header.destination.country or target)
    me = directory.network(self_network)
    if path and me is not None and me.role == "observer" and not entitled(header, me, None):
        return _not_for_observers(self_network)  # handed one to relay: it may not even hold it
    if target in path:
        return Refuse(Reason.LOOP_DETECTED, f"the target {target} is already on the path")

    # A relay adds one hop record when it forwards; the origin adds none. So after this
    # network forwards, the message carries len(path) hop records.
    if len(path) > header.hop_limit:
        return Refuse(Reason.HOP_LIMIT_EXCEEDED, f"hop limit {header.hop_limit} reached")

    linked = set(directory.neighbours(self_network))
    if header.direct_only:
        if path:
            return Refuse(Reason.DIRECT_ONLY_RELAYED, f"direct only: {self_network} may not relay")
        if target in linked:
            return Forward(target, target)
        return Refuse(Reason.DIRECT_ONLY_RELAYED, f"direct only: no link to {target}")
    # No path goes through an observer network: it only ever receives what it is entitled to.
    observers = {n.id for n in directory.networks if n.role == "observer"} - {target}
    avoid = set(path) | observers
    for rule in rules:
        if rule.matches(header, target) and rule.via in linked and rule.via not in avoid:
            return Forward(rule.via, target)
    if target in linked:
        return Forward(target, target)
    step = _first_step(directory, self_network, target, avoid)
    if step is not None:
        return Forward(step, target)
    if _first_step(directory, self_network, target, observers) is not None:
        return Refuse(
            Reason.LOOP_DETECTED, f"every link path to {target} goes back through the path"
        )
    return Refuse(Reason.NO_ROUTE, f"no link path from {self_network} to {target}")
