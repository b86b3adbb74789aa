from __future__ import annotations

import pytest

from gateway.config import Settings
from gateway.errors import RateLimited
from gateway.services.throttle import MemoryCounters, Throttles

IP = "203.0.113.7"
OTHER_IP = "198.51.100.9"
ALICE = "alice@example.com"
BOB = "bob@example.com"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def counters(clock: FakeClock) -> MemoryCounters:
    return MemoryCounters(clock=clock)


def make(counters: MemoryCounters, **limits: int) -> Throttles:
    return Throttles(counters, Settings().replace(**limits))


async def fail_times(t: Throttles, n: int, account: str = ALICE, ip: str = IP) -> None:
    for _ in range(n):
        await t.check_sign_in(account, ip)
        await t.record_sign_in_failure(account, ip)


# -- the memory backend ------------------------------------------------------------------------

async def test_memory_counters_fixed_window(counters: MemoryCounters, clock: FakeClock) -> None:
    assert await counters.get("k") == (0, 0.0)
    assert await counters.incr("k", 60) == (1, 60.0)
    clock.advance(20)
    assert await counters.incr("k", 60) == (2, 40.0)  # the window is not extended
    assert await counters.get("k") == (2, 40.0)
    clock.advance(40)
    assert await counters.get("k") == (0, 0.0)
    assert await counters.incr("k", 60) == (1, 60.0)
    await counters.clear("k")
    assert await counters.get("k") == (0, 0.0)


async def test_memory_counters_purge_expired(clock: FakeClock) -> None:
    counters = MemoryCounters(clock=clock, sweep_interval=60)
    for i in range(1000):
        await counters.incr(f"k{i}", 30)
    assert len(counters) == 1000
    clock.advance(61)
    await counters.incr("fresh", 30)
    assert len(counters) == 1


async def test_memory_counters_cap_drops_oldest(clock: FakeClock) -> None:
    counters = MemoryCounters(clock=clock, max_keys=100)
    for i in range(250):
        await counters.incr(f"k{i}", 3600)
        clock.advance(0.001)
    assert len(counters) == 100
    assert await counters.get("k0") == (0, 0.0)
    assert (await counters.get("k249"))[0] == 1


# -- sign-in -----------------------------------------------------------------------------------

async def test_sign_in_pair_limit_then_rising_delay(counters: MemoryCounters,
                                                   clock: FakeClock) -> None:
    t = make(counters, signin_account_ip_failures=3)
    await fail_times(t, 3)
    delays = []
    for _ in range(6):
        with pytest.raises(RateLimited) as refused:
            await t.check_sign_in(ALICE, IP)
        delays.append(refused.value.retry_after)
        clock.advance(refused.value.retry_after)
        await t.check_sign_in(ALICE, IP)  # the delay is over
        await t.record_sign_in_failure(ALICE, IP)
    assert delays == [1, 2, 4, 8, 16, 32]
    # Other IPs and other accounts are not affected by this pair's delay.
    await t.check_sign_in(ALICE, OTHER_IP)
    await t.check_sign_in(BOB, IP)


async def test_sign_in_delay_is_capped(counters: MemoryCounters, clock: FakeClock) -> None:
    t = make(counters, signin_account_ip_failures=1, signin_account_hourly_failures=1000,
             signin_ip_hourly_failures=1000)
    for _ in range(15):
        await t.record_sign_in_failure(ALICE, IP)
    with pytest.raises(RateLimited) as refused:
        await t.check_sign_in(ALICE, IP)
    assert 0 < refused.value.retry_after <= 900


async def test_sign_in_pair_failures_are_forgotten_after_a_day(counters: MemoryCounters,
                                                              clock: FakeClock) -> None:
    t = make(counters, signin_account_ip_failures=3)
    await fail_times(t, 2)
    clock.advance(86400)
    await fail_times(t, 2)  # a fresh window: 2 failures, not 4
    await t.check_sign_in(ALICE, IP)


async def test_sign_in_success_clears_the_pair_only(counters: MemoryCounters,
                                                    clock: FakeClock) -> None:
    t = make(counters, signin_account_ip_failures=3, signin_account_hourly_failures=5)
    await fail_times(t, 3)
    with pytest.raises(RateLimited):
        await t.check_sign_in(ALICE, IP)
    await t.record_sign_in_success(ALICE, IP)
    await t.check_sign_in(ALICE, IP)  # the pair is forgotten...
    await t.record_sign_in_failure(ALICE, IP)
    await t.record_sign_in_failure(ALICE, OTHER_IP)
    with pytest.raises(RateLimited) as refused:  # ...but the account's hourly count is not
        await t.check_sign_in(ALICE, "192.0.2.1")
    assert 3500 < refused.value.retry_after <= 3600


