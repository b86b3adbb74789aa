"""Sessions: issue, authenticate, list, revoke, and keep ``last_active`` fresh.

The store is the truth; this service keeps two pieces of node-local state on top of it:

* a short-lived per-user cache of session lists, so ``auth.getSessions`` on a busy socket does not
  cost a database round trip each time. Local writes and revocations delivered by the registry
  drop the user's entry; a session created on *another* node shows up within
  ``SESSION_CACHE_TTL`` seconds.
* a batch of pending ``last_active`` writes. An authorize queues one (with the device fields),
  each active socket queues one at most every ``last_active_interval``, a disconnect queues one;
  the batch is written once a second in one transaction.

It also runs the safety net behind the registry (SECURITY.md S3): every ``recheck_interval`` it
asks the store which of this node's live sessions still exist and revokes the sockets of the
ones that do not, and it deletes sessions past their idle or absolute lifetime.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.config import Settings
from gateway.errors import Forbidden, InvalidArgument, NotFound, Unauthenticated
from gateway.ids import SnowflakeGenerator
from gateway.registry.base import LiveSocket, Registry
from gateway.services import tokens
from gateway.store.base import SessionRecord, SessionTouch, Store

log = logging.getLogger("gateway.sessions")

SESSION_CACHE_TTL = 2.0
FLUSH_INTERVAL = 1.0
MAX_REVOKE_IDS = 256
MAX_SESSION_ID = 1 << 63  # store integers are signed 64-bit


@dataclass(frozen=True, slots=True)
class Device:
    """Where a session comes from: the connection's initialize fields and trusted geo headers."""

    client_id: int = 0
    device_type: str = ""
    device_version: str = ""
    app_version: str = ""
    country: str | None = None
    region: str | None = None
    ip: str = ""


