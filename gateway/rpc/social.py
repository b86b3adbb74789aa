"""Handlers of invites (auth.lookupInvite, auth.useInvite, chats.*ChatInvite*), chats.createChat,
communities.createCommunity, communities.getCommunities and friends.getRelationships."""

from __future__ import annotations

from gateway import wire
from gateway.proto import auth_pb2, chats_pb2, communities_pb2, friends_pb2, refs_pb2, types_pb2
from gateway.rpc.context import Context


def _ref(ref: refs_pb2.ChatRef) -> tuple[str | None, int, int]:
    """(oneof member, target id, channel id) of a ChatRef; ``self`` is a keyword, hence getattr."""
    kind = ref.WhichOneof("ref")
    if kind == "group":
        return kind, ref.group.group_id, 0
    if kind == "channel":
        return kind, ref.channel.community_id, ref.channel.channel_id
    if kind == "user":
        return kind, ref.user.user_id, 0
    return kind, 0, 0


async def lookup_invite(ctx: Context, req: auth_pb2.LookupInvite) -> auth_pb2.InvitePreview:
    p = await ctx.services.social.lookup_invite(ctx.ip, req.code)
    return wire.invite_preview(p.invite, p.creator, p.target)


async def use_invite(ctx: Context, req: auth_pb2.UseInvite) -> None:
    await ctx.services.social.use_invite(ctx.core.user_id, req.code, ctx.ip)


async def create_chat_invite(ctx: Context,
                             req: chats_pb2.CreateChatInvite) -> auth_pb2.CreatedInvite:
    kind, target_id, channel_id = _ref(req.chat_ref)
    code = await ctx.services.social.create_invite(
        ctx.core.user_id, kind, target_id, channel_id,
        req.expires_at if req.HasField("expires_at") else None,
        req.max_uses if req.HasField("max_uses") else 0)
    return auth_pb2.CreatedInvite(code=code)


async def list_chat_invites(ctx: Context, req: chats_pb2.ListChatInvites) -> auth_pb2.InviteList:
    kind, target_id, channel_id = _ref(req.chat_ref)
    previews = await ctx.services.social.list_invites(ctx.core.user_id, kind, target_id,
                                                      channel_id)
    out = auth_pb2.InviteList()
    out.invites.extend(wire.invite_preview(p.invite, p.creator, p.target) for p in previews)
    return out


async def delete_chat_invite(ctx: Context, req: chats_pb2.DeleteChatInvite) -> None:
    await ctx.services.social.delete_invite(ctx.core.user_id, req.code)


async def create_chat(ctx: Context, req: chats_pb2.CreateChat) -> types_pb2.Group:
    user_id = ctx.core.user_id
    record = await ctx.services.social.create_group(user_id, [u.user_id for u in req.users],
                                                    req.name)
    return wire.group(record, user_id)


async def create_community(ctx: Context, req: communities_pb2.CreateCommunity) -> None:
    await ctx.services.social.create_community(ctx.core.user_id, req.name)


async def get_communities(ctx: Context,
                          req: communities_pb2.GetCommunities) -> communities_pb2.Communities:
    user_id = ctx.core.user_id
    records = await ctx.services.social.communities(user_id)
    out = communities_pb2.Communities()
    out.communities.extend(wire.community(r, user_id) for r in records)
    # No messages are served yet, so nothing is unread.
    out.community_user_info.extend(communities_pb2.CommunityUserInfo(community_id=r.id)
                                   for r in records)
    return out


async def get_relationships(ctx: Context,
                            req: friends_pb2.GetRelationships) -> friends_pb2.Relationships:
    pairs, users = await ctx.services.social.relationships(ctx.core.user_id)
    out = friends_pb2.Relationships()
    out.relationships.extend(wire.relationship(other, status) for other, status in pairs)
    out.users.extend(wire.user(u) for u in users)
    return out
