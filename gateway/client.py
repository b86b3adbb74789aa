"""The asyncio client library: what a Python app or bot uses to talk to the gateway.

One ``GatewayClient`` owns at most one socket at a time. A supervisor task connects, sends
``core.initialize`` and, when it holds a token, ``auth.authorize``; when the socket drops for any
reason it reconnects with exponential backoff and full jitter and resumes the stored session, so
the app's session survives network drops without the app doing anything.

What the real Osmium client gets wrong, and this one does not (PROTOCOL.md §1):

* a request in flight when the socket drops fails with ``ConnectionLost`` instead of hanging
  forever; it is never resent, because the server may already have acted on it;
* every request has a timeout (``request_timeout``, which also bounds waiting for a connection);
* one keepalive timer per connection, not one more per reconnect;
* a revoked session (``Update{session_deleted}`` for our session, close 4001) or a refused token
  (401 on re-authorize) drops the token instead of presenting it forever.

Updates and state changes are delivered in order by one dispatcher task, so a slow or
request-making callback never stalls the socket's reader.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import platform
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self, cast

from google.protobuf.message import DecodeError, Message
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.protocol import State as WsState

import gateway
from gateway.errors import CloseCode, ErrorCode
from gateway.proto import auth_pb2, core_pb2, types_pb2, updates_pb2

log = logging.getLogger(__name__)

#: Request ids are uint32 on the wire; 0 is never used (``ClientMessage{id: 0}`` is an empty frame).
MAX_REQUEST_ID = 0xFFFFFFFF
#: Closes that say we sent something the server could not take: a bug in this client. They are
#: logged loudly, and we reconnect anyway — a bot that stops is worse than one that logs.
CLIENT_FAULT_CLOSES = frozenset({CloseCode.PROTOCOL_ERROR, CloseCode.UNSUPPORTED_DATA,
                                 CloseCode.INVALID_PAYLOAD, CloseCode.MESSAGE_TOO_BIG})
#: Updates waiting for a slow ``on_update`` callback before newer ones are dropped.
MAX_PENDING_EVENTS = 10_000
#: Error codes worth retrying after a while (the message may say when).
RETRYABLE_CODES = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.UNAVAILABLE})

_REQUEST_FIELDS = frozenset(
    f.name for f in core_pb2.ClientMessage.DESCRIPTOR.oneofs_by_name["message"].fields)


class ClientState(enum.StrEnum):
    DISCONNECTED = "disconnected"  # no usable socket: before the first one, or between two
    CONNECTED = "connected"  # initialized, not authorized
    AUTHORIZED = "authorized"
    REVOKED = "revoked"  # the stored session died (revoked, or its token refused): sign in again
    CLOSED = "closed"  # close() was called


class GatewayClientError(Exception):
    """Base of the errors this client raises."""


class GatewayRPCError(GatewayClientError):
    """The gateway refused a request: ``RPCError{error_code, error_message}``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES


class ConnectionLost(GatewayClientError):
    """The socket dropped before the reply came. The server may or may not have acted on the
    request; retry it if it is idempotent (the client reconnects by itself)."""

    retryable = True


class ClientClosed(GatewayClientError):
    """``close()`` was called: this client sends nothing more."""


class Backoff:
    """Exponential backoff with full jitter: the n-th delay (from 0) is uniform in
    ``[low, min(high, low * 2**(n+1))]``. ``rand`` returns a float in [0, 1)."""

    def __init__(self, low: float, high: float, rand: Callable[[], float]) -> None:
        if not 0 < low <= high:
            raise ValueError("need 0 < reconnect_min <= reconnect_max")
        self.low, self.high, self._rand = low, high, rand
        self.attempt = 0

    def next_delay(self) -> float:
        cap = min(self.high, self.low * 2.0 ** min(self.attempt + 1, 64))
        self.attempt += 1
        return self.low + self._rand() * (cap - self.low)

    def reset(self) -> None:
        self.attempt = 0


@dataclass(eq=False)
class _Link:
    """One socket and what belongs to it alone."""

    ws: ClientConnection
    pending: dict[int, asyncio.Future[core_pb2.RPCResult]] = field(default_factory=dict)
    open: bool = True
    authorized: bool = False
    keepalive: asyncio.Task[None] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)  # set once the reader has ended


