"""The Store on one SQLite file, through aiosqlite.

One writer connection carries every write, serialised by an asyncio lock, each in a
``BEGIN IMMEDIATE`` transaction: taking the write lock up front means a busy database fails at
BEGIN (after the busy timeout) rather than half-way through. A second, query-only connection
serves reads; in WAL mode they never wait for the writer. ``synchronous=NORMAL`` in WAL mode
survives a killed process without losing committed work; only a power cut may drop the last
commits, and never leaves the file inconsistent.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Final, TypeVar

import aiosqlite

from gateway.errors import InvalidArgument, NotFound
from gateway.store.base import (
    EmailTaken,
    SessionRecord,
    SessionTouch,
    StoreUnavailable,
    UserRecord,
)
from gateway.store.migrations import migrate

T = TypeVar("T")
Write = Callable[[aiosqlite.Connection], Awaitable[T]]

# Primary result codes meaning "the database cannot answer now", as opposed to our own SQL bugs
# (SQLITE_ERROR) or constraint violations, which must keep their own exception.
_UNAVAILABLE_CODES: Final = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_NOTADB,
    }
)

# Columns are named and ordered as the records' fields, so a row maps straight onto a record.
_USER_FIELDS: Final = tuple(f.name for f in fields(UserRecord))
_SESSION_FIELDS: Final = tuple(f.name for f in fields(SessionRecord))
_USER_COLUMNS: Final = ", ".join(_USER_FIELDS)
_SESSION_COLUMNS: Final = ", ".join(_SESSION_FIELDS)
_DEVICE_VALUES: Final = (
    "last_active", "client_id", "device_type", "device_version", "app_version", "country",
    "region", "session_id",
)  # fmt: skip


def _values(record: object, names: Sequence[str]) -> tuple[Any, ...]:
    return tuple(getattr(record, name) for name in names)


def _placeholders(names: Sequence[str]) -> str:
    return ", ".join("?" * len(names))


def _user(row: sqlite3.Row) -> UserRecord:
    user = UserRecord(*row)
    return replace(user, email_confirmed=bool(user.email_confirmed))  # stored as 0/1


def _session(row: sqlite3.Row) -> SessionRecord:
    return SessionRecord(*row)


def _id_list(ids: Iterable[int]) -> str:
    # A JSON array bound as one parameter (read with json_each) instead of one placeholder per
    # id: no SQL built from strings and no limit on the number of variables.
    return json.dumps(list(ids))


async def _insert_session(conn: aiosqlite.Connection, session: SessionRecord) -> None:
    await conn.execute(
        f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES ({_placeholders(_SESSION_FIELDS)})",
        _values(session, _SESSION_FIELDS),
    )


class SqliteStore:
    def __init__(self, path: str, *, busy_timeout_ms: int = 5000) -> None:
        self._path = path
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        if self._writer is not None or self._closed:
            raise RuntimeError("a SqliteStore opens only once")
        Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._unavailable():
                self._writer = await self._connect()
                await self._enable_wal(self._writer)
                await self._writer.execute("PRAGMA foreign_keys = ON")
                async with self._write_lock:
                    await migrate(self._writer)
                self._reader = await self._connect()
                await self._reader.execute("PRAGMA query_only = ON")
        except BaseException:
            await self._disconnect()
            raise

    async def _enable_wal(self, conn: aiosqlite.Connection) -> None:
        """Switch the file to WAL. The switch needs the file to itself and SQLite answers
        "locked" at once, without its busy handler, when another process (a second node
        starting on the same file) is in the way, so retry for up to the busy timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._busy_timeout_ms / 1000
        delay = 0.005
        while True:
            try:
                await conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as e:
                code = getattr(e, "sqlite_errorcode", -1) & 0xFF
                if code not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise
                if loop.time() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    async def _connect(self) -> aiosqlite.Connection:
        # isolation_level=None: sqlite3 opens no implicit transactions; we issue BEGIN ourselves.
        conn = await aiosqlite.connect(self._path, isolation_level=None)
        try:
            await conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            await conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            await conn.close()
            raise
        return conn

    async def close(self) -> None:
        self._closed = True
        await self._disconnect()

    async def _disconnect(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.close()
        # Let a write in flight finish rather than cut its connection under it.
        async with self._write_lock:
            writer, self._writer = self._writer, None
            if writer is not None:
                await writer.close()

    # -- plumbing ----------------------------------------------------------------------------
    @contextmanager
    def _unavailable(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.IntegrityError as e:
            if getattr(e, "sqlite_errorcode", -1) == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY:
                # A write that names a row deleted meanwhile (a sign-in racing its account's
                # deletion on another node): the thing asked for no longer exists.
                raise NotFound("no longer exists") from None
            raise
        except sqlite3.Error as e:
            if getattr(e, "sqlite_errorcode", -1) & 0xFF in _UNAVAILABLE_CODES:
                raise StoreUnavailable(f"database unavailable: {e}") from e
            raise
        except OverflowError:
            # A number from the wire past SQLite's signed 64 bits (a fixed64 id of 2^63 or
            # more): no such row can exist, and it is the caller's value that is wrong.
            raise InvalidArgument("a number is out of range") from None
        except ValueError as e:
            # aiosqlite's answer to a call that raced with close().
            if self._closed:
                raise StoreUnavailable("store is closed") from e
            raise

    def _conn(self, conn: aiosqlite.Connection | None) -> aiosqlite.Connection:
        if conn is None:
            raise StoreUnavailable("store is closed" if self._closed else "store is not open")
        return conn

    async def read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """One query on the read-only connection (repositories of other areas use this too)."""
        conn = self._conn(self._reader)
        with self._unavailable():
            return list(await conn.execute_fetchall(sql, params))

    async def write(self, fn: Write[T]) -> T:
        """Run ``fn`` on the writer inside one BEGIN IMMEDIATE transaction; commit if it
        returns, roll back if it raises."""
        async with self._write_lock:
            conn = self._conn(self._writer)
            with self._unavailable():
                try:
                    await conn.execute("BEGIN IMMEDIATE")
                    result = await fn(conn)
                    await conn.execute("COMMIT")
                except BaseException:
                    # Also on cancellation, whose statement may still be running in
                    # aiosqlite's thread: rollback() is queued behind it, and is a no-op if no
                    # transaction is open by then (BEGIN failed, COMMIT landed, SQLite already
                    # rolled back after an I/O error).
                    await conn.rollback()
                    raise
                return result

    # -- users -------------------------------------------------------------------------------
    async def create_user(self, user: UserRecord, session: SessionRecord | None) -> None:
        async def tx(conn: aiosqlite.Connection) -> None:
            # ON CONFLICT names the email index only, so a duplicate id still raises: that is
            # an id-generator bug, not a taken email.
            cursor = await conn.execute(
                f"INSERT INTO users ({_USER_COLUMNS}) VALUES ({_placeholders(_USER_FIELDS)})"
                " ON CONFLICT (email_norm) DO NOTHING",
                _values(user, _USER_FIELDS),
            )
            if cursor.rowcount == 0:
                raise EmailTaken  # no address in the message: it would reach logs
            if session is not None:
                await _insert_session(conn, session)

        await self.write(tx)

    async def user_by_id(self, user_id: int) -> UserRecord | None:
        rows = await self.read(f"SELECT {_USER_COLUMNS} FROM users WHERE id = ?", (user_id,))
        return _user(rows[0]) if rows else None

    async def user_by_email(self, email_norm: str) -> UserRecord | None:
        rows = await self.read(
            f"SELECT {_USER_COLUMNS} FROM users WHERE email_norm = ?", (email_norm,)
        )
        return _user(rows[0]) if rows else None

    # -- sessions ----------------------------------------------------------------------------
    async def create_session(self, session: SessionRecord, max_sessions: int) -> list[int]:
        async def tx(conn: aiosqlite.Connection) -> list[int]:
            await _insert_session(conn, session)
            # Keep the (max_sessions - 1) most recently active others beside the new one.
            rows = await conn.execute_fetchall(
                "DELETE FROM sessions WHERE id IN ("
                " SELECT id FROM sessions WHERE user_id = ? AND id <> ?"
                " ORDER BY last_active DESC, id DESC LIMIT -1 OFFSET ?"
                ") RETURNING id",
                (session.user_id, session.id, max(max_sessions - 1, 0)),
            )
            return sorted(row[0] for row in rows)

        return await self.write(tx)

    async def session_by_id(self, session_id: int) -> SessionRecord | None:
        rows = await self.read(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)
        )
        return _session(rows[0]) if rows else None

    async def sessions_of_user(self, user_id: int) -> list[SessionRecord]:
        rows = await self.read(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE user_id = ?"
            " ORDER BY last_active DESC, id DESC",
            (user_id,),
        )
        return [_session(row) for row in rows]

    async def revoke_sessions(self, user_id: int, session_ids: Sequence[int]) -> bool:
        wanted = set(session_ids)
        if not wanted:
            return True
        ids = _id_list(wanted)

        async def tx(conn: aiosqlite.Connection) -> bool:
            rows = await conn.execute_fetchall(
                "SELECT count(*) FROM sessions"
                " WHERE user_id = ? AND id IN (SELECT value FROM json_each(?))",
                (user_id, ids),
            )
            if next(iter(rows))[0] != len(wanted):
                return False  # someone else's or already gone: touch nothing
            await conn.execute(
                "DELETE FROM sessions WHERE id IN (SELECT value FROM json_each(?))", (ids,)
            )
            return True

        return await self.write(tx)

    async def revoke_user_sessions(self, user_id: int, keep: int | None = None) -> list[int]:
        async def tx(conn: aiosqlite.Connection) -> list[int]:
            # "id IS NOT NULL" holds for every row, so keep=None deletes them all.
            rows = await conn.execute_fetchall(
                "DELETE FROM sessions WHERE user_id = ? AND id IS NOT ? RETURNING id",
                (user_id, keep),
            )
            return sorted(row[0] for row in rows)

        return await self.write(tx)

    async def delete_expired_sessions(
        self, idle_before: int, created_before: int | None
    ) -> list[tuple[int, int]]:
        async def tx(conn: aiosqlite.Connection) -> list[tuple[int, int]]:
            # "created_at < NULL" is never true, so created_before=None turns that test off.
            rows = await conn.execute_fetchall(
                "DELETE FROM sessions WHERE last_active < ? OR created_at < ?"
                " RETURNING id, user_id",
                (idle_before, created_before),
            )
            return sorted((row[0], row[1]) for row in rows)

        return await self.write(tx)

    async def touch_sessions(self, touches: Sequence[SessionTouch]) -> None:
        if not touches:
            return
        plain = [(t.last_active, t.session_id) for t in touches if not t.device]
        device = [_values(t, _DEVICE_VALUES) for t in touches if t.device]

        async def tx(conn: aiosqlite.Connection) -> None:
            # MAX() because batches from several nodes may land out of order.
            if plain:
                await conn.executemany(
                    "UPDATE sessions SET last_active = MAX(last_active, ?) WHERE id = ?", plain
                )
            if device:
                await conn.executemany(
                    "UPDATE sessions SET last_active = MAX(last_active, ?), client_id = ?,"
                    " device_type = ?, device_version = ?, app_version = ?, country = ?,"
                    " region = ? WHERE id = ?",
                    device,
                )

        await self.write(tx)

    async def existing_sessions(self, session_ids: Sequence[int]) -> set[int]:
        if not session_ids:
            return set()
        rows = await self.read(
            "SELECT id FROM sessions WHERE id IN (SELECT value FROM json_each(?))",
            (_id_list(session_ids),),
        )
        return {row[0] for row in rows}
