"""Checks several handlers share."""

from __future__ import annotations

from gateway.rpc.context import Context


async def recent_sign_in(ctx: Context) -> None:
    """Account-takeover steps need a recent password sign-in (403 otherwise).

    Name-only accounts are exempt: their token is their only credential, they cannot sign in
    again, and a stolen token already is the whole account.
    """
    user = await ctx.services.accounts.user(ctx.core.user_id)
    if user.password_hash is not None:
        await ctx.services.sessions.require_recent_sign_in(ctx.core.user_id, ctx.core.session_id)
