"""The operator verbs when the registry cannot help: no Redis configured, or Redis down.

The revocation must still land in the database (the truth) and the receipt must say how the
live sockets will end, instead of claiming nothing was live.
"""

from __future__ import annotations

from pathlib import Path

from gateway import admin
from gateway.store.sqlite import SqliteStore
from tests.support.client import TestClient
from tests.support.gateway import running_gateway, test_settings
from tests.support.redis_server import free_port


async def _signed_up_user(settings_path: Path) -> tuple[int, int]:
    settings = test_settings(settings_path)
    async with running_gateway(settings) as gw, await TestClient.connect(gw.url) as c:
        await c.initialize()
        res = await c.sign_up("op", "op@example.com", "correct horse")
        return res.authorization.user.id, res.authorization.session_id


async def _session_exists(db: str, session_id: int) -> bool:
    store = SqliteStore(db)
    await store.open()
    try:
        return await store.session_by_id(session_id) is not None
    finally:
        await store.close()


async def test_revoke_with_redis_down_still_revokes_and_says_the_recheck_will_kick(
        tmp_path: Path) -> None:
    user_id, session_id = await _signed_up_user(tmp_path)
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    settings = test_settings(tmp_path, redis_url=dead_redis, recheck_interval=30.0)

    listing = await admin.list_sessions(settings, user_id)
    assert str(session_id) in listing and "(registry unreachable)" in listing

    receipt = await admin.revoke(settings, session_id=session_id)
    assert "registry (Redis) is unreachable" in receipt and "within 30 s" in receipt
    assert not await _session_exists(settings.db, session_id)


async def test_revoke_without_redis_configured_says_the_recheck_will_kick(tmp_path: Path) -> None:
    user_id, session_id = await _signed_up_user(tmp_path)
    settings = test_settings(tmp_path)
    assert "(no registry configured)" in await admin.list_sessions(settings, user_id)
    receipt = await admin.revoke(settings, user_id=user_id)
    assert f"revoked 1 session(s) of user {user_id}" in receipt and "no registry" in receipt
    assert not await _session_exists(settings.db, session_id)
    assert "nothing revoked" in await admin.revoke(settings, session_id=session_id)
