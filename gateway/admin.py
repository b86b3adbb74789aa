"""Operator verbs: ``osmium-gateway sessions list|revoke``.

They work on the same database and Redis as the nodes. A revocation commits to the database
first (the truth), then asks the registry to kick the live sockets and waits up to
``kick_ack_timeout`` for the owning nodes to say how many they closed. Without Redis the verbs
cannot reach a running node: sockets of revoked sessions then close at the node's next re-check
(``recheck_interval``), and the receipt says so.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

from gateway.config import Settings
from gateway.errors import Unavailable
from gateway.registry.base import KickReceipt, LiveEntry, Registry
from gateway.store.base import SessionRecord
from gateway.store.sqlite import SqliteStore


def _admin_registry(settings: Settings) -> Registry | None:
    if not settings.redis_url:
        return None
    from gateway.registry.redis import RedisRegistry

    name = f"admin-{socket.gethostname()}-{os.getpid()}"
    return RedisRegistry(settings.redis_url, name, heartbeat=settings.registry_heartbeat,
                         ttl=settings.registry_ttl)


async def list_sessions(settings: Settings, user_id: int) -> str:
    store = SqliteStore(settings.db)
    await store.open()
    registry = _admin_registry(settings)
    try:
        records = await store.sessions_of_user(user_id)
        live: list[LiveEntry] | None = []
        if registry is not None:
            await registry.start()
            try:
                live = await registry.live_entries(user_id=user_id)
            except Unavailable:
                live = None  # Redis unreachable: say so rather than show nothing as live
    finally:
        if registry is not None:
            await registry.stop()
        await store.close()
    return format_sessions(user_id, records, live, settings, registry is not None)


def format_sessions(user_id: int, records: Sequence[SessionRecord],
                    live: Sequence[LiveEntry] | None, settings: Settings,
                    have_registry: bool) -> str:
    names = settings.app_names
    by_session: dict[int, list[LiveEntry]] = {}
    for entry in live or ():
        by_session.setdefault(entry.session_id, []).append(entry)
    lines = [f"user {user_id}: {len(records)} session(s)"]
    for r in records:
        sockets = by_session.get(r.id, [])
        where = ", ".join(f"{e.node}#{e.conn_id}" for e in sockets) or "-"
        if not have_registry:
            where = "(no registry configured)"
        elif live is None:
            where = "(registry unreachable)"
        geo = "/".join(x for x in (r.country, r.region) if x) or "-"
        lines.append(f"  {r.id}  app={names.get(r.client_id, str(r.client_id))} {r.app_version}"
                     f"  device={r.device_type} {r.device_version}  geo={geo}"
                     f"  last_active={r.last_active}  live={where}")
    return "\n".join(lines)


async def revoke(settings: Settings, *, session_id: int | None = None,
                 user_id: int | None = None) -> str:
    store = SqliteStore(settings.db)
    await store.open()
    registry = _admin_registry(settings)
    try:
        if session_id is not None:
            record = await store.session_by_id(session_id)
            if record is None:
                return f"session {session_id}: not found (nothing revoked)"
            user_id = record.user_id
            await store.revoke_sessions(user_id, [session_id])
            ids = [session_id]
        else:
            assert user_id is not None
            ids = await store.revoke_user_sessions(user_id)
            if not ids:
                return f"user {user_id}: no sessions (nothing revoked)"
        if registry is None:
            return (f"revoked {len(ids)} session(s) of user {user_id}; no registry configured: "
                    f"live sockets close at the node's next re-check "
                    f"(within {settings.recheck_interval:.0f} s)")
        await registry.start()
        if not registry.healthy:
            return (f"revoked {len(ids)} session(s) of user {user_id}; the registry (Redis) is "
                    f"unreachable: live sockets close at their node's next re-check "
                    f"(within {settings.recheck_interval:.0f} s)")
        receipt = await registry.revoke(user_id, ids, wait_ack=settings.kick_ack_timeout)
        return format_receipt(user_id, ids, receipt, registry.node)
    finally:
        if registry is not None:
            await registry.stop()
        await store.close()


def format_receipt(user_id: int, ids: Sequence[int], receipt: KickReceipt, own: str) -> str:
    closed = {node: n for node, n in receipt.closed.items() if node != own}
    total = sum(closed.values())
    parts = ", ".join(f"{node}={n}" for node, n in sorted(closed.items())) or "none"
    # Nodes that acknowledged but held no socket of these sessions are listed with 0, not
    # counted as nodes that closed something.
    closing = sum(1 for n in closed.values() if n)
    out = (f"revoked {len(ids)} session(s) of user {user_id}: {' '.join(map(str, ids))}\n"
           f"closed {total} socket(s) on {closing} node(s): {parts}")
    if receipt.unacknowledged:
        out += ("\nno answer from: " + ", ".join(receipt.unacknowledged)
                + " (their sockets close at their next re-check)")
    return out
