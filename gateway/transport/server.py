"""The websockets server: handshake policy, HTTP endpoints, connection bookkeeping, drain."""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from typing import Any

import websockets.http11
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from gateway.app import Services
from gateway.config import Settings
from gateway.errors import CloseCode
from gateway.protocol.connection import Limits, entrypoints_message
from gateway.transport.connection import Connection
from gateway.transport.metrics import Metrics

log = logging.getLogger("gateway.server")


class GatewayServer:
    def __init__(self, settings: Settings, services: Services) -> None:
        self.settings = settings
        self.services = services
        self.metrics = Metrics()
        self.limits = Limits(
            initialize_timeout=settings.initialize_timeout,
            unauthenticated_timeout=settings.unauthenticated_timeout,
            max_inflight=settings.max_inflight,
            rate_requests=settings.rate_limit_requests,
            rate_window=settings.rate_limit_window,
            rate_burst=settings.rate_limit_burst,
        )
        self.initialized = entrypoints_message(settings.entrypoints, settings.vapid_public_key)
        self.connections: set[Connection] = set()
        self.draining = False
        self._per_ip: Counter[str] = Counter()
        self._ids = itertools.count(1)
        self._server: Server | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._trusted = [ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies]

    @property
    def port(self) -> int:
        assert self._server is not None
        sock = next(iter(self._server.sockets))
        return int(sock.getsockname()[1])

    async def start(self) -> None:
        s = self.settings
        # websockets reads its header limits from module globals.
        websockets.http11.MAX_LINE_LENGTH = s.max_header_bytes
        websockets.http11.MAX_NUM_HEADERS = s.max_headers
        origins: list[Any] | None = None
        if s.origins:
            origins = list(s.origins) + ([None] if s.allow_missing_origin else [])
        elif not s.allow_missing_origin:
            origins = [re.compile(r".+")]
        self._server = await serve(
            self._handle, s.host, s.port,
            origins=origins,
            compression="deflate" if s.compression else None,
            process_request=self._process_request,
            server_header="osmium-gateway",
            open_timeout=s.handshake_timeout,
            ping_interval=s.ping_interval,
            ping_timeout=s.ping_timeout,
            close_timeout=s.close_timeout,
            max_size=s.max_message_bytes,
            max_queue=16,
            write_limit=s.send_queue_bytes,
            backlog=s.backlog,
        )
        log.info("listening on %s:%d as node %s", s.host, self.port, self.services.registry.node)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- handshake --------------------------------------------------------------------------------
    def client_address(self, peer: str, headers: Headers) -> str:
        """The socket's address, or the forwarded one when the peer is a trusted proxy."""
        if not (self._trusted and self._is_trusted(peer)):
            return peer
        return forwarded_client(peer, headers.get_all(self.settings.forwarded_for_header),
                                self._is_trusted)

    def _is_trusted(self, peer: str) -> bool:
        try:
            addr = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(addr in net for net in self._trusted)

    def _geo(self, peer: str, headers: Headers) -> tuple[str | None, str | None]:
        s = self.settings
        if not (self._trusted and self._is_trusted(peer)):
            return None, None
        country = headers.get(s.country_header) if s.country_header else None
        region = headers.get(s.region_header) if s.region_header else None
        return (country or None), (region or None)

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return self._healthz(conn)
        if path == "/metrics":
            body = self.metrics.render()
            return self._response(conn, HTTPStatus.OK, body, "text/plain; version=0.0.4; charset=utf-8")
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return self._response(conn, HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        if self.draining:
            return self._response(conn, HTTPStatus.SERVICE_UNAVAILABLE, b"restarting\n", "text/plain")
        if len(self.connections) >= self.settings.max_connections:
            return self._response(conn, HTTPStatus.SERVICE_UNAVAILABLE, b"node full\n", "text/plain")
        cap = self.settings.max_connections_per_ip
        if cap:
            ip = self.client_address(_peer_host(conn), request.headers)
            if self._per_ip[ip] >= cap:
                return self._response(conn, HTTPStatus.TOO_MANY_REQUESTS,
                                      b"too many connections from this address\n", "text/plain")
        return None

    def _healthz(self, conn: ServerConnection) -> Response:
        healthy = not self.draining
        body = json.dumps({
            "status": "ok" if healthy else "draining",
            "node": self.services.registry.node,
            "connections": len(self.connections),
            "registry": "ok" if self.services.registry.healthy else "degraded",
        }).encode()
        status = HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE
        return self._response(conn, status, body, "application/json")

    @staticmethod
    def _response(conn: ServerConnection, status: HTTPStatus, body: bytes, ctype: str) -> Response:
        response = conn.respond(status, "")
        response.body = body
        # respond() already set both headers for its empty text body; Headers.__setitem__ appends,
        # so replace them rather than send duplicates (clients reject two Content-Lengths).
        del response.headers["Content-Type"]
        del response.headers["Content-Length"]
        response.headers["Content-Type"] = ctype
        response.headers["Content-Length"] = str(len(body))
        return response

    # -- connections ------------------------------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        peer = _peer_host(ws)
        headers = ws.request.headers if ws.request is not None else Headers()
        ip = self.client_address(peer, headers)
        country, region = self._geo(peer, headers)
        conn = Connection(self, ws, next(self._ids), ip, country, region)
        self.connections.add(conn)
        self._per_ip[ip] += 1
        self.metrics.connections.inc()
        try:
            if self.draining:
                conn.close_soon(CloseCode.SERVICE_RESTART, "server restarting")
            await conn.run()
        finally:
            self.connections.discard(conn)
            self._per_ip[ip] -= 1
            if self._per_ip[ip] <= 0:
                del self._per_ip[ip]
            self.metrics.connections.dec()
            code = ws.close_code if ws.close_code is not None else 1006
            self.metrics.closed(code)

    # -- shutdown ---------------------------------------------------------------------------------
    async def shutdown(self) -> None:
        """Stop accepting, close sockets in batches with 1012, answer in-flight requests."""
        assert self._server is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_deadline
        self.draining = True
        self._server.close(close_connections=False)
        conns = list(self.connections)
        batch = max(1, self.settings.shutdown_batch)
        for start in range(0, len(conns), batch):
            for conn in conns[start:start + batch]:
                conn.drain()
            if start + batch < len(conns):
                await asyncio.sleep(self.settings.shutdown_batch_interval)
        try:
            await asyncio.wait_for(self._server.wait_closed(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            log.warning("shutdown deadline: dropping %d sockets", len(self.connections))
            for conn in list(self.connections):
                conn.ws.transport.abort()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


def _peer_host(ws: ServerConnection) -> str:
    addr = ws.remote_address
    if isinstance(addr, tuple) and addr:
        return str(addr[0])
    return ""


def forwarded_client(peer: str, values: list[str], is_trusted: Callable[[str], bool]) -> str:
    """The client address behind a chain of trusted proxies (SECURITY.md L4).

    Each proxy appends the address it saw, so only the right end of the header is vouched for:
    walk it from the right past our own proxies and take the first address that is not one of
    them. What stands further left came from the client and may be forged; anything that is not
    an IP address ends the walk at the last good hop.
    """
    client = peer
    for value in reversed(values):
        for hop in reversed(value.split(",")):
            try:
                address = str(ipaddress.ip_address(hop.strip()))
            except ValueError:
                return client
            if not is_trusted(address):
                return address
            client = address
    return client
