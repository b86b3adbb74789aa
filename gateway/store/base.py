"""The storage interface the services use, and the records it speaks in.

The services import only this module. ``store/sqlite.py`` implements it with aiosqlite; a
PostgreSQL implementation can follow behind the same methods. All times are Unix milliseconds
taken from the caller (the services own the clock), so expiry decisions use one clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.errors import Unavailable


class StoreError(Exception):
    """Base of storage errors the services translate to wire errors."""


class StoreUnavailable(StoreError, Unavailable):
    """The database could not answer (locked past the busy timeout, disk error, closed).

    On the wire it is a plain 503 "temporarily unavailable; retry" (SECURITY.md F1, F2): the
    detail, which may name SQLite's error, stays in ``detail`` for the log.
    """

    def __init__(self, detail: str = "") -> None:
        Unavailable.__init__(self)
        self.detail = detail

    def __str__(self) -> str:
        return self.detail or self.message


class EmailTaken(StoreError):
    """A user with this normalised email already exists."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: int
    name: str
    created_at: int
    email: str | None = None  # as the user typed it (shown back to them)
    email_norm: str | None = None  # case-folded NFKC form; unique
    password_hash: bytes | None = None  # None for name-only accounts
    email_confirmed: bool = False
    totp_secret: str | None = None
    pending_delete_at: int | None = None


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: int
    user_id: int
    token_hash: bytes  # SHA-256 of the token's secret part; the token itself is never stored
    created_at: int
    last_active: int
    client_id: int = 0
    device_type: str = ""
    device_version: str = ""
    app_version: str = ""
    country: str | None = None
    region: str | None = None


@dataclass(frozen=True, slots=True)
class SessionTouch:
    """A batched ``last_active`` write; device fields are set when ``device`` is true."""

    session_id: int
    last_active: int
    device: bool = False
    client_id: int = 0
    device_type: str = ""
    device_version: str = ""
    app_version: str = ""
    country: str | None = None
    region: str | None = None


class Store(Protocol):
    async def open(self) -> None:
        """Connect, set pragmas, apply pending migrations."""

    async def close(self) -> None: ...

    # -- users -------------------------------------------------------------------------------
    async def create_user(self, user: UserRecord, session: SessionRecord | None) -> None:
        """Insert the user and (if given) its first session in one transaction.

        Raises EmailTaken when ``user.email_norm`` is already used.
        """

    async def user_by_id(self, user_id: int) -> UserRecord | None: ...

    async def user_by_email(self, email_norm: str) -> UserRecord | None: ...

    # -- sessions ----------------------------------------------------------------------------
    async def create_session(self, session: SessionRecord, max_sessions: int) -> list[int]:
        """Insert a session; if the user then has more than ``max_sessions``, delete the ones
        with the oldest ``last_active`` (never the new one) in the same transaction and return
        their ids."""

    async def session_by_id(self, session_id: int) -> SessionRecord | None: ...

    async def sessions_of_user(self, user_id: int) -> list[SessionRecord]: ...

    async def revoke_sessions(self, user_id: int, session_ids: Sequence[int]) -> bool:
        """Delete all of ``session_ids`` if every one belongs to ``user_id``; otherwise delete
        nothing and return False."""

    async def revoke_user_sessions(self, user_id: int, keep: int | None = None) -> list[int]:
        """Delete every session of the user except ``keep``; return the deleted ids."""

    async def delete_expired_sessions(
        self, idle_before: int, created_before: int | None
    ) -> list[tuple[int, int]]:
        """Delete sessions idle since before ``idle_before`` or created before ``created_before``;
        return (session_id, user_id) pairs."""

    async def touch_sessions(self, touches: Sequence[SessionTouch]) -> None:
        """Apply many last_active (and device) updates in one transaction; missing ids are
        ignored; ``last_active`` never moves backwards."""

    async def existing_sessions(self, session_ids: Sequence[int]) -> set[int]:
        """Which of these session ids still exist."""
