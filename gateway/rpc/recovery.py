"""Handlers of auth.resetPassword, auth.verifyEmail, auth.resendEmailVerification,
settings.changePassword and settings.changeEmail."""

from __future__ import annotations

from typing import Any

from gateway.errors import Unimplemented
from gateway.rpc.context import Context


async def reset_password(ctx: Context, req: Any) -> None:
    raise Unimplemented()


async def verify_email(ctx: Context, req: Any) -> None:
    raise Unimplemented()


async def resend_email_verification(ctx: Context, req: Any) -> None:
    raise Unimplemented()


async def change_password(ctx: Context, req: Any) -> None:
    raise Unimplemented()


async def change_email(ctx: Context, req: Any) -> None:
    raise Unimplemented()
