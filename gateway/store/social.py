"""Repository of communities, groups, relationships and invites, on the SQLite store.

Every write runs in one ``BEGIN IMMEDIATE`` transaction through ``SqliteStore.write``. A refused
write raises ``Refused`` from inside the transaction, so nothing of it is kept: in particular an
invite use is counted if and only if its redemption and its effect are written (I1, F3).
"""

from __future__ import annotations

import enum
import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Final

import aiosqlite

from gateway.store.base import UserRecord
from gateway.store.sqlite import SqliteStore

COMMUNITY: Final = 1  # auth.InviteType
GROUP: Final = 2
USER: Final = 3
FRIEND: Final = 1  # types.RelationshipStatus


class Refusal(enum.Enum):
    INVITE_MISSING = "invite missing"
    INVITE_GONE = "invite expired or used up"
    TARGET_GONE = "invite target no longer exists"
    OWN_INVITE = "own user invite"
    ALREADY_REDEEMED = "already redeemed"
    ALREADY_MEMBER = "already a member or friend"
    GROUP_FULL = "group full"
    TOO_MANY_INVITES = "too many live invites"


class Refused(Exception):
    def __init__(self, reason: Refusal) -> None:
        super().__init__(reason.value)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CommunityRecord:
    id: int
    name: str
    owner_id: int
    created_at: int


@dataclass(frozen=True, slots=True)
class GroupRecord:
    id: int
    name: str
    owner_id: int
    created_at: int
    member_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class InviteRecord:
    code: str
    creator_id: int
    target_type: int
    target_id: int
    created_at: int
    expires_at: int | None = None
    max_uses: int = 0
    uses: int = 0

    def live(self, now: int) -> bool:
        return ((self.expires_at is None or self.expires_at > now)
                and (self.max_uses == 0 or self.uses < self.max_uses))


_INVITE_FIELDS: Final = tuple(f.name for f in fields(InviteRecord))
_INVITE_COLUMNS: Final = ", ".join(_INVITE_FIELDS)
# The same rule as InviteRecord.live, in SQL; the one parameter is "now".
_LIVE: Final = "(expires_at IS NULL OR expires_at > ?) AND (max_uses = 0 OR uses < max_uses)"


def _ids(ids: Iterable[int]) -> str:
    return json.dumps(sorted(set(ids)))


def _invite(row: sqlite3.Row) -> InviteRecord:
    return InviteRecord(*row)


async def _one(conn: aiosqlite.Connection, sql: str, params: Sequence[object]) -> sqlite3.Row | None:
    rows = list(await conn.execute_fetchall(sql, params))
    return rows[0] if rows else None