async def test_sign_in_account_hourly_cap(counters: MemoryCounters, clock: FakeClock) -> None:
    t = make(counters, signin_account_ip_failures=100, signin_account_hourly_failures=4)
    for i in range(4):  # a distributed attack: a new IP each time
        await fail_times(t, 1, ip=f"10.0.0.{i}")
    with pytest.raises(RateLimited) as refused:
        await t.check_sign_in(ALICE, "10.0.0.99")
    assert refused.value.retry_after == pytest.approx(3600)
    assert refused.value.message == "too many failed sign-ins; retry after 3600 s"
    await t.check_sign_in(BOB, "10.0.0.99")
    clock.advance(3600)
    await t.check_sign_in(ALICE, "10.0.0.99")  # no permanent lock-out


async def test_sign_in_ip_hourly_cap_across_accounts(counters: MemoryCounters,
                                                     clock: FakeClock) -> None:
    t = make(counters, signin_account_ip_failures=100, signin_ip_hourly_failures=5)
    for i in range(5):  # password spraying: one guess per account
        await fail_times(t, 1, account=f"user{i}@example.com")
    clock.advance(600)
    with pytest.raises(RateLimited) as refused:
        await t.check_sign_in("someone-new@example.com", IP)
    assert refused.value.retry_after == pytest.approx(3000)
    await t.check_sign_in("someone-new@example.com", OTHER_IP)
    clock.advance(3000)
    await t.check_sign_in("someone-new@example.com", IP)


# -- attempt-counting checks -------------------------------------------------------------------

async def test_sign_up_per_ip(counters: MemoryCounters, clock: FakeClock) -> None:
    t = make(counters, signup_ip_hourly=3)
    for _ in range(3):
        await t.check_sign_up(IP)
    clock.advance(100)
    with pytest.raises(RateLimited) as refused:
        await t.check_sign_up(IP)
    assert refused.value.retry_after == pytest.approx(3500)
    assert refused.value.message == "too many sign-ups; retry after 3500 s"
    await t.check_sign_up(OTHER_IP)
    clock.advance(3500)
    await t.check_sign_up(IP)


async def test_invite_lookup_per_ip_per_minute(counters: MemoryCounters,
                                               clock: FakeClock) -> None:
    t = make(counters, invite_lookup_ip_per_minute=5)
    for _ in range(5):
        await t.check_invite_lookup(IP)
    with pytest.raises(RateLimited) as refused:
        await t.check_invite_lookup(IP)
    assert 0 < refused.value.retry_after <= 60
    clock.advance(60)
    await t.check_invite_lookup(IP)


@pytest.mark.parametrize("policy, limit_name", [
    ("check_code", "code_checks_hourly"),
    ("check_mail", "mails_hourly"),
])
async def test_code_and_mail_per_account_and_per_ip(counters: MemoryCounters, clock: FakeClock,
                                                    policy: str, limit_name: str) -> None:
    t = make(counters, **{limit_name: 3})
    check = getattr(t, policy)
    for i in range(3):
        await check(ALICE, f"10.0.0.{i}")
    with pytest.raises(RateLimited) as by_account:  # the account is at its limit, any IP
        await check(ALICE, "10.0.0.50")
    assert 0 < by_account.value.retry_after <= 3600
    for i in range(2):
        await check(f"user{i}@example.com", OTHER_IP)
    await check(BOB, OTHER_IP)
    with pytest.raises(RateLimited):  # the IP is at its limit, any account
        await check("carol@example.com", OTHER_IP)
    clock.advance(3600)
    await check(ALICE, OTHER_IP)


async def test_account_keys_are_hashed(counters: MemoryCounters) -> None:
    t = make(counters)
    await t.record_sign_in_failure(ALICE, IP)
    await t.check_code(ALICE, IP)
    await t.check_mail(ALICE, IP)
    keys = list(counters._windows)  # what a backend would store
    assert keys and all("alice" not in k and "example" not in k for k in keys)
    assert all(k.startswith("thr:") for k in keys)
    keyed = Throttles(MemoryCounters(), Settings(), key_secret=b"s")
    assert keyed._account(ALICE) != t._account(ALICE)
