"""The method table matches PROTOCOL.md §3 row for row."""

from __future__ import annotations

from gateway.proto import core_pb2
from gateway.rpc.table import METHODS, ROUTES

# (method, request field, reply field or None for "()", needs auth) — PROTOCOL.md §3.
# auth.resendEmailVerification needs auth only when `email` is absent: its handler decides,
# so the table admits it unauthenticated.
SECTION_3 = [
    ("core.initialize", "core_initialize", "initialized", False),
    ("auth.signUp", "auth_sign_up", "authorization", False),
    ("auth.signIn", "auth_sign_in", "authorization", False),
    ("auth.authorize", "auth_authorize", "authorization", False),
    ("auth.getSessions", "auth_get_sessions", "sessions", True),
    ("auth.revokeSessions", "auth_revoke_sessions", None, True),
    ("auth.resetPassword", "auth_reset_password", None, False),
    ("auth.verifyEmail", "auth_verify_email", None, False),
    ("auth.resendEmailVerification", "auth_resend_email_verification", None, False),
    ("auth.lookupInvite", "auth_lookup_invite", "invite_preview", False),
    ("auth.useInvite", "auth_use_invite", None, True),
    ("chats.createChatInvite", "chats_create_chat_invite", "created_invite", True),
    ("chats.listChatInvites", "chats_list_chat_invites", "invite_list", True),
    ("chats.deleteChatInvite", "chats_delete_chat_invite", None, True),
    ("chats.createChat", "chats_create_chat", "group", True),
    ("communities.createCommunity", "communities_create_community", None, True),
    ("communities.getCommunities", "communities_get_communities", "communities", True),
    ("friends.getRelationships", "friends_get_relationships", "relationships", True),
    ("settings.getAccount", "settings_get_account", "account", True),
    ("settings.changePassword", "settings_change_password", None, True),
    ("settings.changeEmail", "settings_change_email", None, True),
    ("settings.setupTotp", "settings_setup_totp", "totp", True),
    ("settings.deleteAccount", "settings_delete_account", None, True),
]


def test_routes_are_exactly_section_3() -> None:
    actual = sorted((m.name, m.field, m.reply, m.needs_auth) for m in ROUTES.values())
    assert actual == sorted(SECTION_3)


def test_routes_are_keyed_by_their_field_and_unique() -> None:
    assert all(field == m.field for field, m in ROUTES.items())
    assert len(METHODS) == len(ROUTES) == len(SECTION_3)
    assert len({m.name for m in METHODS}) == len(METHODS)


def test_every_route_names_real_schema_members() -> None:
    client = core_pb2.ClientMessage.DESCRIPTOR
    result = core_pb2.RPCResult.DESCRIPTOR
    for m in METHODS:
        assert client.fields_by_name[m.field].containing_oneof is client.oneofs_by_name["message"]
        if m.reply is not None:
            assert result.fields_by_name[m.reply].containing_oneof is result.oneofs_by_name["result"]


def test_only_initialize_is_answered_by_the_core() -> None:
    assert [m.field for m in METHODS if m.handler is None] == ["core_initialize"]
