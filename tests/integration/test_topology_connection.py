"""The node declares its topology again every few seconds (``nodes/runtime/links.py``) over one
plain connection that it keeps from one check to the next (a new connection each time cost more
CPU than the declarations): closed under it by the broker, the next check opens a new one and
succeeds, without an error."""

from __future__ import annotations

from mlanet.broker.transport import Topology, Transport
from mlanet.nodes.local.federation import Federation
from tests.integration.kit import close_connections, config


async def test_the_topology_is_declared_on_a_kept_connection_and_a_closed_one_is_replaced(
    fed: Federation,
) -> None:
    casc = config(fed, "casc")
    topology = Topology(peers=tuple(fed.peers("casc")), contact_points=("uz-cp-1",))
    async with Transport(casc.amqp_url()) as transport:
        assert await transport.declare(topology) == []
        kept = transport._declarations
        assert kept is not None
        assert await transport.declare(topology) == []
        assert transport._declarations is kept  # the same connection, one check later
        await close_connections(fed, "casc")  # the broker closes it (and the node's own)
        assert await transport.declare(topology) == []  # a new one, and no error
        assert transport._declarations is not kept
    assert transport._declarations is None  # closed with the transport
