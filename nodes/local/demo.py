"""The README's main job: a local federation of the five example networks, and the seed's
journey through it: a Cambodian contact point asks the Uzbek one for help with a pending MLA
matter; SEAJust routes it to CASC, CASC delivers it, a signed receipt comes back, and the Uzbek
side answers with a status update. Then a three-network journey (Cambodia -> France via CASC).

The demo says a node runs only once the node itself says it started (``lifecycle.json`` in its
state folder, ``nodes/runtime/lifecycle.py``); when a node fails, at start or later, it names the
node and its log file. It gives up after ``within`` seconds, saying what it waited for, and stops
its nodes and removes its federation in any case."""

from __future__ import annotations

import asyncio
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

from mlanet.broker import SignedMessage
from mlanet.broker.errors import MlanetError
from mlanet.broker.management import ManagementEndpoint
from mlanet.nodes.cli.contact import facilitation_request, read_inbox, status_update, submit, track
from mlanet.nodes.config import load_config
from mlanet.nodes.directory.contact_points import Credentials
from mlanet.nodes.local import federation
from mlanet.nodes.local import own_brokers as separate
from mlanet.nodes.state.store import TrackEvent
from mlanet.schemas.submission import Submission

__all__ = ["DemoFailed", "demo_prefix", "fresh_folder", "journeys", "run_demo"]

ADMIN = ManagementEndpoint("http://127.0.0.1:15672", "guest", "guest")


def demo_prefix() -> str:
    """A prefix of the demo's own for each run: two people (or two runs) on one broker never
    provision, or remove, each other's vhosts and users."""
    return f"demo-{secrets.token_hex(4)}"


class DemoFailed(MlanetError):
    """The demo could not go on; the text says what it waited for and where to look."""


class _Progress:
    """What the demo waits for now (named when it gives up), and its node processes."""

    def __init__(self, nodes: federation.NodeProcesses | None) -> None:
        self.nodes = nodes  # None: the nodes run elsewhere (a test's own)
        self.waiting_for = "the federation to be provisioned"

    def check(self) -> None:
        """NodeFailed when a node process has exited (named, with its log)."""
        if self.nodes is not None:
            self.nodes.check_running()


def _request(sender: str, country: str, case_ref: str) -> Submission:
    return facilitation_request(
        sender,
        country,
        case_ref=case_ref,
        summary="Demonstration request: no real case content.",
        offences=("drug_trafficking", "money_laundering"),
        measures=("evidence", "asset_freezing"),
        languages=("en", "ru"),
    )


def _line(network: str, event: TrackEvent) -> str:
    """One row of ``network``'s journal about the message, as ``mlanet track`` renders it."""
    return f"    {'[' + network + ']':<10} {event.event:<10} {event.detail}"


async def _journey(
    fed: federation.Federation,
    path: tuple[str, ...],
    message_id: str,
    say: Callable[[str], None],
    progress: _Progress,
    until: str = "delivered",
) -> None:
    """Wait until the origin (``path[0]``) holds its message as ``until`` (its receipt came
    back), then say what happened to it at every network on ``path``, in the order it
    happened."""
    configs = {network: load_config(fed.config_path(network)) for network in path}
    progress.waiting_for = f"message {message_id[:8]} to be {until} (as {path[0]} tracks it)"
    for _ in range(300):
        progress.check()
        entry = track(configs[path[0]], message_id).entry
        if entry is not None and entry.state in (until, "failed", "undeliverable"):
            break
        await asyncio.sleep(0.1)
    else:
        raise DemoFailed(
            f"{message_id} did not reach '{until}' in 30 s; see `mlanet track {message_id} "
            f"--config {fed.config_path(path[0])}` and the nodes' logs in "
            f"{fed.root}/<network>/node.log"
        )
    happened = [
        (event.at, network, event)
        for network in path
        for event in track(configs[network], message_id).events
    ]
    for _, network, event in sorted(happened, key=lambda item: item[0]):
        say(_line(network, event))


def _hops(message: SignedMessage) -> str:
    """What the hop records say: none when the origin handed the message straight to the
    destination's network, one per network that relayed it."""
    relays = [hop.record.network for hop in message.hops]
    if not relays:
        return "no hop record (no network relayed it: the origin handed it straight over)"
    noun = "record" if len(relays) == 1 else "records"
    return f"{len(relays)} hop {noun} ({', '.join(relays)} relayed it)"


async def _inbox(
    fed: federation.Federation,
    network: str,
    contact_point: str,
    say: Callable[[str], None],
    progress: _Progress,
) -> None:
    config = load_config(fed.config_path(network))
    reader = Credentials.load(fed.credentials(contact_point))  # its own user: its queue only
    progress.waiting_for = f"a message in {contact_point}'s inbox at {network}"
    for _ in range(100):
        progress.check()
        items = [item for item in await read_inbox(config, reader) if item.new]
        if items:
            for item in items:
                header = item.message.header
                path = " > ".join((*item.message.path, network))
                say(
                    f"    [{contact_point}] reads {header.kind} {header.message_id[:8]}, "
                    f"verified end to end ({path}): the origin's signature and "
                    f"{_hops(item.message)}"
                )
                if header.sealed is not None:
                    say(
                        f"    its payload crossed sealed for {header.sealed.network} "
                        f"({header.sealed.key_id}): {network}'s node opened it, no relay could"
                    )
            return
        await asyncio.sleep(0.1)
    raise DemoFailed(f"nothing reached {contact_point} in 10 s; see {fed.root}/{network}/node.log")


