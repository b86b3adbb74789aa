"""Invites, communities, groups and friends against real gateways, real sockets, real SQLite.

PROTOCOL.md §3, §4.2, §4.8, §4.12-§4.14; SECURITY.md I1, I2, L3, L5, F4.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.proto import auth_pb2, core_pb2, refs_pb2, types_pb2
from tests.support.client import TestClient, error_code
from tests.support.flows import (
    RETRY_RE,
    assert_clean_error,
    assert_empty_reply,
    authorization,
    client,
    clients,
    db_rows,
    eventually,
    gateway,
)
from tests.support.gateway import InProcessGateway, running_gateway
from tests.support.gateway import test_settings as make_settings

FRIEND = types_pb2.RelationshipStatus.FRIEND


# -- helpers --------------------------------------------------------------------------------------

async def signed_up(c: TestClient, name: str) -> Any:
    """Sign ``c`` up as a name-only account; returns the Authorization."""
    return authorization(await c.sign_up(name))


def group_ref(group_id: int) -> refs_pb2.ChatRef:
    return refs_pb2.ChatRef(group=refs_pb2.GroupRef(group_id=group_id))


def channel_ref(community_id: int, channel_id: int = 0) -> refs_pb2.ChatRef:
    return refs_pb2.ChatRef(channel=refs_pb2.ChannelRef(community_id=community_id,
                                                         channel_id=channel_id))


def user_ref(user_id: int) -> refs_pb2.ChatRef:
    return refs_pb2.ChatRef(user=refs_pb2.UserRef(user_id=user_id))


def self_ref() -> refs_pb2.ChatRef:
    ref = refs_pb2.ChatRef()
    ref.self.SetInParent()  # `self` clashes only as a keyword argument
    return ref


async def invite(c: TestClient, ref: refs_pb2.ChatRef, **fields: Any) -> core_pb2.RPCResult:
    msg = c.message("chats_create_chat_invite", **fields)
    msg.chats_create_chat_invite.chat_ref.CopyFrom(ref)
    return await c.request(msg)


async def code_for(c: TestClient, ref: refs_pb2.ChatRef, **fields: Any) -> str:
    res = await invite(c, ref, **fields)
    assert res.WhichOneof("result") == "created_invite", res
    code = res.created_invite.code
    assert 8 <= len(code) <= 16 and code.isalnum(), code
    return code


async def list_invites(c: TestClient, ref: refs_pb2.ChatRef) -> core_pb2.RPCResult:
    msg = c.message("chats_list_chat_invites")
    msg.chats_list_chat_invites.chat_ref.CopyFrom(ref)
    return await c.request(msg)


async def create_chat(c: TestClient, user_ids: list[int], name: str = "") -> core_pb2.RPCResult:
    msg = c.message("chats_create_chat", name=name)
    msg.chats_create_chat.users.extend(refs_pb2.UserRef(user_id=u) for u in user_ids)
    return await c.request(msg)


async def new_community(c: TestClient, name: str) -> int:
    assert_empty_reply(await c.call("communities_create_community", name=name))
    update = (await c.next_update()).update
    assert update.WhichOneof("update") == "community"
    return update.community.community_id


async def update_of(c: TestClient, member: str) -> Any:
    msg = await c.next_update()
    assert msg.update.WhichOneof("update") == member, msg
    return getattr(msg.update, member)


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    async with gateway(tmp_path, max_group_members=4, max_invites_per_target=3) as g:
        yield g


# -- communities ----------------------------------------------------------------------------------

async def test_create_community_pushes_to_every_session_and_is_listed(
        gw: InProcessGateway) -> None:
    async with clients(gw.url, 3) as (a1, a2, b):
        auth = await signed_up(a1, "alice")
        authorization(await a2.authorize(auth.token))
        await signed_up(b, "bob")

        assert_empty_reply(await a1.call("communities_create_community", name="  Rock  club "))
        for c in (a1, a2):
            up = await update_of(c, "community")
            assert up.community.id == up.community_id != 0
            assert up.community.name == "Rock club" and up.community.owner

        res = await a2.call("communities_get_communities")
        assert res.WhichOneof("result") == "communities", res
        (community,) = res.communities.communities
        assert (community.id, community.name, community.owner) == (up.community_id, "Rock club",
                                                                   True)
        (info,) = res.communities.community_user_info
        assert (info.community_id, info.unread_count, info.unread_mention_count) == (
            community.id, 0, 0)
        # Nobody else's list, and nothing pushed to anybody else.
        assert not (await b.call("communities_get_communities")).communities.communities
        assert not b.updates

        assert_clean_error(await a1.call("communities_create_community", name="   "), 400)
        assert_clean_error(await a1.call("communities_create_community", name="x" * 101), 400)


async def test_social_methods_need_auth(gw: InProcessGateway) -> None:
    async with client(gw.url) as c:
        assert_clean_error(await c.call("communities_create_community", name="x"), 401)
        assert_clean_error(await c.call("auth_use_invite", code="abc"), 401)
        assert_clean_error(await c.call("friends_get_relationships"), 401)


# -- groups ---------------------------------------------------------------------------------------

async def test_create_chat_answers_group_and_pushes_to_participants(gw: InProcessGateway) -> None:
    async with clients(gw.url, 5) as (a1, a2, b, c, d):
        a = await signed_up(a1, "alice")
        authorization(await a2.authorize(a.token))
        b_id = (await signed_up(b, "bob")).user.id
        c_id = (await signed_up(c, "carol")).user.id
        d_id = (await signed_up(d, "dave")).user.id

        res = await create_chat(a1, [b_id, c_id, b_id, a.user.id], name="trio")
        assert res.WhichOneof("result") == "group", res
        group = res.group
        assert group.id and group.name == "trio" and group.owner
        assert sorted(group.participant_ids) == sorted([a.user.id, b_id, c_id])

        up = await update_of(b, "group")
        assert up.group.id == group.id and not up.group.owner
        assert sorted(up.group.participant_ids) == sorted(group.participant_ids)
        assert {(u.id, u.name) for u in up.users} == {(a.user.id, "alice"), (b_id, "bob"),
                                                      (c_id, "carol")}
        assert not (await update_of(c, "group")).group.owner
        assert (await update_of(a2, "group")).group.owner
        assert not d.updates

        assert_clean_error(await create_chat(a1, [b_id, 987654321]), 404)
        # max_group_members=4 counts the creator.
        assert (await create_chat(a1, [b_id, c_id, d_id])).WhichOneof("result") == "group"
        assert_clean_error(await create_chat(a1, [b_id, c_id, d_id, 5]), 400)


# -- invites: targets, use, pushes ----------------------------------------------------------------

async def test_group_invite_adds_member_and_pushes_group(gw: InProcessGateway) -> None:
    async with clients(gw.url, 4) as (a, b, c, d):
        a_id = (await signed_up(a, "alice")).user.id
        b_id = (await signed_up(b, "bob")).user.id
        c_id = (await signed_up(c, "carol")).user.id
        await signed_up(d, "dave")
        group = (await create_chat(a, [b_id], name="pair")).group
        await update_of(a, "group")
        await update_of(b, "group")

        assert_clean_error(await invite(c, group_ref(group.id)), 404)  # not a member
        assert_clean_error(await invite(a, group_ref(424242)), 404)  # no such group
        code = await code_for(b, group_ref(group.id))  # any member may invite

        assert_empty_reply(await c.call("auth_use_invite", code=code))
        mine = await update_of(c, "group")
        assert mine.group.id == group.id and not mine.group.owner
        assert sorted(mine.group.participant_ids) == sorted([a_id, b_id, c_id])
        for member in (a, b):  # the others learn the new participant list
            assert c_id in (await update_of(member, "group")).group.participant_ids
        assert_clean_error(await c.call("auth_use_invite", code=code), 409)  # used it already
        assert_clean_error(await b.call("auth_use_invite", code=code), 409)  # already a member
        assert_clean_error(await d.call("auth_use_invite", code="nosuchcode"), 404)
        assert not d.updates


async def test_group_invite_refused_when_group_is_full(tmp_path: Path) -> None:
    async with gateway(tmp_path, max_group_members=2) as gw, clients(gw.url, 3) as (a, b, c):
        await signed_up(a, "alice")
        b_id = (await signed_up(b, "bob")).user.id
        await signed_up(c, "carol")
        group = (await create_chat(a, [b_id])).group
        code = await code_for(a, group_ref(group.id))
        assert_clean_error(await c.call("auth_use_invite", code=code), 403)
        assert db_rows(gw.services.settings.db, "SELECT uses FROM invites") == [(0,)]


async def test_community_invite_by_channel_ref(gw: InProcessGateway) -> None:
    async with clients(gw.url, 3) as (a, b, c):
        await signed_up(a, "alice")
        await signed_up(b, "bob")
        await signed_up(c, "carol")
        community_id = await new_community(a, "Club")

        assert_clean_error(await invite(a, channel_ref(community_id, channel_id=7)), 404)
        assert_clean_error(await invite(b, channel_ref(community_id)), 404)  # not a member
        assert_clean_error(await invite(a, refs_pb2.ChatRef()), 400)  # no target at all
        code = await code_for(a, channel_ref(community_id))

        assert_empty_reply(await b.call("auth_use_invite", code=code))
        up = await update_of(b, "community")
        assert up.community_id == community_id and up.community.name == "Club"
        assert not up.community.owner
        listed = (await b.call("communities_get_communities")).communities
        assert [(x.id, x.owner) for x in listed.communities] == [(community_id, False)]
        assert not a.updates and not c.updates
        assert_clean_error(await b.call("auth_use_invite", code=code), 409)
        # Now a member, b may invite too.
        assert (await invite(b, channel_ref(community_id))).WhichOneof("result") == "created_invite"


async def test_user_invite_makes_friends_both_ways(gw: InProcessGateway) -> None:
    async with clients(gw.url, 3) as (a, b, c):
        a_id = (await signed_up(a, "alice")).user.id
        b_id = (await signed_up(b, "bob")).user.id
        await signed_up(c, "carol")

        assert_clean_error(await invite(a, user_ref(b_id)), 403)  # only for yourself
        by_id = await code_for(a, user_ref(a_id))  # `user` naming the caller = `self`
        code = await code_for(a, self_ref())
        assert_clean_error(await a.call("auth_use_invite", code=code), 400)  # own invite

        assert_empty_reply(await b.call("auth_use_invite", code=code))
        rel_b = (await update_of(b, "update_user_relationship")).relationship
        rel_a = (await update_of(a, "update_user_relationship")).relationship
        assert (rel_b.user_id, rel_b.status) == (a_id, FRIEND)
        assert (rel_a.user_id, rel_a.status) == (b_id, FRIEND)
        assert not c.updates

        for me, other, name in ((a, b_id, "bob"), (b, a_id, "alice")):
            res = await me.call("friends_get_relationships")
            assert res.WhichOneof("result") == "relationships", res
            rels = res.relationships
            assert [(r.user_id, r.status) for r in rels.relationships] == [(other, FRIEND)]
            assert [(u.id, u.name) for u in rels.users] == [(other, name)]
        assert not (await c.call("friends_get_relationships")).relationships.relationships
        assert_clean_error(await b.call("auth_use_invite", code=by_id), 409)  # already friends


# -- lookup ---------------------------------------------------------------------------------------

async def test_lookup_previews_without_consuming_and_used_up_is_gone(
        gw: InProcessGateway) -> None:
    async with clients(gw.url, 4) as (a, b, c, anon):
        a_id = (await signed_up(a, "alice")).user.id
        await signed_up(b, "bob")
        await signed_up(c, "carol")
        community_id = await new_community(a, "Club")
        code = await code_for(a, channel_ref(community_id), max_uses=1)

        for _ in range(3):  # no sign-in needed, and looking never uses the invite up
            res = await anon.call("auth_lookup_invite", code=code)
            assert res.WhichOneof("result") == "invite_preview", res
        p = res.invite_preview
        assert (p.code, p.creator_id, p.target_id) == (code, a_id, community_id)
        assert p.target_type == auth_pb2.InviteType.COMMUNITY
        assert not p.HasField("expires_at")
        assert (p.creator.id, p.creator.name) == (a_id, "alice")
        assert p.WhichOneof("target_info") == "community" and p.community.name == "Club"

        assert_empty_reply(await b.call("auth_use_invite", code=code))
        assert_clean_error(await anon.call("auth_lookup_invite", code=code), 410)
        assert_clean_error(await c.call("auth_use_invite", code=code), 410)
        assert_clean_error(await anon.call("auth_lookup_invite", code="unknown123"), 404)

        user_code = await code_for(a, self_ref())
        p = (await anon.call("auth_lookup_invite", code=user_code)).invite_preview
        assert p.target_type == auth_pb2.InviteType.USER and p.user.id == a_id
        b_group = (await create_chat(a, [], name="solo")).group
        p = (await anon.call("auth_lookup_invite",
                             code=await code_for(a, group_ref(b_group.id)))).invite_preview
        assert p.target_type == auth_pb2.InviteType.GROUP and p.chat.name == "solo"


async def test_lookup_is_throttled_per_ip(tmp_path: Path) -> None:
    async with gateway(tmp_path, invite_lookup_ip_per_minute=3) as gw, client(gw.url) as anon:
        for _ in range(3):
            assert_clean_error(await anon.call("auth_lookup_invite", code="nope"), 404)
        message = assert_clean_error(await anon.call("auth_lookup_invite", code="nope"), 429)
        assert RETRY_RE.search(message), message


async def test_expiry_uses_server_clock(gw: InProcessGateway) -> None:
    async with clients(gw.url, 3) as (a, b, anon):
        await signed_up(a, "alice")
        await signed_up(b, "bob")
        community_id = await new_community(a, "Club")
        now = time.time_ns() // 1_000_000
        assert_clean_error(await invite(a, channel_ref(community_id), expires_at=now - 1000), 400)

        expires_at = now + 600
        code = await code_for(a, channel_ref(community_id), expires_at=expires_at)
        first = await anon.call("auth_lookup_invite", code=code)
        assert first.invite_preview.expires_at == expires_at

        async def gone() -> bool:
            res = await anon.call("auth_lookup_invite", code=code)
            return res.WhichOneof("result") == "error" and res.error.error_code == 410

        await eventually(gone, timeout=5.0, interval=0.15, what="expired invite answers 410")
        assert_clean_error(await b.call("auth_use_invite", code=code), 410)


# -- listing and deleting -------------------------------------------------------------------------

async def test_list_and_delete_invites_by_role(gw: InProcessGateway) -> None:
    async with clients(gw.url, 3) as (a, b, c):
        await signed_up(a, "alice")
        await signed_up(b, "bob")
        await signed_up(c, "carol")
        community_id = await new_community(a, "Club")
        ref = channel_ref(community_id)
        a_code = await code_for(a, ref, max_uses=3)
        assert_empty_reply(await b.call("auth_use_invite", code=await code_for(a, ref, max_uses=1)))
        await update_of(b, "community")
        b_code = await code_for(b, ref)

        owner_view = (await list_invites(a, ref)).invite_list.invites
        assert {i.code for i in owner_view} == {a_code, b_code}
        member_view = (await list_invites(b, ref)).invite_list.invites
        assert [i.code for i in member_view] == [b_code]  # members see their own
        assert member_view[0].community.id == community_id
        assert_clean_error(await list_invites(c, ref), 404)  # not a member
        # The used-up single-use invite is not live any more, so it is not listed.
        assert len(owner_view) == 2

        assert_clean_error(await c.call("chats_delete_chat_invite", code=a_code), 404)
        assert_clean_error(await b.call("chats_delete_chat_invite", code=a_code), 404)
        assert_empty_reply(await a.call("chats_delete_chat_invite", code=b_code))  # owner may
        assert_empty_reply(await a.call("chats_delete_chat_invite", code=a_code))
        assert_clean_error(await a.call("chats_delete_chat_invite", code=a_code), 404)
        assert_clean_error(await c.call("auth_lookup_invite", code=b_code), 404)
        assert not (await list_invites(a, ref)).invite_list.invites

        # At most max_invites_per_target (3) live invites per target.
        for _ in range(3):
            await code_for(a, self_ref())
        assert_clean_error(await invite(a, self_ref()), 403)
        assert len((await list_invites(a, self_ref())).invite_list.invites) == 3


# -- I1 under concurrency, across two nodes on one SQLite file ------------------------------------

async def test_max_uses_holds_under_concurrency_on_two_nodes(tmp_path: Path) -> None:
    db = str(tmp_path / "shared.sqlite3")
    s1 = make_settings(tmp_path, db=db, node_id=1, node_name="n1", signup_ip_hourly=10_000)
    s2 = make_settings(tmp_path, db=db, node_id=2, node_name="n2", signup_ip_hourly=10_000)
    async with running_gateway(s1) as n1, running_gateway(s2) as n2, \
            client(n1.url) as owner, clients(n1.url, 25) as on1, clients(n2.url, 25) as on2:
        await signed_up(owner, "owner")
        community_id = await new_community(owner, "Club")
        code = await code_for(owner, channel_ref(community_id), max_uses=5)
        users = [*on1, *on2]
        await asyncio.gather(*(signed_up(u, f"u{i}") for i, u in enumerate(users)))

        results = await asyncio.gather(*(u.call("auth_use_invite", code=code) for u in users))
        codes = sorted(r.error.error_code if r.WhichOneof("result") == "error" else 0
                       for r in results)
        assert codes == [0] * 5 + [410] * 45, codes
        assert db_rows(db, "SELECT uses, max_uses FROM invites WHERE code = ?", (code,)) == [(5, 5)]
        members = db_rows(db, "SELECT count(*) FROM community_members WHERE community_id = ?"
                              " AND user_id <> (SELECT owner_id FROM communities WHERE id = ?)",
                          (community_id, community_id))
        assert members == [(5,)]
        assert db_rows(db, "SELECT count(*) FROM invite_redemptions") == [(5,)]

        # One user, two sockets on two nodes, the same unlimited invite at once: one wins.
        unlimited = await code_for(owner, channel_ref(community_id))
        async with client(n1.url) as x1, client(n2.url) as x2:
            auth = await signed_up(x1, "double")
            authorization(await x2.authorize(auth.token))
            both = await asyncio.gather(x1.call("auth_use_invite", code=unlimited),
                                        x2.call("auth_use_invite", code=unlimited))
            outcome = sorted(r.error.error_code if r.WhichOneof("result") == "error" else 0
                             for r in both)
            assert outcome == [0, 409], both
        assert db_rows(db, "SELECT uses FROM invites WHERE code = ?", (unlimited,)) == [(1,)]


async def test_use_invite_is_throttled_per_ip_like_lookup(tmp_path: Path) -> None:
    """Its answers tell a live code from an unknown one, so guessing through useInvite is
    throttled by the same per-IP counter as lookups (L5)."""
    async with gateway(tmp_path, invite_lookup_ip_per_minute=3) as g, client(g.url) as c:
        authorization(await c.sign_up("guesser"))
        codes = [error_code(await c.call("auth_use_invite", code=f"guess{i}")) for i in range(5)]
        assert codes == [404, 404, 404, 429, 429]
        res = await c.call("auth_lookup_invite", code="guess9")  # the same counter
        assert error_code(res) == 429 and RETRY_RE.search(res.error.error_message)


async def test_ids_and_times_past_64_signed_bits_answer_400_not_500(tmp_path: Path) -> None:
    """fixed64 on the wire goes to 2^64-1, SQLite stops at 2^63-1: such a value names nothing."""
    huge = 2**64 - 1
    async with gateway(tmp_path) as g, client(g.url) as c:
        authorization(await c.sign_up("big"))
        ref = refs_pb2.ChatRef()
        ref.group.group_id = huge
        msg = c.message("chats_create_chat_invite")
        msg.chats_create_chat_invite.chat_ref.CopyFrom(ref)
        assert_clean_error(await c.request(msg), 400)
        own = refs_pb2.ChatRef()
        own.self.SetInParent()
        msg = c.message("chats_create_chat_invite")
        msg.chats_create_chat_invite.chat_ref.CopyFrom(own)
        msg.chats_create_chat_invite.expires_at = huge
        assert_clean_error(await c.request(msg), 400)
        ref = refs_pb2.ChatRef()
        ref.channel.community_id = 2**63
        msg = c.message("chats_list_chat_invites")
        msg.chats_list_chat_invites.chat_ref.CopyFrom(ref)
        assert_clean_error(await c.request(msg), 400)
        assert (await c.call("auth_get_sessions")).WhichOneof("result") == "sessions"
