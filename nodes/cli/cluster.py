"""``mlanet cluster up|status|down``: a RabbitMQ cluster of three nodes on this machine, for
local development (``nodes/local/cluster.py``; docs/OPERATIONS.md, "A RabbitMQ cluster on one
machine"). Each command has a ``--timeout`` of its own and ends with one line."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mlanet.broker.errors import MlanetError
from mlanet.nodes.cli.common import fail, watchdog

if TYPE_CHECKING:
    from mlanet.nodes.local.cluster import LocalCluster

__all__ = ["cluster_app"]

cluster_app = typer.Typer(
    no_args_is_help=True,
    help="A RabbitMQ cluster of three nodes on this machine (local development): up, status, down.",
)
Root = Annotated[
    Path,
    typer.Option("--root", help="The cluster's folder: its nodes' data, logs and record."),
]
CLEANUP = 90.0  # seconds stopping the nodes of a start that failed may take after its limit


@cluster_app.command("up")
def cluster_up(
    root: Root,
    timeout: Annotated[
        float,
        typer.Option(
            envvar="MLANET_TIMEOUT",
            min=1,
            help="Give up after this many seconds (the nodes are stopped, their folders kept "
            "for their logs).",
        ),
    ] = 300.0,
) -> None:
    """Start three RabbitMQ nodes under --root (own names, ports, folders and Erlang cookie),
    join them into one cluster and wait until all three run; print their AMQP and management
    addresses and the administrator's password file. They run until mlanet cluster down."""
    from mlanet.nodes.local.cluster import LocalCluster

    line = (
        f"mlanet: cluster up did not end within {timeout + CLEANUP:g} s; stop and remove what "
        f"was started with: mlanet cluster down --root {root}"
    )
    with watchdog(timeout + CLEANUP, lambda: line):
        try:
            cluster = LocalCluster.prepare(root)
        except (MlanetError, OSError) as exc:
            raise fail(str(exc) if isinstance(exc, MlanetError) else _os_error(root, exc)) from None
        try:
            asyncio.run(_start(cluster, timeout))
        except MlanetError as exc:
            raise fail(
                f"{exc}; the nodes were stopped, their logs kept: remove them with mlanet "
                f"cluster down --root {root}",
                1,
            ) from None
    for number, (node, amqp, url) in enumerate(
        zip(cluster.nodes, cluster.amqp_addresses(), cluster.management_urls(), strict=True),
        start=1,
    ):
        typer.echo(f"node {number}: {node.nodename}  AMQP {amqp}  management {url}/")
    typer.echo(
        f"administrator: {cluster.admin_user}, password in {cluster.password_file} (all nodes)"
    )
    first, *others = cluster.amqp_addresses()
    host, port = first.rsplit(":", 1)
    cluster_list = ", ".join(f'"{address}"' for address in others)
    management = ", ".join(f'"{url}"' for url in cluster.management_urls()[1:])
    typer.echo(
        f'a node\'s [broker]: host = "{host}", port = {port}, cluster = [{cluster_list}], '
        f'management_url = "{cluster.management_urls()[0]}", '
        f"cluster_management_urls = [{management}]"
    )
    typer.echo(
        f"cluster of 3 nodes running; stop and remove it with: mlanet cluster down --root {root}"
    )


async def _start(cluster: LocalCluster, within: float) -> None:
    """Start ``cluster`` within ``within`` seconds; stop its nodes (their folders kept) when
    it fails or runs out of time."""
    from mlanet.nodes.local.brokers import LocalBrokerError

    try:
        async with asyncio.timeout(within):
            await cluster.start(within=within)
    except TimeoutError:
        await cluster.stop(remove=False)
        raise LocalBrokerError(f"the cluster was not up within {within:g} s") from None
    except BaseException:
        await cluster.stop(remove=False)
        raise


@cluster_app.command("status")
def cluster_status(
    root: Root,
    timeout: Annotated[
        float,
        typer.Option(envvar="MLANET_TIMEOUT", min=1, help="Give up after this many seconds."),
    ] = 60.0,
) -> None:
    """Each node of the cluster under --root (running or not, its addresses) and the
    cluster's own view (the running nodes, as the first running node sees them). Exit code 0
    when all three run and see each other, 1 otherwise."""
    from mlanet.nodes.local.cluster import LocalCluster

    line = (
        f"mlanet: cluster status gave up after {timeout:g} s waiting for the nodes in {root} "
        "to answer rabbitmqctl; check their logs in <root>/node<n>/log"
    )
    with watchdog(timeout, lambda: line):
        try:
            cluster = LocalCluster.attach(root)
            status = asyncio.run(cluster.status())
        except MlanetError as exc:
            raise fail(str(exc), 1) from None
    for node in status.nodes:
        state = "running" if node.running else "not running"
        typer.echo(f"{node.nodename}: {state}  AMQP {node.amqp}  management {node.management_url}/")
    if status.running_nodes is None:
        raise fail("the cluster: no node answers cluster_status (none running)", 1)
    names = ", ".join(sorted(status.running_nodes))
    summary = (
        f"the cluster as {status.asked} sees it: {len(status.running_nodes)} of "
        f"{len(status.nodes)} nodes running ({names})"
    )
    if not status.whole:
        raise fail(summary, 1)
    typer.echo(summary)


@cluster_app.command("down")
def cluster_down(
    root: Root,
    timeout: Annotated[
        float,
        typer.Option(envvar="MLANET_TIMEOUT", min=1, help="Give up after this many seconds."),
    ] = 150.0,
) -> None:
    """Stop the three nodes of the cluster under --root (killed when one does not stop) and
    remove the folder. A folder without the record mlanet cluster up wrote is left alone."""
    from mlanet.nodes.local.cluster import LocalCluster

    line = (
        f"mlanet: cluster down gave up after {timeout:g} s waiting for the nodes in {root} to "
        "stop; run it again (a node that does not stop is killed)"
    )
    if not root.exists():
        typer.echo(f"no cluster in {root}: nothing to stop (removed already?)")
        return
    with watchdog(timeout, lambda: line):
        try:
            cluster = LocalCluster.attach(root)
            asyncio.run(cluster.stop(within=min(60.0, timeout / 2)))
        except MlanetError as exc:
            raise fail(f"{exc}; nothing removed", 1) from None
    typer.echo(f"stopped the cluster's 3 nodes and removed {root}")


def _os_error(root: Path, exc: OSError) -> str:
    return f"cannot write {root} ({exc.strerror or type(exc).__name__})"