UpdateHandler = Callable[[updates_pb2.Update], Awaitable[None] | None]
StateHandler = Callable[[ClientState], Awaitable[None] | None]
_Event = updates_pb2.Update | ClientState | None


class GatewayClient:
    """A reconnecting client: ``async with GatewayClient(url) as c: await c.sign_in(...)``.

    ``token`` resumes a stored session. ``sleep`` and ``rand`` pace and jitter reconnects (tests
    inject fakes). See docs/client.md.
    """

    def __init__(
        self,
        url: str,
        *,
        client_id: int = 0,
        device_type: str = "python",
        device_version: str = platform.platform(terse=True),
        app_version: str = gateway.__version__,
        token: str | None = None,
        request_timeout: float = 30.0,
        keepalive_interval: float = 30.0,
        reconnect_min: float = 0.5,
        reconnect_max: float = 30.0,
        on_update: UpdateHandler | None = None,
        on_state: StateHandler | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,  # paces reconnects
        rand: Callable[[], float] = random.random,  # jitters reconnects
    ) -> None:
        self.url = url
        self._initialize = core_pb2.Initialize(client_id=client_id, device_type=device_type,
                                               device_version=device_version,
                                               app_version=app_version)
        self.token = token
        self.session_id: int | None = None
        self.user: types_pb2.User | None = None
        self.request_timeout = request_timeout
        self.keepalive_interval = keepalive_interval
        self.reconnect_max = reconnect_max
        self._backoff = Backoff(reconnect_min, reconnect_max, rand)
        self._sleep = sleep
        self._on_update = on_update
        self._on_state = on_state
        self._state = ClientState.DISCONNECTED
        self._link: _Link | None = None
        self._ready = asyncio.Event()  # set while self._link has finished its handshake
        self._closing = False
        self._next_id = 0
        self._events: asyncio.Queue[_Event] = asyncio.Queue()
        self._supervisor: asyncio.Task[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None

    def __repr__(self) -> str:  # never the token
        return f"<GatewayClient {self.url} {self._state} session={self.session_id}>"

    @property
    def state(self) -> ClientState:
        return self._state

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start connecting in the background; requests wait for the connection."""
        if self._supervisor is not None or self._closing:
            raise RuntimeError("a GatewayClient starts once")
        self._dispatcher = asyncio.create_task(self._dispatch(), name="gateway-client-dispatch")
        self._supervisor = asyncio.create_task(self._supervise(), name="gateway-client")

    async def close(self) -> None:
        """Close the socket, fail what is pending with ClientClosed, stop reconnecting."""
        if self._closing:
            return
        self._closing = True
        self._ready.set()  # wake waiting requests: they see _closing and give up
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.wait([self._supervisor])
        self._set_state(ClientState.CLOSED)
        self._events.put_nowait(None)
        if self._dispatcher is not None and self._dispatcher is not asyncio.current_task():
            await asyncio.wait([self._dispatcher])

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    # -- requests ---------------------------------------------------------------------------------
    async def request(self, field: str,
                      message: Message | None = None) -> core_pb2.RPCResult:
        """Send ``ClientMessage{<field>: message}`` and return its RPCResult.

        Raises GatewayRPCError for an error reply, TimeoutError when no reply (or no connection)
        came within ``request_timeout`` (wrap the call in ``asyncio.timeout`` for a shorter one),
        ConnectionLost when the socket dropped with the request in flight, ClientClosed after
        close().
        """
        if field not in _REQUEST_FIELDS:
            raise ValueError(f"not a ClientMessage method: {field!r}")
        async with asyncio.timeout(self.request_timeout):
            while True:
                link = await self._wait_ready()
                if link.ws.protocol.state is WsState.OPEN:
                    return await self._roundtrip(link, field, message)
                # The socket is closing and nothing was sent: wait for the next one.
                await link.done.wait()

    async def call(self, field: str, message: Message | None = None) -> Message | None:
        """Like request(), but return the reply's payload (None for an empty reply)."""
        result = await self.request(field, message)
        member = result.WhichOneof("result")
        return None if member is None else cast(Message, getattr(result, member))

    async def sign_up(self, name: str, email: str | None = None,
                      password: str | None = None) -> auth_pb2.Authorization:
        msg = auth_pb2.SignUp(name=name, email=email, password=password)
        return (await self.request("auth_sign_up", msg)).authorization

    async def sign_in(self, email: str, password: str,
                      totp: str | None = None) -> auth_pb2.Authorization:
        msg = auth_pb2.SignIn(email=email, password=password, totp=totp)
        return (await self.request("auth_sign_in", msg)).authorization

    async def authorize(self, token: str) -> auth_pb2.Authorization:
        return (await self.request("auth_authorize", auth_pb2.Authorize(token=token))).authorization

    async def get_sessions(self) -> auth_pb2.Sessions:
        return (await self.request("auth_get_sessions")).sessions

    async def revoke_sessions(self, session_ids: Iterable[int]) -> None:
        await self.request("auth_revoke_sessions", auth_pb2.RevokeSessions(session_ids=session_ids))

    async def _wait_ready(self) -> _Link:
        while True:
            if self._closing:
                raise ClientClosed()
            link = self._link
            if link is not None and link.open and self._ready.is_set():
                return link
            await self._ready.wait()

    async def _roundtrip(self, link: _Link, field: str,
                         message: Message | None) -> core_pb2.RPCResult:
        msg = core_pb2.ClientMessage(id=self._new_id(link))
        sub = getattr(msg, field)
        if message is None:
            sub.SetInParent()
        else:
            sub.CopyFrom(message)
        future: asyncio.Future[core_pb2.RPCResult] = asyncio.get_running_loop().create_future()
        link.pending[msg.id] = future
        try:
            try:
                await link.ws.send(msg.SerializeToString())
            except ConnectionClosed as exc:  # maybe partly written: it may have been received
                raise ConnectionLost(f"connection closed while sending ({exc})") from None
            result = await future
        finally:
            link.pending.pop(msg.id, None)
        if result.WhichOneof("result") == "error":
            raise GatewayRPCError(result.error.error_code, result.error.error_message)
        return result

    def _new_id(self, link: _Link) -> int:
        """Strictly increasing per client object, across reconnects; wraps from 2**32-1 to 1."""
        req_id = self._next_id
        while True:
            req_id = req_id % MAX_REQUEST_ID + 1
            if req_id not in link.pending:
                self._next_id = req_id
                return req_id

    # -- the supervisor ---------------------------------------------------------------------------
    async def _supervise(self) -> None:
        while True:
            try:
                ws = await connect(self.url, compression=None, max_size=None,
                                   open_timeout=self.request_timeout, close_timeout=5.0)
            except (OSError, TimeoutError, WebSocketException) as exc:
                log.info("gateway %s: connect failed: %s", self.url, exc)
            else:
                await self._serve(ws)
            delay = self._backoff.next_delay()
            log.debug("gateway %s: reconnecting in %.2f s", self.url, delay)
            await self._sleep(delay)

    async def _serve(self, ws: ClientConnection) -> None:
        """Run one socket from handshake to close; return when it has closed."""
        loop = asyncio.get_running_loop()
        link = _Link(ws)
        self._link = link
        reader = asyncio.create_task(self._read(link), name="gateway-client-read")
        try:
            if await self._handshake(link):
                ready_at = loop.time()
                self._ready.set()
                if not link.authorized:
                    self._set_state(ClientState.CONNECTED)
                await link.done.wait()
                if loop.time() - ready_at >= self.reconnect_max:
                    self._backoff.reset()  # it stayed up: the next drop is news, not a pattern
        finally:
            await ws.close()
            await asyncio.wait([reader])
            if link.keepalive is not None:
                link.keepalive.cancel()
            if self._link is link:
                self._link = None
        code = ws.close_code
        if code == CloseCode.SESSION_REVOKED:
            log.warning("gateway %s: session revoked (4001); continuing signed out", self.url)
            if self.token is not None:
                self._forget_session()
        elif code in CLIENT_FAULT_CLOSES:
            log.error("gateway %s closed the socket with %s (%s): a bug in this client; "
                      "reconnecting", self.url, code, ws.close_reason)
        else:
            log.info("gateway %s: socket closed (%s %s); reconnecting", self.url, code,
                     ws.close_reason)

    async def _handshake(self, link: _Link) -> bool:
        """core.initialize, then auth.authorize with the stored token. False: drop the socket."""
        try:
            async with asyncio.timeout(self.request_timeout):
                await self._roundtrip(link, "core_initialize", self._initialize)
                token = self.token
                if token is not None:
                    try:
                        await self._roundtrip(link, "auth_authorize",
                                              auth_pb2.Authorize(token=token))
                    except GatewayRPCError as refused:
                        if refused.code != ErrorCode.UNAUTHENTICATED:
                            raise  # 429, 503...: keep the token, try again later
                        log.warning("gateway %s: stored session refused; continuing signed out",
                                    self.url)
                        if self.token == token:
                            self._forget_session()
        except (GatewayRPCError, ConnectionLost, TimeoutError) as exc:
            log.warning("gateway %s: handshake failed: %s", self.url, exc)
            return False
        return True

    async def _read(self, link: _Link) -> None:
        try:
            async for frame in link.ws:
                if isinstance(frame, str):
                    log.warning("gateway %s sent a text frame; ignored", self.url)
                    continue
                try:
                    msg = core_pb2.ServerMessage.FromString(frame)
                except DecodeError:
                    log.warning("gateway %s sent an undecodable frame; ignored", self.url)
                    continue
                self._on_message(link, msg)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("gateway %s: frame handling failed; dropping the socket", self.url)
        finally:
            link.open = False
            if self._link is link and not self._closing:
                self._ready.clear()
                self._set_state(ClientState.DISCONNECTED)
            for future in link.pending.values():
                if not future.done():
                    future.set_exception(
                        ClientClosed() if self._closing else
                        ConnectionLost(f"connection closed ({link.ws.close_code}) before the reply"))
            link.pending.clear()
            link.done.set()

    def _on_message(self, link: _Link, msg: core_pb2.ServerMessage) -> None:
        kind = msg.WhichOneof("message")
        if kind == "result":
            result = msg.result
            if result.WhichOneof("result") == "authorization":
                self._on_authorized(link, result.authorization)
            future = link.pending.pop(result.req_id, None)
            if future is not None and not future.done():
                future.set_result(result)
        elif kind == "update":
            update = msg.update
            if self._events.qsize() < MAX_PENDING_EVENTS:
                self._events.put_nowait(update)
            else:  # on_update is not keeping up: drop rather than grow without bound
                log.warning("on_update is %d events behind; dropping an update",
                            self._events.qsize())
            if (update.WhichOneof("update") == "session_deleted" and link.authorized
                    and update.session_deleted.session_id == self.session_id):
                link.authorized = False
                self._forget_session()

    # -- session ----------------------------------------------------------------------------------
    def _on_authorized(self, link: _Link, auth: auth_pb2.Authorization) -> None:
        """Applied when the reply is read, so it holds even if the caller stopped waiting."""
        self.token = auth.token
        self.session_id = auth.session_id
        self.user = auth.user
        if not link.open or self._link is not link:
            return
        link.authorized = True
        if link.keepalive is None and self.keepalive_interval > 0:
            link.keepalive = asyncio.create_task(self._keepalive(link),
                                                 name="gateway-client-keepalive")
        self._set_state(ClientState.AUTHORIZED)

    def _forget_session(self) -> None:
        self.token = None
        self.session_id = None
        self.user = None
        self._set_state(ClientState.REVOKED)

    async def _keepalive(self, link: _Link) -> None:
        """``ClientMessage{id}`` with no payload every interval; the server does not answer."""
        while True:
            await asyncio.sleep(self.keepalive_interval)
            if not link.open:
                return
            if not link.authorized:
                continue
            try:
                await link.ws.send(core_pb2.ClientMessage(id=self._new_id(link)).SerializeToString())
            except ConnectionClosed:
                return

    # -- callbacks --------------------------------------------------------------------------------
    def _set_state(self, state: ClientState) -> None:
        if state is not self._state:
            self._state = state
            self._events.put_nowait(state)

    async def _dispatch(self) -> None:
        while (event := await self._events.get()) is not None:
            try:
                if isinstance(event, ClientState):
                    outcome = self._on_state(event) if self._on_state is not None else None
                else:
                    outcome = self._on_update(event) if self._on_update is not None else None
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                log.exception("gateway client callback failed on %r", event)