def fresh_folder(root: Path) -> None:
    if root.exists():
        shutil.rmtree(root)


async def run_demo(
    root: Path,
    *,
    say: Callable[[str], None],
    keep: bool = False,
    within: float = 300.0,
    prefix: str | None = None,
    own_brokers: bool = False,
) -> None:
    """Provision, start the nodes, send the journeys; give up after ``within`` seconds with
    DemoFailed naming what it waited for. The nodes are stopped and (unless ``keep``) the
    federation removed in every case. With ``own_brokers`` every network runs a RabbitMQ node
    of its own, linked over AMQPS with mutual TLS (``nodes/local/own_brokers.py``); they are
    stopped and their folders removed at the end (unless ``keep``)."""
    receipts = {"retry_after_seconds": 10.0}
    if own_brokers:
        fed = separate.prepare(root, prefix=prefix or demo_prefix(), receipts=receipts)
    else:
        fed = federation.build(root, prefix=prefix or demo_prefix(), receipts=receipts)
    nodes = federation.NodeProcesses(fed, ADMIN)
    progress = _Progress(nodes)
    try:
        async with asyncio.timeout(within):
            await _journeys(fed, say, progress, nodes)
    except TimeoutError:
        logs = f"the nodes' logs in {fed.root}/<network>/node.log"
        if fed.brokers:  # removed with their folders unless kept
            logs += f" and (with --keep) the brokers' in {fed.root}/<network>/broker/log"
        raise DemoFailed(
            f"the demo gave up after {within:g} s waiting for {progress.waiting_for}; see {logs}"
        ) from None
    finally:
        nodes.stop_all()
        if keep and fed.brokers:
            say(f"the brokers keep running; stop them with: mlanet federation down --dir {root}")
        if not keep:
            try:
                if fed.brokers:
                    await separate.down(fed)
                else:
                    await federation.teardown(fed, ADMIN)
            except MlanetError as exc:
                say(
                    f"could not remove the federation ({exc}); later: mlanet federation down"
                    f" --dir {root}"
                )


async def _provision(
    fed: federation.Federation, say: Callable[[str], None], progress: _Progress
) -> None:
    if not fed.brokers:
        await federation.provision(fed, ADMIN)
        say(f"federation of {', '.join(fed.networks)} provisioned on the local RabbitMQ")
        return
    progress.waiting_for = f"the brokers of {', '.join(fed.nodes)} to start"
    await separate.up(fed)
    say(
        f"federation of {', '.join(fed.networks)} (and the coordinator, {fed.coordinator}), "
        "each on a RabbitMQ node of its own: AMQPS and HTTPS only, provisioned by its own "
        "administrator"
    )
    say(
        "each link: AMQPS with mutual TLS, the peer broker checked against the CA the directory "
        "lists, logged in by its certificate from the coordinator's link CA"
    )


async def _journeys(
    fed: federation.Federation,
    say: Callable[[str], None],
    progress: _Progress,
    nodes: federation.NodeProcesses,
) -> None:
    await _provision(fed, say, progress)
    say("links: " + ", ".join(f"{a}-{b}" for a, b in fed.links))
    for network in fed.networks:
        nodes.start(network)
    progress.waiting_for = "the nodes to start"
    await nodes.wait_ready(within=120.0)
    say(f"all {len(fed.networks)} nodes have started (each said so itself)\n")

    await journeys(fed, say, progress)


async def journeys(
    fed: federation.Federation, say: Callable[[str], None], progress: _Progress | None = None
) -> None:
    """The three journeys, on a federation whose five networks' nodes run."""
    progress = progress or _Progress(None)
    seajust = load_config(fed.config_path("seajust"))
    kh_cp_1 = Credentials.load(fed.credentials("kh-cp-1"))
    say("1. kh-cp-1 (Cambodia, SEAJust) sends a facilitation request to Uzbekistan (CASC),")
    say("   signed with its own key and handed in as its own broker user")
    request = _request("kh-cp-1", "UZ", "KH-MLA-2020-0042")
    progress.waiting_for = "SEAJust's broker to take the request"
    await submit(seajust, kh_cp_1, request)
    await _journey(fed, ("seajust", "casc"), request.message_id, say, progress)
    await _inbox(fed, "casc", "uz-cp-1", say, progress)

    say("\n2. uz-cp-1 answers with a status update; it travels back the same way")
    casc = load_config(fed.config_path("casc"))
    update = status_update("uz-cp-1", "kh-cp-1", request.message_id)
    progress.waiting_for = "CASC's broker to take the status update"
    await submit(casc, Credentials.load(fed.credentials("uz-cp-1")), update)
    await _journey(fed, ("casc", "seajust"), update.message_id, say, progress)
    await _inbox(fed, "seajust", "kh-cp-1", say, progress)

    say("\n3. kh-cp-1 asks France (EJN): no direct link, so CASC relays it")
    relayed = _request("kh-cp-1", "FR", "KH-MLA-2021-0007")
    progress.waiting_for = "SEAJust's broker to take the request"
    await submit(seajust, kh_cp_1, relayed)
    await _journey(fed, ("seajust", "casc", "ejn"), relayed.message_id, say, progress)
    await _inbox(fed, "ejn", "fr-cp-1", say, progress)
    say(
        "\ndone: every message was signed at its origin, sealed for its destination network,"
        " verified at every hop, delivered once and acknowledged by a signed receipt"
    )