class SessionService:
    def __init__(self, settings: Settings, store: Store, registry: Registry,
                 ids: SnowflakeGenerator, clock_ms: Callable[[], int]) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.ids = ids
        self.clock_ms = clock_ms
        self._cache: dict[int, tuple[float, list[SessionRecord]]] = {}
        self._pending: dict[int, SessionTouch] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._flush_loop(), name="last-active-flush"),
                       asyncio.create_task(self._recheck_loop(), name="session-recheck")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.flush()

    # -- issuing ------------------------------------------------------------------------------
    def new_session(self, user_id: int, device: Device) -> tuple[str, SessionRecord]:
        """A fresh session record and its token; the caller stores it (T4)."""
        session_id = self.ids.next_id()
        token, digest = tokens.new_token(session_id)
        now = self.clock_ms()
        record = SessionRecord(
            id=session_id, user_id=user_id, token_hash=digest, created_at=now, last_active=now,
            client_id=device.client_id, device_type=device.device_type,
            device_version=device.device_version, app_version=device.app_version,
            country=device.country, region=device.region,
        )
        return token, record

    async def create(self, user_id: int, device: Device) -> tuple[str, SessionRecord]:
        """Store a new session for an existing user; evicts the oldest idle one past the cap."""
        token, record = self.new_session(user_id, device)
        evicted = await self.store.create_session(record, self.settings.max_sessions_per_user)
        self._cache.pop(user_id, None)
        if evicted:
            log.info("user %d: session cap reached, revoked %s", user_id, evicted)
            await self.registry.revoke(user_id, evicted)
        return token, record

    # -- authenticating -----------------------------------------------------------------------
    async def authenticate(self, token: str) -> SessionRecord:
        """The live session a token belongs to; 401 for anything else (T6: checked every time)."""
        parsed = tokens.parse_token(token)
        # A token's id part may spell any 64-bit number, but session ids (snowflakes) fit in a
        # signed 64-bit store integer; a larger one is no session of ours, not a database error.
        if parsed is None or parsed[0] >= MAX_SESSION_ID:
            raise Unauthenticated("invalid token")
        session_id, secret = parsed
        record = await self.store.session_by_id(session_id)
        if record is None or not tokens.token_matches(secret, record.token_hash):
            raise Unauthenticated("invalid token")
        if self._expired(record, self.clock_ms()):
            await self.store.revoke_sessions(record.user_id, [record.id])
            self._cache.pop(record.user_id, None)
            await self.registry.revoke(record.user_id, [record.id])  # a socket may still hold it
            raise Unauthenticated("session expired")
        return record

    def _expired(self, record: SessionRecord, now: int) -> bool:
        s = self.settings
        if now - record.last_active > s.session_idle_timeout * 1000:
            return True
        return bool(s.session_absolute_timeout) and (
            now - record.created_at > s.session_absolute_timeout * 1000)

    def touch(self, record: SessionRecord, device: Device) -> None:
        """Queue the authorize-time refresh: last_active now, device fields of this socket."""
        self._queue(SessionTouch(
            session_id=record.id, last_active=self.clock_ms(), device=True,
            client_id=device.client_id, device_type=device.device_type,
            device_version=device.device_version, app_version=device.app_version,
            country=device.country, region=device.region,
        ))
        self._cache.pop(record.user_id, None)

    def touch_socket(self, sock: LiveSocket) -> None:
        """Queue a last_active refresh for a socket that was active (or just disconnected)."""
        if sock.session_id:
            self._queue(SessionTouch(session_id=sock.session_id, last_active=self.clock_ms()))

    def _queue(self, touch: SessionTouch) -> None:
        prev = self._pending.get(touch.session_id)
        if prev is not None and prev.device and not touch.device:
            return  # the queued device write already carries a fresh enough last_active
        self._pending[touch.session_id] = touch

    async def require_recent_sign_in(self, user_id: int, session_id: int) -> None:
        """Refuse (403) unless this session was made by a sign-in within ``reauth_window``.

        A stolen token alone must not be enough to take an account over: changing the email
        (then resetting the password through it), enabling TOTP, or scheduling deletion need
        a session whose password was typed recently. Sessions are created only by sign-in and
        sign-up; authorize resumes them, so ``created_at`` is when the password was checked.
        """
        record = await self.store.session_by_id(session_id)
        if record is None or record.user_id != user_id:
            raise Unauthenticated("session ended")
        window = self.settings.reauth_window
        if self.clock_ms() - record.created_at > window * 1000:
            raise Forbidden(f"sign in again first: this needs a sign-in from the last "
                            f"{window / 60:.0f} minutes")

    # -- listing and revoking -----------------------------------------------------------------
    async def of_user(self, user_id: int) -> list[SessionRecord]:
        now = time.monotonic()
        cached = self._cache.get(user_id)
        if cached is not None and now - cached[0] < SESSION_CACHE_TTL:
            return cached[1]
        records = await self.store.sessions_of_user(user_id)
        current = self.clock_ms()
        records = [r for r in records if not self._expired(r, current)]
        self._cache[user_id] = (now, records)
        return records

    def forget(self, user_id: int) -> None:
        self._cache.pop(user_id, None)

    async def revoke(self, user_id: int, session_ids: Sequence[int]) -> None:
        """Revoke some of the caller's own sessions: all or nothing (PROTOCOL.md §4.7)."""
        ids = list(dict.fromkeys(session_ids))
        if not ids:
            raise InvalidArgument("session_ids: give at least one")
        if len(ids) > MAX_REVOKE_IDS:
            raise InvalidArgument(f"session_ids: at most {MAX_REVOKE_IDS}")
        if not await self.store.revoke_sessions(user_id, ids):
            raise NotFound("no such session")
        self._cache.pop(user_id, None)
        for sid in ids:
            self._pending.pop(sid, None)
        await self.registry.revoke(user_id, ids)

    async def revoke_all(self, user_id: int, keep: int | None = None) -> list[int]:
        """End every session of a user but ``keep`` (password reset, account deletion)."""
        ids = await self.store.revoke_user_sessions(user_id, keep)
        self._cache.pop(user_id, None)
        if ids:
            await self.registry.revoke(user_id, ids)
        return ids

    # -- background work ----------------------------------------------------------------------
    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = list(self._pending.values()), {}
        try:
            await self.store.touch_sessions(batch)
        except Exception:
            log.warning("last_active flush failed; retrying next round", exc_info=True)
            for touch in batch:
                self._pending.setdefault(touch.session_id, touch)

    def sweep_active(self) -> None:
        """Queue a refresh for every socket that sent a request since the last sweep."""
        for sock in self.registry.local_sockets():
            if sock.active:
                sock.active = False
                self.touch_socket(sock)

    async def recheck(self) -> int:
        """Revoke local sockets whose session is gone from the store; returns how many."""
        socks = self.registry.local_sockets()
        if not socks:
            return 0
        live = await self.store.existing_sessions(list({s.session_id for s in socks}))
        closed = 0
        for sock in socks:
            if sock.session_id not in live and sock.revoke([sock.session_id]):
                self._cache.pop(sock.user_id, None)
                closed += 1
        if closed:
            log.info("re-check closed %d sockets of revoked sessions", closed)
        return closed

    async def expire(self) -> None:
        s = self.settings
        now = self.clock_ms()
        idle_before = now - int(s.session_idle_timeout * 1000)
        created_before = now - int(s.session_absolute_timeout * 1000) if s.session_absolute_timeout else None
        gone = await self.store.delete_expired_sessions(idle_before, created_before)
        by_user: dict[int, list[int]] = {}
        for sid, uid in gone:
            by_user.setdefault(uid, []).append(sid)
        for uid, sids in by_user.items():
            self._cache.pop(uid, None)
            await self.registry.revoke(uid, sids)

    async def _flush_loop(self) -> None:
        last_sweep = time.monotonic()
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            if time.monotonic() - last_sweep >= self.settings.last_active_interval:
                last_sweep = time.monotonic()
                self.sweep_active()
            await self.flush()

    async def _recheck_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.recheck_interval)
            try:
                await self.recheck()
                await self.expire()
            except Exception:
                log.warning("session re-check failed; next round in %.0f s",
                            self.settings.recheck_interval, exc_info=True)
