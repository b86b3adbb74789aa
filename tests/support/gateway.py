"""Real gateways for integration tests: in this event loop, or as a separate process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from gateway.app import Services
from gateway.config import Settings
from gateway.transport.server import GatewayServer
from tests.support.redis_server import free_port

TEST_SECRET = "test-secret-not-for-production"


def test_settings(tmp_path: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = dict(
        host="127.0.0.1", port=0, db=str(tmp_path / "gateway.sqlite3"), bcrypt_cost=4,
        secret_key=TEST_SECRET, uvloop=False,
    )
    base.update(overrides)
    return Settings(**base)


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


class InProcessGateway:
    def __init__(self, services: Services, server: GatewayServer) -> None:
        self.services = services
        self.server = server

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}"

    @property
    def port(self) -> int:
        return self.server.port


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings) -> AsyncIterator[InProcessGateway]:
    """A gateway node served from the test's own event loop; shut down gracefully at exit."""
    services = Services(settings)
    await services.start()
    server = GatewayServer(settings, services)
    await server.start()
    try:
        yield InProcessGateway(services, server)
    finally:
        await server.shutdown()
        await services.stop()


class GatewayProcess:
    """``python -m gateway serve`` in a child process, for signals and crashes."""

    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None,
                 port: int | None = None, db: str | None = None) -> None:
        self.port = port or free_port()
        self.db = db or str(tmp_path / "gateway.sqlite3")
        self.log_path = tmp_path / f"gateway-{self.port}.log"
        self.args = ["--host", "127.0.0.1", "--port", str(self.port), "--db", self.db,
                     "--bcrypt-cost", "4", "--secret-key", TEST_SECRET, *args]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", *self.args],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited early:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"gateway did not become healthy:\n{self.log()}")

    async def astart(self, timeout: float = 15.0) -> None:
        await asyncio.to_thread(self.start, timeout)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    async def await_exit(self, timeout: float = 20.0) -> int:
        return await asyncio.to_thread(self.wait, timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            self._log.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""
