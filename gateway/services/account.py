"""Account settings: the account view, TOTP two-factor sign-in, account deletion."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.app import Services


class AccountService:
    """Not served yet: the methods of this area answer 501."""

    async def start(self) -> None:
        """Start background work (none yet)."""

    async def stop(self) -> None:
        """Stop background work (none yet)."""


def build(services: Services) -> AccountService:
    return AccountService()
