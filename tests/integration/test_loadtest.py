"""The load generator against real gateways: what it reports is what the server counted."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.__main__ import main as gateway_main
from gateway.loadtest import LoadConfig, run_load
from tests.support.gateway import GatewayProcess, InProcessGateway, running_gateway
from tests.support.gateway import test_settings as gateway_settings
from tests.support.redis_server import free_port

#: The server's per-socket rate limit and per-IP sign-up throttle would answer 429 to a load
#: test from one address; lift them so every request is served.
UNTHROTTLED: dict[str, Any] = dict(rate_limit_requests=1_000_000, rate_limit_burst=100_000,
                                   signup_ip_hourly=1_000_000)
UNTHROTTLED_FLAGS = ["--rate-limit-requests", "1000000", "--rate-limit-burst", "100000",
                     "--signup-ip-hourly", "1000000", "--log-level", "WARNING"]

REPORT_KEYS = {"config", "elapsed_seconds", "measured_seconds", "setup_seconds", "sockets",
               "handshake_ms", "requests", "methods", "errors", "closes", "server_closes",
               "reconnects", "updates", "client"}


def server_counts(port: int) -> Counter[tuple[str, str]]:
    """gateway_requests_total by (method, outcome), read from the node's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: Counter[tuple[str, str]] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gateway_requests_total":
                out[(sample.labels["method"], sample.labels["outcome"])] += int(sample.value)
    return out


def client_counts(report: dict[str, Any]) -> Counter[tuple[str, str]]:
    """The report's answered requests in the same shape as server_counts."""
    out: Counter[tuple[str, str]] = Counter()
    for method, entry in report["methods"].items():
        if method == "keepalive":
            continue
        out[(method, "ok")] += entry["ok"]
        for code, n in entry["errors"].items():
            out[(method, code)] += n
    return +out


