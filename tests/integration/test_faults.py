"""Fail closed (SECURITY.md F1, F2): a database that cannot answer gives 503, never 500 or a
raw SQLite message, and the gateway recovers when it can answer again."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.support.client import TestClient, error_code
from tests.support.gateway import running_gateway, test_settings


async def test_a_locked_database_answers_503_and_recovers(tmp_path: Path) -> None:
    settings = test_settings(tmp_path, db_busy_timeout=0.2)
    async with running_gateway(settings) as gw, await TestClient.connect(gw.url) as client:
        await client.initialize()
        holder = sqlite3.connect(settings.db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            res = await client.sign_up("blocked", "blocked@example.com", "correct horse")
            assert error_code(res) == 503
            assert res.error.error_message == "temporarily unavailable; retry"
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        res = await client.sign_up("blocked", "blocked@example.com", "correct horse")
        assert res.WhichOneof("result") == "authorization"
