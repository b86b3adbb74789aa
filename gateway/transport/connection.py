"""One WebSocket connection: the read loop, the send path, the deadline timer.

Sending never awaits. Frames are written straight to the transport through websockets' sans-I/O
protocol object, so replies and pushes keep their order without a writer task; the transport's
write buffer *is* the send queue, and when it would pass ``send_queue_bytes`` the client is not
reading: the socket is closed with 1013 and nothing more is buffered for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State as WsState

from gateway.errors import (
    CloseCode,
    ErrorCode,
    PeerViolation,
    RPCFailure,
    TextFrame,
    Unauthenticated,
)
from gateway.proto import updates_pb2
from gateway.protocol.connection import Close, ConnectionCore, Reply, Request, State
from gateway.rpc.table import ROUTES, Method

if TYPE_CHECKING:
    from gateway.app import Services
    from gateway.transport.server import GatewayServer

log = logging.getLogger("gateway.connection")


class Connection:
    """The transport side of a socket; also the handlers' Context and the registry's LiveSocket."""

    def __init__(self, server: GatewayServer, ws: ServerConnection, conn_id: int, ip: str,
                 country: str | None, region: str | None) -> None:
        self.server = server
        self.services: Services = server.services
        self.ws = ws
        self.conn_id = conn_id
        self.ip = ip
        self.country = country
        self.region = region
        self.loop = asyncio.get_running_loop()
        self.core = ConnectionCore(ROUTES, server.limits, self.loop.time(), server.initialized)
        self.active = False  # a request arrived since the last last_active flush
        self._send_limit = server.settings.send_queue_bytes
        self._timer: asyncio.TimerHandle | None = None
        self._armed: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._close_when_idle: tuple[int, str] | None = None
        self._closing = False
        self._close_task: asyncio.Task[Any] | None = None
        self._draining = False

    # -- LiveSocket -------------------------------------------------------------------------------
    @property
    def user_id(self) -> int:
        return self.core.user_id

    @property
    def session_id(self) -> int:
        return self.core.session_id

    def push_update(self, update: bytes) -> None:
        if self.core.state is State.AUTHORIZED:
            self.send(self.core.update(update))

    def revoke(self, session_ids: Sequence[int]) -> bool:
        for sid in session_ids:
            update = updates_pb2.Update()
            update.session_deleted.session_id = sid
            self.send(self.core.update(update.SerializeToString()))
        if self.core.session_id and self.core.session_id in session_ids:
            # Nothing more is admitted (what still arrives is told so); replies in progress
            # still go out.
            self.core.closed(ErrorCode.UNAUTHENTICATED, "session revoked")
            self.close_when_idle(CloseCode.SESSION_REVOKED, "session revoked")
            return True
        return False

    # -- Context ----------------------------------------------------------------------------------
    async def bind_session(self, user_id: int, session_id: int, *,
                           new_session: bool = False) -> None:
        registry = self.services.registry
        if self.core.state is State.CLOSED:
            # The socket's session was revoked (or the socket is closing) while this sign-in
            # ran: a session made for it could never have its token delivered, so it must not
            # live on. A resumed session (authorize) belongs to another device: left alone.
            if new_session:
                await self.services.sessions.revoke(user_id, [session_id])
            raise Unauthenticated("this connection is closing; sign in again")
        if self.core.state is State.AUTHORIZED:
            if self.core.session_id == session_id:
                return
            await registry.unbind(self)
            self.core.authorized(user_id, session_id, self.loop.time())
        else:
            self.core.authorized(user_id, session_id, self.loop.time())
            self.server.metrics.authorized.inc()
        await registry.bind(self)

    async def unbind_session(self) -> None:
        if self.core.state is State.AUTHORIZED:
            await self.services.registry.unbind(self)
            self.server.metrics.authorized.dec()
            self.core.unauthorized(self.loop.time())

    # -- sending ----------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        ws = self.ws
        if self._closing or ws.protocol.state is not WsState.OPEN:
            return
        transport = ws.transport
        if transport.get_write_buffer_size() + len(data) > self._send_limit:
            log.info("conn %d: send queue full, closing", self.conn_id)
            self.close_soon(CloseCode.TRY_AGAIN_LATER, "send queue full")
            return
        ws.protocol.send_binary(data)
        for chunk in ws.protocol.data_to_send():
            transport.write(chunk)

    def close_soon(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        self.core.closed()
        self._close_task = self.server.spawn(self._close(code, reason))

    def close_when_idle(self, code: int, reason: str) -> None:
        """Close once the requests in progress have been answered (a revoke, a drain)."""
        if self.core.inflight <= 0:
            self.close_soon(code, reason)
        else:
            self._close_when_idle = (code, reason)

    async def _close(self, code: int, reason: str) -> None:
        try:
            await self.ws.close(code, reason)
        except Exception:  # the peer vanished mid-close; nothing left to tell it
            log.debug("conn %d: close failed", self.conn_id, exc_info=True)

    def drain(self) -> None:
        """Shutdown: answer what is in progress, refuse what comes, then close with 1012."""
        self._draining = True
        self.close_when_idle(CloseCode.SERVICE_RESTART, "server restarting")

    # -- the read loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        self._arm()
        try:
            async for frame in self.ws:
                if isinstance(frame, str):
                    raise TextFrame()
                event = self.core.receive(frame, self.loop.time())
                if event is None:
                    continue
                if type(event) is Request:
                    self.active = True
                    method: Any = event.route
                    if self._draining:
                        self._finish(event, method, time.perf_counter(), ErrorCode.UNAVAILABLE,
                                     "server restarting; retry on another connection")
                    elif method.slow:
                        task = self.loop.create_task(self._serve(event, method))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                    else:
                        await self._serve(event, method)
                elif type(event) is Reply:
                    self.send(event.data)
                    self.server.metrics.observe(event.method, str(event.code or "ok"), 0.0)
                    self._arm()
                elif type(event) is Close:
                    self.close_soon(event.code, event.reason)
        except PeerViolation as violation:
            self.close_soon(violation.close_code, violation.reason)
            # Wait for our close frame to go out: returning from the handler first would let
            # websockets close with 1000 before the spawned close sends the violation's code.
            if self._close_task is not None:
                await asyncio.shield(self._close_task)
        except ConnectionClosed:
            pass
        finally:
            await self._cleanup()

    async def _serve(self, request: Request, method: Method) -> None:
        started = time.perf_counter()
        assert method.handler is not None
        try:
            result = await method.handler(self, request.payload)
        except RPCFailure as refused:
            if refused.code >= 500:
                log.warning("conn %d: %s answered %d: %s", self.conn_id, method.name,
                            refused.code, refused)
            self._finish(request, method, started, refused.code, refused.message)
        except Exception:
            log.exception("conn %d: %s failed", self.conn_id, method.name)
            self._finish(request, method, started, ErrorCode.INTERNAL, "internal error")
        else:
            self.send(self.core.reply(request, method.reply, result))
            self.server.metrics.observe(method.name, "ok", time.perf_counter() - started)
            self._after_reply()

    def _finish(self, request: Request, method: Method, started: float, code: int,
                message: str) -> None:
        self.send(self.core.fail(request, code, message))
        self.server.metrics.observe(method.name, str(code), time.perf_counter() - started)
        self._after_reply()

    def _after_reply(self) -> None:
        if self._close_when_idle is not None and self.core.inflight <= 0:
            code, reason = self._close_when_idle
            self.close_soon(code, reason)
        self._arm()

    # -- deadlines --------------------------------------------------------------------------------
    def _arm(self) -> None:
        deadline = self.core.next_deadline()
        if deadline == self._armed:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._armed = deadline
        self._timer = None if deadline is None else self.loop.call_at(deadline, self._on_deadline)

    def _on_deadline(self) -> None:
        self._armed = None
        self._timer = None
        event = self.core.on_deadline(self.loop.time())
        if isinstance(event, Close):
            self.close_soon(event.code, event.reason)
        else:
            self._arm()

    async def _cleanup(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._tasks:
            # The socket is gone: answers have nowhere to go, but the work (a sign-up's
            # commit) is finished so the database and the registry stay in step.
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.core.user_id:
            self.server.metrics.authorized.dec()
            await self.services.on_disconnect(self)
        self.core.closed()
