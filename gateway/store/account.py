"""The account-settings repository on the SQLite store: TOTP state and account deletion.

Every write is one ``SqliteStore.write`` transaction (BEGIN IMMEDIATE), and every "use once"
step is a conditional statement whose row count says whether this caller won, so two requests
racing for one backup code or one TOTP step cannot both succeed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import aiosqlite

from gateway.store.sqlite import SqliteStore


@dataclass(frozen=True, slots=True)
class DeletedAccount:
    user_id: int
    session_ids: list[int]


class SqliteAccountRepo:
    def __init__(self, db: SqliteStore) -> None:
        self._db = db

    # -- TOTP enrolment -------------------------------------------------------------------------
    async def set_pending(self, user_id: int, secret: str, now: int) -> None:
        async def tx(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "INSERT INTO totp_pending (user_id, secret, created_at) VALUES (?, ?, ?)"
                " ON CONFLICT (user_id) DO UPDATE"
                " SET secret = excluded.secret, created_at = excluded.created_at",
                (user_id, secret, now),
            )

        await self._db.write(tx)

    async def pending(self, user_id: int, created_after: int) -> str | None:
        rows = await self._db.read(
            "SELECT secret FROM totp_pending WHERE user_id = ? AND created_at > ?",
            (user_id, created_after),
        )
        return str(rows[0][0]) if rows else None

    async def drop_pending(self, user_id: int) -> None:
        async def tx(conn: aiosqlite.Connection) -> None:
            await conn.execute("DELETE FROM totp_pending WHERE user_id = ?", (user_id,))

        await self._db.write(tx)

    async def enable(self, user_id: int, secret: str, code_hashes: Sequence[bytes],
                     step: int) -> bool:
        """Turn the pending ``secret`` into the account's; False (nothing changed) if that
        enrolment is no longer pending or TOTP got enabled meanwhile."""

        async def tx(conn: aiosqlite.Connection) -> bool:
            cur = await conn.execute(
                "DELETE FROM totp_pending WHERE user_id = ? AND secret = ?", (user_id, secret)
            )
            if cur.rowcount != 1:
                return False
            cur = await conn.execute(
                "UPDATE users SET totp_secret = ? WHERE id = ? AND totp_secret IS NULL",
                (secret, user_id),
            )
            if cur.rowcount != 1:
                return False  # the transaction still commits the dropped enrolment; harmless
            await conn.execute("DELETE FROM totp_backup_codes WHERE user_id = ?", (user_id,))
            await conn.executemany(
                "INSERT INTO totp_backup_codes (user_id, code_hash) VALUES (?, ?)",
                [(user_id, h) for h in code_hashes],
            )
            await _put_step(conn, user_id, step)
            return True

        return await self._db.write(tx)

    async def disable(self, user_id: int) -> None:
        async def tx(conn: aiosqlite.Connection) -> None:
            await conn.execute("UPDATE users SET totp_secret = NULL WHERE id = ?", (user_id,))
            await _forget_totp(conn, user_id)

        await self._db.write(tx)

    # -- TOTP use -------------------------------------------------------------------------------
    async def accept_step(self, user_id: int, step: int) -> bool:
        """Record ``step`` as used; False if it (or a later one) was accepted before."""

        async def tx(conn: aiosqlite.Connection) -> bool:
            cur = await conn.execute(
                "INSERT INTO totp_last_step (user_id, step) VALUES (?, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET step = excluded.step"
                " WHERE step < excluded.step",
                (user_id, step),
            )
            return cur.rowcount == 1

        return await self._db.write(tx)

    async def use_backup_code(self, user_id: int, code_hash: bytes, now: int) -> bool:
        async def tx(conn: aiosqlite.Connection) -> bool:
            cur = await conn.execute(
                "UPDATE totp_backup_codes SET used_at = ?"
                " WHERE user_id = ? AND code_hash = ? AND used_at IS NULL",
                (now, user_id, code_hash),
            )
            return cur.rowcount == 1

        return await self._db.write(tx)

    async def unused_backup_codes(self, user_id: int) -> int:
        rows = await self._db.read(
            "SELECT count(*) FROM totp_backup_codes WHERE user_id = ? AND used_at IS NULL",
            (user_id,),
        )
        return int(rows[0][0])

    # -- deletion -------------------------------------------------------------------------------
    async def schedule_delete(self, user_id: int, at: int) -> None:
        """Mark the account for deletion at ``at``; an earlier schedule is kept."""

        async def tx(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "UPDATE users SET pending_delete_at = COALESCE(pending_delete_at, ?) WHERE id = ?",
                (at, user_id),
            )

        await self._db.write(tx)

    async def cancel_delete(self, user_id: int) -> bool:
        async def tx(conn: aiosqlite.Connection) -> bool:
            cur = await conn.execute(
                "UPDATE users SET pending_delete_at = NULL"
                " WHERE id = ? AND pending_delete_at IS NOT NULL",
                (user_id,),
            )
            return cur.rowcount == 1

        return await self._db.write(tx)

    async def delete_due(self, now: int, limit: int) -> list[DeletedAccount]:
        """Delete up to ``limit`` accounts whose deletion time has come, in one transaction;
        return each with the sessions it had (their sockets are to be kicked)."""

        async def tx(conn: aiosqlite.Connection) -> list[DeletedAccount]:
            users = await conn.execute_fetchall(
                "SELECT id FROM users WHERE pending_delete_at <= ?"
                " ORDER BY pending_delete_at LIMIT ?",
                (now, limit),
            )
            out = []
            for (user_id,) in users:
                sessions = await conn.execute_fetchall(
                    "SELECT id FROM sessions WHERE user_id = ?", (user_id,)
                )
                await _forget_totp(conn, user_id)
                await conn.execute("DELETE FROM totp_pending WHERE user_id = ?", (user_id,))
                await conn.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,))
                await conn.execute("DELETE FROM users WHERE id = ?", (user_id,))
                out.append(DeletedAccount(int(user_id), sorted(int(r[0]) for r in sessions)))
            return out

        return await self._db.write(tx)


async def _forget_totp(conn: aiosqlite.Connection, user_id: int) -> None:
    await conn.execute("DELETE FROM totp_backup_codes WHERE user_id = ?", (user_id,))
    await conn.execute("DELETE FROM totp_last_step WHERE user_id = ?", (user_id,))


async def _put_step(conn: aiosqlite.Connection, user_id: int, step: int) -> None:
    await conn.execute(
        "INSERT INTO totp_last_step (user_id, step) VALUES (?, ?)"
        " ON CONFLICT (user_id) DO UPDATE SET step = MAX(step, excluded.step)",
        (user_id, step),
    )
