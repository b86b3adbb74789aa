"""Handlers of invites (auth.lookupInvite, auth.useInvite, chats.*ChatInvite*), chats.createChat,
communities.createCommunity, communities.getCommunities and friends.getRelationships."""

from __future__ import annotations

from typing import Any

from gateway.errors import Unimplemented
from gateway.rpc.context import Context


async def lookup_invite(ctx: Context, req: Any) -> None:
    raise Unimplemented()


async def use_invite(ctx: Context, req: Any) -> None:
    raise Unimplemented()


async def create_chat_invite(ctx: Context, req: Any) -> None:
    raise Unimplemented()


async def list_chat_invites(ctx: Context, req: Any) -> None:
    raise Unimplemented()


async def delete_chat_invite(ctx: Context, req: Any) -> None:
    raise Unimplemented()


async def create_chat(ctx: Context, req: Any) -> None:
    raise Unimplemented()


async def create_community(ctx: Context, req: Any) -> None:
    raise Unimplemented()


async def get_communities(ctx: Context, req: Any) -> None:
    raise Unimplemented()


async def get_relationships(ctx: Context, req: Any) -> None:
    raise Unimplemented()
