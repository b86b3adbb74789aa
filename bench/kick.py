"""The ``kick`` scenario: how long a revocation made on one node takes to close a socket on another.

Two gateway processes, A and B, share one SQLite file and one Redis. Each revocation has a user
with two sessions: one signed up on B (its socket open and authorized), one signed in on A. The
session on A revokes the session on B; the clock runs from sending the request on A to B's socket
receiving its close (4001). Sessions are prepared in batches beforehand, so only revoke -> close
is measured; revocations run one at a time, so each is measured unloaded.
Target: p99 <= 50 ms with Redis up (the re-check interval is left at its 30 s default, so every
kick measured here went through Redis).
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

import websockets

from bench.load import frame
from gateway.proto import core_pb2
from tests.support.redis_server import RedisServer, free_port

TARGET_P99_MS = 50.0
BATCH = 100
PASSWORD = "bench password 1"
SERVER_ARGS = ("--signup-ip-hourly", "1000000", "--max-connections-per-ip", "0",
               "--signin-account-ip-failures", "1000000", "--log-level", "WARNING")

_ids = itertools.count(10)


async def _call(ws: websockets.ClientConnection, field: str, **fields: object) -> core_pb2.RPCResult:
    req_id = next(_ids)
    await ws.send(frame(req_id, field, **fields))
    while True:
        msg = core_pb2.ServerMessage.FromString(await ws.recv())  # type: ignore[arg-type]
        if msg.WhichOneof("message") == "result" and msg.result.req_id == req_id:
            return msg.result


async def _open(url: str) -> websockets.ClientConnection:
    ws = await websockets.connect(url, compression=None, max_size=None)
    await _call(ws, "core_initialize", client_id=1, device_type="bench")
    return ws


async def _pair(url_a: str, url_b: str, n: int) -> tuple[websockets.ClientConnection,
                                                         websockets.ClientConnection, int]:
    """A user with a session on B (returned socket authorized there) and one on A."""
    email = f"kick{n}-{time.monotonic_ns()}@bench.invalid"
    on_b = await _open(url_b)
    res = await _call(on_b, "auth_sign_up", name="kick", email=email, password=PASSWORD)
    assert res.WhichOneof("result") == "authorization", res
    on_a = await _open(url_a)
    signed = await _call(on_a, "auth_sign_in", email=email, password=PASSWORD)
    assert signed.WhichOneof("result") == "authorization", signed
    return on_a, on_b, res.authorization.session_id


async def _closed(ws: websockets.ClientConnection) -> float:
    try:
        async for _ in ws:  # the session_deleted update, then the close
            pass
    except websockets.ConnectionClosed:
        pass
    return time.perf_counter()


async def _kick(on_a: websockets.ClientConnection, on_b: websockets.ClientConnection,
                session_id: int) -> float:
    req_id = next(_ids)
    request = core_pb2.ClientMessage(id=req_id)
    request.auth_revoke_sessions.session_ids.append(session_id)
    waiter = asyncio.create_task(_closed(on_b))
    sent = time.perf_counter()
    await on_a.send(request.SerializeToString())
    closed = await asyncio.wait_for(waiter, 10)
    if on_b.close_code != 4001:
        raise RuntimeError(f"B closed with {on_b.close_code}, expected 4001")
    return (closed - sent) * 1000


def _percentile(sorted_ms: list[float], q: float) -> float:
    index = min(len(sorted_ms) - 1, max(0, round(q * len(sorted_ms)) - 1))
    return sorted_ms[index]


async def measure(url_a: str, url_b: str, revocations: int) -> list[float]:
    latencies: list[float] = []
    for start in range(0, revocations, BATCH):
        count = min(BATCH, revocations - start)
        pairs = []
        for i in range(0, count, 25):  # sign-ups hash passwords: a few at a time
            pairs += await asyncio.gather(*(_pair(url_a, url_b, start + i + j)
                                            for j in range(min(25, count - i))))
        for on_a, on_b, session_id in pairs:
            latencies.append(await _kick(on_a, on_b, session_id))
        await asyncio.gather(*(ws.close() for on_a, on_b, _ in pairs for ws in (on_a, on_b)),
                             return_exceptions=True)
    return latencies


StartGateway = Callable[..., "subprocess.Popen[bytes]"]


async def scenario_kick(tmp: str, revocations: int, start_gateway: StartGateway,
                        stop: Callable[[subprocess.Popen[bytes]], None]) -> list[dict[str, Any]]:
    """``start_gateway(port, tmp, *flags, db=...)`` and ``stop(proc)`` are the harness's."""
    redis = RedisServer()
    redis.start()
    db = f"{tmp}/kick.sqlite3"
    nodes = []
    try:
        for node_id, name in ((1, "kick-a"), (2, "kick-b")):
            port = free_port()
            nodes.append((port, start_gateway(
                port, tmp, "--node-id", str(node_id), "--node-name", name,
                "--redis-url", redis.url, *SERVER_ARGS, db=db)))
        (port_a, _), (port_b, _) = nodes
        started = time.perf_counter()
        ms = sorted(await measure(f"ws://127.0.0.1:{port_a}", f"ws://127.0.0.1:{port_b}",
                                  revocations))
    finally:
        for _, proc in nodes:
            stop(proc)
        redis.close()
    row = {"scenario": "kick", "revocations": len(ms),
           "p50_ms": round(statistics.median(ms), 2), "p99_ms": round(_percentile(ms, 0.99), 2),
           "max_ms": round(ms[-1], 2), "target_p99_ms": TARGET_P99_MS,
           "seconds": round(time.perf_counter() - started, 1)}
    print(f"kick      revocations={row['revocations']}  p50={row['p50_ms']} ms"
          f"  p99={row['p99_ms']} ms  max={row['max_ms']} ms  (target p99 <= {TARGET_P99_MS:.0f} ms)",
          flush=True)
    return [row]
