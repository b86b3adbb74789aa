"""64-bit snowflake ids.

Layout, most significant bit first::

    0 | 41 bits: milliseconds since EPOCH_MS | 10 bits: node number | 12 bits: sequence

``EPOCH_MS`` is 2024-01-01T00:00:00Z, which leaves 69 years of ids. A node makes at most 4096 ids
per millisecond; past that it waits for the next millisecond. A clock that steps backwards is
ignored: ids keep growing from the last one issued.
"""

from __future__ import annotations

import time
from collections.abc import Callable

EPOCH_MS = 1_704_067_200_000
NODE_BITS = 10
SEQUENCE_BITS = 12
MAX_NODE = (1 << NODE_BITS) - 1
_SEQ_MASK = (1 << SEQUENCE_BITS) - 1


class SnowflakeGenerator:
    def __init__(self, node: int, clock_ms: Callable[[], int] | None = None) -> None:
        if not 0 <= node <= MAX_NODE:
            raise ValueError(f"node must be 0-{MAX_NODE}")
        self._node = node
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._last_ms = 0
        self._seq = 0

    def next_id(self) -> int:
        now = max(self._clock_ms(), self._last_ms)
        if now == self._last_ms:
            self._seq = (self._seq + 1) & _SEQ_MASK
            if self._seq == 0:
                now += 1  # sequence exhausted: borrow the next millisecond
        else:
            self._seq = 0
        self._last_ms = now
        return ((now - EPOCH_MS) << (NODE_BITS + SEQUENCE_BITS)) | (self._node << SEQUENCE_BITS) | self._seq


def timestamp_ms(snowflake: int) -> int:
    return (snowflake >> (NODE_BITS + SEQUENCE_BITS)) + EPOCH_MS


def node_of(snowflake: int) -> int:
    return (snowflake >> SEQUENCE_BITS) & MAX_NODE
