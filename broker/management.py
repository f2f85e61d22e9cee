"""The RabbitMQ management HTTP API: vhosts, users, permissions, shovels and queue figures.

Used to provision a network's broker (``mlanet federation up``), to declare a node's links as
dynamic shovels, and to read queue depths and link states for operators. Errors are translated
to :class:`TransportError` at this edge; credentials never appear in an error text.

Every request gives up after ``timeout`` seconds (connecting included): an API that accepts
the connection and never answers is a TransportError that names its address and what to check,
as is an answer that is not JSON.

A broker that is a cluster: the endpoint's ``fallback_urls`` are its other nodes' APIs. A
request that cannot connect (refused, no answer to the connection within ``timeout``, a TLS
handshake refused) is sent to the next one in turn; nothing was sent, so any request may be. The
API that answered is asked first from then on. A request that was sent and got no answer is not
sent again elsewhere.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx

from mlanet.broker.errors import TransportError
from mlanet.broker.tls import handshake_refusal

__all__ = [
    "Management",
    "ManagementEndpoint",
    "QueueFigures",
    "ShovelSpec",
    "ShovelState",
    "shovel_states",
]


_LISTING_RETRIES = (0.1, 0.2, 0.4, 0.8, 1.6)  # s before asking again a GET that got 500


@dataclass(frozen=True)
class ManagementEndpoint:
    """Where the API is and who logs in. An ``https`` API is checked against ``verify`` (the
    CAs of the broker's own TLS settings) when given, else against the public roots; with
    ``server_name`` that name, not the URL's host, must be in its certificate."""

    url: str
    user: str
    password: str = field(repr=False)
    verify: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    server_name: str | None = None
    fallback_urls: tuple[str, ...] = ()  # the cluster's other nodes' APIs, tried in order


@dataclass(frozen=True)
class ShovelSpec:
    """A store-and-forward link: move ``src_queue`` to ``dest_exchange`` at the peer, on confirm."""

    name: str
    vhost: str
    src_uri: str
    src_queue: str
    dest_uri: str | tuple[str, ...]  # several: the peer's endpoints, tried in turn
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
                "dest-uri": (
                    self.dest_uri if isinstance(self.dest_uri, str) else list(self.dest_uri)
                ),
                "dest-exchange": self.dest_exchange,
                "dest-add-forward-headers": False,
                "ack-mode": "on-confirm",
                "reconnect-delay": self.reconnect_delay,
                "src-delete-after": "never",
            }
        }


@dataclass(frozen=True)
class QueueFigures:
    """One queue as the management API reports it. A figure is None until the broker has
    collected it (a few seconds after the queue was declared)."""

    name: str
    messages: int | None
    ready: int | None
    unacked: int | None
    consumers: int | None
    rate_in: float | None  # publishes per second
    rate_out: float | None  # acknowledgements per second
    acked: int | None  # acknowledgements since the broker started counting for this queue
    policy: str | None = None  # the policy in effect on the queue, by name
    operator_policy: str | None = None  # an administrator's operator policy in effect
    vhost: str | None = None  # where the queue is (listings of every vhost the user may see)

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> QueueFigures:
        stats = raw.get("message_stats") or {}
        return cls(
            name=str(raw.get("name", "")),
            messages=_int(raw.get("messages")),
            ready=_int(raw.get("messages_ready")),
            unacked=_int(raw.get("messages_unacknowledged")),
            consumers=_int(raw.get("consumers")),
            rate_in=_rate(stats.get("publish_details")),
            rate_out=_rate(stats.get("ack_details")),
            acked=_int(stats.get("ack", 0)) if stats else None,  # counted: 0 until one
            policy=_name(raw.get("policy")),
            operator_policy=_name(raw.get("operator_policy")),
            vhost=_name(raw.get("vhost")),
        )


