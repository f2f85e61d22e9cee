"""The node's HTTP surface for operators (aiohttp), started and stopped with the node:

    GET  /metrics        Prometheus exposition (no login; bound to localhost by default)
    GET  /healthz        200 when the node consumes its queues, else 503
    GET  /login          the login form;  POST /login  checks the password
    POST /logout         ends the session
    GET  /               the dashboard (login required)
    GET  /status.json    the same status as ``mlanet status --json`` (login required)

When the port cannot be bound the node runs anyway (its work matters more than its dashboard): it
logs ``operator_http_not_started`` and keeps polling, so the gauges and ``mlanet status`` stay
fresh. Read-only: nothing here changes a queue, a message or the node's state (the only file it
writes is its own snapshot). The only forms are login and logout; they are refused unless the
browser's Origin (or Referer) names this host, and the session cookie is SameSite=Strict and
HttpOnly. Login attempts are counted before the password is hashed (``nodes/operator/auth.py``); a
browser that logged in once carries a device cookie that keeps others' failures from locking it out.
Every response forbids framing and scripts (Content-Security-Policy). A status poll every
``poll_seconds`` refreshes the gauges, the dashboard and ``<state_dir>/operator.json`` (for
``mlanet status``), and folds the audit records written since the last poll into the message
counters (every one of them, from the first, when the node starts: the counters are counts of the
node's durable record). The dashboard's recent flow is read from the audit trail too. With
``[database]`` each poll reads the replicas table once (the dashboard and /metrics show that read).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict
from types import TracebackType
from typing import Protocol, Self
from urllib.parse import urlsplit

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST

from mlanet.broker import MlanetError
from mlanet.broker.transport import Transport, out_queue
from mlanet.nodes.config import NodeConfig
from mlanet.nodes.logs import error_fields
from mlanet.nodes.operator.auth import (
    Devices,
    LoginLimiter,
    Sessions,
    read_password_line,
    verify_password,
)
from mlanet.nodes.operator.dashboard import STYLESHEET, dashboard_page, login_page
from mlanet.nodes.operator.flow import FlowLog
from mlanet.nodes.operator.links import LinkDiagnosis, LinkTracker
from mlanet.nodes.operator.metrics import NodeMetrics
from mlanet.nodes.operator.replicas import running_replicas
from mlanet.nodes.operator.status import (
    NodeStatus,
    broker_view,
    build_status,
    link_name,
    write_snapshot,
)
from mlanet.nodes.runtime.observe import Observers
from mlanet.nodes.runtime.receipts import RECEIPTED
from mlanet.nodes.runtime.replicas import Replicas
from mlanet.nodes.state.audit import AuditLog, AuditRecord
from mlanet.nodes.state.db import DB_ERRORS
from mlanet.nodes.state.journal import Journal
from mlanet.nodes.state.store import Store
from mlanet.schemas.directory import Directory

__all__ = ["COOKIE", "DEVICE_COOKIE", "OperatorSurface", "RunningNode"]

log = structlog.get_logger("mlanet.operator")

COOKIE = "mlanet_session"
DEVICE_COOKIE = "mlanet_device"  # a browser that logged in before (auth.Devices)
DEVICE_DAYS = 30
_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
COUNT_BATCH = 5000  # audit records read at once when the counters catch up


def _audit_after(config: NodeConfig, seq: int) -> list[AuditRecord]:
    """Audit records after ``seq``, read on a connection of their own (in a worker thread)."""
    with AuditLog.of(config, readonly=True) as audit:
        return audit.records_after(seq, COUNT_BATCH)


def _harden(headers: MutableMapping[str, str]) -> None:
    headers["Content-Security-Policy"] = _CSP
    headers["X-Content-Type-Options"] = "nosniff"
    headers["X-Frame-Options"] = "DENY"
    headers["Referrer-Policy"] = "same-origin"  # no-referrer would make form posts Origin: null
    headers.setdefault("Cache-Control", "no-store")


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # 404, 405, 413 answered by aiohttp itself
        _harden(exc.headers)
        raise
    _harden(response.headers)
    return response


_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _host_guard(bound_to: str) -> Middleware:
    """Bound to loopback, answer only requests addressed to a loopback name: a web page whose
    domain an attacker re-points at 127.0.0.1 (DNS rebinding) gets 421, not the metrics."""
    loopback = bound_to in _LOOPBACK or bound_to.startswith("127.")

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        name = urlsplit(f"//{request.host}").hostname or ""
        if loopback and name not in _LOOPBACK and not name.startswith("127."):
            response = web.Response(text="misdirected request", status=421)
            _harden(response.headers)
            return response
        return await handler(request)

    return guard


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _same_origin(request: web.Request) -> bool:
    """A browser's form post names its page's origin; it must be this host. Clients that send
    neither header are not browsers, so no other site can make them post."""
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if origin is None:
        return True
    return origin != "null" and urlsplit(origin).netloc == request.host


class RunningNode(Protocol):
    """What the operator surface reads of the node it serves (``nodes/runtime/node.py``)."""

    @property
    def config(self) -> NodeConfig:
        """Its configuration now: peers follow the directory while the node runs."""
        ...

    @property
    def directory(self) -> Directory: ...

    @property
    def audit(self) -> Journal:
        """The node's journal (its store's, committed with it)."""
        ...

    @property
    def observe(self) -> Observers: ...

    @property
    def transport(self) -> Transport: ...

    @property
    def store(self) -> Store: ...

    @property
    def ready(self) -> asyncio.Event: ...

    @property
    def replicas(self) -> Replicas:
        """Its fellow replicas (none when it runs alone)."""
        ...


class OperatorSurface:
    """Metrics, dashboard and status polling for one running node."""

    def __init__(self, node: RunningNode) -> None:
        self.node = node
        self.settings = node.config.operator
        self.network = node.config.network
        peers = tuple(peer.network for peer in node.config.peers)
        self.metrics = NodeMetrics(self.network, peers)
        self.flow = FlowLog(node.audit)
        self.links = LinkTracker(
            peers, started=time.time(), network=self.network, answered=RECEIPTED
        )
        self.diagnosis = LinkDiagnosis()
        self._audit_config = node.config
        self._count_lock = asyncio.Lock()
        self.sessions = Sessions(self.settings.session_minutes * 60.0)
        self.limiter = LoginLimiter(self.settings.login_attempts_per_minute)
        self.devices = Devices()
        self.status: NodeStatus | None = None
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._poller: asyncio.Task[None] | None = None
        self._poll_lock = asyncio.Lock()

    @property
    def url(self) -> str | None:
        """Where the dashboard and /metrics answer; None when the port could not be bound."""
        if self.port is None:
            return None
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    # --- lifecycle -----------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        for observer in (self.metrics, self.links):
            self.node.observe.add(observer)
        try:
            sock: socket.socket | None = self._bind()
        except OSError as exc:  # the node's work matters more than its dashboard: run on
            sock = None
            log.error(
                "operator_http_not_started",
                host=self.settings.host,
                port=self.settings.port,
                error=exc.strerror,
                hint="set [operator] port (0 picks a free one) or enabled = false",
            )
        if sock is not None:
            self.port = int(sock.getsockname()[1])
            app = web.Application(
                middlewares=[_headers, _host_guard(self.settings.host)],
                client_max_size=16 * 1024,
            )
            app.add_routes(
                [
                    web.get("/metrics", self._metrics),
                    web.get("/healthz", self._health),
                    web.get("/dashboard.css", self._css),
                    web.get("/login", self._login_form),
                    web.post("/login", self._login),
                    web.post("/logout", self._logout),
                    web.get("/", self._dashboard),
                    web.get("/status.json", self._status_json),
                ]
            )
            self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await self._runner.setup()
            await web.SockSite(self._runner, sock).start()
            log.info(
                "operator_http_started",
                url=self.url,
                login=self.settings.password_file is not None,
            )
        # polls keep the gauges and status's snapshot fresh even without the HTTP surface
        self._poller = asyncio.create_task(self._poll_loop(), name="operator-poll")

    def _bind(self) -> socket.socket:
        host, port = self.settings.host, self.settings.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        sock.listen(64)
        sock.setblocking(False)
        return sock

    async def aclose(self) -> None:
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        for observer in (self.metrics, self.links):
            self.node.observe.remove(observer)

    # --- polling --------------------------------------------------------------------------------
    async def _poll_loop(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception as exc:  # a failed poll must not stop the node; the next one retries
                log.warning("operator_poll_failed", **error_fields(exc))
            await asyncio.sleep(self.settings.poll_seconds)

    async def count_history(self) -> None:
        """Fold the audit records written since the last call into the message counters."""
        async with self._count_lock:
            try:
                while True:
                    after = self.metrics.counted_through
                    records = await asyncio.to_thread(_audit_after, self._audit_config, after)
                    for record in records:
                        self.metrics.count(record)
                    if len(records) < COUNT_BATCH:
                        return
            except (MlanetError, *DB_ERRORS) as exc:  # the counters wait for the next
                # poll (mlanet audit verify names a record that cannot be read); the node runs on
                log.warning("operator_counters_behind", **error_fields(exc))

    async def poll(self) -> NodeStatus:
        """Gather the status now, update the gauges and counters and write the snapshot."""
        await self.count_history()
        async with self._poll_lock:
            now = time.time()
            config = self.node.config  # peers follow the directory while the node runs
            view = await broker_view(config, self.node.transport)
            links = []
            for peer_config in config.peers:
                peer = peer_config.network
                shovel = None
                reason = None
                if view.shovels is not None:
                    state = view.shovels.get(link_name(peer))
                    shovel = state.state if state else "missing"
                    reason = state.reason if state else None
                figures = view.queues.get(out_queue(peer))
                transport, why = await self.diagnosis.note(
                    config, self.node.directory, peer_config, shovel
                )
                links.append(
                    self.links.update(
                        peer,
                        shovel=shovel,
                        reason=why or reason,
                        backlog=figures.messages if figures else None,
                        acked=figures.acked if figures else None,
                        now=now,
                        transport=transport,
                    )
                )
            status = build_status(
                config,
                self.node.directory,
                view,
                self.node.store,
                links,
                now,
                running=True,
                dashboard=self.url,
                # one short read of the replicas table per poll, never per request
                replicas=running_replicas(self.node.replicas),
            )
            self.status = status
            self.metrics.update(status)
            write_snapshot(config.state_dir, status, self.url)
            return status

    # --- handlers -------------------------------------------------------------------------------
    async def _metrics(self, request: web.Request) -> web.Response:
        if self.status is None:
            await self.poll()  # a scrape before the first poll gets the gauges too
        else:
            await self.count_history()
        response = web.Response(body=self.metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def _health(self, request: web.Request) -> web.Response:
        ready = self.node.ready.is_set()
        return web.json_response(
            {"network": self.network, "ready": ready}, status=200 if ready else 503
        )

    async def _css(self, request: web.Request) -> web.Response:
        response = web.Response(text=STYLESHEET, content_type="text/css")
        response.headers["Cache-Control"] = "max-age=300"
        return response

    def _logged_in(self, request: web.Request) -> bool:
        return self.sessions.valid(request.cookies.get(COOKIE))

    async def _login_form(self, request: web.Request) -> web.Response:
        if self._logged_in(request):
            return _redirect("/")
        password_file = self.settings.password_file
        page = login_page(
            self.network,
            enabled=password_file is not None,
            password_set=password_file is None or bool(read_password_line(password_file)),
        )
        return web.Response(text=page, content_type="text/html")

    async def _login(self, request: web.Request) -> web.Response:
        network = self.network
        client = request.remote or "?"
        if not _same_origin(request):
            log.warning("operator_login_refused", client=client, why="cross-origin form")
            return web.Response(text="cross-origin form refused", status=403)
        password_file = self.settings.password_file
        if password_file is None:
            return web.Response(
                text=login_page(network, enabled=False), content_type="text/html", status=403
            )
        # read at every login: a password set while the node runs counts at once
        stored = read_password_line(password_file)
        if not stored:
            return web.Response(
                text=login_page(network, password_set=False), content_type="text/html", status=403
            )
        # Counted now, before anything is awaited: parallel attempts cannot all be tried.
        device = self.devices.known(request.cookies.get(DEVICE_COOKIE))
        attempt = self.limiter.admit(client, device)
        if not attempt.admitted:
            retry = math.ceil(attempt.wait)
            response = web.Response(
                text=login_page(
                    network, error=f"Too many failed attempts: try again in {retry} s."
                ),
                content_type="text/html",
                status=429,
            )
            response.headers["Retry-After"] = str(retry)
            return response
        try:
            form = await request.post()
        except BaseException:
            self.limiter.release(attempt)  # no password was tried (e.g. a body too large)
            raise
        ok = False
        try:
            password = form.get("password")
            ok = isinstance(password, str) and await asyncio.to_thread(
                verify_password, password, stored
            )
        finally:
            self.limiter.settle(attempt, ok=ok)
        if not ok:
            log.warning("operator_login_failed", client=client, known_device=device is not None)
            return web.Response(
                text=login_page(network, error="Wrong password."),
                content_type="text/html",
                status=401,
            )
        log.info("operator_login", client=client, known_device=device is not None)
        response = _redirect("/")
        if device is None:
            response.set_cookie(
                DEVICE_COOKIE,
                self.devices.issue(),
                max_age=DEVICE_DAYS * 24 * 3600,
                path="/login",
                httponly=True,
                samesite="Strict",
                secure=self.settings.secure_cookie,
            )
        response.set_cookie(
            COOKIE,
            self.sessions.open(),
            max_age=self.settings.session_minutes * 60,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self.settings.secure_cookie,
        )
        return response

    async def _logout(self, request: web.Request) -> web.Response:
        if not _same_origin(request):
            return web.Response(text="cross-origin form refused", status=403)
        self.sessions.close(request.cookies.get(COOKIE))
        response = _redirect("/login")
        response.del_cookie(COOKIE, path="/")
        return response

    async def _current(self) -> NodeStatus:
        return self.status if self.status is not None else await self.poll()

    async def _dashboard(self, request: web.Request) -> web.Response:
        if not self._logged_in(request):
            return _redirect("/login")
        status = await self._current()
        page = dashboard_page(
            status,
            self.node.directory,
            self.flow.by_network(),
            refresh=max(5, round(self.settings.poll_seconds)),
        )
        return web.Response(text=page, content_type="text/html")

    async def _status_json(self, request: web.Request) -> web.Response:
        if not self._logged_in(request):
            return web.json_response({"error": "login required"}, status=401)
        status = await self._current()
        return web.json_response(
            {
                **status.to_json(),
                "flow": [asdict(event) for event in self.flow.recent(100)],
            }
        )
