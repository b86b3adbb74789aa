"""Wires the concrete pieces together from Settings. The only module that knows them all."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway.clock import WallClock
from gateway.config import Settings
from gateway.fileslimit import raise_file_limit
from gateway.ids import SnowflakeGenerator
from gateway.registry.base import LiveSocket, Registry
from gateway.registry.local import MemoryRegistry
from gateway.services import account, recovery, social
from gateway.services.accounts import AccountService
from gateway.services.passwords import PasswordHasher
from gateway.services.sessions import SessionService
from gateway.services.throttle import CounterBackend, MemoryCounters, Throttles
from gateway.store.base import Store
from gateway.store.redis_counters import FallbackCounters, RedisCounters
from gateway.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("gateway.app")


class Services:
    """Everything a handler may reach, built once per process from Settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.node = settings.node_name or f"{socket.gethostname()}-{os.getpid()}"
        self.app_names: Mapping[int, str] = settings.app_names
        self.clock_ms = WallClock()
        self.ids = SnowflakeGenerator(settings.node_id)
        secret = settings.resolved_secret()
        # The concrete store, for the repositories of each area; the services see ``store``.
        self.db = SqliteStore(settings.db, busy_timeout_ms=int(settings.db_busy_timeout * 1000))
        self.store: Store = self.db
        self._redis: Redis | None = None
        backend: CounterBackend
        self.registry: Registry
        if settings.redis_url:
            from redis.asyncio import Redis

            from gateway.registry.redis import RedisRegistry

            self._redis = Redis.from_url(settings.redis_url, socket_timeout=2,
                                         socket_connect_timeout=2)
            backend = FallbackCounters(RedisCounters(self._redis), MemoryCounters(),
                                       settings.local_throttle_divisor)
            self.registry = RedisRegistry(settings.redis_url, self.node,
                                          heartbeat=settings.registry_heartbeat,
                                          ttl=settings.registry_ttl)
        else:
            backend = MemoryCounters()
            self.registry = MemoryRegistry(self.node)
        self.throttles = Throttles(backend, settings, key_secret=secret)
        self.hasher = PasswordHasher(settings.bcrypt_cost, secret, settings.hash_threads,
                                     settings.hash_queue)
        self.sessions = SessionService(settings, self.store, self.registry, self.ids, self.clock_ms)
        self.accounts = AccountService(settings, self.store, self.sessions, self.hasher,
                                       self.throttles, self.ids, self.clock_ms)
        # The other areas build themselves from what is above.
        self.recovery = recovery.build(self)
        self.account = account.build(self)
        self.social = social.build(self)

    async def start(self) -> None:
        await self.store.open()
        self.registry.set_resync_hook(self._resync)
        await self.registry.start()
        self.sessions.start()
        for area in (self.recovery, self.account, self.social):
            await area.start()

    async def stop(self) -> None:
        for area in (self.social, self.account, self.recovery):
            await area.stop()
        await self.sessions.stop()
        await self.registry.stop()
        await self.store.close()
        if self._redis is not None:
            await self._redis.aclose()
        self.hasher.close()

    async def on_disconnect(self, sock: LiveSocket) -> None:
        self.sessions.touch_socket(sock)
        await self.registry.unbind(sock)

    async def _resync(self) -> None:
        await self.sessions.recheck()


#: Files a node needs besides its sockets: the database, Redis, logs, the listening socket.
FILE_HEADROOM = 64


async def serve(settings: Settings, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Run a node until ``stop`` is set (or SIGTERM/SIGINT), then shut down gracefully."""
    from gateway.transport.server import GatewayServer

    raise_file_limit(settings.max_connections + FILE_HEADROOM)
    services = Services(settings)
    await services.start()
    server = GatewayServer(settings, services)
    try:
        await server.start()
        if ready is not None:
            ready.set()
        stop = stop or asyncio.Event()
        _install_signal_handlers(stop)
        await stop.wait()
        log.info("shutting down: draining %d sockets", len(server.connections))
        await server.shutdown()
    finally:
        await services.stop()
        log.info("stopped")


def _install_signal_handlers(stop: asyncio.Event) -> None:
    import signal

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread, or not Unix
            pass
