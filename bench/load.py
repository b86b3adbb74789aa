"""The load client shared by every scenario: N sockets, each in a closed request loop."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import websockets

from gateway.proto import core_pb2


@dataclass
class LoadResult:
    connections: int
    seconds: float
    requests: int
    client_cpu: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def frame(req_id: int, field: str, **fields: object) -> bytes:
    msg = core_pb2.ClientMessage(id=req_id)
    sub = getattr(msg, field)
    sub.SetInParent()
    for key, value in fields.items():
        setattr(sub, key, value)
    return msg.SerializeToString()


async def prepare(url: str, gateway: bool) -> websockets.ClientConnection:
    ws = await websockets.connect(url, compression=None, max_size=None)
    if gateway:
        await ws.send(frame(1, "core_initialize", client_id=1, device_type="bench"))
        await ws.recv()
        await ws.send(frame(2, "auth_sign_up", name="bench"))
        reply = core_pb2.ServerMessage.FromString(await ws.recv())  # type: ignore[arg-type]
        assert reply.result.WhichOneof("result") == "authorization", reply
    return ws


async def run_load(url: str, connections: int, seconds: float, request: bytes,
                   gateway: bool, warmup: float = 1.0) -> LoadResult:
    sockets = []
    for i in range(0, connections, 50):  # open in small batches: sign-ups hash passwords
        sockets += await asyncio.gather(*(prepare(url, gateway) for _ in range(min(50, connections - i))))
    counting = False
    count = 0
    stop = False

    async def loop(ws: websockets.ClientConnection) -> None:
        nonlocal count
        while not stop:
            await ws.send(request)
            await ws.recv()
            if counting:
                count += 1

    tasks = [asyncio.create_task(loop(ws)) for ws in sockets]
    await asyncio.sleep(warmup)
    counting = True
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    counting = False
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    done = count
    stop = True
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return LoadResult(connections, elapsed, done, cpu)
