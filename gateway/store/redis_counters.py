"""Throttle counters in Redis, shared by every node, with a stricter local fallback.

They implement ``gateway.services.throttle.CounterBackend``; the throttle policies stay in the
services and never see Redis.
"""

from __future__ import annotations

import logging
import math

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.services.throttle import MemoryCounters

log = logging.getLogger("gateway.services.throttle")


# INCR, and an expiry only for a new key (Redis 6.2 has no EXPIRE NX). A key that somehow lost
# its expiry gets one too, so no counter can lock anyone out for good.
_INCR_SCRIPT = """
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  ttl = tonumber(ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return {n, ttl}
"""


class RedisCounters:
    """Counters shared by every node through Redis: one round trip per call."""

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._incr = client.register_script(_INCR_SCRIPT)

    async def incr(self, key: str, window_s: float) -> tuple[int, float]:
        window_ms = max(1, math.ceil(window_s * 1000))
        count, ttl_ms = await self._incr(keys=[key], args=[window_ms])
        return int(count), int(ttl_ms) / 1000

    async def get(self, key: str) -> tuple[int, float]:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.get(key)
            pipe.pttl(key)
            value, ttl_ms = await pipe.execute()
        if value is None or ttl_ms < 0:  # -2: gone between the two reads; -1 cannot happen
            return 0, 0.0
        return int(value), ttl_ms / 1000

    async def clear(self, key: str) -> None:
        await self._client.delete(key)


class FallbackCounters:
    """Redis while it answers; local counters, scaled by ``divisor``, while it does not.

    A local count is multiplied by ``divisor`` so one node alone allows about 1/divisor of each
    shared limit: stricter, never unlimited (L6, F1). Redis is tried again on every call, so
    shared counting resumes as soon as it is back.
    """

    def __init__(self, primary: RedisCounters, local: MemoryCounters, divisor: int) -> None:
        if divisor < 1:
            raise ValueError("divisor must be at least 1")
        self._primary = primary
        self._local = local
        self._divisor = divisor
        self._degraded = False

    async def incr(self, key: str, window_s: float) -> tuple[int, float]:
        try:
            result = await self._primary.incr(key, window_s)
        except (RedisError, OSError) as exc:
            self._fell_back(exc)
            count, reset = await self._local.incr(key, window_s)
            return count * self._divisor, reset
        self._recovered()
        return result

    async def get(self, key: str) -> tuple[int, float]:
        try:
            result = await self._primary.get(key)
        except (RedisError, OSError) as exc:
            self._fell_back(exc)
            count, reset = await self._local.get(key)
            return count * self._divisor, reset
        self._recovered()
        return result

    async def clear(self, key: str) -> None:
        await self._local.clear(key)
        try:
            await self._primary.clear(key)
        except (RedisError, OSError) as exc:
            # Failing to forget a counter only makes the limit stricter until it expires.
            self._fell_back(exc)

    def _fell_back(self, exc: BaseException) -> None:
        if not self._degraded:
            self._degraded = True
            log.warning("throttle counters: Redis unavailable (%s); using stricter local limits",
                        type(exc).__name__)

    def _recovered(self) -> None:
        if self._degraded:
            self._degraded = False
            log.info("throttle counters: Redis is back; limits are shared again")
