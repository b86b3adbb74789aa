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

from gateway.rpc import account, auth, context, recovery, social

Handler = Callable[[context.Context, Any], Awaitable[Message | None]]


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
    Method("auth.resetPassword", "auth_reset_password", None, False, recovery.reset_password,
           slow=True),
    Method("auth.verifyEmail", "auth_verify_email", None, False, recovery.verify_email),
    # Needs auth only when no email is given; the handler checks.
    Method("auth.resendEmailVerification", "auth_resend_email_verification", None, False,
           recovery.resend_email_verification),
    Method("auth.lookupInvite", "auth_lookup_invite", "invite_preview", False,
           social.lookup_invite),
    Method("auth.useInvite", "auth_use_invite", None, True, social.use_invite),
    Method("chats.createChatInvite", "chats_create_chat_invite", "created_invite", True,
           social.create_chat_invite),
    Method("chats.listChatInvites", "chats_list_chat_invites", "invite_list", True,
           social.list_chat_invites),
    Method("chats.deleteChatInvite", "chats_delete_chat_invite", None, True,
           social.delete_chat_invite),
    Method("chats.createChat", "chats_create_chat", "group", True, social.create_chat),
    Method("communities.createCommunity", "communities_create_community", None, True,
           social.create_community),
    Method("communities.getCommunities", "communities_get_communities", "communities", True,
           social.get_communities),
    Method("friends.getRelationships", "friends_get_relationships", "relationships", True,
           social.get_relationships),
    Method("settings.getAccount", "settings_get_account", "account", True, account.get_account),
    Method("settings.changePassword", "settings_change_password", None, True,
           recovery.change_password, slow=True),
    Method("settings.changeEmail", "settings_change_email", None, True, recovery.change_email),
    Method("settings.setupTotp", "settings_setup_totp", "totp", True, account.setup_totp),
    Method("settings.deleteAccount", "settings_delete_account", None, True,
           account.delete_account),
)

ROUTES: Mapping[str, Method] = {m.field: m for m in METHODS}
