"""What a handler sees of the connection it serves.

Handlers are ``async def handler(ctx: Context, request) -> reply message | None``. The transport's
connection object is the context (no allocation per request); this Protocol is the part of it
handlers may use, so handlers do not depend on the transport.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from gateway.protocol.connection import ConnectionCore

if TYPE_CHECKING:
    from gateway.app import Services


class Context(Protocol):
    core: ConnectionCore  # state, ClientInfo from core.initialize, user_id, session_id
    services: Services
    ip: str  # client address (socket, or forwarded by a trusted proxy)
    country: str | None  # from trusted proxy headers only
    region: str | None
    conn_id: int

    async def bind_session(self, user_id: int, session_id: int, *,
                           new_session: bool = False) -> None:
        """Mark the connection authorized for this session and register it as live.

        ``new_session``: the session was just made for this socket (sign-in, sign-up), so it
        is revoked if the socket turned out to be closing meanwhile."""

    async def unbind_session(self) -> None:
        """The connection's session ended; it stays open, unauthenticated."""