class SocialRepository:
    def __init__(self, db: SqliteStore) -> None:
        self._db = db

    # -- users -------------------------------------------------------------------------------
    async def users(self, user_ids: Iterable[int]) -> list[UserRecord]:
        rows = await self._db.read(
            "SELECT id, name, created_at FROM users WHERE id IN (SELECT value FROM json_each(?))"
            " ORDER BY id", (_ids(user_ids),))
        return [UserRecord(id=r[0], name=r[1], created_at=r[2]) for r in rows]

    # -- communities -------------------------------------------------------------------------
    async def create_community(self, community: CommunityRecord) -> None:
        async def tx(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "INSERT INTO communities (id, name, owner_id, created_at) VALUES (?, ?, ?, ?)",
                (community.id, community.name, community.owner_id, community.created_at))
            await conn.execute(
                "INSERT INTO community_members (community_id, user_id, joined_at)"
                " VALUES (?, ?, ?)", (community.id, community.owner_id, community.created_at))

        await self._db.write(tx)

    async def community(self, community_id: int) -> CommunityRecord | None:
        rows = await self._db.read(
            "SELECT id, name, owner_id, created_at FROM communities WHERE id = ?",
            (community_id,))
        return CommunityRecord(*rows[0]) if rows else None

    async def communities_of(self, user_id: int) -> list[CommunityRecord]:
        rows = await self._db.read(
            "SELECT c.id, c.name, c.owner_id, c.created_at FROM community_members m"
            " JOIN communities c ON c.id = m.community_id WHERE m.user_id = ?"
            " ORDER BY m.joined_at, c.id", (user_id,))
        return [CommunityRecord(*r) for r in rows]

    async def is_community_member(self, community_id: int, user_id: int) -> bool:
        rows = await self._db.read(
            "SELECT 1 FROM community_members WHERE community_id = ? AND user_id = ?",
            (community_id, user_id))
        return bool(rows)

    # -- groups ------------------------------------------------------------------------------
    async def create_group(self, group: GroupRecord) -> None:
        async def tx(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "INSERT INTO chat_groups (id, name, owner_id, created_at) VALUES (?, ?, ?, ?)",
                (group.id, group.name, group.owner_id, group.created_at))
            await conn.executemany(
                "INSERT INTO group_members (group_id, user_id, joined_at) VALUES (?, ?, ?)",
                [(group.id, uid, group.created_at) for uid in group.member_ids])

        await self._db.write(tx)

    async def group(self, group_id: int) -> GroupRecord | None:
        rows = await self._db.read(
            "SELECT id, name, owner_id, created_at FROM chat_groups WHERE id = ?", (group_id,))
        if not rows:
            return None
        members = await self._db.read(
            "SELECT user_id FROM group_members WHERE group_id = ? ORDER BY joined_at, user_id",
            (group_id,))
        row = rows[0]
        return GroupRecord(row[0], row[1], row[2], row[3], tuple(m[0] for m in members))

    # -- relationships -----------------------------------------------------------------------
    async def relationships(self, user_id: int) -> list[tuple[int, int]]:
        """(other user id, status) pairs as ``user_id`` sees them."""
        rows = await self._db.read(
            "SELECT other_id, status FROM relationships WHERE user_id = ? ORDER BY since, other_id",
            (user_id,))
        return [(r[0], r[1]) for r in rows]

    # -- invites -----------------------------------------------------------------------------
    async def add_invite(self, invite: InviteRecord, max_live: int) -> bool:
        """Insert the invite unless its target already has ``max_live`` live invites (Refused).
        False when the code is taken (the caller draws another)."""
        async def tx(conn: aiosqlite.Connection) -> bool:
            row = await _one(
                conn, f"SELECT count(*) FROM invites WHERE target_type = ? AND target_id = ?"
                f" AND {_LIVE}", (invite.target_type, invite.target_id, invite.created_at))
            if row is not None and row[0] >= max_live:
                raise Refused(Refusal.TOO_MANY_INVITES)
            cursor = await conn.execute(
                f"INSERT INTO invites ({_INVITE_COLUMNS})"
                f" VALUES ({', '.join('?' * len(_INVITE_FIELDS))}) ON CONFLICT (code) DO NOTHING",
                tuple(getattr(invite, name) for name in _INVITE_FIELDS))
            return cursor.rowcount == 1

        return await self._db.write(tx)

    async def invite(self, code: str) -> InviteRecord | None:
        rows = await self._db.read(
            f"SELECT {_INVITE_COLUMNS} FROM invites WHERE code = ?", (code,))
        return _invite(rows[0]) if rows else None

    async def live_invites(self, target_type: int, target_id: int, now: int,
                           creator_id: int | None = None) -> list[InviteRecord]:
        """Live invites of a target, oldest first; only ``creator_id``'s when given."""
        rows = await self._db.read(
            f"SELECT {_INVITE_COLUMNS} FROM invites WHERE target_type = ? AND target_id = ?"
            f" AND {_LIVE} AND (? IS NULL OR creator_id = ?) ORDER BY created_at, code",
            (target_type, target_id, now, creator_id, creator_id))
        return [_invite(r) for r in rows]

    async def delete_invite(self, code: str) -> bool:
        async def tx(conn: aiosqlite.Connection) -> bool:
            cursor = await conn.execute("DELETE FROM invites WHERE code = ?", (code,))
            return cursor.rowcount == 1

        return await self._db.write(tx)

    async def redeem(self, code: str, user_id: int, now: int,
                     max_group_members: int) -> InviteRecord:
        """Use an invite: count the use, record the redemption and apply the effect (membership
        or friendship) in one transaction, or raise Refused and change nothing."""
        async def tx(conn: aiosqlite.Connection) -> InviteRecord:
            row = await _one(conn, f"SELECT {_INVITE_COLUMNS} FROM invites WHERE code = ?",
                             (code,))
            if row is None:
                raise Refused(Refusal.INVITE_MISSING)
            invite = _invite(row)
            if invite.expires_at is not None and invite.expires_at <= now:
                raise Refused(Refusal.INVITE_GONE)
            if invite.target_type == USER and invite.target_id == user_id:
                raise Refused(Refusal.OWN_INVITE)
            cursor = await conn.execute(
                "INSERT INTO invite_redemptions (code, user_id, used_at) VALUES (?, ?, ?)"
                " ON CONFLICT (code, user_id) DO NOTHING", (code, user_id, now))
            if cursor.rowcount != 1:
                raise Refused(Refusal.ALREADY_REDEEMED)
            await _apply(conn, invite, user_id, now, max_group_members)
            # The one conditional write that keeps uses <= max_uses (I1).
            cursor = await conn.execute(
                "UPDATE invites SET uses = uses + 1"
                " WHERE code = ? AND (max_uses = 0 OR uses < max_uses)", (code,))
            if cursor.rowcount != 1:
                raise Refused(Refusal.INVITE_GONE)
            return invite

        return await self._db.write(tx)


