"""Credentials lifecycle: email verification, password reset, password and email changes."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.app import Services


class RecoveryService:
    """Not served yet: the methods of this area answer 501."""

    async def start(self) -> None:
        """Start background work (none yet)."""

    async def stop(self) -> None:
        """Stop background work (none yet)."""


def build(services: Services) -> RecoveryService:
    return RecoveryService()
