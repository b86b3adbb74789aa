"""The node's clock for every expiry decision (SECURITY.md F4).

Unix milliseconds from the wall clock, corrected so they never step backwards: a clock set back
(by hand or by a bad time sync) would otherwise revive expired codes, invites and sessions. While
the wall clock is behind the last value given out, time stands still until it catches up.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class WallClock:
    def __init__(self, source: Callable[[], int] = time.time_ns) -> None:
        self._source = source
        self._last = 0

    def __call__(self) -> int:
        now = self._source() // 1_000_000
        if now > self._last:
            self._last = now
        return self._last
