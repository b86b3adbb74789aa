"""A gateway SIGKILLed in the middle of a sign-up burst leaves a consistent database (F2, F3).

Real process, real sockets, real SQLite file: kill -9 while sign-ups are in flight, look at the
file as an operator would, restart on the same file and use every token that was answered.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import websockets
from websockets.asyncio.client import ClientConnection

from gateway.proto import core_pb2
from tests.support.flows import (
    STRONG,
    assert_clean_error,
    authorization,
    clients,
    eventually,
)
from tests.support.gateway import GatewayProcess

# Room for a burst: no per-IP sign-up cap, deep per-socket pipelines.
BURST_ARGS = ("--signup-ip-hourly", "1000000", "--max-inflight", "64",
              "--rate-limit-burst", "100000", "--rate-limit-requests", "1000000",
              "--hash-threads", "2", "--log-level", "WARNING")
SOCKETS = 6
PIPELINE = 12


@dataclass(frozen=True)
class Answered:
    token: str
    user_id: int
    session_id: int
    email: str | None


class Pipelined:
    """One socket with many requests in flight: a single reader hands results to waiters."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future[core_pb2.RPCResult]] = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                assert isinstance(raw, bytes)
                msg = core_pb2.ServerMessage.FromString(raw)
                if msg.WhichOneof("message") == "result":
                    fut = self.waiting.pop(msg.result.req_id, None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg.result)
        finally:
            for fut in self.waiting.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("socket closed"))

    async def call(self, msg: core_pb2.ClientMessage) -> core_pb2.RPCResult:
        msg.id = next(self.ids)
        fut = asyncio.get_running_loop().create_future()
        self.waiting[msg.id] = fut
        try:
            await self.ws.send(msg.SerializeToString())
        except BaseException:
            self.waiting.pop(msg.id, None)
            raise
        return await fut

    async def close(self) -> None:
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)
        await self.ws.close()


def sign_up_message(n: int) -> tuple[core_pb2.ClientMessage, str | None]:
    msg = core_pb2.ClientMessage()
    if n % 7 == 3:  # a contended address: one wins, the rest answer 409
        email: str | None = "Contended@Example.com" if n % 2 else "contended@EXAMPLE.com"
    elif n % 3 == 0:
        email = None  # name-only
    else:
        email = f"burst{n}@example.com"
    msg.auth_sign_up.name = f"burst {n}"
    if email is not None:
        msg.auth_sign_up.email = email
        msg.auth_sign_up.password = STRONG
    return msg, email


async def burst(url: str, answered: list[Answered], counter: itertools.count[int],
                conns: list[Pipelined]) -> None:
    """Keep PIPELINE sign-ups in flight on one socket until it dies."""
    ws = await websockets.connect(url, max_size=None, open_timeout=10)
    conn = Pipelined(ws)
    conns.append(conn)
    init = core_pb2.ClientMessage()
    init.core_initialize.client_id = 1
    assert (await conn.call(init)).WhichOneof("result") == "initialized"

    async def one_lane() -> None:
        while True:
            msg, email = sign_up_message(next(counter))
            res = await conn.call(msg)
            kind = res.WhichOneof("result")
            if kind == "authorization":
                a = res.authorization
                answered.append(Answered(a.token, a.user.id, a.session_id, email))
            else:
                assert_clean_error(res, 409)  # only the contended address may be refused

    lanes = [asyncio.create_task(one_lane()) for _ in range(PIPELINE)]
    try:
        await asyncio.wait(lanes, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for lane in lanes:
            lane.cancel()
        outcomes = await asyncio.gather(*lanes, return_exceptions=True)
        await conn.close()
    for outcome in outcomes:
        # The gateway was killed under us: that, and nothing else, may end a lane.
        if not isinstance(outcome, (ConnectionError, websockets.ConnectionClosed,
                                    asyncio.CancelledError)):
            raise AssertionError(f"lane ended with {outcome!r}")


def check_database(db: str) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        one = lambda sql: conn.execute(sql).fetchone()[0]
        # No user without its credentials: an email user always has its password hash.
        assert one("SELECT count(*) FROM users WHERE email_norm IS NOT NULL"
                   " AND (password_hash IS NULL OR email IS NULL)") == 0
        assert one("SELECT count(*) FROM users WHERE email_norm IS NULL"
                   " AND (password_hash IS NOT NULL OR email IS NOT NULL)") == 0
        # No session without its user, and (sign-up writes both in one transaction) no user
        # without the session its sign-up created.
        assert one("SELECT count(*) FROM sessions s LEFT JOIN users u ON u.id = s.user_id"
                   " WHERE u.id IS NULL") == 0
        assert one("SELECT count(*) FROM users u WHERE NOT EXISTS"
                   " (SELECT 1 FROM sessions s WHERE s.user_id = u.id)") == 0
        assert one("SELECT count(*) FROM users WHERE email_norm = 'contended@example.com'") <= 1
        return {"users": one("SELECT count(*) FROM users"),
                "sessions": one("SELECT count(*) FROM sessions")}
    finally:
        conn.close()


async def test_sigkill_during_sign_up_burst_leaves_a_consistent_database(
        tmp_path: Path) -> None:
    first = GatewayProcess(tmp_path, *BURST_ARGS)
    await first.astart()
    answered: list[Answered] = []
    counter = itertools.count()
    conns: list[Pipelined] = []
    try:
        workers = [asyncio.create_task(burst(first.url, answered, counter, conns))
                   for _ in range(SOCKETS)]
        started = time.monotonic()
        # Kill in the thick of it: after ~0.6 s and once plenty of sign-ups were answered.
        await eventually(lambda: len(answered) >= 30 and time.monotonic() - started >= 0.6,
                         timeout=15, interval=0.01, what="burst under way")
        in_flight = sum(len(c.waiting) for c in conns)
        first.kill()  # SIGKILL
        assert first.proc is not None and first.proc.returncode == -9
        assert in_flight > 0, "the kill must land while sign-ups are in flight"
        await asyncio.wait_for(asyncio.gather(*workers), timeout=10)
    finally:
        first.kill()

    counts = check_database(first.db)
    assert counts["users"] >= len(answered) > 0
    tokens_before = list(answered)

    second = GatewayProcess(tmp_path, *BURST_ARGS, db=first.db)
    await second.astart()
    try:
        async with clients(second.url, 4) as cs:
            async def authorize_all(c_index: int) -> None:
                c = cs[c_index]
                for a in tokens_before[c_index::len(cs)]:
                    auth = authorization(await c.authorize(a.token))
                    assert (auth.session_id, auth.user.id, auth.token) == (
                        a.session_id, a.user_id, a.token)

            await asyncio.gather(*(authorize_all(i) for i in range(len(cs))))
            # Email accounts answered before the kill sign in with their password too.
            with_email = [a for a in tokens_before if a.email and "contended" not in a.email]
            for a in with_email[:3]:
                inn = authorization(await cs[0].sign_in(a.email or "", STRONG))
                assert inn.user.id == a.user_id
            # The restarted gateway keeps taking sign-ups on the same file.
            authorization(await cs[1].sign_up("after the crash", "after@example.com", STRONG))
    finally:
        second.signal()
        await second.await_exit()
        second.kill()
    check_database(first.db)