async def all_closed(gw: InProcessGateway, timeout: float = 5.0) -> bool:
    """Poll until the server holds no socket (its side of the close finishes just after ours)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while gw.server.connections and loop.time() < deadline:
        await asyncio.sleep(0.01)
    return not gw.server.connections


async def test_counts_match_the_server(tmp_path: Path) -> None:
    async with running_gateway(gateway_settings(tmp_path, **UNTHROTTLED)) as gw:
        report = await run_load(LoadConfig(url=gw.url, sockets=50, ramp=0.5, duration=2.0,
                                           rate=20, seed=1))
        assert await all_closed(gw)
        counted = await asyncio.to_thread(server_counts, gw.port)
    sockets = report["sockets"]
    assert (sockets["connected"], sockets["failed"], sockets["auth_failed"]) == (50, 0, 0)
    assert client_counts(report) == counted
    assert counted[("auth.signUp", "ok")] == 50 and counted[("core.initialize", "ok")] == 50
    assert report["errors"] == {} and report["requests"]["unanswered"] == 0
    assert report["requests"]["sent"] == report["requests"]["answered"] == sum(counted.values())
    # 50 sockets x 20/s, Poisson: about 1,000 requests per second in the 2 s window.
    assert 700 < report["methods"]["auth.getSessions"]["rate"] < 1300
    lat = report["methods"]["auth.getSessions"]["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert report["handshake_ms"]["p50"] > 0
    assert report["closes"] == {"1000": 50} and report["server_closes"] == {}


async def test_refused_handshakes_are_reported_with_their_status(tmp_path: Path) -> None:
    settings = gateway_settings(tmp_path, max_connections=10, **UNTHROTTLED)
    async with running_gateway(settings) as gw:
        # 20 ms between connects: each handshake completes (and counts) before the next arrives.
        report = await run_load(LoadConfig(url=gw.url, sockets=20, ramp=0.4, duration=0.5,
                                           rate=5, seed=2))
        assert await all_closed(gw)
    sockets = report["sockets"]
    assert (sockets["connected"], sockets["failed"]) == (10, 10)
    assert sockets["failed_by_status"] == {"503": 10} and sockets["failed_by_error"] == {}
    assert report["errors"] == {} and report["closes"] == {"1000": 10}


async def test_reconnects_reauthorize_with_their_token(tmp_path: Path) -> None:
    async with running_gateway(gateway_settings(tmp_path, **UNTHROTTLED)) as gw:
        report = await run_load(LoadConfig(url=gw.url, sockets=20, ramp=0.2, duration=2.0,
                                           rate=5, reconnect_every=0.25, seed=3))
        assert await all_closed(gw)
        counted = await asyncio.to_thread(server_counts, gw.port)
    rc = report["reconnects"]
    assert rc["reauthorized"] > 40  # about 20 sockets x 2 s / 0.25 s = 160
    assert rc["reauth_failed"] == 0 and rc["failed"] == 0
    assert counted[("auth.authorize", "ok")] == rc["reauthorized"]
    assert report["methods"]["auth.authorize"]["ok"] == rc["reauthorized"]
    assert client_counts(report) == counted and report["errors"] == {}
    # One close per planned drop and one per socket at the end, all clean.
    assert report["closes"] == {"1000": 20 + rc["reauthorized"]}


async def test_signin_creates_accounts_first(tmp_path: Path) -> None:
    async with running_gateway(gateway_settings(tmp_path, **UNTHROTTLED)) as gw:
        report = await run_load(LoadConfig(url=gw.url, sockets=10, ramp=0.1, duration=0.5,
                                           rate=5, auth="signin", accounts=2, seed=4))
        counted = await asyncio.to_thread(server_counts, gw.port)
    assert report["sockets"]["accounts_created"] == 2
    assert counted[("auth.signUp", "ok")] == 2 and counted[("auth.signIn", "ok")] == 10
    assert client_counts(report) == counted and report["errors"] == {}


def test_bounds_are_refused() -> None:
    for bad in (dict(duration=3601.0), dict(ramp=600.0, duration=3001.0), dict(sockets=20_001),
                dict(sockets=0), dict(mix="sessions=0"), dict(mix="typing=1")):
        with pytest.raises(ValueError):
            LoadConfig(**bad)
    assert gateway_main(["loadtest", "--duration", "4000"]) == 2


def test_cli_against_a_gateway_process(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, *UNTHROTTLED_FLAGS)
    gw.start()
    try:
        out = tmp_path / "report.json"
        run = subprocess.run(
            [sys.executable, "-m", "gateway", "loadtest", "--url", gw.url, "--sockets", "50",
             "--ramp", "0.5", "--duration", "2", "--rate", "20", "--mix", "sessions=9,keepalive=1",
             "--seed", "5", "--json", str(out)],
            capture_output=True, text=True, timeout=30)
        assert run.returncode == 0, run.stderr
        counted = server_counts(gw.port)
    finally:
        gw.signal()
        gw.wait()
    report = json.loads(out.read_text())
    assert set(report) == REPORT_KEYS
    assert report["config"]["sockets"] == 50 and report["sockets"]["connected"] == 50
    assert client_counts(report) == counted and report["errors"] == {}
    assert report["methods"]["keepalive"]["sent"] > 0
    assert "handshake p50" in run.stdout and "auth.getSessions" in run.stdout


def test_cli_exits_non_zero_when_no_socket_connects(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    run = subprocess.run(
        [sys.executable, "-m", "gateway", "loadtest", "--url", f"ws://127.0.0.1:{free_port()}",
         "--sockets", "3", "--ramp", "0", "--duration", "30", "--json", str(out)],
        capture_output=True, text=True, timeout=20)
    assert run.returncode == 1, run.stdout + run.stderr
    report = json.loads(out.read_text())
    assert report["sockets"]["connected"] == 0
    assert report["sockets"]["failed_by_error"] == {"ConnectionRefusedError": 3}
