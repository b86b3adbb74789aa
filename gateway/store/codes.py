"""Repository of one-time codes and the credential writes that consume them (SQLite).

Each write that depends on a code runs in one ``BEGIN IMMEDIATE`` transaction with the code's
check, so "the code was used" and "its effect happened" commit together or not at all
(SECURITY.md F3): a reset's new password, the end of every session and the consumption of every
code of the account are one commit.

Only ``code_mac`` (an HMAC computed by the service) is stored and compared, with
``hmac.compare_digest``; the row is looked up by (user_id, purpose), never by the secret.
"""

from __future__ import annotations

import enum
import hmac
import sqlite3

import aiosqlite

from gateway.store.base import EmailTaken
from gateway.store.sqlite import SqliteStore


class Purpose(enum.StrEnum):
    VERIFY = "verify"  # confirm the account's email address
    RESET = "reset"  # set a new password without the old one


class Verdict(enum.Enum):
    OK = "ok"  # the code matched (and, where the call consumes it, is now used)
    WRONG = "wrong"  # a wrong try, counted; the code lives on unless that was the last try
    GONE = "gone"  # no live code: none requested, expired, used, or out of tries


async def _judge(conn: aiosqlite.Connection, user_id: int, purpose: Purpose, mac: bytes,
                 now: int, max_attempts: int) -> Verdict:
    rows = list(await conn.execute_fetchall(
        "SELECT code_mac, expires_at, attempts FROM codes WHERE user_id = ? AND purpose = ?",
        (user_id, purpose.value),
    ))
    if not rows:
        return Verdict.GONE
    stored, expires_at, attempts = rows[0]
    if expires_at <= now or attempts >= max_attempts:
        await _drop(conn, user_id, purpose)
        return Verdict.GONE
    if hmac.compare_digest(bytes(stored), mac):
        return Verdict.OK
    if attempts + 1 >= max_attempts:
        await _drop(conn, user_id, purpose)  # dead now, even for the right code next time
    else:
        await conn.execute(
            "UPDATE codes SET attempts = attempts + 1 WHERE user_id = ? AND purpose = ?",
            (user_id, purpose.value),
        )
    return Verdict.WRONG


async def _drop(conn: aiosqlite.Connection, user_id: int, purpose: Purpose) -> None:
    await conn.execute("DELETE FROM codes WHERE user_id = ? AND purpose = ?",
                       (user_id, purpose.value))


async def _put(conn: aiosqlite.Connection, user_id: int, purpose: Purpose, mac: bytes,
               expires_at: int) -> None:
    await conn.execute(
        "INSERT INTO codes (user_id, purpose, code_mac, expires_at, attempts)"
        " VALUES (?, ?, ?, ?, 0) ON CONFLICT (user_id, purpose) DO UPDATE SET"
        " code_mac = excluded.code_mac, expires_at = excluded.expires_at, attempts = 0",
        (user_id, purpose.value, mac, expires_at),
    )


