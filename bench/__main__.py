"""Run the benchmarks: ``python -m bench [--seconds S] [--connections 10,100] [--out FILE]``.

Each scenario measures the gateway and its baseline in this same run, with the same load client,
and prints both and their ratio; results are also written as JSON. Servers are pinned to CPU 0
and the load client to CPU 1 where the machine allows it.

Scenarios:
  sessions  round trips of auth.getSessions on authorized sockets, against a bare websockets +
            protobuf echo server (target: ratio >= 0.6 at 100 connections)
  kick      two nodes on one database and one Redis: from a revoke sent on node A to the close
            (4001) of the revoked session's socket on node B, over --revocations revocations;
            p50, p99 and max (target: p99 <= 50 ms with Redis up)
  idle      resident memory per open socket (--idle-sockets of them), authorized sockets on
            the gateway against plain sockets on the echo server
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.load import frame, run_load
from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {cpu})


def _wait_port(port: int, proc: subprocess.Popen[bytes], http: bool) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if http:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=0.5).close()
            else:
                import socket

                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


def start_echo(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "bench.echo_server", str(port)], cwd=ROOT,
                            preexec_fn=lambda: _pin(0), stdout=subprocess.DEVNULL)
    _wait_port(port, proc, http=False)
    return proc


def start_gateway(port: int, tmp: str, *extra: str, db: str | None = None) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "gateway", "serve", "--port", str(port),
            "--db", db or f"{tmp}/bench-{port}.sqlite3", "--secret-key", "bench", "--bcrypt-cost", "4",
            "--log-level", "WARNING", "--rate-limit-requests", "100000000",
            "--rate-limit-burst", "100000000", "--signup-ip-hourly", "100000", *extra]
    proc = subprocess.Popen(args, cwd=ROOT, preexec_fn=lambda: _pin(0))
    _wait_port(port, proc, http=True)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def scenario_sessions(connections: list[int], seconds: float, tmp: str) -> list[dict[str, Any]]:
    rows = []
    request = frame(7, "auth_get_sessions")
    for n in connections:
        port = free_port()
        echo = start_echo(port)
        try:
            base = await run_load(f"ws://127.0.0.1:{port}", n, seconds, request, gateway=False)
        finally:
            stop(echo)
        port = free_port()
        gw = start_gateway(port, tmp)
        try:
            ours = await run_load(f"ws://127.0.0.1:{port}", n, seconds, request, gateway=True)
        finally:
            stop(gw)
        row = {"scenario": "sessions", "connections": n,
               "echo_rps": round(base.rate), "gateway_rps": round(ours.rate),
               "ratio": round(ours.rate / base.rate, 3) if base.rate else None,
               "client_cpu_share_echo": round(base.client_cpu / base.seconds, 2),
               "client_cpu_share_gateway": round(ours.client_cpu / ours.seconds, 2)}
        print(f"sessions  conns={n:<4} echo={row['echo_rps']:>7}/s  gateway={row['gateway_rps']:>7}/s"
              f"  ratio={row['ratio']}  (target >= 0.6 at 100)", flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--connections", default="10,100", help="comma list of socket counts")
    parser.add_argument("--scenarios", default="sessions,kick,idle", help="comma list of scenarios")
    parser.add_argument("--idle-sockets", type=int, default=2000, help="sockets in the idle scenario")
    parser.add_argument("--revocations", type=int, default=1000, help="revocations in the kick scenario")
    parser.add_argument("--out", default="bench/results/latest.json", help="JSON output file")
    args = parser.parse_args()
    conns = [int(c) for c in args.connections.split(",")]
    _pin(1)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="osmium-bench-") as tmp:
        import uvloop

        for name in args.scenarios.split(","):
            if name == "sessions":
                results += uvloop.run(scenario_sessions(conns, args.seconds, tmp))
            elif name == "kick":
                from bench.kick import scenario_kick

                results += uvloop.run(scenario_kick(tmp, args.revocations, start_gateway, stop))
            elif name == "idle":
                from bench.idle import scenario_idle

                results += uvloop.run(scenario_idle(args.idle_sockets, tmp, start_echo,
                                                    start_gateway, stop))
            else:
                sys.exit(f"unknown scenario {name!r}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(),
                               "python": platform.python_version(), "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
