"""Password normalisation and bcrypt hashing off the event loop (rules P1-P3, E1).

Length choice (P1): bcrypt reads only 72 bytes and bcrypt 5 refuses longer input. Rather than
refuse long passphrases, every password is *pre-hashed*::

    bcrypt(base64(HMAC-SHA-384(pepper, utf8(nfkc(password)))))

The pre-hash is always 64 ASCII characters (48 bytes in base64, no NUL), so bcrypt never
truncates and every password up to ``password_max_chars`` counts in full. The HMAC key (the
server pepper, shared by all nodes) also means a stolen database alone cannot be attacked
offline. Changing the pepper invalidates every stored hash.

bcrypt is CPU-bound for ~250 ms at cost 12, so it runs in a small thread pool; a counter bounds
the calls waiting or running, and beyond it callers get ``Unavailable`` at once instead of
queueing without limit (P2): a flood of sign-ins cannot stall other sockets or grow memory.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import secrets
import unicodedata
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import bcrypt

from gateway.errors import InvalidArgument, Unavailable

T = TypeVar("T")

# NFKC can shrink text (a base letter plus up to 3 combining marks composes into one code
# point), but never by more than 4:1. Anything longer than this multiple of the limit is
# refused before normalising, so absurd inputs cost nothing.
_RAW_LENGTH_FACTOR = 8


def normalize_password(raw: str, min_chars: int, max_chars: int) -> str:
    """NFKC-normalise ``raw`` and check its length in code points (P1, P3).

    Raises ``InvalidArgument`` with a message the user can act on. No composition rules.
    """
    too_long = InvalidArgument(f"password must be at most {max_chars} characters")
    if len(raw) > max_chars * _RAW_LENGTH_FACTOR:
        raise too_long
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates cannot come from protobuf, but be explicit
        raise InvalidArgument("password must be valid Unicode text") from None
    normalized = unicodedata.normalize("NFKC", raw)
    if len(normalized) < min_chars:
        raise InvalidArgument(f"password must be at least {min_chars} characters")
    if len(normalized) > max_chars:
        raise too_long
    return normalized


class PasswordHasher:
    """bcrypt over a peppered pre-hash, in a bounded thread pool.

    ``hash`` and ``verify`` NFKC-normalise their input themselves (it is idempotent), so a
    password typed with a ligature or fullwidth letters matches its plain form. Length limits
    are the caller's job, through ``normalize_password``, where a password is *chosen*; at
    sign-in any string simply fails like a wrong password (E1).
    """

    def __init__(self, cost: int, pepper: bytes, threads: int, queue_limit: int) -> None:
        if not 4 <= cost <= 31:
            raise ValueError("bcrypt cost must be 4-31")
        if threads < 1 or queue_limit < 1:
            raise ValueError("threads and queue_limit must be at least 1")
        self._cost = cost
        self._pepper = pepper
        self._queue_limit = queue_limit
        self._busy = 0  # calls waiting for or running in the pool; touched on the loop only
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bcrypt")
        # The dummy hash for unknown emails is made once, at the configured cost, and first in
        # the pool's FIFO queue, so any verify_dummy finds it ready or being made.
        self._dummy: Future[bytes] = self._pool.submit(self._make_dummy)

    @property
    def busy(self) -> int:
        """Calls waiting for or running in the pool (for metrics)."""
        return self._busy

    async def hash(self, password: str) -> bytes:
        """A new bcrypt hash of ``password`` to store."""
        prehashed = self._prehash(password)
        return await self._run(lambda: bcrypt.hashpw(prehashed, bcrypt.gensalt(self._cost)))

    async def verify(self, password: str, stored: bytes) -> bool:
        """Whether ``password`` matches ``stored`` (constant time inside bcrypt)."""
        prehashed = self._prehash(password)
        # A malformed stored hash raises ValueError: that is our bug, not a wrong password.
        return await self._run(lambda: bcrypt.checkpw(prehashed, stored))

    async def verify_dummy(self, password: str) -> bool:
        """One real bcrypt check against a fixed hash; always False.

        Used when the email is unknown, so that sign-in takes the same time either way (E1).
        """
        prehashed = self._prehash(password)

        def check() -> bool:
            bcrypt.checkpw(prehashed, self._dummy.result())
            return False

        return await self._run(check)

    def needs_rehash(self, stored: bytes) -> bool:
        """Whether ``stored`` was made at another cost than the configured one."""
        return not stored.startswith(b"$2b$%02d$" % self._cost)

    def close(self) -> None:
        """Stop the pool; queued calls are cancelled, a running one finishes in its thread."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _prehash(self, password: str) -> bytes:
        normalized = unicodedata.normalize("NFKC", password)
        # surrogatepass: a string that cannot be UTF-8 must fail verification, not raise.
        mac = hmac.digest(self._pepper, normalized.encode("utf-8", "surrogatepass"), "sha384")
        return base64.b64encode(mac)  # 64 ASCII bytes < bcrypt's 72

    def _make_dummy(self) -> bytes:
        return bcrypt.hashpw(base64.b64encode(secrets.token_bytes(48)), bcrypt.gensalt(self._cost))

    async def _run(self, work: Callable[[], T]) -> T:
        if self._busy >= self._queue_limit:
            raise Unavailable("server busy; retry")
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, work)
        self._busy += 1
        # The slot is freed when the thread is done, not when the caller gives up: bcrypt cannot
        # be interrupted, so a client that hangs up must not let unbounded work pile up behind.
        future.add_done_callback(self._release)
        return await asyncio.shield(future)

    def _release(self, _: asyncio.Future[Any]) -> None:
        self._busy -= 1