class CodeStore:
    def __init__(self, db: SqliteStore) -> None:
        self.db = db

    async def put(self, user_id: int, purpose: Purpose, mac: bytes, expires_at: int) -> None:
        """Store a new code for (user, purpose), replacing any previous one."""
        async def tx(conn: aiosqlite.Connection) -> None:
            await _put(conn, user_id, purpose, mac, expires_at)

        await self.db.write(tx)

    async def check(self, user_id: int, purpose: Purpose, mac: bytes, now: int,
                    max_attempts: int, *, consume: bool) -> Verdict:
        """Judge a presented code; a wrong one is counted; ``consume`` uses up a right one."""
        async def tx(conn: aiosqlite.Connection) -> Verdict:
            verdict = await _judge(conn, user_id, purpose, mac, now, max_attempts)
            if verdict is Verdict.OK and consume:
                await _drop(conn, user_id, purpose)
            return verdict

        return await self.db.write(tx)

    async def confirm_email(self, user_id: int, email_norm: str, mac: bytes, now: int,
                            max_attempts: int) -> Verdict:
        """Use the verification code and mark the address it was sent to as confirmed."""
        async def tx(conn: aiosqlite.Connection) -> Verdict:
            verdict = await _judge(conn, user_id, Purpose.VERIFY, mac, now, max_attempts)
            if verdict is Verdict.OK:
                await _drop(conn, user_id, Purpose.VERIFY)
                await conn.execute(
                    "UPDATE users SET email_confirmed = 1 WHERE id = ? AND email_norm = ?",
                    (user_id, email_norm),
                )
            return verdict

        return await self.db.write(tx)

    async def reset_password(self, user_id: int, mac: bytes, now: int, max_attempts: int,
                             password_hash: bytes) -> tuple[Verdict, list[int]]:
        """Use the reset code: set the password, consume every code of the account and delete
        all its sessions, in one transaction. Returns the verdict and the deleted session ids."""
        async def tx(conn: aiosqlite.Connection) -> tuple[Verdict, list[int]]:
            verdict = await _judge(conn, user_id, Purpose.RESET, mac, now, max_attempts)
            if verdict is not Verdict.OK:
                return verdict, []
            await conn.execute("UPDATE users SET password_hash = ? WHERE id = ?",
                               (password_hash, user_id))
            await conn.execute("DELETE FROM codes WHERE user_id = ?", (user_id,))
            rows = await conn.execute_fetchall(
                "DELETE FROM sessions WHERE user_id = ? RETURNING id", (user_id,))
            return verdict, sorted(row[0] for row in rows)

        return await self.db.write(tx)

    async def change_password(self, user_id: int, old_hash: bytes, new_hash: bytes,
                              revoke_except: int | None) -> list[int] | None:
        """Swap the password hash if it is still ``old_hash`` (None if it changed meanwhile),
        void reset codes, and with ``revoke_except`` delete every other session; returns the
        deleted session ids."""
        async def tx(conn: aiosqlite.Connection) -> list[int] | None:
            cursor = await conn.execute(
                "UPDATE users SET password_hash = ? WHERE id = ? AND password_hash = ?",
                (new_hash, user_id, old_hash),
            )
            if cursor.rowcount == 0:
                return None
            await _drop(conn, user_id, Purpose.RESET)
            if revoke_except is None:
                return []
            rows = await conn.execute_fetchall(
                "DELETE FROM sessions WHERE user_id = ? AND id <> ? RETURNING id",
                (user_id, revoke_except),
            )
            return sorted(row[0] for row in rows)

        return await self.db.write(tx)

    async def change_email(self, user_id: int, email: str, email_norm: str,
                           verify_mac: bytes | None, expires_at: int) -> bool:
        """Set a new, unconfirmed address; void every code of the account and (with
        ``verify_mac``) store the new verification code. False if the user is gone; raises
        EmailTaken when another account has the address."""
        async def tx(conn: aiosqlite.Connection) -> bool:
            cursor = await conn.execute(
                "UPDATE users SET email = ?, email_norm = ?, email_confirmed = 0 WHERE id = ?",
                (email, email_norm, user_id),
            )
            if cursor.rowcount == 0:
                return False
            await conn.execute("DELETE FROM codes WHERE user_id = ?", (user_id,))
            if verify_mac is not None:
                await _put(conn, user_id, Purpose.VERIFY, verify_mac, expires_at)
            return True

        try:
            return await self.db.write(tx)
        except sqlite3.IntegrityError as exc:
            if "email_norm" in str(exc):
                raise EmailTaken from None
            raise

    async def set_typed_email(self, user_id: int, email: str, email_norm: str) -> None:
        """Change only how the (same normalised) address is written."""
        async def tx(conn: aiosqlite.Connection) -> None:
            await conn.execute("UPDATE users SET email = ? WHERE id = ? AND email_norm = ?",
                               (email, user_id, email_norm))

        await self.db.write(tx)
