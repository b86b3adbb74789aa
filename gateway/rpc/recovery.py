"""Handlers of auth.resetPassword, auth.verifyEmail, auth.resendEmailVerification,
settings.changePassword and settings.changeEmail (the rules are in services/recovery.py)."""

from __future__ import annotations

from gateway.errors import Unauthenticated
from gateway.proto import auth_pb2, settings_pb2
from gateway.protocol.connection import State
from gateway.rpc import guards
from gateway.rpc.context import Context


async def reset_password(ctx: Context, req: auth_pb2.ResetPassword) -> None:
    recovery = ctx.services.recovery
    if req.HasField("confirm"):
        await recovery.confirm_reset(req.email, req.confirm.code, req.confirm.new_password,
                                     ctx.ip)
    else:
        await recovery.request_reset(req.email, ctx.ip)


async def verify_email(ctx: Context, req: auth_pb2.VerifyEmail) -> None:
    await ctx.services.recovery.verify_email(req.email, req.code, ctx.ip)


async def resend_email_verification(ctx: Context, req: auth_pb2.ResendEmailVerification) -> None:
    recovery = ctx.services.recovery
    if req.HasField("email"):
        await recovery.resend_verification(req.email, ctx.ip)
    elif ctx.core.state is State.AUTHORIZED:
        await recovery.resend_own_verification(ctx.core.user_id, ctx.ip)
    else:
        raise Unauthenticated("not authorized: give an email or sign in")


async def change_password(ctx: Context, req: settings_pb2.ChangePassword) -> None:
    await ctx.services.recovery.change_password(
        ctx.core.user_id, ctx.core.session_id, req.current_password, req.new_password,
        req.revoke_sessions, ctx.ip)


async def change_email(ctx: Context, req: settings_pb2.ChangeEmail) -> None:
    await guards.recent_sign_in(ctx)
    await ctx.services.recovery.change_email(ctx.core.user_id, req.new_email, ctx.ip)
