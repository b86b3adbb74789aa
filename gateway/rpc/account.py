"""Handlers of settings.getAccount, settings.setupTotp and settings.deleteAccount (docs/account.md)."""

from __future__ import annotations

from gateway.proto import settings_pb2
from gateway.rpc import guards
from gateway.rpc.context import Context


async def get_account(ctx: Context, req: settings_pb2.GetAccount) -> settings_pb2.Account:
    user = await ctx.services.accounts.user(ctx.core.user_id)
    out = settings_pb2.Account(
        confirmed=user.email_confirmed,
        has_password=user.password_hash is not None,
        totp_enabled=user.totp_secret is not None,
        pending_delete=user.pending_delete_at is not None,
    )
    if user.email is not None:
        out.email = user.email  # absent, not "", for name-only accounts
    return out


async def setup_totp(ctx: Context, req: settings_pb2.SetupTotp) -> settings_pb2.Totp:
    service = ctx.services.account
    user_id = ctx.core.user_id
    code = req.code if req.HasField("code") else None
    if not req.enabled:
        await service.disable_totp(user_id, code, ctx.ip)
        return settings_pb2.Totp(enabled=False)
    await guards.recent_sign_in(ctx)
    if code is None:
        return settings_pb2.Totp(enabled=False, url=await service.start_totp(user_id))
    codes = await service.confirm_totp(user_id, code, ctx.ip)
    out = settings_pb2.Totp(enabled=True)
    out.backup_codes.extend(settings_pb2.BackupCode(code=c, used=False) for c in codes)
    return out


async def delete_account(ctx: Context, req: settings_pb2.DeleteAccount) -> None:
    service = ctx.services.account
    if req.HasField("cancel") and req.cancel:
        await service.cancel_delete(ctx.core.user_id)
    else:
        await guards.recent_sign_in(ctx)
        await service.schedule_delete(ctx.core.user_id, ctx.core.session_id)
