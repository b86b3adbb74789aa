"""Throttles for sign-in, sign-up, invite lookups, codes and mail (rules L1, L2, L5, L6).

Counters are fixed windows behind a three-method ``CounterBackend``: in memory for one node
(here), or in Redis when several nodes must share limits (``gateway.store.redis_counters``, which
keeps limiting, more strictly, while Redis is down: L6, F1). Every window expires, so nothing
locks forever.

Account keys (normalised emails) are hashed before they become counter keys, so Redis never
holds an email in plain text. IPs are used as given: the caller decides what an IP is (L4).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from gateway.config import Settings
from gateway.errors import RateLimited

log = logging.getLogger(__name__)

HOUR = 3600.0
MINUTE = 60.0
# How long (account, IP) sign-in failures are remembered; counted from the first failure.
PAIR_FAILURE_WINDOW = 86400.0
MAX_SIGNIN_DELAY = 900.0


class CounterBackend(Protocol):
    async def incr(self, key: str, window_s: float) -> tuple[int, float]:
        """Add one; return the count and the seconds until the window resets.

        The window starts with the first increment of a key and is not extended by later ones.
        """

    async def get(self, key: str) -> tuple[int, float]:
        """The count and seconds until reset; ``(0, 0.0)`` for a key with no live window."""

    async def clear(self, key: str) -> None:
        """Forget the key."""


class MemoryCounters:
    """One node's counters in a dict, with bounded memory.

    Expired windows are swept every ``sweep_interval`` seconds of the clock; beyond ``max_keys``
    the window started longest ago is dropped. Only an attack on that many distinct keys at
    once gets there, and the dropped window is the one closest to expiring anyway.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, *,
                 max_keys: int = 100_000, sweep_interval: float = 60.0) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._sweep_interval = sweep_interval
        self._next_sweep = clock() + sweep_interval
        # key -> [count, expires_at]; insertion order is window-start order.
        self._windows: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._windows)

    async def incr(self, key: str, window_s: float) -> tuple[int, float]:
        now = self._clock()
        self._sweep(now)
        entry = self._live(key, now)
        if entry is None:
            entry = [0, now + window_s]
            self._windows[key] = entry
            while len(self._windows) > self._max_keys:
                self._windows.popitem(last=False)
        entry[0] += 1
        return int(entry[0]), entry[1] - now

    async def get(self, key: str) -> tuple[int, float]:
        now = self._clock()
        entry = self._live(key, now)
        return (0, 0.0) if entry is None else (int(entry[0]), entry[1] - now)

    async def clear(self, key: str) -> None:
        self._windows.pop(key, None)

    def _live(self, key: str, now: float) -> list[float] | None:
        entry = self._windows.get(key)
        if entry is not None and entry[1] <= now:
            del self._windows[key]
            return None
        return entry

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + self._sweep_interval
        for key in [k for k, (_, expires) in self._windows.items() if expires <= now]:
            del self._windows[key]


