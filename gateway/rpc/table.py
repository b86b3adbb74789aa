"""The method table: oneof member -> handler, whether it needs auth, and its reply field.

One row per method of PROTOCOL.md §3. A method not in this table answers 501 "not implemented"
(the connection core does that). ``slow`` methods hash passwords: each runs in its own task so a
socket's other requests are not held behind a 250 ms bcrypt check; the rest run in order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from gateway.errors import Unimplemented
from gateway.rpc import auth, context

Handler = Callable[[context.Context, Any], Awaitable[Message | None]]


async def not_served_yet(ctx: context.Context, request: Any) -> None:
    raise Unimplemented()


@dataclass(frozen=True, slots=True)
class Method:
    name: str  # "auth.signIn"
    field: str  # ClientMessage member, "auth_sign_in"
    reply: str | None  # RPCResult member, or None for an empty reply
    needs_auth: bool
    handler: Handler | None  # None: answered by the connection core itself
    slow: bool = False


METHODS: tuple[Method, ...] = (
    Method("core.initialize", "core_initialize", "initialized", False, None),
    Method("auth.signUp", "auth_sign_up", "authorization", False, auth.sign_up, slow=True),
    Method("auth.signIn", "auth_sign_in", "authorization", False, auth.sign_in, slow=True),
    Method("auth.authorize", "auth_authorize", "authorization", False, auth.authorize),
    Method("auth.getSessions", "auth_get_sessions", "sessions", True, auth.get_sessions),
    Method("auth.revokeSessions", "auth_revoke_sessions", None, True, auth.revoke_sessions),
    Method("auth.resetPassword", "auth_reset_password", None, False, not_served_yet, slow=True),
    Method("auth.verifyEmail", "auth_verify_email", None, False, not_served_yet),
    Method("auth.resendEmailVerification", "auth_resend_email_verification", None, False,
           not_served_yet),
    Method("auth.lookupInvite", "auth_lookup_invite", "invite_preview", False, not_served_yet),
    Method("auth.useInvite", "auth_use_invite", None, True, not_served_yet),
    Method("chats.createChatInvite", "chats_create_chat_invite", "created_invite", True,
           not_served_yet),
    Method("chats.listChatInvites", "chats_list_chat_invites", "invite_list", True, not_served_yet),
    Method("chats.deleteChatInvite", "chats_delete_chat_invite", None, True, not_served_yet),
    Method("chats.createChat", "chats_create_chat", "group", True, not_served_yet),
    Method("communities.createCommunity", "communities_create_community", None, True,
           not_served_yet),
    Method("communities.getCommunities", "communities_get_communities", "communities", True,
           not_served_yet),
    Method("friends.getRelationships", "friends_get_relationships", "relationships", True,
           not_served_yet),
    Method("settings.getAccount", "settings_get_account", "account", True, not_served_yet),
    Method("settings.changePassword", "settings_change_password", None, True, not_served_yet,
           slow=True),
    Method("settings.changeEmail", "settings_change_email", None, True, not_served_yet),
    Method("settings.setupTotp", "settings_setup_totp", "totp", True, not_served_yet),
    Method("settings.deleteAccount", "settings_delete_account", None, True, not_served_yet),
)

ROUTES: Mapping[str, Method] = {m.field: m for m in METHODS}
