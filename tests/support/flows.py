"""Helpers shared by the integration tests: connected clients, a gateway, polling, and
assertions on replies."""

from __future__ import annotations

import asyncio
import inspect
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from gateway.proto import core_pb2
from tests.support.client import TestClient, error_code
from tests.support.gateway import InProcessGateway, running_gateway
from tests.support.gateway import test_settings as make_settings

STRONG = "correct horse battery staple"
RETRY_RE = re.compile(r"retry after (\d+) s")

# What must never reach the wire in an error message (E4).
_LEAKS = re.compile(
    r"Traceback|File \"|line \d+|sqlite|SELECT |INSERT |UPDATE |DELETE |CONSTRAINT|"
    r"Error\(|Exception|\.py\b|/work/|token_hash|password_hash",
    re.IGNORECASE,
)


# -- shared helpers -------------------------------------------------------------------------------

def assert_clean_error(result: core_pb2.RPCResult, code: int) -> str:
    """The result is an error with ``code`` whose message leaks nothing internal; returns it."""
    assert error_code(result) == code, result
    message = result.error.error_message
    assert message, "an error must say something"
    assert not _LEAKS.search(message), f"internal detail on the wire: {message!r}"
    return message


def assert_empty_reply(result: core_pb2.RPCResult) -> None:
    """``()``: an RPCResult carrying only its req_id."""
    assert result.WhichOneof("result") is None, result
    assert result.req_id != 0


def authorization(result: core_pb2.RPCResult) -> Any:
    assert result.WhichOneof("result") == "authorization", result
    auth = result.authorization
    assert auth.token and auth.session_id and auth.user.id
    return auth


async def eventually(check: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02,
                     what: str = "condition") -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s (last: {value!r})")
        await asyncio.sleep(interval)


@asynccontextmanager
async def clients(url: str, n: int = 1, *, init: bool = True,
                  **kwargs: Any) -> AsyncIterator[list[TestClient]]:
    """``n`` connected (and initialized) clients, closed at exit."""
    async with AsyncExitStack() as stack:
        out = []
        for _ in range(n):
            c = await TestClient.connect(url, **kwargs)
            stack.push_async_callback(c.close)
            if init:
                await c.initialize()
            out.append(c)
        yield out


@asynccontextmanager
async def client(url: str, **kwargs: Any) -> AsyncIterator[TestClient]:
    async with clients(url, 1, **kwargs) as cs:
        yield cs[0]


@asynccontextmanager
async def gateway(tmp_path: Path, **overrides: Any) -> AsyncIterator[InProcessGateway]:
    async with running_gateway(make_settings(tmp_path, **overrides)) as gw:
        yield gw


def db_rows(path: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the gateway's SQLite file with a separate connection (as an operator would)."""
    conn = sqlite3.connect(path)
    try:
        return list(conn.execute(sql, params))
    finally:
        conn.close()
