"""Handlers of settings.getAccount, settings.setupTotp and settings.deleteAccount."""

from __future__ import annotations

from typing import Any

from gateway.errors import Unimplemented
from gateway.rpc.context import Context


async def get_account(ctx: Context, req: Any) -> None:
    raise Unimplemented()


async def setup_totp(ctx: Context, req: Any) -> None:
    raise Unimplemented()


async def delete_account(ctx: Context, req: Any) -> None:
    raise Unimplemented()
