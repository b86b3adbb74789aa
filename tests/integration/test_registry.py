"""The live-connection registries: one contract for both, then Redis across nodes and outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import pytest
from redis.asyncio import Redis

from gateway.registry.base import LiveEntry, Registry
from gateway.registry.local import MemoryRegistry
from gateway.registry.redis import RedisRegistry
from tests.support.flows import eventually
from tests.support.redis_server import RedisServer


def fast_node(url: str, name: str) -> RedisRegistry:
    """Short heartbeat and TTL so expiry tests take about a second."""
    return RedisRegistry(url, name, heartbeat=0.2, ttl=1.0)


@dataclass(eq=False)
class FakeSocket:
    conn_id: int
    user_id: int
    session_id: int
    pushes: list[bytes] = field(default_factory=list)
    revokes: list[list[int]] = field(default_factory=list)
    closed: bool = False

    def push_update(self, update: bytes) -> None:
        self.pushes.append(update)

    def revoke(self, session_ids: Sequence[int]) -> bool:
        self.revokes.append(list(session_ids))
        if self.session_id in session_ids:
            self.closed = True
            return True
        return False


def entry(node: str, sock: FakeSocket) -> LiveEntry:
    return LiveEntry(node, sock.conn_id, sock.user_id, sock.session_id)


# -- the contract, for both implementations ---------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
async def registry(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Registry]:
    reg: Registry
    if request.param == "memory":
        reg = MemoryRegistry("n1")
    else:
        reg = fast_node(redis_url, "n1")
    await reg.start()
    yield reg
    await reg.stop()


async def test_bind_and_unbind_track_local_sockets(registry: Registry) -> None:
    a, b, c = FakeSocket(1, 100, 10), FakeSocket(2, 100, 11), FakeSocket(3, 200, 20)
    for sock in (a, b, c):
        await registry.bind(sock)
    assert registry.healthy
    assert set(map(id, registry.local_sockets())) == {id(a), id(b), id(c)}
    assert registry.local_sockets(100) == [a, b]
    await registry.unbind(a)
    await registry.unbind(a)  # a second unbind (late disconnect) is harmless
    assert registry.local_sockets(100) == [b]
    assert registry.local_sockets(999) == []


async def test_revoke_sends_session_deleted_and_closes_revoked_sessions(
        registry: Registry) -> None:
    a, b, other = FakeSocket(1, 100, 10), FakeSocket(2, 100, 11), FakeSocket(3, 200, 20)
    for sock in (a, b, other):
        await registry.bind(sock)
    receipt = await registry.revoke(100, [10])
    assert a.revokes == [[10]] and a.closed
    assert b.revokes == [[10]] and not b.closed  # told about the deleted session, stays open
    assert other.revokes == []
    assert receipt.closed == {"n1": 1} and receipt.total == 1 and receipt.unacknowledged == []


async def test_push_reaches_every_socket_of_the_user(registry: Registry) -> None:
    a, b, other = FakeSocket(1, 100, 10), FakeSocket(2, 100, 11), FakeSocket(3, 200, 20)
    for sock in (a, b, other):
        await registry.bind(sock)
    await registry.push(100, b"\x08\x01update")
    assert a.pushes == [b"\x08\x01update"] and b.pushes == [b"\x08\x01update"]
    assert other.pushes == []


async def test_live_entries_filter_by_user_and_session(registry: Registry) -> None:
    a, b, other = FakeSocket(1, 100, 10), FakeSocket(2, 100, 11), FakeSocket(3, 200, 20)
    for sock in (a, b, other):
        await registry.bind(sock)
    assert await registry.live_entries() == [entry("n1", s) for s in (a, b, other)]
    assert await registry.live_entries(user_id=100) == [entry("n1", a), entry("n1", b)]
    assert await registry.live_entries(session_id=11) == [entry("n1", b)]
    assert await registry.live_entries(user_id=200, session_id=11) == []
    await registry.unbind(a)
    assert await registry.live_entries(user_id=100) == [entry("n1", b)]


# -- Redis across nodes -------------------------------------------------------------------------

MakeNode = Callable[[str], Awaitable[RedisRegistry]]


@pytest.fixture
async def make_node(redis_url: str) -> AsyncIterator[MakeNode]:
    made: list[RedisRegistry] = []

    async def make(name: str) -> RedisRegistry:
        reg = fast_node(redis_url, name)
        await reg.start()
        made.append(reg)
        return reg

    yield make
    for reg in made:
        await reg.stop()


async def test_revoke_through_one_node_reaches_another_and_is_acknowledged(
        make_node: MakeNode) -> None:
    a, b = await make_node("A"), await make_node("B")
    on_a, on_b = FakeSocket(1, 100, 11), FakeSocket(2, 100, 10)
    await a.bind(on_a)
    await b.bind(on_b)
    receipt = await a.revoke(100, [10], wait_ack=2.0)
    assert receipt.closed == {"A": 0, "B": 1} and receipt.unacknowledged == []
    assert on_b.closed and on_b.revokes == [[10]]
    assert on_a.revokes == [[10]] and not on_a.closed

    # Without wait_ack the revocation is fire-and-forget but still arrives.
    receipt = await b.revoke(100, [11])
    assert receipt.closed == {"B": 0}
    await eventually(lambda: on_a.closed)


async def test_push_reaches_sockets_on_three_nodes(make_node: MakeNode) -> None:
    nodes = [await make_node(name) for name in ("A", "B", "C")]
    socks = [FakeSocket(i, 100, 10 + i) for i in range(3)]
    for node, sock in zip(nodes, socks, strict=True):
        await node.bind(sock)
    await nodes[0].push(100, b"hello")
    await eventually(lambda: all(s.pushes == [b"hello"] for s in socks))


async def test_crashed_node_is_unacknowledged_then_forgotten_after_ttl(
        make_node: MakeNode, redis_url: str) -> None:
    a, c = await make_node("A"), await make_node("C")
    sock = FakeSocket(1, 100, 10)
    await c.bind(sock)
    assert await a.live_entries(user_id=100) == [entry("C", sock)]
    await c._crash()

    started = time.monotonic()
    receipt = await a.revoke(100, [10], wait_ack=2.0)
    # Nobody listens on C's channel any more: reported at once, not after the deadline.
    assert receipt.unacknowledged == ["C"] and time.monotonic() - started < 1.0

    async def forgotten() -> bool:
        return await a.live_entries() == [] and await a.live_entries(user_id=100) == []

    await eventually(forgotten, timeout=5.0)
    raw = Redis.from_url(redis_url, decode_responses=True)
    try:
        assert await raw.smembers("osm:reg:user:100") == set()  # lazily cleaned by the reader
    finally:
        await raw.aclose()


async def test_redis_restart_replays_entries_and_resyncs(
        make_node: MakeNode, redis_server: RedisServer) -> None:
    a, b = await make_node("A"), await make_node("B")
    resyncs = asyncio.Event()

    async def resync() -> None:
        resyncs.set()

    a.set_resync_hook(resync)
    before = FakeSocket(1, 100, 10)
    await a.bind(before)
    try:
        redis_server.stop()
        await eventually(lambda: not a.healthy and not b.healthy)
        # During the outage nothing raises and local delivery still works.
        during, leaving = FakeSocket(2, 100, 11), FakeSocket(3, 300, 30)
        await a.bind(during)
        await a.bind(leaving)
        await a.unbind(leaving)
        await a.push(100, b"local")
        receipt = await a.revoke(300, [30], wait_ack=1.0)
        assert before.pushes == [b"local"] and during.pushes == [b"local"]
        assert receipt.closed == {"A": 0}
    finally:
        redis_server.start()

    await eventually(lambda: a.healthy and b.healthy)
    await asyncio.wait_for(resyncs.wait(), 5.0)
    # The restarted Redis came back empty: A re-registered everything it holds, nothing else.
    assert await b.live_entries() == [entry("A", before), entry("A", during)]
    receipt = await b.revoke(100, [10], wait_ack=2.0)
    assert receipt.closed == {"A": 1, "B": 0} and before.closed


async def test_heartbeat_rewrites_entries_lost_without_a_disconnect(
        make_node: MakeNode, redis_server: RedisServer) -> None:
    a = await make_node("A")
    sock = FakeSocket(1, 100, 10)
    await a.bind(sock)
    redis_server.flush()  # Redis forgets everything, yet the subscription stays up

    async def back() -> bool:
        return await a.live_entries() == [entry("A", sock)]

    await eventually(back, timeout=5.0)


async def test_malformed_message_is_dropped_and_listening_goes_on(
        make_node: MakeNode, redis_url: str) -> None:
    a, b = await make_node("A"), await make_node("B")
    sock = FakeSocket(1, 100, 10)
    await a.bind(sock)
    raw = Redis.from_url(redis_url)
    try:
        await raw.publish("osm:reg:chan:A", b"\xffnot json")
        await raw.publish("osm:reg:chan:A", b'{"k": "push", "u": 100, "b": "!!"}')
    finally:
        await raw.aclose()
    await b.push(100, b"after")
    await eventually(lambda: sock.pushes == [b"after"])
    assert a.healthy
