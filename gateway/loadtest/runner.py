"""Ramp-up, pacing, stop: drives a run of scripted sockets and always ends it by itself.

A run is: (``--auth signin`` only) create the accounts; open the sockets spread evenly over
``ramp`` seconds; let them run for ``duration`` seconds (the measured window); tell every socket
to stop, give each a bounded time to collect its pending replies and close, then abort whatever
is left. The run's length is bounded by ``ramp + duration`` (at most MAX_SECONDS) plus the stop
allowance, and account creation by SETUP_LIMIT.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
import secrets
import time
from dataclasses import dataclass
from typing import Any

from gateway.fileslimit import raise_file_limit
from gateway.loadtest.report import Stats, build_report
from gateway.loadtest.script import Plan, ScriptedSocket, parse_mix

log = logging.getLogger("gateway.loadtest")

MAX_SOCKETS = 20_000
MAX_SECONDS = 3600.0  # ramp + duration
MAX_RATE = 1000.0  # per socket
SETUP_LIMIT = 600.0  # seconds allowed to create the sign-in accounts
SETUP_CONCURRENCY = 16
#: Sockets sharing one sign-in account. Each sign-in is a session; the server evicts (and kicks)
#: the oldest session past --max-sessions-per-user (100 by default), so stay well below it.
SOCKETS_PER_ACCOUNT = 50


class LoadTestError(Exception):
    """The run could not start (e.g. no sign-in account could be created)."""


@dataclass(frozen=True, slots=True)
class LoadConfig:
    url: str = "ws://127.0.0.1:8765"
    sockets: int = 100
    ramp: float = 5.0
    duration: float = 30.0
    rate: float = 1.0
    mix: str = "sessions=1"
    auth: str = "signup"
    accounts: int = 0  # --auth signin: accounts to create (0: one per SOCKETS_PER_ACCOUNT)
    reconnect_every: float = 0.0
    keepalive: float = 30.0
    seed: int | None = None

    def __post_init__(self) -> None:
        errors = []
        if not self.url.startswith(("ws://", "wss://")):
            errors.append("url must start with ws:// or wss://")
        if not 1 <= self.sockets <= MAX_SOCKETS:
            errors.append(f"sockets must be 1-{MAX_SOCKETS}")
        if self.ramp < 0 or self.duration <= 0 or self.ramp + self.duration > MAX_SECONDS:
            errors.append(f"ramp >= 0, duration > 0 and ramp + duration <= {MAX_SECONDS:.0f} s")
        if not 0 <= self.rate <= MAX_RATE:
            errors.append(f"rate must be 0-{MAX_RATE:.0f} per socket")
        if self.auth not in ("signup", "signin"):
            errors.append("auth must be signup or signin")
        if self.accounts < 0 or self.accounts > self.sockets:
            errors.append("accounts must be 0-sockets")
        if self.reconnect_every < 0 or self.keepalive <= 0:
            errors.append("reconnect_every must be >= 0 and keepalive > 0")
        try:
            parse_mix(self.mix)
        except ValueError as exc:
            errors.append(str(exc))
        if errors:
            raise ValueError("; ".join(errors))

    @property
    def account_count(self) -> int:
        if self.auth != "signin":
            return 0
        return self.accounts or math.ceil(self.sockets / SOCKETS_PER_ACCOUNT)


async def _create_accounts(config: LoadConfig, plan: Plan, stats: Stats,
                           rng: random.Random) -> list[tuple[str, str]]:
    """Email + password accounts for ``--auth signin``, a few at a time (each hashes)."""
    tag = secrets.token_hex(4)  # a fresh tag per run: emails stay unique on a reused database
    password = secrets.token_urlsafe(18)
    wanted = [(f"loadtest-{tag}-{i}@example.invalid", password)
              for i in range(config.account_count)]
    created: list[tuple[str, str]] = []
    gate = asyncio.Semaphore(SETUP_CONCURRENCY)

    async def one(i: int, creds: tuple[str, str]) -> None:
        async with gate:
            sock = ScriptedSocket(i, plan, stats, random.Random(rng.getrandbits(64)), creds)
            try:
                await sock.create_account(f"loadtest {i}")
            except Exception as exc:  # counted and reported; the run goes on with the rest
                log.warning("account %d not created: %s", i, exc)
                return
            created.append(creds)

    async with asyncio.timeout(SETUP_LIMIT):
        await asyncio.gather(*(one(i, c) for i, c in enumerate(wanted)))
    stats.accounts = len(created)
    if not created:
        raise LoadTestError(f"could not create any sign-in account on {config.url}")
    return created


async def run_load(config: LoadConfig, stop: asyncio.Event | None = None) -> dict[str, Any]:
    """Run the load test described by ``config``; return the report (see report.build_report).

    Setting ``stop`` ends the run early (the CLI sets it on SIGINT/SIGTERM); it still reports.
    """
    loop = asyncio.get_running_loop()
    plan = Plan(url=config.url, rate=config.rate, mix=parse_mix(config.mix), auth=config.auth,
                reconnect_every=config.reconnect_every, keepalive_interval=config.keepalive)
    stats = Stats()
    rng = random.Random(config.seed)
    cpu0 = time.process_time()
    setup0 = time.perf_counter()
    accounts = await _create_accounts(config, plan, stats, rng) if config.auth == "signin" else []
    setup_seconds = time.perf_counter() - setup0

    sockets = [
        ScriptedSocket(i, plan, stats, random.Random(rng.getrandbits(64)),
                       accounts[i % len(accounts)] if accounts else None)
        for i in range(config.sockets)
    ]
    started = time.perf_counter()
    window_start = started + config.ramp
    window_end = window_start + config.duration
    stats.window = (window_start, window_end)

    stop = stop or asyncio.Event()
    stopper = loop.create_task(stop.wait())
    tasks: list[asyncio.Task[None]] = []
    try:
        for i, sock in enumerate(sockets):
            if stop.is_set():
                break
            delay = started + config.ramp * i / config.sockets - time.perf_counter()
            if delay > 0.001:
                await asyncio.wait([stopper], timeout=delay)
            tasks.append(loop.create_task(sock.run()))
        # Runs to the end of the window, or sooner when every socket has given up.
        if tasks and not stop.is_set():
            waiters: list[asyncio.Future[Any]] = [
                asyncio.gather(*tasks, return_exceptions=True), stopper]
            await asyncio.wait(waiters,
                               timeout=max(0.0, window_end - time.perf_counter()),
                               return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped = time.perf_counter()
        stopper.cancel()
        await _stop(sockets, tasks, plan)
    measured = min(config.duration, max(0.0, stopped - window_start))
    config_out = dataclasses.asdict(config)
    config_out["mix"] = {op.name: w for op, w in plan.mix}
    config_out["accounts"] = config.account_count
    return build_report(
        stats, config_out, elapsed=time.perf_counter() - started, measured=measured,
        setup_seconds=setup_seconds, cpu_seconds=time.process_time() - cpu0,
        event_loop=type(loop).__module__.split(".")[0],
    )


async def _stop(sockets: list[ScriptedSocket], tasks: list[asyncio.Task[None]],
                plan: Plan) -> None:
    """Stop every socket, wait a bounded time for them to drain and close, then abort the rest."""
    for sock in sockets:
        sock.stop()
    if not tasks:
        return
    allowance = plan.open_timeout + plan.reply_timeout + plan.drain_timeout + plan.close_timeout
    _, late = await asyncio.wait(tasks, timeout=allowance)
    for task in late:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for sock in sockets:
        if sock.ws is not None:  # a cancelled close: drop the TCP connection
            sock.ws.transport.abort()
            sock.ws = None


def cli(args: Any) -> int:
    """``osmium-gateway loadtest``: run, print the report, write --json; exit 0 when it ran,
    1 when no socket could connect, 2 for bad arguments."""
    import signal
    import sys

    from gateway.loadtest.report import format_report, write_json

    try:
        config = LoadConfig(url=args.url, sockets=args.sockets, ramp=args.ramp,
                            duration=args.duration, rate=args.rate, mix=args.mix, auth=args.auth,
                            accounts=args.accounts, reconnect_every=args.reconnect_every,
                            keepalive=args.keepalive, seed=args.seed)
    except ValueError as exc:
        print(f"osmium-gateway loadtest: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise_file_limit(config.sockets + SETUP_CONCURRENCY + 64)

    async def main() -> dict[str, Any]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await run_load(config, stop)

    runner: Any = asyncio.run
    if args.uvloop:
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            pass
    try:
        report = runner(main())
    except LoadTestError as exc:
        print(f"osmium-gateway loadtest: {exc}", file=sys.stderr)
        return 1
    print(format_report(report))
    if args.json:
        write_json(report, args.json)
    return 0 if report["sockets"]["connected"] > 0 else 1