@dataclass(frozen=True)
class ShovelState:
    """A dynamic shovel's state as a user without the ``monitoring`` tag can see it (that tag
    would show every vhost, connection and channel of the broker): ``running`` while the
    shovel consumes its source queue, ``stopped`` while it is declared but does not (starting,
    retrying or terminated: the broker's log says why)."""

    name: str
    state: str
    reason: str | None = None
    since: str | None = None


def shovel_states(
    definitions: dict[str, dict[str, Any]], queues: dict[str, QueueFigures]
) -> dict[str, ShovelState]:
    """The state of each declared shovel, from its source queue's consumers."""
    states = {}
    for name, value in definitions.items():
        figures = queues.get(str(value.get("src-queue", "")))
        consumers = figures.consumers if figures is not None else None
        states[name] = ShovelState(name, "running" if consumers else "stopped")
    return states


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _name(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _rate(details: object) -> float | None:
    if isinstance(details, dict) and isinstance(details.get("rate"), int | float):
        return float(details["rate"])
    return None


_FIGURE_COLUMNS = ",".join(
    [
        "name",
        "vhost",
        "messages",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
        "policy",
        "operator_policy",
        "message_stats.ack",
        "message_stats.publish_details.rate",
        "message_stats.ack_details.rate",
    ]
)


def _q(name: str) -> str:
    return quote(name, safe="")


_CHECK = "check that RabbitMQ runs there with its management plugin"


def _why(exc: httpx.HTTPError) -> str:
    refused_tls = handshake_refusal(exc)
    if refused_tls is not None:
        return f"TLS refused ({refused_tls}); check the CA file and the API's host name"
    cause: BaseException | None = exc
    for _ in range(8):  # httpx wraps httpcore's error, which wraps the socket's
        if cause is None:
            break
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        cause = cause.__cause__ or cause.__context__
    return type(exc).__name__


def _address(client: httpx.AsyncClient) -> str:
    url = client.base_url
    return f"{url.host}:{url.port or (443 if url.scheme == 'https' else 80)}"


@functools.cache
def _public_roots() -> ssl.SSLContext:
    """httpx's default verification (the public roots), built once per process: building it
    takes about 20 ms of CPU, and a running node asks the API every few seconds."""
    return httpx.create_ssl_context()


class Management:
    """A small async client for the parts of the management API that mlanet uses."""

    def __init__(
        self,
        endpoint: ManagementEndpoint,
        *,
        timeout: float = 10.0,
        verify: ssl.SSLContext | None = None,  # an https API checked against its own CA
    ) -> None:
        self._timeout = timeout
        context = verify if verify is not None else endpoint.verify
        self._clients = [
            httpx.AsyncClient(
                base_url=url.rstrip("/") + "/api",
                auth=(endpoint.user, endpoint.password),
                timeout=httpx.Timeout(timeout),
                verify=context if context is not None else _public_roots(),
            )
            for url in (endpoint.url, *endpoint.fallback_urls)
        ]
        self._at = 0  # the API asked first: the one that answered last
        # httpcore checks this name (and sends it as SNI) instead of the URL's host
        self._extensions = (
            {"sni_hostname": endpoint.server_name} if endpoint.server_name is not None else None
        )

    @property
    def address(self) -> str:
        """``host:port`` of the API asked first (what errors name)."""
        return _address(self._clients[self._at])

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
        for client in self._clients:
            await client.aclose()

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        count = len(self._clients)
        for step in range(count):
            at = (self._at + step) % count
            try:
                response = await self._exchange(self._clients[at], method, path, body)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if step + 1 < count:
                    continue  # nothing was sent: the cluster's next node
                raise self._unreachable(exc, at) from exc
            except (httpx.TimeoutException, TimeoutError) as exc:
                raise TransportError(
                    f"the management API at {_address(self._clients[at])} did not answer "
                    f"within {self._timeout:g} s; {_CHECK}"
                ) from exc
            except httpx.HTTPError as exc:
                raise self._unreachable(exc, at) from exc
            self._at = at
            return self._answer(method, path, response)
        raise AssertionError("unreachable: the last API answers or raises")

    def _unreachable(self, exc: httpx.HTTPError, at: int) -> TransportError:
        check = "" if handshake_refusal(exc) is not None else f"; {_CHECK}"
        where = _address(self._clients[at])
        if len(self._clients) > 1:  # every one was tried: named in the order they were
            where = " or ".join(
                _address(self._clients[(at + 1 + step) % len(self._clients)])
                for step in range(len(self._clients))
            )
        return TransportError(f"cannot reach the management API at {where} ({_why(exc)}){check}")

    async def _exchange(
        self, client: httpx.AsyncClient, method: str, path: str, body: Any
    ) -> httpx.Response:
        # httpx's timeout is per read; this one bounds the whole request
        async with asyncio.timeout(self._timeout * 2):
            response = await client.request(method, path, json=body, extensions=self._extensions)
            for pause in _LISTING_RETRIES if method == "GET" else ():
                if response.status_code != 500:
                    break
                # RabbitMQ builds a listing (users, vhosts) name by name, and one deleted
                # meanwhile fails the whole GET with 500 (rabbit_mgmt_wm_users: badmatch
                # not_found). A GET changes nothing: it is asked again, for up to 3 s.
                await asyncio.sleep(pause)
                response = await client.request(method, path, extensions=self._extensions)
        return response

    def _answer(self, method: str, path: str, response: httpx.Response) -> Any:
        if response.status_code == 404 and method in ("GET", "DELETE"):
            return None
        if response.status_code >= 400:
            raise TransportError(
                f"management API {method} {path.split('/')[1]}: {response.status_code}"
            )
        try:
            return response.json() if response.content else None
        except ValueError as exc:  # a proxy's error page, or not RabbitMQ at all
            raise TransportError(
                f"the management API at {self.address} answered something that is not JSON"
            ) from exc

    # --- provisioning ---------------------------------------------------------------------------
    async def put_vhost(self, vhost: str, description: str = "mlanet network") -> None:
        await self._request("PUT", f"/vhosts/{_q(vhost)}", {"description": description})

    async def vhost_names(self) -> list[str]:
        """The vhosts this user may see (every vhost for an administrator, else those it has a
        permission on)."""
        found = await self._request("GET", "/vhosts?columns=name")
        return sorted(str(item.get("name", "")) for item in found or [] if isinstance(item, dict))

    async def delete_vhost(self, vhost: str) -> None:
        await self._request("DELETE", f"/vhosts/{_q(vhost)}")

    async def put_user(self, user: str, password: str, tags: str = "") -> None:
        await self._request("PUT", f"/users/{_q(user)}", {"password": password, "tags": tags})

    async def delete_user(self, user: str) -> None:
        await self._request("DELETE", f"/users/{_q(user)}")

    async def user(self, user: str) -> dict[str, Any] | None:
        """The user's record (name, tags, ...), or None when there is no such user."""
        found = await self._request("GET", f"/users/{_q(user)}")
        return dict(found) if isinstance(found, dict) else None

    async def put_user_hash(self, user: str, password_hash: str, algorithm: str, tags: str) -> None:
        """Create or update a user from a salted password hash (the password stays unknown)."""
        await self._request(
            "PUT",
            f"/users/{_q(user)}",
            {"password_hash": password_hash, "hashing_algorithm": algorithm, "tags": tags},
        )

    async def users(self) -> list[dict[str, Any]]:
        """Every user's name and tags."""
        found = await self._request("GET", "/users?columns=name,tags")
        return [dict(item) for item in found or [] if isinstance(item, dict)]

    async def import_definitions(self, definitions: dict[str, Any]) -> None:
        """Create or update many users and permissions in one request (merged with the rest)."""
        await self._request("POST", "/definitions", definitions)

    async def delete_users(self, users: list[str]) -> None:
        """Delete many users in one request; absent ones are skipped (RabbitMQ refuses a bulk
        delete that names a user it does not have)."""
        if not users:
            return
        listed = await self._request("GET", "/users?columns=name")
        present = {str(u.get("name")) for u in listed or [] if isinstance(u, dict)}
        if found := [user for user in users if user in present]:
            await self._request("POST", "/users/bulk-delete", {"users": found})

    async def permissions(self, vhost: str, user: str) -> dict[str, Any] | None:
        found = await self._request("GET", f"/permissions/{_q(vhost)}/{_q(user)}")
        return dict(found) if isinstance(found, dict) else None

    async def user_permissions(self, user: str) -> list[dict[str, Any]]:
        """Every permission entry of ``user`` (vhost, configure, write, read)."""
        found = await self._request("GET", f"/users/{_q(user)}/permissions")
        return [dict(item) for item in found or [] if isinstance(item, dict)]

    async def vhost_permissions(self, vhost: str) -> list[dict[str, Any]]:
        """Every permission entry on ``vhost`` (user, configure, write, read)."""
        found = await self._request("GET", f"/vhosts/{_q(vhost)}/permissions")
        return [dict(item) for item in found or [] if isinstance(item, dict)]

    async def set_tags(self, user: str, tags: str) -> None:
        """Give an existing user exactly ``tags``, keeping its password (by its hash)."""
        found = await self.user(user)
        if found is None:
            raise TransportError(f"no broker user {user}")
        await self.put_user_hash(
            user,
            str(found.get("password_hash", "")),
            str(found.get("hashing_algorithm", "rabbit_password_hashing_sha256")),
            tags,
        )

    async def delete_permissions(self, vhost: str, user: str) -> None:
        await self._request("DELETE", f"/permissions/{_q(vhost)}/{_q(user)}")

    async def vhost_exists(self, vhost: str) -> bool:
        return await self._request("GET", f"/vhosts/{_q(vhost)}") is not None

    async def put_permissions(
        self, vhost: str, user: str, *, configure: str, write: str, read: str
    ) -> None:
        await self._request(
            "PUT",
            f"/permissions/{_q(vhost)}/{_q(user)}",
            {"configure": configure, "write": write, "read": read},
        )

    async def exchange_names(self, vhost: str) -> list[str]:
        found = await self._request("GET", f"/exchanges/{_q(vhost)}?columns=name")
        return sorted(str(item.get("name", "")) for item in found or [] if isinstance(item, dict))

    async def delete_exchange(self, vhost: str, name: str) -> None:
        await self._request("DELETE", f"/exchanges/{_q(vhost)}/{_q(name)}")

    async def exchanges_everywhere(self) -> set[tuple[str, str]]:
        """(vhost, name) of every exchange in the vhosts this user may see."""
        found = await self._request("GET", "/exchanges?columns=name,vhost")
        return {
            (str(item.get("vhost", "")), str(item.get("name", "")))
            for item in found or []
            if isinstance(item, dict)
        }

    async def put_exchange(self, vhost: str, name: str, kind: str = "fanout") -> None:
        """Declare a durable exchange (idempotent when it exists alike)."""
        await self._request(
            "PUT", f"/exchanges/{_q(vhost)}/{_q(name)}", {"type": kind, "durable": True}
        )

    async def put_queue(self, vhost: str, name: str, arguments: dict[str, Any]) -> None:
        """Declare a durable queue (idempotent when it exists alike)."""
        await self._request(
            "PUT", f"/queues/{_q(vhost)}/{_q(name)}", {"durable": True, "arguments": arguments}
        )

    async def delete_queue(self, vhost: str, name: str) -> None:
        """Delete a queue with what it holds (RabbitMQ deletes no quorum queue ``if-empty``)."""
        await self._request("DELETE", f"/queues/{_q(vhost)}/{_q(name)}")

    async def bindings_everywhere(self) -> set[tuple[str, str, str]]:
        """(vhost, exchange, queue) of every exchange-to-queue binding this user may see."""
        found = await self._request(
            "GET", "/bindings?columns=vhost,source,destination,destination_type"
        )
        return {
            (str(item.get("vhost", "")), str(item.get("source", "")), str(item["destination"]))
            for item in found or []
            if isinstance(item, dict) and item.get("destination_type") == "queue"
        }

    async def bind(self, vhost: str, exchange: str, queue: str) -> None:
        await self._request("POST", f"/bindings/{_q(vhost)}/e/{_q(exchange)}/q/{_q(queue)}", {})

    # --- links ------------------------------------------------------------------------------------
    async def put_shovel(self, spec: ShovelSpec) -> None:
        await self._request(
            "PUT", f"/parameters/shovel/{_q(spec.vhost)}/{_q(spec.name)}", spec.definition()
        )

    async def delete_shovel(self, vhost: str, name: str) -> None:
        await self._request("DELETE", f"/parameters/shovel/{_q(vhost)}/{_q(name)}")

    async def shovel_definitions(self, vhost: str) -> dict[str, dict[str, Any]]:
        """Each shovel declared in ``vhost`` by name: its definition as the broker holds it. It
        holds credentials: never log or show a definition, compare it."""
        found = await self._request("GET", f"/parameters/shovel/{_q(vhost)}")
        return {
            str(item.get("name", "")): dict(item.get("value") or {})
            for item in found or []
            if isinstance(item, dict)
        }

    async def shovels_everywhere(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Each shovel in the vhosts this user may see, by (vhost, name): its definition (it
        holds credentials: never log or show it)."""
        found = await self._request("GET", "/parameters/shovel")
        return {
            (str(item.get("vhost", "")), str(item.get("name", ""))): dict(item.get("value") or {})
            for item in found or []
            if isinstance(item, dict)
        }

    async def shovel_names(self, vhost: str) -> list[str]:
        """The shovels declared in ``vhost`` (whether or not they run)."""
        return sorted(await self.shovel_definitions(vhost))

    # --- policies -------------------------------------------------------------------------------
    async def put_policy(
        self,
        vhost: str,
        name: str,
        *,
        pattern: str,
        definition: dict[str, Any],
        priority: int = 0,
        apply_to: str = "queues",
    ) -> None:
        await self._request(
            "PUT",
            f"/policies/{_q(vhost)}/{_q(name)}",
            {
                "pattern": pattern,
                "definition": definition,
                "priority": priority,
                "apply-to": apply_to,
            },
        )

    async def policies(self, vhost: str | None) -> list[dict[str, Any]]:
        """Every policy of ``vhost`` (name, vhost, pattern, apply-to, definition, priority); of
        every vhost this user may see when ``vhost`` is None."""
        found = await self._request(
            "GET", "/policies" if vhost is None else f"/policies/{_q(vhost)}"
        )
        return [dict(item) for item in found or [] if isinstance(item, dict)]

    async def delete_policy(self, vhost: str, name: str) -> None:
        await self._request("DELETE", f"/policies/{_q(vhost)}/{_q(name)}")

    async def policy(self, vhost: str, name: str) -> dict[str, Any] | None:
        found = await self._request("GET", f"/policies/{_q(vhost)}/{_q(name)}")
        return dict(found) if found is not None else None

    # --- figures ----------------------------------------------------------------------------------
    async def queues(self, vhost: str) -> list[dict[str, Any]]:
        found = await self._request("GET", f"/queues/{_q(vhost)}")
        return list(found or [])

    async def queue_figures(self, vhost: str | None) -> list[QueueFigures]:
        """Depth, consumers and rates of every queue in ``vhost`` (in every vhost this user may
        see when None), by name (only the columns these figures need: nodes poll this every few
        seconds)."""
        where = "/queues" if vhost is None else f"/queues/{_q(vhost)}"
        found = await self._request("GET", f"{where}?columns={_FIGURE_COLUMNS}")
        return sorted((QueueFigures.from_api(raw) for raw in found or []), key=lambda q: q.name)

    async def overview(self) -> dict[str, Any]:
        return dict(await self._request("GET", "/overview") or {})
