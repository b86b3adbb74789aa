"""The live-connection registry interface.

A *live connection* is an authorized socket: (node, connection id, user id, session id). The
registry answers "which nodes hold sockets of this session / this user" and carries two kinds of
message to the nodes that do:

* a **revocation** ``(user_id, session_ids)``: every local socket of that user receives
  ``Update{session_deleted}`` for each id; the sockets of the revoked sessions are then closed
  with 4001. Delivered to the node itself too.
* a **push** ``(user_id, Update bytes)``: delivered to every live socket of the user.

The registry never touches the database: the caller commits first (the truth), then tells the
registry. Delivery over Redis is at-most-once; the periodic re-check in the services is the
safety net.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class LiveSocket(Protocol):
    """What the registry may do with a socket on this node."""

    @property
    def conn_id(self) -> int: ...

    @property
    def user_id(self) -> int: ...

    @property
    def session_id(self) -> int: ...

    #: Set by the socket when a request arrives; the session service's last_active sweep reads
    #: and clears it.
    active: bool

    def push_update(self, update: bytes) -> None:
        """Queue a serialized ``updates.Update`` for this socket (never blocks)."""

    def revoke(self, session_ids: Sequence[int]) -> bool:
        """Send ``session_deleted`` for each id; if this socket's session is among them, close
        it with 4001 and return True."""


@dataclass(slots=True)
class KickReceipt:
    """How many sockets each node closed for a revocation, as far as nodes acknowledged."""

    closed: dict[str, int] = field(default_factory=dict)  # node name -> sockets closed
    unacknowledged: list[str] = field(default_factory=list)  # nodes that did not answer in time

    @property
    def total(self) -> int:
        return sum(self.closed.values())


@dataclass(frozen=True, slots=True)
class LiveEntry:
    node: str
    conn_id: int
    user_id: int
    session_id: int


#: Called when the registry lost messages it cannot replay (e.g. its Redis link came back):
#: the services re-check every local socket against the store.
ResyncHook = Callable[[], Awaitable[None]]


class Registry(Protocol):
    node: str  # this node's name

    @property
    def healthy(self) -> bool:
        """False while the shared backend (Redis) is unreachable."""

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Remove this node's entries and stop background tasks."""

    def set_resync_hook(self, hook: ResyncHook) -> None: ...

    async def bind(self, sock: LiveSocket) -> None:
        """Record an authorized socket. Never raises for a backend outage: the entry is kept
        locally and written when the backend returns."""

    async def unbind(self, sock: LiveSocket) -> None:
        """Forget a socket (on disconnect). Never raises for a backend outage."""

    def local_sockets(self, user_id: int | None = None) -> list[LiveSocket]:
        """Sockets on this node (of one user, or all)."""

    async def revoke(
        self, user_id: int, session_ids: Sequence[int], *, wait_ack: float = 0.0
    ) -> KickReceipt:
        """Deliver a revocation to every node holding sockets of ``user_id`` (this one
        included). With ``wait_ack`` > 0, wait up to that many seconds for the nodes to report
        how many sockets they closed."""

    async def push(self, user_id: int, update: bytes) -> None:
        """Deliver a serialized Update to every live socket of the user, on every node."""

    async def live_entries(self, *, user_id: int | None = None,
                           session_id: int | None = None) -> list[LiveEntry]:
        """Live sockets across all nodes, for the operator view."""
