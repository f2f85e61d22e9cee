"""The RabbitMQ management HTTP API: vhosts, users, permissions, shovels and queue figures.

Used to provision a network's broker (``mlanet federation up``), to declare a node's links as
dynamic shovels, and to read queue depths and link states for operators. Errors are translated
to :class:`TransportError` at this edge; credentials never appear in an error text.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx

from broker.errors import TransportError

__all__ = ["Management", "ManagementEndpoint", "ShovelSpec"]


@dataclass(frozen=True)
class ManagementEndpoint:
    url: str
    user: str
    password: str


@dataclass(frozen=True)
class ShovelSpec:
    """A store-and-forward link: move ``src_queue`` to ``dest_exchange`` at the peer, on confirm."""

    name: str
    vhost: str
    src_uri: str
    src_queue: str
    dest_uri: str
    dest_exchange: str
    prefetch: int = 1000
    reconnect_delay: int = 1

    def definition(self) -> dict[str, Any]:
        return {
            "value": {
                "src-protocol": "amqp091",
                "src-uri": self.src_uri,
                "src-queue": self.src_queue,
                "src-prefetch-count": self.prefetch,
                "dest-protocol": "amqp091",
                "dest-uri": self.dest_uri,
                "dest-exchange": self.dest_exchange,
                "dest-add-forward-headers": False,
                "ack-mode": "on-confirm",
                "reconnect-delay": self.reconnect_delay,
                "src-delete-after": "never",
            }
        }


def _q(name: str) -> str:
    return quote(name, safe="")


class Management:
    """A small async client for the parts of the management API that mlanet uses."""

    def __init__(self, endpoint: ManagementEndpoint, *, timeout: float = 10.0) -> None:
        self._client = httpx.AsyncClient(
            base_url=endpoint.url.rstrip("/") + "/api",
            auth=(endpoint.user, endpoint.password),
            timeout=timeout,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = await self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise TransportError(f"management API unreachable ({type(exc).__name__})") from exc
        if response.status_code == 404 and method in ("GET", "DELETE"):
            return None
        if response.status_code >= 400:
            raise TransportError(
                f"management API {method} {path.split('/')[1]}: {response.status_code}"
            )
        return response.json() if response.content else None

    # --- provisioning ---------------------------------------------------------------------------
    async def put_vhost(self, vhost: str) -> None:
        await self._request("PUT", f"/vhosts/{_q(vhost)}", {"description": "mlanet network"})

    async def delete_vhost(self, vhost: str) -> None:
        await self._request("DELETE", f"/vhosts/{_q(vhost)}")

    async def put_user(self, user: str, password: str, tags: str = "") -> None:
        await self._request("PUT", f"/users/{_q(user)}", {"password": password, "tags": tags})

    async def delete_user(self, user: str) -> None:
        await self._request("DELETE", f"/users/{_q(user)}")

    async def put_permissions(
        self, vhost: str, user: str, *, configure: str, write: str, read: str
    ) -> None:
        await self._request(
            "PUT",
            f"/permissions/{_q(vhost)}/{_q(user)}",
            {"configure": configure, "write": write, "read": read},
        )

    # --- links ------------------------------------------------------------------------------------
    async def put_shovel(self, spec: ShovelSpec) -> None:
        await self._request(
            "PUT", f"/parameters/shovel/{_q(spec.vhost)}/{_q(spec.name)}", spec.definition()
        )

    async def delete_shovel(self, vhost: str, name: str) -> None:
        await self._request("DELETE", f"/parameters/shovel/{_q(vhost)}/{_q(name)}")

    async def shovels(self, vhost: str) -> list[dict[str, Any]]:
        found = await self._request("GET", f"/shovels/{_q(vhost)}")
        return list(found or [])

    # --- figures ----------------------------------------------------------------------------------
    async def queues(self, vhost: str) -> list[dict[str, Any]]:
        found = await self._request("GET", f"/queues/{_q(vhost)}")
        return list(found or [])

    async def overview(self) -> dict[str, Any]:
        return dict(await self._request("GET", "/overview") or {})
