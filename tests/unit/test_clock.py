"""The expiry clock never steps backwards (F4)."""

from __future__ import annotations

from gateway.clock import WallClock


def test_a_clock_set_back_stands_still_until_it_catches_up() -> None:
    readings = iter(ms * 1_000_000 for ms in (1_000, 2_000, 1_500, 1_900, 2_500))
    clock = WallClock(lambda: next(readings))
    assert [clock() for _ in range(5)] == [1_000, 2_000, 2_000, 2_000, 2_500]
