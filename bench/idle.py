"""The ``idle`` scenario: memory per open socket, gateway against the bare echo server.

Opens N sockets to each server (authorized ones on the gateway: initialize, then a name-only
sign-up), lets them sit, and reads the server's resident memory from /proc before and after.
The difference over N is what one more connected, idle client costs a node.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from typing import Any

import websockets

from bench.load import prepare
from tests.support.redis_server import free_port


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def _measure(url: str, pid: int, n: int, gateway: bool) -> float:
    before = rss_kib(pid)
    sockets: list[websockets.ClientConnection] = []
    for i in range(0, n, 100):
        sockets += await asyncio.gather(*(prepare(url, gateway) for _ in range(min(100, n - i))))
    await asyncio.sleep(1.0)  # let the server settle (allocator, GC) before reading memory
    after = rss_kib(pid)
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return (after - before) / n


async def scenario_idle(n: int, tmp: str, start_echo: Callable[[int], subprocess.Popen[bytes]],
                        start_gateway: Callable[..., subprocess.Popen[bytes]],
                        stop: Callable[[subprocess.Popen[bytes]], None]) -> list[dict[str, Any]]:
    port = free_port()
    echo = start_echo(port)
    try:
        base = await _measure(f"ws://127.0.0.1:{port}", echo.pid, n, gateway=False)
    finally:
        stop(echo)
    port = free_port()
    gw = start_gateway(port, tmp, "--max-connections-per-ip", "0")
    try:
        ours = await _measure(f"ws://127.0.0.1:{port}", gw.pid, n, gateway=True)
    finally:
        stop(gw)
    row = {"scenario": "idle", "sockets": n, "echo_kib_per_socket": round(base, 1),
           "gateway_kib_per_socket": round(ours, 1),
           "ratio": round(ours / base, 2) if base else None}
    print(f"idle      sockets={n}  echo={row['echo_kib_per_socket']} KiB  "
          f"gateway={row['gateway_kib_per_socket']} KiB per authorized socket  "
          f"ratio={row['ratio']}", flush=True)
    return [row]
