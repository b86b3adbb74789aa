"""Versioned schema migrations for the SQLite store.

Each migration is applied once, in order, inside its own ``BEGIN IMMEDIATE`` transaction that
also records its version in ``schema_version``; a crash mid-migration leaves the previous schema.
Version 1 is below; later versions are the files ``sql/NNNN_<what>.sql`` beside this module,
applied in the order of their number (one file per area, so areas do not edit one list).
Append new migrations; never edit one that has shipped.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from importlib import resources
from typing import Final

import aiosqlite

_V1: Final = (
    (
        1,
        """
        CREATE TABLE users (
            id                INTEGER PRIMARY KEY,
            name              TEXT NOT NULL,
            email             TEXT,
            email_norm        TEXT UNIQUE,
            password_hash     BLOB,
            email_confirmed   INTEGER NOT NULL DEFAULT 0,
            totp_secret       TEXT,
            created_at        INTEGER NOT NULL,
            pending_delete_at INTEGER
        );
        CREATE TABLE sessions (
            id             INTEGER PRIMARY KEY,
            user_id        INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            token_hash     BLOB NOT NULL,
            created_at     INTEGER NOT NULL,
            last_active    INTEGER NOT NULL,
            client_id      INTEGER NOT NULL DEFAULT 0,
            device_type    TEXT NOT NULL DEFAULT '',
            device_version TEXT NOT NULL DEFAULT '',
            app_version    TEXT NOT NULL DEFAULT '',
            country        TEXT,
            region         TEXT
        );
        -- (user_id, last_active) also serves the per-user cap's "oldest idle" order.
        CREATE INDEX sessions_user ON sessions (user_id, last_active);
        CREATE INDEX sessions_last_active ON sessions (last_active);
        """,
    ),
)

_SQL_FILE = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")


def _file_migrations() -> tuple[tuple[int, str], ...]:
    found = []
    for entry in resources.files("gateway.store").joinpath("sql").iterdir():
        match = _SQL_FILE.fullmatch(entry.name)
        if match is not None:
            found.append((int(match.group(1)), entry.read_text(encoding="utf-8")))
    return tuple(sorted(found))


MIGRATIONS: Final[tuple[tuple[int, str], ...]] = _V1 + _file_migrations()
if len({v for v, _ in MIGRATIONS}) != len(MIGRATIONS):
    raise RuntimeError("two migrations share a version number")


class SchemaTooNew(Exception):
    """The database was migrated by a newer gateway; running old code on it could corrupt it."""


def _statements(script: str) -> Iterator[str]:
    # executescript() would COMMIT our open transaction first, so statements run one by one.
    # A statement is cut where sqlite3 says it is complete, at the end of a line.
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""
    if pending.strip() and not pending.strip().startswith("--"):
        raise ValueError(f"incomplete SQL statement in migration: {pending.strip()[:60]!r}")


async def _applied(conn: aiosqlite.Connection) -> set[int]:
    rows = await conn.execute_fetchall("SELECT version FROM schema_version")
    return {int(row[0]) for row in rows}


async def migrate(conn: aiosqlite.Connection) -> list[int]:
    """Apply the pending migrations on ``conn`` (opened with ``isolation_level=None``).

    Returns the versions applied, in order; empty when the schema was current.
    """
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)"
    )
    known = {version for version, _ in MIGRATIONS}
    unknown = await _applied(conn) - known
    if unknown:
        raise SchemaTooNew(f"database has schema versions {sorted(unknown)} this code lacks")

    done: list[int] = []
    for version, script in MIGRATIONS:
        try:
            await conn.execute("BEGIN IMMEDIATE")
            # Re-read under the write lock: another process may have migrated meanwhile.
            if version in await _applied(conn):
                await conn.rollback()
                continue
            for statement in _statements(script):
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (version, time.time_ns() // 1_000_000),
            )
            await conn.execute("COMMIT")
        except BaseException:
            await conn.rollback()  # a no-op if BEGIN itself failed
            raise
        done.append(version)
    return done


async def migrate_file(path: str, *, busy_timeout_ms: int = 5000) -> list[int]:
    """Open the database at ``path``, migrate it and close it (for the admin command line)."""
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        await conn.execute("PRAGMA journal_mode = WAL")
        return await migrate(conn)
    finally:
        await conn.close()
