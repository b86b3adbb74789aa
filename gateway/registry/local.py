"""This node's live sockets, and the one-node registry built on them.

``LocalHub`` is the in-process index every registry uses for delivery: a revocation or push that
reaches this node (directly or over Redis) ends up in ``deliver_revoke`` / ``deliver_push``.
``MemoryRegistry`` is the whole registry when the gateway runs as a single node.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from gateway.registry.base import KickReceipt, LiveEntry, LiveSocket, ResyncHook

log = logging.getLogger(__name__)


class LocalHub:
    """Live sockets of this node, indexed by connection, session and user.

    Purely synchronous: every method runs to completion without yielding, so a revocation sees a
    consistent snapshot even while other tasks bind and unbind.
    """

    def __init__(self) -> None:
        self._by_conn: dict[int, LiveSocket] = {}
        # Inner dicts (conn_id -> socket) rather than sets: sockets need not be hashable and
        # insertion order keeps delivery order stable.
        self._by_user: dict[int, dict[int, LiveSocket]] = {}
        self._by_session: dict[int, dict[int, LiveSocket]] = {}

    def __len__(self) -> int:
        return len(self._by_conn)

    def add(self, sock: LiveSocket) -> None:
        old = self._by_conn.get(sock.conn_id)
        if old is not None and old is not sock:
            # A reused conn_id means the old socket is gone; never index two under one id.
            self.remove(old)
        self._by_conn[sock.conn_id] = sock
        self._by_user.setdefault(sock.user_id, {})[sock.conn_id] = sock
        self._by_session.setdefault(sock.session_id, {})[sock.conn_id] = sock

    def remove(self, sock: LiveSocket) -> bool:
        """Forget ``sock``; False if it was not indexed (only the very object counts, so a late
        unbind of a replaced socket cannot drop its successor)."""
        if self._by_conn.get(sock.conn_id) is not sock:
            return False
        del self._by_conn[sock.conn_id]
        _discard(self._by_user, sock.user_id, sock.conn_id)
        _discard(self._by_session, sock.session_id, sock.conn_id)
        return True

    def get(self, conn_id: int) -> LiveSocket | None:
        return self._by_conn.get(conn_id)

    def sockets(self, user_id: int | None = None) -> list[LiveSocket]:
        if user_id is None:
            return list(self._by_conn.values())
        return list(self._by_user.get(user_id, {}).values())

    def session_sockets(self, session_id: int) -> list[LiveSocket]:
        return list(self._by_session.get(session_id, {}).values())

    def has_user(self, user_id: int) -> bool:
        return user_id in self._by_user

    def has_session(self, session_id: int) -> bool:
        return session_id in self._by_session

    def user_ids(self) -> set[int]:
        return set(self._by_user)

    def session_ids(self) -> set[int]:
        return set(self._by_session)

    def clear(self) -> None:
        self._by_conn.clear()
        self._by_user.clear()
        self._by_session.clear()

    def entries(self, node: str, *, user_id: int | None = None,
                session_id: int | None = None) -> list[LiveEntry]:
        socks = self.sockets(user_id) if session_id is None else self.session_sockets(session_id)
        return sorted(
            (LiveEntry(node, s.conn_id, s.user_id, s.session_id) for s in socks
             if user_id is None or s.user_id == user_id),
            key=lambda e: e.conn_id,
        )

    def deliver_revoke(self, user_id: int, session_ids: Sequence[int]) -> int:
        """Tell every local socket of the user; return how many closed."""
        ids = list(session_ids)
        closed = 0
        for sock in self.sockets(user_id):  # a snapshot: revoke() may lead to remove()
            try:
                closed += bool(sock.revoke(ids))
            except Exception:
                # One broken socket must not shield the user's other sockets from revocation.
                log.exception("revoke failed on conn %d", sock.conn_id)
        return closed

    def deliver_push(self, user_id: int, update: bytes) -> int:
        """Queue ``update`` on every local socket of the user; return how many got it."""
        delivered = 0
        for sock in self.sockets(user_id):
            try:
                sock.push_update(update)
                delivered += 1
            except Exception:
                log.exception("push failed on conn %d", sock.conn_id)
        return delivered


def _discard(index: dict[int, dict[int, LiveSocket]], key: int, conn_id: int) -> None:
    bucket = index.get(key)
    if bucket is None:
        return
    bucket.pop(conn_id, None)
    if not bucket:
        # Empty buckets are dropped so has_user()/has_session() mean "holds a socket".
        del index[key]


class MemoryRegistry:
    """The registry of a gateway that runs as one node: everything is local."""

    def __init__(self, node: str = "local") -> None:
        self.node = node
        self.hub = LocalHub()

    @property
    def healthy(self) -> bool:
        return True

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.hub.clear()

    def set_resync_hook(self, hook: ResyncHook) -> None:
        # Nothing is ever lost in process, so the hook is never needed.
        pass

    async def bind(self, sock: LiveSocket) -> None:
        self.hub.add(sock)

    async def unbind(self, sock: LiveSocket) -> None:
        self.hub.remove(sock)

    def local_sockets(self, user_id: int | None = None) -> list[LiveSocket]:
        return self.hub.sockets(user_id)

    async def revoke(
        self, user_id: int, session_ids: Sequence[int], *, wait_ack: float = 0.0
    ) -> KickReceipt:
        return KickReceipt(closed={self.node: self.hub.deliver_revoke(user_id, session_ids)})

    async def push(self, user_id: int, update: bytes) -> None:
        self.hub.deliver_push(user_id, update)

    async def live_entries(self, *, user_id: int | None = None,
                           session_id: int | None = None) -> list[LiveEntry]:
        return self.hub.entries(self.node, user_id=user_id, session_id=session_id)
