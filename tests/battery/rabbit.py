"""A RabbitMQ node of the test's own, to kill with SIGKILL and to put under resource alarms.

Never the shared broker on :5672: other engineers and CI run their tests against it at the same
time. This node has its own name (``mlanet-fault-<random>@localhost``), free ports (AMQP,
distribution, management), its own data and log folders, its own Erlang cookie (in a private
``HOME``) and its own plugin list (management and shovel). It is started with the package's
scripts in ``/usr/lib/rabbitmq/bin`` (Debian's ``/usr/sbin`` wrappers would switch user and
write the shared node's startup log) or, where those are missing, with ``rabbitmq-server`` and
``rabbitmqctl`` from ``PATH``. Start takes 6-10 s on a 2-core machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
from pathlib import Path
from typing import Self

import httpx

from mlanet.broker.management import ManagementEndpoint
from mlanet.nodes.local.brokers import free_ports, process_alive, server_scripts

__all__ = ["ScratchBroker"]

_PLUGINS = "[rabbitmq_management,rabbitmq_shovel,rabbitmq_shovel_management].\n"


class ScratchBroker:
    """``async with ScratchBroker(folder) as broker``: a started node, stopped at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodename = f"mlanet-fault-{secrets.token_hex(3)}@localhost"
        self.amqp_port, self.dist_port, self.management_port = free_ports(3)
        self.admin = ManagementEndpoint(
            f"http://127.0.0.1:{self.management_port}", "guest", "guest"
        )
        self._server, self._ctl = server_scripts()
        self._env = self._prepare()

    def _prepare(self) -> dict[str, str]:
        home = self.root / "home"
        for folder in (home, self.root / "mnesia", self.root / "log"):
            folder.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(20).upper(), encoding="ascii")
            cookie.chmod(0o400)
        (self.root / "enabled_plugins").write_text(_PLUGINS, encoding="ascii")
        (self.root / "rabbitmq-env.conf").write_text("", encoding="ascii")
        (self.root / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}\n"
            f"management.tcp.port = {self.management_port}\n"
            "management.tcp.ip = 127.0.0.1\n"
            "loopback_users = none\n"
            "log.console = false\n",
            encoding="ascii",
        )
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
        return {
            **keep,
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_PID_FILE": str(self.root / "rabbit.pid"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(self.root / "plugins-expand"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- lifecycle -----------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        try:
            return int((self.root / "rabbit.pid").read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            return None

    async def start(self, within: float = 120.0) -> None:
        """Start the node (on the same data as before, after a kill) and wait until it serves
        AMQP and the management API."""
        process = await asyncio.create_subprocess_exec(
            self._server,
            "-detached",
            env=self._env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"rabbitmq-server did not start: {err.decode(errors='replace')}")
        await self.wait_serving(within)

    async def wait_serving(self, within: float) -> None:
        deadline = asyncio.get_running_loop().time() + within
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                try:
                    response = await client.get(
                        f"{self.admin.url}/api/overview",
                        auth=(self.admin.user, self.admin.password),
                    )
                    if response.status_code == 200 and await self._amqp_open():
                        return
                except httpx.HTTPError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(
                        f"scratch broker {self.nodename} not serving after {within:.0f} s; "
                        f"see {self.root / 'log'}"
                    )
                await asyncio.sleep(0.25)

    async def _amqp_open(self) -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", self.amqp_port)
        except OSError:
            return False
        writer.close()
        return True

    async def kill(self) -> None:
        """SIGKILL the broker: no flush, no goodbye to its clients, as in a power cut."""
        pid = self.pid
        if pid is None or not process_alive(pid):
            raise RuntimeError(f"scratch broker {self.nodename} is not running")
        os.kill(pid, signal.SIGKILL)
        while process_alive(pid) or await self._amqp_open():  # noqa: ASYNC110 - another process's state
            await asyncio.sleep(0.05)

    async def restart(self) -> None:
        await self.start()

    async def stop(self) -> None:
        pid = self.pid
        if pid is None or not process_alive(pid):
            return
        with contextlib.suppress(RuntimeError):  # killed below if it did not stop
            await self.ctl("stop", within=60)
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)

    # --- control ------------------------------------------------------------------------------
    async def ctl(self, *args: str, within: float = 60.0) -> str:
        """``rabbitmqctl -n <this node> ...``; RuntimeError when it fails."""
        process = await asyncio.create_subprocess_exec(
            self._ctl,
            "-q",
            "-n",
            self.nodename,
            *args,
            env=self._env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), within)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise RuntimeError(f"rabbitmqctl {args[0]} timed out") from None
        if process.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {args[0]} failed: {err.decode(errors='replace')}")
        return out.decode(errors="replace")

    async def close_all_connections(self, vhost: str) -> None:
        await self.ctl("close_all_connections", "--vhost", vhost, "mlanet fault test")

    async def alarms(self) -> set[str]:
        """The resource alarms in effect: a subset of {"memory", "disk"}."""
        status = await self.ctl("status")
        found = set()
        if "Memory alarm" in status:
            found.add("memory")
        if "Free disk space alarm" in status:
            found.add("disk")
        return found

    async def memory_alarm(self, on: bool) -> None:
        """Set the memory watermark below what the node uses (publishers block) or restore it."""
        await self.ctl("set_vm_memory_high_watermark", "0.00001" if on else "0.4")
        await self._until_alarm("memory", on)

    async def disk_alarm(self, on: bool) -> None:
        """Set the disk free limit above the free space (publishers block) or restore it."""
        free = shutil.disk_usage(self.root).free
        await self.ctl("set_disk_free_limit", str(free * 2 if on else 50_000_000))
        await self._until_alarm("disk", on)

    async def _until_alarm(self, alarm: str, on: bool, within: float = 60.0) -> None:
        deadline = asyncio.get_running_loop().time() + within
        while (alarm in await self.alarms()) != on:
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"{alarm} alarm did not turn {'on' if on else 'off'}")
            await asyncio.sleep(0.5)
