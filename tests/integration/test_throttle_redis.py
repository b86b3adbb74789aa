from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway.config import Settings
from gateway.errors import RateLimited
from gateway.services.throttle import MemoryCounters, Throttles
from gateway.store.redis_counters import FallbackCounters, RedisCounters
from tests.support.redis_server import RedisServer

IP = "203.0.113.7"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    c = Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=1)
    yield c
    await c.aclose()


async def test_counts_and_ttl(client: Redis) -> None:
    counters = RedisCounters(client)
    assert await counters.get("thr:t") == (0, 0.0)
    assert (await counters.incr("thr:t", 60))[0] == 1
    count, reset = await counters.incr("thr:t", 600)  # a later window does not extend the key
    assert count == 2 and 59 < reset <= 60
    count, reset = await counters.get("thr:t")
    assert count == 2 and 59 < reset <= 60
    assert 59_000 < await client.pttl("thr:t") <= 60_000
    await counters.clear("thr:t")
    assert await counters.get("thr:t") == (0, 0.0)


async def test_window_expires(client: Redis) -> None:
    counters = RedisCounters(client)
    count, reset = await counters.incr("thr:short", 0.02)
    assert count == 1 and 0 < reset <= 0.02
    deadline = asyncio.get_running_loop().time() + 2
    while await counters.get("thr:short") != (0, 0.0):  # Redis expires it, not us
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.005)
    count, reset = await counters.incr("thr:short", 60)
    assert count == 1 and 59 < reset <= 60
    await counters.incr("thr:noexpiry", 60)
    await client.persist("thr:noexpiry")  # a key that lost its expiry heals on the next incr
    _, reset = await counters.incr("thr:noexpiry", 60)
    assert 59 < reset <= 60 and await client.pttl("thr:noexpiry") > 0


async def test_two_nodes_share_limits(redis_url: str) -> None:
    settings = Settings().replace(signup_ip_hourly=3, signin_account_hourly_failures=4,
                                  signin_account_ip_failures=100)
    a_client = Redis.from_url(redis_url)
    b_client = Redis.from_url(redis_url)
    try:
        node_a = Throttles(RedisCounters(a_client), settings)
        node_b = Throttles(RedisCounters(b_client), settings)
        await node_a.check_sign_up(IP)
        await node_b.check_sign_up(IP)
        await node_a.check_sign_up(IP)
        with pytest.raises(RateLimited) as refused:
            await node_b.check_sign_up(IP)
        assert 3590 < refused.value.retry_after <= 3600

        for i in range(2):
            await node_a.record_sign_in_failure("alice@example.com", f"10.0.0.{i}")
            await node_b.record_sign_in_failure("alice@example.com", f"10.0.1.{i}")
        with pytest.raises(RateLimited):
            await node_a.check_sign_in("alice@example.com", "10.9.9.9")
        assert not [k async for k in a_client.scan_iter("*alice*")]  # no plain emails
    finally:
        await a_client.aclose()
        await b_client.aclose()


async def test_falls_back_to_stricter_local_limits(redis_server: RedisServer, redis_url: str,
                                                   client: Redis) -> None:
    settings = Settings().replace(signup_ip_hourly=8, local_throttle_divisor=4,
                                  signin_account_ip_failures=8)
    counters = FallbackCounters(RedisCounters(client), MemoryCounters(),
                                settings.local_throttle_divisor)
    throttles = Throttles(counters, settings)
    await throttles.check_sign_up(IP)  # counted in Redis
    assert (await client.get("thr:su:i:" + IP)) == b"1"
    redis_server.stop()
    try:
        # Locally each attempt counts 4: 8 / 4 = 2 attempts, then refused — never unlimited.
        await throttles.check_sign_up(IP)
        await throttles.check_sign_up(IP)
        with pytest.raises(RateLimited) as refused:
            await throttles.check_sign_up(IP)
        assert 3590 < refused.value.retry_after <= 3600

        await throttles.check_sign_in("bob@example.com", IP)
        await throttles.record_sign_in_failure("bob@example.com", IP)
        await throttles.record_sign_in_failure("bob@example.com", IP)  # 2 x 4 = 8: delayed
        with pytest.raises(RateLimited):
            await throttles.check_sign_in("bob@example.com", IP)
        await throttles.record_sign_in_success("bob@example.com", IP)  # no raise with Redis down
    finally:
        redis_server.start()
    # Redis is back: shared counting resumes (the server restarted empty).
    await throttles.check_sign_up(IP)
    assert (await client.get("thr:su:i:" + IP)) == b"1"
