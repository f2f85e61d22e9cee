"""Fault injection for the battery: node processes killed (SIGKILL) or crashed at a crash point
and restarted like a service manager would, connections closed, queues and bindings deleted
under a node, configuration and directory edits that route a link or a node through a
:class:`~tests.battery.proxy.FaultProxy`. Broker kills and resource alarms live on
:class:`~tests.battery.rabbit.ScratchBroker` (never on the shared broker).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import quote

import httpx

from mlanet.broker.directory_signing import sign_directory
from mlanet.broker.keys import b64u_decode, load_signing_key
from mlanet.broker.management import ManagementEndpoint
from mlanet.nodes.config import load_config
from mlanet.nodes.local.federation import Federation, NodeProcesses
from mlanet.nodes.runtime.crashpoints import CLOCK_OFFSET, CRASH_AT, CRASH_EXIT_CODE
from mlanet.schemas.directory import Directory, SignedDirectory
from tests.battery.history import History

__all__ = [
    "BrokerControl",
    "Supervisor",
    "delete_binding",
    "delete_queue",
    "route_links_through",
    "tune",
]


class BrokerControl(Protocol):
    """What a fault script may do to the broker a federation lives on (a ScratchBroker)."""

    admin: ManagementEndpoint
    amqp_port: int

    async def close_all_connections(self, vhost: str) -> None: ...


class Supervisor:
    """A run's node processes. A node that exits is restarted (without its crash point), as
    systemd's ``Restart=always`` would; each exit is recorded as a crash point reached, a kill
    the test asked for, or an unexpected exit (a defect: a node must never crash)."""

    def __init__(self, fed: Federation, admin: ManagementEndpoint, history: History) -> None:
        self.fed = fed
        self.processes = NodeProcesses(fed, admin)
        self.history = history
        self.env: dict[str, dict[str, str]] = {}  # per network, kept across restarts
        self.crashed: list[str] = []  # "<network>: <crash point>"
        self.unexpected: list[str] = []
        self.restarts = 0
        self._armed: dict[str, str] = {}
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, network: str, *, crash_at: str | None = None) -> None:
        env = dict(self.env.get(network, {}))
        if crash_at:
            env[CRASH_AT] = crash_at
            self._armed[network] = crash_at
        else:
            self._armed.pop(network, None)
        self.processes.start(network, env)

    def skew_clock(self, network: str, seconds: float) -> None:
        """From the next start on, the network's node runs ``seconds`` ahead (behind if < 0)."""
        self.env.setdefault(network, {})[CLOCK_OFFSET] = str(seconds)

    async def wait_ready(self, networks: list[str] | None = None, within: float = 90.0) -> None:
        await self.processes.wait_ready(networks, within)

    async def kill(self, network: str, *, restart_after: float = 0.0) -> None:
        """SIGKILL the node (a crash with no cleanup at all), then start it again."""
        self.history.add("fault", "faults", reason=f"{network} node killed")
        self.processes.kill(network)
        if restart_after:
            await asyncio.sleep(restart_after)  # the node stays down this long: the fault
        self.start(network)
        self.restarts += 1
        await self.wait_ready([network])
        self.history.add("fault", "faults", reason=f"{network} node back")

    async def pause(self, key: str, seconds: float) -> None:
        """SIGSTOP a node process (a replica hung, or starved of CPU) for ``seconds``, then
        SIGCONT it: it resumes where it stopped."""
        process = self.processes.processes[key]
        self.history.add("fault", "faults", reason=f"{key} paused")
        process.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)  # the pause is the fault
        finally:
            process.send_signal(signal.SIGCONT)
        self.history.add("fault", "faults", reason=f"{key} resumed")

    def supervise(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="supervisor")

    async def _watch(self) -> None:
        while not self._stop.is_set():
            for network, process in list(self.processes.processes.items()):
                code = process.poll()
                if code is None:
                    continue
                self.processes.processes.pop(network)
                armed = self._armed.pop(network, None)
                if code == CRASH_EXIT_CODE and armed:
                    self.crashed.append(f"{network}: {armed}")
                    what = f"{network} node crashed at {armed}"
                else:
                    self.unexpected.append(f"{network} exited with {code}")
                    what = f"{network} node exited unexpectedly ({code})"
                self.history.add("fault", "faults", reason=what)
                self.start(network)
                self.restarts += 1
            await asyncio.sleep(0.1)

    async def aclose(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        self.processes.stop_all()


async def _management(admin: ManagementEndpoint, method: str, path: str) -> object:
    async with httpx.AsyncClient(
        base_url=admin.url.rstrip("/") + "/api", auth=(admin.user, admin.password), timeout=10
    ) as client:
        response = await client.request(method, path)
        if response.status_code >= 400:
            raise RuntimeError(f"management API {method} {path}: {response.status_code}")
        return response.json() if response.content else None


async def delete_queue(admin: ManagementEndpoint, vhost: str, queue: str) -> None:
    """Delete a queue under a running node (its messages go with it), as a careless operator."""
    await _management(admin, "DELETE", f"/queues/{quote(vhost, safe='')}/{quote(queue, safe='')}")


async def delete_binding(admin: ManagementEndpoint, vhost: str, exchange: str, queue: str) -> int:
    """Remove every binding ``exchange`` -> ``queue``; how many there were."""
    path = (
        f"/bindings/{quote(vhost, safe='')}/e/{quote(exchange, safe='')}/q/{quote(queue, safe='')}"
    )
    found = await _management(admin, "GET", path)
    bindings = found if isinstance(found, list) else []
    for binding in bindings:
        await _management(admin, "DELETE", f"{path}/{quote(binding['properties_key'], safe='')}")
    return len(bindings)


def tune(
    fed: Federation,
    network: str,
    *,
    port: int | None = None,
    heartbeat: int | None = None,
    limits: Mapping[str, int] | None = None,
    lease: float | None = None,
) -> None:
    """Edit a network's ``node.toml`` before its node starts: its own broker port (e.g. a
    proxy), the AMQP heartbeat, ``[limits]``, and its replicas' lease (``[database]``). The
    result is validated by ``load_config``."""
    path = fed.config_path(network)
    text = path.read_text(encoding="utf-8")
    broker_start = text.index("[broker]\n")
    head, broker = text[:broker_start], text[broker_start:]
    if port is not None:
        broker = re.sub(r"(?m)^port = \d+$", f"port = {port}", broker, count=1)
    if heartbeat is not None:
        broker = broker.replace("[broker]\n", f"[broker]\nheartbeat = {heartbeat}\n", 1)
    text = head + broker
    if lease is not None:
        text = text.replace("[database]\n", f"[database]\nreplica_lease_seconds = {lease}\n", 1)
    if limits:
        text += "\n[limits]\n" + "".join(f"{k} = {v}\n" for k, v in limits.items())
    path.write_text(text, encoding="utf-8")
    load_config(path)


def route_links_through(fed: Federation, network: str, port: int) -> None:
    """Point the directory's broker address of ``network`` at ``port`` (a proxy): every peer's
    link (shovel) towards ``network`` then goes through it. The directory is signed again with
    the federation's coordinator key. Do it before the nodes start."""
    path = fed.root / "directory.json"
    signed = SignedDirectory.model_validate_json(path.read_bytes())
    raw = json.loads(b64u_decode(signed.document))
    for entry in raw["networks"]:
        if entry["id"] == network:
            entry["broker"]["port"] = port
    directory = Directory.model_validate(raw, strict=False)
    path.write_bytes(sign_directory(directory, load_signing_key(fed.coordinator_key())).to_bytes())