class Throttles:
    """The throttle policies. Each ``check_*`` raises ``RateLimited(retry_after)`` when refused.

    Sign-in counts failures only, in three counters (L1): per (account, IP) with a rising delay,
    per account per hour, and per IP per hour across accounts (password spraying). The rising
    delay is a separate lock key: after the failure that brings the (account, IP) count to
    ``n >= signin_account_ip_failures``, further attempts are refused for
    ``min(2 ** (n - limit), 900)`` seconds from that failure. Locked attempts never reach
    ``record_sign_in_failure``, so the delay grows only with real guesses, and the count is
    forgotten a day after the first failure or at the first success.

    The check and the record are separate calls, so attempts already in flight when the limit is
    reached still complete: the overshoot is bounded by the password hasher's queue.

    The other checks count every attempt, refused ones included, and allow ``limit`` per window.
    """

    def __init__(self, backend: CounterBackend, settings: Settings, *,
                 key_secret: bytes | None = None) -> None:
        self._backend = backend
        self._settings = settings
        # With a secret shared by all nodes the account hash is keyed, so the emails behind the
        # keys cannot be confirmed by hashing guesses; without one it is a plain sha256.
        self._key_secret = key_secret

    async def check_sign_in(self, account_key: str, ip: str) -> None:
        s = self._settings
        acct = self._account(account_key)
        (locked, lock_reset), (acct_n, acct_reset), (ip_n, ip_reset) = await asyncio.gather(
            self._backend.get(f"thr:si:lock:{acct}:{ip}"),
            self._backend.get(f"thr:si:a:{acct}"),
            self._backend.get(f"thr:si:i:{ip}"),
        )
        waits = [
            lock_reset if locked > 0 else 0.0,
            acct_reset if acct_n >= s.signin_account_hourly_failures else 0.0,
            ip_reset if ip_n >= s.signin_ip_hourly_failures else 0.0,
        ]
        if max(waits) > 0:
            raise _refused(max(waits), "failed sign-ins")

    async def record_sign_in_failure(self, account_key: str, ip: str) -> None:
        s = self._settings
        acct = self._account(account_key)
        (pair_n, _), _, _ = await asyncio.gather(
            self._backend.incr(f"thr:si:ai:{acct}:{ip}", PAIR_FAILURE_WINDOW),
            self._backend.incr(f"thr:si:a:{acct}", HOUR),
            self._backend.incr(f"thr:si:i:{ip}", HOUR),
        )
        if pair_n >= s.signin_account_ip_failures:
            delay = min(2.0 ** min(pair_n - s.signin_account_ip_failures, 32), MAX_SIGNIN_DELAY)
            await self._backend.incr(f"thr:si:lock:{acct}:{ip}", delay)

    async def record_sign_in_success(self, account_key: str, ip: str) -> None:
        """Forget this (account, IP) pair's failures; the hourly caps stay (they bound guessing)."""
        acct = self._account(account_key)
        await asyncio.gather(
            self._backend.clear(f"thr:si:ai:{acct}:{ip}"),
            self._backend.clear(f"thr:si:lock:{acct}:{ip}"),
        )

    async def check_sign_up(self, ip: str) -> None:
        await self._count([f"thr:su:i:{ip}"], HOUR, self._settings.signup_ip_hourly, "sign-ups")

    async def check_invite_lookup(self, ip: str) -> None:
        await self._count([f"thr:inv:i:{ip}"], MINUTE,
                          self._settings.invite_lookup_ip_per_minute, "invite lookups")

    async def check_code(self, account_key: str, ip: str) -> None:
        acct = self._account(account_key)
        await self._count([f"thr:code:a:{acct}", f"thr:code:i:{ip}"], HOUR,
                          self._settings.code_checks_hourly, "code checks")

    async def check_mail(self, account_key: str, ip: str) -> None:
        acct = self._account(account_key)
        await self._count([f"thr:mail:a:{acct}", f"thr:mail:i:{ip}"], HOUR,
                          self._settings.mails_hourly, "mails")

    async def _count(self, keys: list[str], window_s: float, limit: int, what: str) -> None:
        results = await asyncio.gather(*(self._backend.incr(k, window_s) for k in keys))
        waits = [reset for count, reset in results if count > limit]
        if waits:
            raise _refused(max(waits), what)

    def _account(self, account_key: str) -> str:
        data = account_key.encode("utf-8", "surrogatepass")
        if self._key_secret is not None:
            return hmac.new(self._key_secret, data, hashlib.sha256).hexdigest()[:32]
        return hashlib.sha256(data).hexdigest()[:32]


def _refused(wait: float, what: str) -> RateLimited:
    # The delay is in the message too (L3): clients show it, and older ones only read the text.
    seconds = max(1, math.ceil(wait))
    return RateLimited(wait, f"too many {what}; retry after {seconds} s")
