"""Invites, communities, groups and friends (PROTOCOL.md §4.12-§4.14; SECURITY.md I1, I2, L5, F4).

The rules live here; SQL lives in ``store/social.py``. Every change is committed before its
updates are pushed, so a pushed update always describes stored truth. Expiry is decided with this
node's clock (``services.clock_ms``), never a client's.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from gateway import wire
from gateway.config import Settings
from gateway.errors import (
    Conflict,
    Forbidden,
    Gone,
    Internal,
    InvalidArgument,
    NotFound,
    RPCFailure,
)
from gateway.ids import SnowflakeGenerator
from gateway.proto import updates_pb2
from gateway.registry.base import Registry
from gateway.services.accounts import normalize_name
from gateway.services.throttle import Throttles
from gateway.store.base import UserRecord
from gateway.store.social import (
    COMMUNITY,
    FRIEND,
    GROUP,
    USER,
    CommunityRecord,
    GroupRecord,
    InviteRecord,
    Refusal,
    Refused,
    SocialRepository,
)

if TYPE_CHECKING:
    from gateway.app import Services

log = logging.getLogger("gateway.social")

CODE_ALPHABET: Final = string.ascii_letters + string.digits  # URL-safe as it is
_CODE_ATTEMPTS: Final = 5

_REFUSALS: Final[dict[Refusal, Callable[[], RPCFailure]]] = {
    Refusal.INVITE_MISSING: lambda: NotFound("invite not found"),
    Refusal.INVITE_GONE: lambda: Gone("invite expired or used up"),
    Refusal.TARGET_GONE: lambda: Gone("the invite's target no longer exists"),
    Refusal.OWN_INVITE: lambda: InvalidArgument("cannot use your own invite"),
    Refusal.ALREADY_REDEEMED: lambda: Conflict("you already used this invite"),
    Refusal.ALREADY_MEMBER: lambda: Conflict("already a member (or already friends)"),
    Refusal.GROUP_FULL: lambda: Forbidden("the group is full"),
    Refusal.TOO_MANY_INVITES: lambda: Forbidden("too many live invites for this target"),
}

Target = CommunityRecord | GroupRecord | UserRecord


@dataclass(frozen=True, slots=True)
class Preview:
    invite: InviteRecord
    creator: UserRecord | None
    target: Target | None


class SocialService:
    def __init__(self, settings: Settings, repo: SocialRepository, registry: Registry,
                 throttles: Throttles, ids: SnowflakeGenerator,
                 clock_ms: Callable[[], int]) -> None:
        self.settings = settings
        self.repo = repo
        self.registry = registry
        self.throttles = throttles
        self.ids = ids
        self.clock_ms = clock_ms

    async def start(self) -> None:
        """No background work."""

    async def stop(self) -> None:
        """No background work."""

    # -- communities -------------------------------------------------------------------------
    async def create_community(self, user_id: int, name: str) -> CommunityRecord:
        clean = normalize_name(name, self.settings.chat_name_max_chars)
        record = CommunityRecord(self.ids.next_id(), clean, user_id, self.clock_ms())
        await self.repo.create_community(record)
        log.info("community created id=%d owner=%d", record.id, user_id)
        await self._push_community(user_id, record)
        return record

    async def communities(self, user_id: int) -> list[CommunityRecord]:
        return await self.repo.communities_of(user_id)

    # -- groups ------------------------------------------------------------------------------
    async def create_group(self, user_id: int, member_ids: Sequence[int],
                           name: str) -> GroupRecord:
        clean = normalize_name(name, self.settings.chat_name_max_chars) if name.strip() else ""
        others = list(dict.fromkeys(uid for uid in member_ids if uid != user_id))
        limit = self.settings.max_group_members
        if len(others) + 1 > limit:
            raise InvalidArgument(f"users: a group has at most {limit} participants")
        found = {u.id for u in await self.repo.users(others)}
        if len(found) != len(others):
            raise NotFound("user not found")
        record = GroupRecord(self.ids.next_id(), clean, user_id, self.clock_ms(),
                             (user_id, *others))
        await self.repo.create_group(record)
        log.info("group created id=%d owner=%d members=%d", record.id, user_id,
                 len(record.member_ids))
        await self._push_group(record)
        return record

    # -- invites -----------------------------------------------------------------------------
    async def invite_target(self, user_id: int, kind: str | None, target_id: int = 0,
                            channel_id: int = 0) -> tuple[int, Target]:
        """Resolve a ChatRef (§4.13) to (InviteType, target) the caller may invite to."""
        if kind == "group":
            group = await self.repo.group(target_id)
            if group is None or user_id not in group.member_ids:
                raise NotFound("group not found")
            return GROUP, group
        if kind == "channel":
            community = await self.repo.community(target_id)
            if community is None or not await self.repo.is_community_member(target_id, user_id):
                raise NotFound("community not found")
            if channel_id != 0:
                raise NotFound("channel not found")  # communities have no channels yet
            return COMMUNITY, community
        if kind == "self" or (kind == "user" and target_id == user_id):
            users = await self.repo.users([user_id])
            if not users:
                raise NotFound("user not found")
            return USER, users[0]
        if kind == "user":
            raise Forbidden("a user invite can only be made for yourself")
        raise InvalidArgument("chat_ref: give a group, channel, user or self")

    async def create_invite(self, user_id: int, kind: str | None, target_id: int,
                            channel_id: int, expires_at: int | None, max_uses: int) -> str:
        target_type, target = await self.invite_target(user_id, kind, target_id, channel_id)
        now = self.clock_ms()
        if expires_at is not None and expires_at <= now:
            raise InvalidArgument("expires_at: must be in the future (Unix milliseconds)")
        for _ in range(_CODE_ATTEMPTS):
            code = "".join(secrets.choice(CODE_ALPHABET)
                           for _ in range(self.settings.invite_code_chars))
            invite = InviteRecord(code, user_id, target_type, target.id, now, expires_at,
                                  max_uses)
            try:
                if await self.repo.add_invite(invite, self.settings.max_invites_per_target):
                    log.info("invite created type=%d target=%d creator=%d", target_type,
                             target.id, user_id)
                    return code
            except Refused as refused:
                raise _REFUSALS[refused.reason]() from None
        raise Internal()  # _CODE_ATTEMPTS collisions in a row: the code length is far too short

    async def list_invites(self, user_id: int, kind: str | None, target_id: int,
                           channel_id: int) -> list[Preview]:
        """The target's owner sees every live invite; other members only their own."""
        target_type, target = await self.invite_target(user_id, kind, target_id, channel_id)
        only = None if _owner_of(target) == user_id else user_id
        invites = await self.repo.live_invites(target_type, target.id, self.clock_ms(), only)
        creators = {u.id: u for u in await self.repo.users(i.creator_id for i in invites)}
        return [Preview(i, creators.get(i.creator_id), target) for i in invites]

    async def delete_invite(self, user_id: int, code: str) -> None:
        invite = await self.repo.invite(code)
        if invite is None or user_id not in (invite.creator_id, await self._target_owner(invite)):
            raise NotFound("invite not found")
        await self.repo.delete_invite(code)
        log.info("invite deleted target=%d by=%d", invite.target_id, user_id)

    async def lookup_invite(self, ip: str, code: str) -> Preview:
        await self.throttles.check_invite_lookup(ip)  # L5: before the store is asked
        invite = await self.repo.invite(code)
        if invite is None:
            raise NotFound("invite not found")
        if not invite.live(self.clock_ms()):
            raise Gone("invite expired or used up")
        creators = await self.repo.users([invite.creator_id])
        return Preview(invite, creators[0] if creators else None, await self._target(invite))

    async def use_invite(self, user_id: int, code: str, ip: str) -> None:
        # Its answers tell a live code from an unknown one, like a lookup: same throttle (L5).
        await self.throttles.check_invite_lookup(ip)
        try:
            invite = await self.repo.redeem(code, user_id, self.clock_ms(),
                                            self.settings.max_group_members)
        except Refused as refused:
            raise _REFUSALS[refused.reason]() from None
        log.info("invite used type=%d target=%d by=%d", invite.target_type, invite.target_id,
                 user_id)
        target = await self._target(invite)
        if isinstance(target, CommunityRecord):
            await self._push_community(user_id, target)
        elif isinstance(target, GroupRecord):
            await self._push_group(target)
        elif invite.target_type == USER:
            await asyncio.gather(
                self._push_relationship(user_id, invite.target_id, FRIEND),
                self._push_relationship(invite.target_id, user_id, FRIEND),
            )

    # -- friends -----------------------------------------------------------------------------
    async def relationships(self, user_id: int) -> tuple[list[tuple[int, int]], list[UserRecord]]:
        pairs = await self.repo.relationships(user_id)
        return pairs, await self.repo.users(other for other, _ in pairs)

    # -- helpers -----------------------------------------------------------------------------
    async def _target(self, invite: InviteRecord) -> Target | None:
        if invite.target_type == COMMUNITY:
            return await self.repo.community(invite.target_id)
        if invite.target_type == GROUP:
            return await self.repo.group(invite.target_id)
        users = await self.repo.users([invite.target_id])
        return users[0] if users else None

    async def _target_owner(self, invite: InviteRecord) -> int | None:
        target = await self._target(invite)
        return _owner_of(target) if target is not None else None

    async def _push_community(self, user_id: int, record: CommunityRecord) -> None:
        update = updates_pb2.Update(community=updates_pb2.UpdateCommunity(
            community_id=record.id, community=wire.community(record, user_id)))
        await self.registry.push(user_id, update.SerializeToString())

    async def _push_group(self, record: GroupRecord) -> None:
        """Every participant's sessions get the group as they see it (``owner`` differs)."""
        users = [wire.user(u) for u in await self.repo.users(record.member_ids)]
        by_owner = {
            owner: updates_pb2.Update(group=updates_pb2.UpdateGroup(
                group=wire.group(record, record.owner_id if owner else 0),
                users=users)).SerializeToString()
            for owner in (True, False)
        }
        await _push_all(self.registry, ((uid, by_owner[uid == record.owner_id])
                                        for uid in record.member_ids))

    async def _push_relationship(self, user_id: int, other_id: int, status: int) -> None:
        update = updates_pb2.Update(update_user_relationship=updates_pb2.UpdateUserRelationship(
            relationship=wire.relationship(other_id, status)))
        await self.registry.push(user_id, update.SerializeToString())


def _owner_of(target: Target) -> int:
    return target.id if isinstance(target, UserRecord) else target.owner_id


async def _push_all(registry: Registry, pushes: Iterable[tuple[int, bytes]]) -> None:
    await asyncio.gather(*(registry.push(uid, data) for uid, data in pushes))


def build(services: Services) -> SocialService:
    return SocialService(services.settings, SocialRepository(services.db), services.registry,
                         services.throttles, services.ids, services.clock_ms)
