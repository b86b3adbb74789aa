from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from gateway.errors import InvalidArgument, Unavailable
from gateway.services.passwords import PasswordHasher, normalize_password

PEPPER = b"test-pepper"


@pytest.fixture
async def hasher() -> AsyncIterator[PasswordHasher]:
    h = PasswordHasher(cost=4, pepper=PEPPER, threads=2, queue_limit=16)
    yield h
    h.close()


def test_normalize_is_nfkc() -> None:
    assert normalize_password("\ufb01refly-pass", 8, 1024) == "firefly-pass"
    assert normalize_password("\uff50\uff41\uff53\uff53\uff57\uff4f\uff52\uff44", 8, 1024) == "password"


def test_normalize_length_limits_count_code_points_after_nfkc() -> None:
    with pytest.raises(InvalidArgument, match="password must be at least 8 characters"):
        normalize_password("short", 8, 1024)
    # 4 ligature code points become 8 after NFKC: long enough.
    assert normalize_password("\ufb01\ufb01\ufb01\ufb01", 8, 1024) == "fifififi"
    assert normalize_password("x" * 64, 8, 64) == "x" * 64
    with pytest.raises(InvalidArgument, match="password must be at most 64 characters"):
        normalize_password("x" * 65, 8, 64)
    with pytest.raises(InvalidArgument, match="at most 64"):
        normalize_password("x" * 10_000_000, 8, 64)  # refused before normalising
    # Six code points, but each expands to 18 under NFKC.
    with pytest.raises(InvalidArgument, match="at most 64"):
        normalize_password("\ufdfa" * 6, 8, 64)


def test_normalize_rejects_lone_surrogates() -> None:
    with pytest.raises(InvalidArgument, match="valid Unicode"):
        normalize_password("password\ud800", 8, 64)


async def test_hash_and_verify(hasher: PasswordHasher) -> None:
    stored = await hasher.hash("correct horse battery staple")
    assert stored.startswith(b"$2b$04$")
    assert await hasher.verify("correct horse battery staple", stored)
    assert not await hasher.verify("correct horse battery stapl", stored)
    assert not await hasher.verify("", stored)


async def test_verify_matches_nfkc_forms(hasher: PasswordHasher) -> None:
    stored = await hasher.hash("\ufb01ne password")
    assert await hasher.verify("fine password", stored)
    fullwidth = "\uff30\uff41\uff53\uff53\uff37\uff4f\uff52\uff44"
    stored = await hasher.hash(fullwidth)
    assert await hasher.verify("PassWord", stored)


async def test_pepper_is_part_of_the_hash() -> None:
    a = PasswordHasher(cost=4, pepper=b"one", threads=1, queue_limit=4)
    b = PasswordHasher(cost=4, pepper=b"two", threads=1, queue_limit=4)
    try:
        stored = await a.hash("same password")
        assert not await b.verify("same password", stored)
    finally:
        a.close()
        b.close()


async def test_long_passwords_are_not_truncated(hasher: PasswordHasher) -> None:
    cjk = "\u5bc6" * 64  # 64 code points, 192 UTF-8 bytes
    assert len(cjk.encode()) > 72
    stored = await hasher.hash(cjk)
    assert await hasher.verify(cjk, stored)
    # Same first 72 bytes (24 characters), different after: raw bcrypt would confuse them.
    other = cjk[:30] + "\u7801" * 34
    assert other.encode()[:72] == cjk.encode()[:72]
    assert not await hasher.verify(other, stored)
    long_ascii = "a" * 1024
    stored = await hasher.hash(long_ascii)
    assert not await hasher.verify("a" * 1023 + "b", stored)


async def test_verify_dummy_is_always_false(hasher: PasswordHasher) -> None:
    assert await hasher.verify_dummy("anything at all") is False
    assert await hasher.verify_dummy("") is False


async def test_verify_dummy_costs_one_bcrypt_check() -> None:
    h = PasswordHasher(cost=10, pepper=PEPPER, threads=1, queue_limit=4)
    try:
        stored = await h.hash("a password")
        start = time.perf_counter()
        await h.verify("a password", stored)
        real = time.perf_counter() - start
        start = time.perf_counter()
        await h.verify_dummy("a password")
        dummy = time.perf_counter() - start
        assert dummy > real / 3  # same order: a real bcrypt check, not a shortcut
    finally:
        h.close()


async def test_needs_rehash(hasher: PasswordHasher) -> None:
    stored = await hasher.hash("a password")
    assert not hasher.needs_rehash(stored)
    other = PasswordHasher(cost=5, pepper=PEPPER, threads=1, queue_limit=1)
    try:
        assert other.needs_rehash(stored)
    finally:
        other.close()


async def test_queue_limit_refuses_at_once() -> None:
    h = PasswordHasher(cost=8, pepper=PEPPER, threads=1, queue_limit=2)
    try:
        results = await asyncio.gather(*(h.hash(f"password {i}") for i in range(5)),
                                       return_exceptions=True)
        refused = [r for r in results if isinstance(r, Unavailable)]
        hashed = [r for r in results if isinstance(r, bytes)]
        assert len(hashed) == 2 and len(refused) == 3
        assert refused[0].message == "server busy; retry"
        assert h.busy == 0
        assert await h.verify("password 0", hashed[0])  # capacity is back
    finally:
        h.close()


async def test_cancelled_caller_keeps_its_slot_until_the_thread_is_done() -> None:
    h = PasswordHasher(cost=8, pepper=PEPPER, threads=1, queue_limit=1)
    try:
        await h.verify_dummy("warm up")  # the dummy hash is ready
        task = asyncio.create_task(h.hash("password"))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(Unavailable):  # bcrypt still runs in the thread
            await h.hash("another")
        while h.busy:
            await asyncio.sleep(0.005)
        assert await h.hash("another")
    finally:
        h.close()


async def test_hashing_runs_off_the_event_loop() -> None:
    h = PasswordHasher(cost=12, pepper=PEPPER, threads=1, queue_limit=4)
    try:
        await h.verify_dummy("warm up")  # let the startup dummy hash finish first
        ticks = 0
        done = asyncio.Event()

        async def heartbeat() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.005)

        beat = asyncio.create_task(heartbeat())
        start = time.perf_counter()
        await h.hash("a password")
        elapsed = time.perf_counter() - start
        done.set()
        await beat
        assert elapsed > 0.05  # cost 12 really is slow...
        assert ticks >= 5  # ...and the loop kept running meanwhile
    finally:
        h.close()
