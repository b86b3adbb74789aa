"""What one scripted socket does: connect, initialize, authenticate, then a paced request loop.

The request loop is open-loop: sends follow a Poisson process of ``rate`` per second whether or
not earlier replies have come back, as real clients do. Replies are matched to requests by
``req_id`` in a reader task; the hot-path frames are built by gluing a varint id onto pre-encoded
bytes and replies are read by walking the first few fields of the wire format, so a request costs
no protobuf object on either side.

One loop drives each socket: it sleeps on a single future until the next send, the next planned
drop or a wake-up (stop, reply drained, server close), and the runner wakes it to stop.
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import math
import random
import time
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from gateway import __version__
from gateway.loadtest.report import MethodStats, Stats
from gateway.proto import core_pb2
from gateway.protocol.codec import encode_varint

#: The keepalive the real client sends: ``ClientMessage{id: 1}``. No reply comes back.
KEEPALIVE = b"\x08\x01"


@dataclass(frozen=True, slots=True)
class Op:
    """A request of the mix: its name in the report and the bytes after ``08 <id>``."""

    name: str
    tail: bytes | None  # None: the keepalive frame, sent as is


#: Mix names accepted by ``--mix``. auth.getSessions is field 41 (tag ca 02) with an empty body.
OPS: dict[str, Op] = {
    "sessions": Op("auth.getSessions", b"\xca\x02\x00"),
    "keepalive": Op("keepalive", None),
}


def parse_mix(text: str) -> tuple[tuple[Op, float], ...]:
    """``"sessions=9,keepalive=1"`` -> ((Op, 9.0), (Op, 1.0)); a bare name weighs 1."""
    out: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, weight = part.partition("=")
        name = name.strip()
        if name not in OPS:
            raise ValueError(f"--mix: unknown request {name!r} (known: {', '.join(OPS)})")
        try:
            value = float(weight) if sep else 1.0
        except ValueError:
            raise ValueError(f"--mix: weight of {name!r} is not a number: {weight!r}") from None
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"--mix: weight of {name!r} must be >= 0")
        out[name] = value
    if sum(out.values()) <= 0:
        raise ValueError("--mix: at least one request needs a weight above 0")
    return tuple((OPS[name], w) for name, w in out.items() if w > 0)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


UPDATE = -1


def parse_reply(data: bytes) -> tuple[int, int]:
    """(req_id, error_code) of an RPCResult frame, error_code 0 for success; (UPDATE, 0) for
    an update. Walks ServerMessage{1: id, 2: update, 3: result{1: req_id, 2: error{1: code}}}
    and stops as soon as it knows; anything unexpected goes through protobuf instead."""
    try:
        pos, end = 0, len(data)
        while pos < end:
            key, pos = _read_varint(data, pos)
            if key == 0x08:  # ServerMessage.id
                _, pos = _read_varint(data, pos)
            elif key == 0x12:  # update
                return UPDATE, 0
            elif key == 0x1A:  # result
                length, pos = _read_varint(data, pos)
                stop = pos + length
                req_id = 0
                while pos < stop:
                    key, pos = _read_varint(data, pos)
                    if key == 0x08:
                        req_id, pos = _read_varint(data, pos)
                    elif key == 0x12:  # RPCResult.error: its code is field 1
                        _, pos = _read_varint(data, pos)
                        code = 0
                        if data[pos] == 0x08:
                            code, pos = _read_varint(data, pos + 1)
                        return req_id, code or -2
                    else:
                        return req_id, 0  # a success member follows req_id
                return req_id, 0
            else:
                break
    except IndexError:
        pass
    msg = core_pb2.ServerMessage.FromString(data)
    if msg.WhichOneof("message") == "update":
        return UPDATE, 0
    res = msg.result
    return res.req_id, (res.error.error_code or -2) if res.WhichOneof("result") == "error" else 0


@dataclass(frozen=True, slots=True)
class Plan:
    """What every socket of a run does; built once by the runner."""

    url: str
    rate: float  # requests per second per socket, Poisson; 0 = keepalives only
    mix: tuple[tuple[Op, float], ...]
    auth: str  # "signup" | "signin"
    reconnect_every: float  # mean seconds between planned drops; 0 = never
    keepalive_interval: float = 30.0  # idle sockets (rate 0) send 08 01 this often
    open_timeout: float = 10.0
    reply_timeout: float = 10.0  # initialize / authenticate replies
    drain_timeout: float = 5.0  # how long a stopping socket waits for its pending replies
    close_timeout: float = 2.0
    reconnect_delay: float = 1.0  # after a close the server started


class Outcome(enum.Enum):
    STOP = "stop"
    DROP = "drop"
    CLOSED = "closed"  # by the server, or the connection was lost


class Refused(Exception):
    """A setup request (initialize, authenticate) answered an error or never answered."""

    def __init__(self, method: str, code: int) -> None:
        super().__init__(f"{method} answered {code}")
        self.code = code


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class ScriptedSocket:
    """One simulated client. ``run()`` returns when the runner calls ``stop()`` (or the socket
    cannot go on); the WebSocket is closed by then."""

    def __init__(self, index: int, plan: Plan, stats: Stats, rng: random.Random,
                 credentials: tuple[str, str] | None = None) -> None:
        self.index = index
        self.plan = plan
        self.stats = stats
        self.rng = rng
        self.credentials = credentials
        self.ws: ClientConnection | None = None
        self.token = ""
        self.pending: dict[int, tuple[MethodStats, float]] = {}
        self._next_id = 1
        self._stopping = False
        self._draining = False
        self._waiter: asyncio.Future[None] | None = None
        ops = [op for op, _ in plan.mix]
        self._ops = ops
        self._op_stats = [stats.method(op.name) for op in ops]
        total = sum(w for _, w in plan.mix)
        acc, self._cumulative = 0.0, []
        for _, w in plan.mix:
            acc += w / total
            self._cumulative.append(acc)

    # -- control from the runner ---------------------------------------------------------------
    def stop(self) -> None:
        self._stopping = True
        self.wake()

    def wake(self) -> None:
        if self._waiter is not None:
            _wake(self._waiter)

    async def _sleep(self, seconds: float) -> None:
        """Sleep until ``seconds`` pass or ``wake()`` is called, whichever is first."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiter = fut
        handle = loop.call_later(max(0.0, seconds), _wake, fut)
        try:
            await fut
        finally:
            handle.cancel()
            self._waiter = None

    # -- the script ----------------------------------------------------------------------------
    async def run(self) -> None:
        stats = self.stats
        try:
            ws = await self._connect()
            if isinstance(ws, BaseException):
                stats.failed += 1
                if isinstance(ws, InvalidStatus):
                    stats.failed_status[ws.response.status_code] += 1
                else:
                    stats.failed_error[type(ws).__name__] += 1
                return
            stats.connected += 1
            try:
                await self._call(ws, "core.initialize", self._initialize_frame())
                await self._authenticate(ws)
            except (Refused, ConnectionClosed, TimeoutError):
                stats.auth_failed += 1
                return
            while True:
                outcome = await self._session(ws)
                await self._close(ws, by_server=outcome is Outcome.CLOSED)
                if outcome is Outcome.STOP or self._stopping:
                    return
                if outcome is Outcome.CLOSED:
                    await self._sleep(self.plan.reconnect_delay)
                reconnected = await self._reconnect()
                if reconnected is None:
                    return
                ws = reconnected
        finally:
            if self.ws is not None:  # stopped or cancelled mid-step: still close the socket
                await self._close(self.ws, by_server=False)

    async def create_account(self, name: str) -> None:
        """Sign-up only, for ``--auth signin``: initialize, sign up with credentials, close."""
        ws = await self._connect()
        if isinstance(ws, BaseException):
            raise ws
        try:
            await self._call(ws, "core.initialize", self._initialize_frame())
            assert self.credentials is not None
            email, password = self.credentials
            msg = core_pb2.ClientMessage(id=self._id())
            msg.auth_sign_up.email = email
            msg.auth_sign_up.password = password
            msg.auth_sign_up.name = name
            await self._call(ws, "auth.signUp", msg.SerializeToString())
        finally:
            await self._close(ws, by_server=False)

    async def _connect(self) -> ClientConnection | BaseException:
        plan = self.plan
        started = time.perf_counter()
        try:
            ws = await connect(plan.url, compression=None, max_size=None, proxy=None,
                               open_timeout=plan.open_timeout, ping_interval=None,
                               close_timeout=plan.close_timeout,
                               user_agent_header=f"osmium-loadtest/{__version__}")
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            return exc
        self.stats.handshake.record(time.perf_counter() - started)
        self.ws = ws
        return ws

    async def _reconnect(self) -> ClientConnection | None:
        """Connect again, initialize, authorize with the token; None when the socket is done."""
        while not self._stopping:
            ws = await self._connect()
            if isinstance(ws, BaseException):
                self.stats.reconnect_failed += 1
                await self._sleep(self.plan.reconnect_delay)
                continue
            try:
                await self._call(ws, "core.initialize", self._initialize_frame())
            except (Refused, ConnectionClosed, TimeoutError):
                self.stats.reconnect_failed += 1
                await self._close(ws, by_server=False)
                continue
            try:
                await self._call(ws, "auth.authorize", self._authorize_frame())
            except Refused:
                self.stats.reauth_failed += 1  # the token is dead: this client is done
                return None
            except (ConnectionClosed, TimeoutError):
                self.stats.reconnect_failed += 1
                await self._close(ws, by_server=False)
                continue
            self.stats.reconnects += 1
            return ws
        return None

    async def _authenticate(self, ws: ClientConnection) -> None:
        msg = core_pb2.ClientMessage(id=self._id())
        if self.credentials is None:
            msg.auth_sign_up.name = f"lt{self.index}"
            method = "auth.signUp"
        else:
            msg.auth_sign_in.email, msg.auth_sign_in.password = self.credentials
            method = "auth.signIn"
        result = await self._call(ws, method, msg.SerializeToString())
        self.token = result.authorization.token

    def _initialize_frame(self) -> bytes:
        msg = core_pb2.ClientMessage(id=self._id())
        init = msg.core_initialize
        init.client_id, init.device_type = 1, "loadtest"
        init.device_version, init.app_version = "1", __version__
        return msg.SerializeToString()

    def _authorize_frame(self) -> bytes:
        msg = core_pb2.ClientMessage(id=self._id())
        msg.auth_authorize.token = self.token
        return msg.SerializeToString()

    def _id(self) -> int:
        """The next request id: strictly increasing, never reset on reconnect, never 0 or 1
        (1 is the keepalive's)."""
        self._next_id = self._next_id + 1 if self._next_id < 0xFFFFFFFF else 2
        return self._next_id

    async def _call(self, ws: ClientConnection, method: str, frame: bytes) -> core_pb2.RPCResult:
        """One request answered before the reader runs (initialize, authenticate)."""
        st = self.stats.method(method)
        req_id = core_pb2.ClientMessage.FromString(frame).id
        st.sent += 1
        started = time.perf_counter()
        await ws.send(frame)
        async with asyncio.timeout(self.plan.reply_timeout):
            while True:
                msg = core_pb2.ServerMessage.FromString(await ws.recv(decode=False))
                if msg.WhichOneof("message") == "update":
                    self.stats.updates += 1
                elif msg.result.req_id == req_id:
                    break
        self._answered(st, started, msg.result.error.error_code
                       if msg.result.WhichOneof("result") == "error" else 0)
        if msg.result.WhichOneof("result") == "error":
            raise Refused(method, msg.result.error.error_code)
        return msg.result

    def _answered(self, st: MethodStats, sent_at: float, code: int) -> None:
        st.answered += 1
        st.latency.record(time.perf_counter() - sent_at)
        if code:
            st.errors[code] += 1
        else:
            st.ok += 1
        start, end = self.stats.window
        if start <= sent_at < end:
            st.measured += 1

    # -- the request loop ----------------------------------------------------------------------
    def _interval(self) -> float:
        rate = self.plan.rate
        return self.rng.expovariate(rate) if rate > 0 else self.plan.keepalive_interval

    async def _session(self, ws: ClientConnection) -> Outcome:
        plan = self.plan
        reader = asyncio.get_running_loop().create_task(self._read(ws))
        now = time.perf_counter()
        next_send = now + self._interval()
        drop_at = now + self.rng.expovariate(1.0 / plan.reconnect_every) \
            if plan.reconnect_every > 0 else math.inf
        outcome = Outcome.CLOSED
        try:
            while not reader.done():
                if self._stopping:
                    outcome = Outcome.STOP
                    break
                now = time.perf_counter()
                if now >= drop_at:
                    outcome = Outcome.DROP
                    break
                if now >= next_send:
                    await self._send_one(ws)
                    next_send += self._interval()
                    continue
                await self._sleep(min(next_send, drop_at) - now)
            if outcome is not Outcome.CLOSED:
                await self._drain(reader)
        except ConnectionClosed:
            outcome = Outcome.CLOSED
        finally:
            if not reader.done():
                reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            self._draining = False
        if self.pending:
            self.stats.unanswered += len(self.pending)
            self.pending.clear()
        return outcome

    async def _send_one(self, ws: ClientConnection) -> None:
        i = 0 if len(self._ops) == 1 else bisect.bisect_left(self._cumulative, self.rng.random())
        op, st = self._ops[min(i, len(self._ops) - 1)], self._op_stats[min(i, len(self._ops) - 1)]
        st.sent += 1
        if op.tail is None:
            await ws.send(KEEPALIVE)
            return
        req_id = self._id()
        self.pending[req_id] = (st, time.perf_counter())
        await ws.send(b"\x08" + encode_varint(req_id) + op.tail)

    async def _drain(self, reader: asyncio.Task[None]) -> None:
        """Stop sending; wait (bounded) for the replies still due."""
        self._draining = True
        deadline = time.perf_counter() + self.plan.drain_timeout
        while self.pending and not reader.done():
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            await self._sleep(left)

    async def _read(self, ws: ClientConnection) -> None:
        stats, pending = self.stats, self.pending
        try:
            async for data in ws:
                if not isinstance(data, bytes):
                    continue
                req_id, code = parse_reply(data)
                if req_id == UPDATE:
                    stats.updates += 1
                    continue
                entry = pending.pop(req_id, None)
                if entry is not None:
                    self._answered(entry[0], entry[1], code)
                    if self._draining and not pending:
                        self.wake()
        except ConnectionClosed:
            pass
        finally:
            self.wake()  # the loop sees reader.done()

    async def _close(self, ws: ClientConnection, *, by_server: bool) -> None:
        if self.ws is ws:
            self.ws = None
        try:
            await ws.close()
        except Exception:  # the peer is gone; the close code below says how
            ws.transport.abort()
        rcvd = ws.protocol.close_rcvd
        code = rcvd.code if rcvd is not None else 1006
        self.stats.closes[code] += 1
        if by_server:
            self.stats.server_closes[code] += 1

