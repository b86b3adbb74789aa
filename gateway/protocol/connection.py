"""The per-connection state machine, without I/O.

States and the only legal transitions::

    NEW ──initialize──▶ INITIALIZED ──authorized()──▶ AUTHORIZED
     │                      │    ▲──unauthorized()──────┘
     └──────────────────────┴──────────▶ CLOSED   (deadline, peer violation, close())

What each state admits:

    NEW          core.initialize only (anything else: 412)
    INITIALIZED  methods that need no auth (auth-only methods: 401; initialize again: 412)
    AUTHORIZED   every served method (initialize again: 412)

The transport feeds frames with ``receive(frame, now)`` and gets one of: ``None`` (keepalive),
``bytes`` (a reply the core produced itself — errors, Initialized), a ``Request`` for a handler,
or a ``Close``. Replies to requests are encoded through ``reply()``/``fail()`` so the
``ServerMessage.id`` counter and the in-flight count stay in one place. ``next_deadline()`` says
when the transport must call ``on_deadline(now)``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from gateway.errors import (
    CloseCode,
    ErrorCode,
    FailedPrecondition,
    Malformed,
    PeerViolation,
    RateLimited,
    RPCFailure,
    Unauthenticated,
    Unimplemented,
)
from gateway.proto import core_pb2, types_pb2
from gateway.protocol import codec


class State(enum.Enum):
    NEW = "new"
    INITIALIZED = "initialized"
    AUTHORIZED = "authorized"
    CLOSED = "closed"


class Route(Protocol):
    """What the core needs to know of a served method (the rpc table provides it)."""

    @property
    def name(self) -> str: ...

    @property
    def needs_auth(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Request:
    req_id: int
    field: str  # the ClientMessage oneof member, e.g. "auth_sign_in"
    route: Route
    payload: Message


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Limits:
    initialize_timeout: float = 10.0
    unauthenticated_timeout: float = 600.0
    max_inflight: int = 16
    rate_requests: int = 120  # refilled over rate_window
    rate_window: float = 60.0
    rate_burst: int = 60


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """The fields of this connection's core.initialize, kept for the session record."""

    client_id: int = 0
    device_type: str = ""
    device_version: str = ""
    app_version: str = ""
    no_subscribe: bool = False


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply the core produced itself; ``method`` and ``code`` (0 = success) feed metrics."""

    data: bytes
    method: str
    code: int = 0


Event = Reply | Request | Close | None

INITIALIZE = "core_initialize"


class ConnectionCore:
    def __init__(self, routes: Mapping[str, Route], limits: Limits, now: float,
                 initialized: core_pb2.Initialized | None = None) -> None:
        self._routes = routes
        self._limits = limits
        self._initialized = initialized or core_pb2.Initialized()
        self.state = State.NEW
        self.client = ClientInfo()
        self.user_id = 0
        self.session_id = 0
        self.inflight = 0
        self.requests = 0
        self._next_msg_id = 0
        self._closing_reply = (int(ErrorCode.UNAVAILABLE), "connection closing; reconnect")
        self._state_since = now
        self._tokens = float(limits.rate_burst)
        self._tokens_at = now

    # -- input --------------------------------------------------------------------------------
    def receive(self, frame: bytes, now: float) -> Event:
        """Handle one binary frame. Raises PeerViolation when the socket must close.

        Every frame but a keepalive takes a token from the socket's bucket, refused ones
        included, so a client cannot farm error replies faster than requests.
        """
        if self.state is State.CLOSED:
            return self._refuse_while_closing(frame)
        try:
            msg = codec.decode_client_message(frame)
        except codec.MalformedFrame as bad:
            return self._refuse(bad.req_id, "malformed", now, Malformed())
        field = msg.WhichOneof("message")
        if field is None:
            if len(UnknownFieldSet(msg)) == 0:
                return None  # keepalive: ClientMessage{id} and nothing else
            return self._refuse(msg.id, "unknown", now, Unimplemented())
        self.requests += 1
        route = self._routes.get(field)
        if route is None:
            return self._refuse(msg.id, "unknown", now, Unimplemented())
        try:
            self._take_token(now)
            self._admit(field, route)
            payload = getattr(msg, field)
            if len(frame) > codec.SMALLEST_OVER_LIMIT:
                codec.check_limits(payload)
        except RPCFailure as refused:
            return Reply(self.error(msg.id, refused.code, refused.message), route.name,
                         refused.code)
        if field == INITIALIZE:
            return Reply(self._initialize(msg.id, payload, now), route.name)
        self.inflight += 1
        return Request(msg.id, field, route, payload)

    def _refuse_while_closing(self, frame: bytes) -> Reply | None:
        """A request that arrives while the socket closes still gets its one reply: the real
        client waits forever for an answer it was owed."""
        try:
            msg = codec.decode_client_message(frame)
        except codec.MalformedFrame as bad:
            req_id: int | None = bad.req_id
        except PeerViolation:
            return None
        else:
            keepalive = msg.WhichOneof("message") is None and len(UnknownFieldSet(msg)) == 0
            req_id = None if keepalive else msg.id
        if req_id is None:
            return None
        code, message = self._closing_reply
        return Reply(self.error(req_id, code, message), "closing", code)

    def _refuse(self, req_id: int, name: str, now: float, error: RPCFailure) -> Reply:
        try:
            self._take_token(now)
        except RateLimited as limited:
            error = limited
        return Reply(self.error(req_id, error.code, error.message), name, error.code)

    def _admit(self, field: str, route: Route) -> None:
        if field == INITIALIZE:
            if self.state is not State.NEW:
                raise FailedPrecondition("already initialized")
        elif self.state is State.NEW:
            raise FailedPrecondition("not initialized: send core.initialize first")
        elif route.needs_auth and self.state is not State.AUTHORIZED:
            raise Unauthenticated("not authorized")
        if self.inflight >= self._limits.max_inflight:
            raise RateLimited(1.0, "too many requests in flight; retry after 1 s")

    def _take_token(self, now: float) -> None:
        lim = self._limits
        rate = lim.rate_requests / lim.rate_window
        self._tokens = min(float(lim.rate_burst), self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens < 1.0:
            raise RateLimited((1.0 - self._tokens) / rate)
        self._tokens -= 1.0

    def _initialize(self, req_id: int, init: core_pb2.Initialize, now: float) -> bytes:
        self.client = ClientInfo(init.client_id, init.device_type, init.device_version,
                                 init.app_version, init.no_subscribe)
        self._enter(State.INITIALIZED, now)
        return self._encode_result(req_id, "initialized", self._initialized)

    # -- transitions driven by handlers ---------------------------------------------------------
    def authorized(self, user_id: int, session_id: int, now: float) -> None:
        if self.state not in (State.INITIALIZED, State.AUTHORIZED):
            raise RuntimeError(f"authorized() in state {self.state}")
        self.user_id, self.session_id = user_id, session_id
        self._enter(State.AUTHORIZED, now)

    def unauthorized(self, now: float) -> None:
        """The session ended but the socket stays (e.g. the user signed out of this one)."""
        if self.state is State.AUTHORIZED:
            self.user_id = self.session_id = 0
            self._enter(State.INITIALIZED, now)

    def closed(self, code: int = ErrorCode.UNAVAILABLE,
               message: str = "connection closing; reconnect") -> None:
        """Admit nothing more; frames still arriving are answered ``code`` / ``message``."""
        if self.state is not State.CLOSED:
            self._closing_reply = (int(code), message)
        self.state = State.CLOSED

    def _enter(self, state: State, now: float) -> None:
        self.state = state
        self._state_since = now

    # -- time ----------------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        if self.state is State.NEW:
            return self._state_since + self._limits.initialize_timeout
        if self.state is State.INITIALIZED:
            return self._state_since + self._limits.unauthenticated_timeout
        return None

    def on_deadline(self, now: float) -> Close | None:
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return None
        if self.state is State.NEW:
            return Close(CloseCode.INITIALIZE_TIMEOUT, "initialize timeout")
        return Close(CloseCode.AUTHENTICATION_TIMEOUT, "authentication timeout")

    # -- output --------------------------------------------------------------------------------
    def reply(self, request: Request, field: str | None, payload: Message | None) -> bytes:
        self.inflight -= 1
        return self._encode_result(request.req_id, field, payload)

    def fail(self, request: Request, code: int, message: str) -> bytes:
        self.inflight -= 1
        return self.error(request.req_id, code, message)

    def error(self, req_id: int, code: int, message: str) -> bytes:
        return codec.encode_error(self._msg_id(), req_id, code, message)

    def update(self, update: bytes) -> bytes:
        return codec.encode_update(self._msg_id(), update)

    def _encode_result(self, req_id: int, field: str | None, payload: Message | None) -> bytes:
        return codec.encode_result(self._msg_id(), req_id, field, payload)

    def _msg_id(self) -> int:
        self._next_msg_id = (self._next_msg_id + 1) & 0xFFFFFFFF
        return self._next_msg_id


def peer_close(violation: PeerViolation) -> Close:
    return Close(violation.close_code, violation.reason)


def entrypoints_message(entries: tuple[str, ...], vapid: str | None) -> core_pb2.Initialized:
    """Build the Initialized reply from settings' HOST:PORT[:REGION] strings."""
    out = core_pb2.Initialized()
    for entry in entries:
        parts = entry.split(":")
        if len(parts) not in (2, 3) or not parts[0]:
            raise ValueError(f"entrypoint {entry!r}: expected HOST:PORT[:REGION]")
        host, port = parts[0], int(parts[1])
        region = int(parts[2]) if len(parts) == 3 else 0
        out.entrypoints.entrypoints.append(types_pb2.Entrypoint(hostname=host, port=port, region=region))
    if vapid is not None:
        out.vapid_public_key = vapid
    return out