async def _apply(conn: aiosqlite.Connection, invite: InviteRecord, user_id: int, now: int,
                 max_group_members: int) -> None:
    target = invite.target_id
    if invite.target_type == COMMUNITY:
        if await _one(conn, "SELECT 1 FROM communities WHERE id = ?", (target,)) is None:
            raise Refused(Refusal.TARGET_GONE)
        cursor = await conn.execute(
            "INSERT INTO community_members (community_id, user_id, joined_at) VALUES (?, ?, ?)"
            " ON CONFLICT DO NOTHING", (target, user_id, now))
    elif invite.target_type == GROUP:
        if await _one(conn, "SELECT 1 FROM chat_groups WHERE id = ?", (target,)) is None:
            raise Refused(Refusal.TARGET_GONE)
        if await _one(conn, "SELECT 1 FROM group_members WHERE group_id = ? AND user_id = ?",
                      (target, user_id)) is not None:
            raise Refused(Refusal.ALREADY_MEMBER)
        row = await _one(conn, "SELECT count(*) FROM group_members WHERE group_id = ?", (target,))
        if row is not None and row[0] >= max_group_members:
            raise Refused(Refusal.GROUP_FULL)
        cursor = await conn.execute(
            "INSERT INTO group_members (group_id, user_id, joined_at) VALUES (?, ?, ?)",
            (target, user_id, now))
    else:
        if await _one(conn, "SELECT 1 FROM users WHERE id = ?", (target,)) is None:
            raise Refused(Refusal.TARGET_GONE)
        existing = await _one(
            conn, "SELECT status FROM relationships WHERE user_id = ? AND other_id = ?",
            (user_id, target))
        if existing is not None and existing[0] == FRIEND:
            raise Refused(Refusal.ALREADY_MEMBER)
        # Any other standing (none is created by this gateway yet) becomes friendship both ways.
        cursor = await conn.executemany(
            "INSERT INTO relationships (user_id, other_id, status, since) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (user_id, other_id) DO UPDATE SET status = excluded.status,"
            " since = excluded.since",
            [(user_id, target, FRIEND, now), (target, user_id, FRIEND, now)])
        return
    if cursor.rowcount != 1:
        raise Refused(Refusal.ALREADY_MEMBER)
