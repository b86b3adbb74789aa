"""gateway.client.GatewayClient against a real in-process gateway, over real sockets.

What reaches the server is observed on the wire: ``ConnectionCore.receive`` is wrapped to record
every frame with the server-side connection it arrived on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest

from gateway.client import (
    Backoff,
    ClientState,
    ConnectionLost,
    GatewayClient,
    GatewayRPCError,
)
from gateway.proto import auth_pb2, core_pb2, updates_pb2
from gateway.protocol.connection import ConnectionCore, Event
from gateway.rpc import table
from tests.support.client import TestClient
from tests.support.gateway import InProcessGateway, running_gateway, test_settings
from tests.support.redis_server import free_port

PASSWORD = "correct horse battery staple"
TIMEOUT = 5.0


# -- helpers --------------------------------------------------------------------------------------

async def eventually(check: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.005)


class Observed:
    """The callbacks of one client, recorded."""

    def __init__(self) -> None:
        self.states: list[ClientState] = []
        self.updates: list[updates_pb2.Update] = []

    def on_state(self, state: ClientState) -> None:
        self.states.append(state)

    async def on_update(self, update: updates_pb2.Update) -> None:  # async callbacks work too
        self.updates.append(update)

    def count(self, state: ClientState) -> int:
        return self.states.count(state)

    async def reach(self, state: ClientState, times: int = 1) -> None:
        await eventually(lambda: self.count(state) >= times and self.states[-1] is state,
                         f"state {state} (#{times}); states so far {self.states}")


def make_client(url: str, seen: Observed, **overrides: Any) -> GatewayClient:
    options: dict[str, Any] = dict(reconnect_min=0.01, reconnect_max=0.1, request_timeout=TIMEOUT,
                                   on_update=seen.on_update, on_state=seen.on_state)
    options.update(overrides)
    return GatewayClient(url, **options)


@dataclasses.dataclass
class Frame:
    core: ConnectionCore  # the server-side connection it arrived on
    at: float
    data: bytes

    @property
    def msg(self) -> core_pb2.ClientMessage:
        return core_pb2.ClientMessage.FromString(self.data)

    @property
    def method(self) -> str | None:
        return self.msg.WhichOneof("message")


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> list[Frame]:
    frames: list[Frame] = []
    receive = ConnectionCore.receive

    def recording(core: ConnectionCore, frame: bytes, now: float) -> Event:
        frames.append(Frame(core, now, frame))
        return receive(core, frame, now)

    monkeypatch.setattr(ConnectionCore, "receive", recording)
    return frames


def connections(frames: list[Frame]) -> list[list[Frame]]:
    """Frames grouped by server-side connection, in order of first frame."""
    groups: dict[int, list[Frame]] = {}
    for frame in frames:
        groups.setdefault(id(frame.core), []).append(frame)
    return list(groups.values())


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    async with running_gateway(test_settings(tmp_path)) as g:
        yield g


async def drop_server_side(gw: InProcessGateway, code: int) -> None:
    (conn,) = gw.server.connections
    await conn.ws.close(code, "test drop")


# -- requests and errors --------------------------------------------------------------------------

async def test_sign_up_then_get_sessions_and_errors_carry_their_code(gw: InProcessGateway) -> None:
    seen = Observed()
    async with make_client(gw.url, seen, client_id=7, device_type="bot") as client:
        auth = await client.sign_up("ada", "ada@example.com", PASSWORD)
        assert client.token == auth.token and client.token
        assert client.session_id == auth.session_id
        assert client.user is not None and client.user.name == "ada"
        await seen.reach(ClientState.AUTHORIZED)

        sessions = await client.get_sessions()
        assert sessions.current == client.session_id
        (mine,) = sessions.sessions
        assert (mine.id, mine.client_id, mine.device_type) == (client.session_id, 7, "bot")

        with pytest.raises(GatewayRPCError) as taken:
            await client.sign_up("eve", "ada@example.com", PASSWORD)
        assert taken.value.code == 409
        assert client.token == auth.token, "a refused request must not touch the stored session"

        with pytest.raises(GatewayRPCError) as not_mine:
            await client.revoke_sessions([auth.session_id + 1])
        assert not_mine.value.code == 404
        assert await client.call("auth_get_sessions") == sessions
    assert seen.states[-1] is ClientState.CLOSED


# -- reconnecting ---------------------------------------------------------------------------------

@pytest.mark.parametrize("code", [1012, 1011, 1007])
async def test_reconnects_by_itself_and_resumes_the_session(gw: InProcessGateway, code: int,
                                                            wire: list[Frame]) -> None:
    seen = Observed()
    async with make_client(gw.url, seen) as client:
        auth = await client.sign_up("ada")
        await seen.reach(ClientState.AUTHORIZED)

        await drop_server_side(gw, code)
        await seen.reach(ClientState.AUTHORIZED, times=2)  # the app did nothing in between

        sessions = await client.get_sessions()
        assert sessions.current == auth.session_id == client.session_id
        assert [s.id for s in sessions.sessions] == [auth.session_id], "no new session"
        assert client.token == auth.token
    second = connections(wire)[1]
    assert [f.method for f in second[:2]] == ["core_initialize", "auth_authorize"]
    assert second[1].msg.auth_authorize.token == auth.token


async def test_survives_a_gateway_restart_on_the_same_port_and_db(tmp_path: Path) -> None:
    settings = test_settings(tmp_path, port=free_port())
    seen = Observed()
    client = make_client(f"ws://127.0.0.1:{settings.port}", seen)
    try:
        async with running_gateway(settings):
            await client.start()
            auth = await client.sign_up("ada")
        await seen.reach(ClientState.DISCONNECTED)  # shut down with 1012; nothing listens now

        async with running_gateway(settings):
            sessions = await client.get_sessions()  # waits for the reconnect
            assert sessions.current == auth.session_id == client.session_id
            assert client.state is ClientState.AUTHORIZED
    finally:
        await client.close()


async def test_request_in_flight_on_a_dropped_socket_fails_with_connection_lost(
        gw: InProcessGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    released = asyncio.Event()
    original = table.ROUTES["auth_get_sessions"]
    dropped: list[int] = []

    async def drop_then_hold(ctx: Any, req: auth_pb2.GetSessions) -> Any:
        if dropped:
            assert original.handler is not None
            return await original.handler(ctx, req)
        dropped.append(1)
        ctx.ws.transport.abort()  # the request is in progress and will never be answered
        await released.wait()
        return auth_pb2.Sessions()

    routes = cast(dict[str, table.Method], table.ROUTES)
    monkeypatch.setitem(routes, "auth_get_sessions",
                        dataclasses.replace(original, handler=drop_then_hold))
    seen = Observed()
    try:
        async with make_client(gw.url, seen, request_timeout=30.0) as client:
            auth = await client.sign_up("ada")
            with pytest.raises(ConnectionLost):
                await asyncio.wait_for(client.get_sessions(), TIMEOUT)  # not the 30 s timeout
            assert dropped == [1]
            # Not resent behind the app's back; the next call goes out on the new socket.
            sessions = await client.get_sessions()
            assert sessions.current == auth.session_id
    finally:
        released.set()


async def test_request_ids_strictly_increase_across_reconnects(gw: InProcessGateway,
                                                               wire: list[Frame]) -> None:
    seen = Observed()
    async with make_client(gw.url, seen) as client:
        await client.sign_up("ada")
        for n in (2, 3):
            await client.get_sessions()
            await drop_server_side(gw, 1012)
            await seen.reach(ClientState.AUTHORIZED, times=n)
        await client.get_sessions()
    ids = [frame.msg.id for frame in wire]
    assert len(connections(wire)) == 3
    assert all(a < b for a, b in itertools.pairwise(ids)), ids
    assert ids[0] >= 1


# -- revocation -----------------------------------------------------------------------------------

async def test_revoked_session_is_dropped_and_the_client_carries_on_signed_out(
        gw: InProcessGateway, wire: list[Frame]) -> None:
    seen = Observed()
    async with make_client(gw.url, seen) as client:
        await client.sign_up("ada", "ada@example.com", PASSWORD)
        victim = client.session_id
        async with await TestClient.connect(gw.url) as other:
            await other.initialize()
            await other.sign_in("ada@example.com", PASSWORD)
            res = await other.call("auth_revoke_sessions", session_ids=[victim])
            assert res.WhichOneof("result") is None, res

        await seen.reach(ClientState.CONNECTED)  # reconnected, unauthenticated
        kinds = [(u.WhichOneof("update"), u.session_deleted.session_id) for u in seen.updates]
        assert ("session_deleted", victim) in kinds
        revoked = seen.states.index(ClientState.REVOKED)
        assert seen.states[revoked:] == [ClientState.REVOKED, ClientState.DISCONNECTED,
                                         ClientState.CONNECTED]
        assert (client.token, client.session_id, client.user) == (None, None, None)

        with pytest.raises(GatewayRPCError) as refused:
            await client.get_sessions()
        assert refused.value.code == 401
    assert "auth_authorize" not in [f.method for f in wire], "the dead token was presented"
    assert len(connections(wire)) == 3  # the client, the other one, the client again


async def test_a_refused_stored_token_is_dropped(gw: InProcessGateway) -> None:
    seen = Observed()
    async with make_client(gw.url, seen, token="not-a-token") as client:
        await seen.reach(ClientState.CONNECTED)
        assert seen.states == [ClientState.REVOKED, ClientState.CONNECTED]
        assert client.token is None
        with pytest.raises(GatewayRPCError) as refused:
            await client.get_sessions()
        assert refused.value.code == 401


# -- keepalive ------------------------------------------------------------------------------------

def is_keepalive(frame: Frame) -> bool:
    return frame.method is None


async def test_keepalive_after_authorization_one_timer_per_connection(
        gw: InProcessGateway, wire: list[Frame]) -> None:
    interval = 0.05

    def keepalives_on(method: str) -> list[Frame]:
        """Keepalives on the connection where ``method`` was sent."""
        for group in connections(wire):
            if any(f.method == method for f in group):
                return [f for f in group if is_keepalive(f)]
        return []

    idle_seen, seen = Observed(), Observed()
    async with make_client(gw.url, idle_seen, keepalive_interval=interval), \
            make_client(gw.url, seen, keepalive_interval=interval) as client:
        await idle_seen.reach(ClientState.CONNECTED)
        await client.sign_up("ada")
        await eventually(lambda: len(keepalives_on("auth_sign_up")) >= 3, "keepalives")
        await drop_server_side_of(gw, client)
        await seen.reach(ClientState.AUTHORIZED, times=2)
        await eventually(lambda: len(keepalives_on("auth_authorize")) >= 4,
                         "keepalives after the reconnect")

    for method in ("auth_sign_up", "auth_authorize"):
        frames = keepalives_on(method)
        for frame in frames:  # ClientMessage{id: N} and nothing else: 08 <varint N>
            assert frame.data == b"\x08" + frame.data[1:] and frame.msg.id > 0
            assert frame.data == core_pb2.ClientMessage(id=frame.msg.id).SerializeToString()
        gaps = [b.at - a.at for a, b in itertools.pairwise(frames)]
        assert min(gaps) > interval / 2, f"two keepalive timers on one connection: {gaps}"
    first = next(g for g in connections(wire) if any(f.method == "auth_sign_up" for f in g))
    assert [f.method for f in first[:2]] == ["core_initialize", "auth_sign_up"]
    # The idle client, connected before the other signed up, sent no keepalive meanwhile.
    idle = [g for g in connections(wire) if g[0].core is not first[0].core
            and not any(f.method == "auth_authorize" for f in g)]
    assert [[f.method for f in g] for g in idle] == [["core_initialize"]]


async def drop_server_side_of(gw: InProcessGateway, client: GatewayClient) -> None:
    (conn,) = [c for c in gw.server.connections if c.session_id == client.session_id]
    await conn.ws.close(1012, "test drop")


# -- backoff --------------------------------------------------------------------------------------

async def reconnect_delays(rand: Callable[[], float], count: int) -> list[float]:
    """The first ``count`` waits between failed connects (nothing listens on the port)."""
    delays: list[float] = []
    enough = asyncio.Event()

    async def sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) >= count:
            enough.set()
            await asyncio.Event().wait()  # hold the supervisor here until close()
        await asyncio.sleep(0)

    client = GatewayClient(f"ws://127.0.0.1:{free_port()}", reconnect_min=0.1,
                           reconnect_max=1.0, sleep=sleep, rand=rand)
    async with client:
        await asyncio.wait_for(enough.wait(), TIMEOUT)
    return delays


async def test_reconnect_delays_grow_exponentially_within_bounds() -> None:
    assert await reconnect_delays(lambda: 1.0, 7) == pytest.approx(
        [0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0])
    caps = [0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0]
    jittered = await reconnect_delays(random.Random(7).random, len(caps))
    assert all(0.1 <= d <= cap for d, cap in zip(jittered, caps, strict=True)), jittered
    assert len(set(jittered)) == len(jittered), "full jitter spreads the delays"


def test_backoff_starts_over_after_reset() -> None:
    backoff = Backoff(0.5, 30.0, lambda: 1.0)
    assert [backoff.next_delay() for _ in range(3)] == [1.0, 2.0, 4.0]
    backoff.reset()
    assert backoff.next_delay() == 1.0


async def test_calls_while_disconnected_wait_then_time_out() -> None:
    seen = Observed()
    async with make_client(f"ws://127.0.0.1:{free_port()}", seen, request_timeout=0.2) as client:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await client.get_sessions()
        assert time.monotonic() - started >= 0.2


async def test_a_call_made_before_the_gateway_is_up_goes_out_once_it_is(tmp_path: Path) -> None:
    settings = test_settings(tmp_path, port=free_port())
    seen = Observed()
    async with make_client(f"ws://127.0.0.1:{settings.port}", seen) as client:
        pending: Awaitable[auth_pb2.Authorization] = asyncio.ensure_future(client.sign_up("ada"))
        async with running_gateway(settings):
            auth = await pending
            assert client.session_id == auth.session_id
