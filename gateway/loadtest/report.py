"""What the load generator counts, and the report it prints and writes.

Every socket of a run records into one ``Stats`` (the run is one event loop, one thread, so no
locks). Latencies go into log-bucketed histograms, not lists: a run of 20,000 sockets for an hour
would otherwise keep tens of millions of floats. A bucket is 1 % wide, so percentiles are exact to
about 1 %; the maximum is kept exactly.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

#: Buckets per factor e: bucket i holds latencies of about exp(i / SCALE) microseconds (1 % wide).
SCALE = 100.0


class Histogram:
    __slots__ = ("buckets", "count", "max")

    def __init__(self) -> None:
        self.buckets: Counter[int] = Counter()
        self.count = 0
        self.max = 0.0

    def record(self, seconds: float) -> None:
        micros = seconds * 1e6
        self.buckets[int(math.log(micros) * SCALE) if micros > 1.0 else 0] += 1
        self.count += 1
        if seconds > self.max:
            self.max = seconds

    def percentile(self, q: float) -> float:
        """The q-quantile (0 < q <= 1) in seconds; 0.0 when nothing was recorded."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                return min(self.max, math.exp((bucket + 0.5) / SCALE) / 1e6)
        return self.max

    def summary_ms(self, quantiles: tuple[float, ...] = (0.5, 0.9, 0.99)) -> dict[str, float]:
        out = {f"p{round(q * 100)}": round(self.percentile(q) * 1e3, 3) for q in quantiles}
        out["max"] = round(self.max * 1e3, 3)
        return out


class MethodStats:
    __slots__ = ("answered", "errors", "latency", "measured", "ok", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.answered = 0
        self.ok = 0
        self.measured = 0  # answered requests sent inside the measured window
        self.errors: Counter[int] = Counter()
        self.latency = Histogram()


@dataclass
class Stats:
    """Counters of one run. ``methods`` also holds the keepalive frames (sent, never answered)."""

    methods: dict[str, MethodStats] = field(default_factory=dict)
    handshake: Histogram = field(default_factory=Histogram)
    connected: int = 0  # sockets whose first handshake succeeded
    failed: int = 0  # sockets whose first handshake failed (they do not retry)
    failed_status: Counter[int] = field(default_factory=Counter)  # HTTP status of refusals
    failed_error: Counter[str] = field(default_factory=Counter)  # other connect failures
    auth_failed: int = 0  # sockets that connected but could not initialize or authenticate
    closes: Counter[int] = field(default_factory=Counter)  # close code received, every close
    server_closes: Counter[int] = field(default_factory=Counter)  # closes the server started
    reconnects: int = 0  # reconnects that re-authorized
    reconnect_failed: int = 0  # reconnect attempts that did not connect or initialize
    reauth_failed: int = 0  # reconnects whose token was refused
    updates: int = 0  # Update pushes received
    unanswered: int = 0  # requests still pending when the socket closed
    accounts: int = 0  # email+password accounts created before the run (--auth signin)
    # Set by the runner: the measured window, on the event loop's clock.
    window: tuple[float, float] = (0.0, 0.0)

    def method(self, name: str) -> MethodStats:
        st = self.methods.get(name)
        if st is None:
            st = self.methods[name] = MethodStats()
        return st


def build_report(stats: Stats, config: dict[str, Any], *, elapsed: float, measured: float,
                 setup_seconds: float, cpu_seconds: float, event_loop: str) -> dict[str, Any]:
    """The JSON-ready report; ``format_report`` prints the same figures as a table."""
    methods: dict[str, Any] = {}
    errors: Counter[int] = Counter()
    sent = answered = in_window = 0
    for name, st in sorted(stats.methods.items()):
        if not st.sent:
            continue  # in the mix but never sent (e.g. --rate 0)
        errors.update(st.errors)
        entry: dict[str, Any] = {"sent": st.sent}
        if name != "keepalive":
            sent += st.sent
            answered += st.answered
            in_window += st.measured
            entry.update(
                answered=st.answered, ok=st.ok,
                errors={str(code): n for code, n in sorted(st.errors.items())},
                rate=round(st.measured / measured, 2) if measured > 0 else 0.0,
                latency_ms=st.latency.summary_ms(),
            )
        methods[name] = entry
    planned = int(config.get("sockets", 0))
    return {
        "config": config,
        "elapsed_seconds": round(elapsed, 3),
        "measured_seconds": round(measured, 3),
        "setup_seconds": round(setup_seconds, 3),
        "sockets": {
            "planned": planned,
            "connected": stats.connected,
            "failed": stats.failed,
            "failed_by_status": {str(k): n for k, n in sorted(stats.failed_status.items())},
            "failed_by_error": dict(sorted(stats.failed_error.items())),
            "auth_failed": stats.auth_failed,
            "accounts_created": stats.accounts,
        },
        "handshake_ms": stats.handshake.summary_ms((0.5, 0.99)),
        "requests": {
            "sent": sent,
            "answered": answered,
            "unanswered": stats.unanswered,
            "in_window": in_window,
            "rate": round(in_window / measured, 2) if measured > 0 else 0.0,
        },
        "methods": methods,
        "errors": {str(code): n for code, n in sorted(errors.items())},
        "closes": {str(code): n for code, n in sorted(stats.closes.items())},
        "server_closes": {str(code): n for code, n in sorted(stats.server_closes.items())},
        "reconnects": {
            "reauthorized": stats.reconnects,
            "reauth_failed": stats.reauth_failed,
            "failed": stats.reconnect_failed,
        },
        "updates": stats.updates,
        "client": {"cpu_seconds": round(cpu_seconds, 3), "event_loop": event_loop},
    }


def _counts(items: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in items.items()) or "none"


def format_report(report: dict[str, Any]) -> str:
    """A readable table of the report's figures."""
    s, r, cfg = report["sockets"], report["requests"], report["config"]
    hs = report["handshake_ms"]
    lines = [
        f"load test of {cfg.get('url')}: {s['planned']} sockets, ramp {cfg.get('ramp')} s, "
        f"measured {report['measured_seconds']} s, rate {cfg.get('rate')}/s per socket, "
        f"auth {cfg.get('auth')}",
        f"  sockets connected {s['connected']}, failed {s['failed']}"
        f" (by status: {_counts(s['failed_by_status'])}; other: {_counts(s['failed_by_error'])})"
        f", could not authenticate {s['auth_failed']}",
        f"  handshake p50 {hs['p50']} ms, p99 {hs['p99']} ms, max {hs['max']} ms",
        f"  requests sent {r['sent']}, answered {r['answered']}, unanswered {r['unanswered']}; "
        f"in the measured window {r['in_window']} = {r['rate']}/s",
        "",
        f"  {'method':<22}{'sent':>9}{'ok':>9}{'errors':>8}{'rate/s':>10}"
        f"{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}",
    ]
    for name, m in report["methods"].items():
        if name == "keepalive":
            lines.append(f"  {name:<22}{m['sent']:>9}{'-':>9}{'-':>8}{'-':>10}")
            continue
        lat = m["latency_ms"]
        lines.append(
            f"  {name:<22}{m['sent']:>9}{m['ok']:>9}{sum(m['errors'].values()):>8}{m['rate']:>10}"
            f"{lat['p50']:>9}{lat['p90']:>9}{lat['p99']:>9}{lat['max']:>9}")
    rc = report["reconnects"]
    lines += [
        "",
        f"  errors by code: {_counts(report['errors'])}",
        f"  closes by code: {_counts(report['closes'])}"
        f" (started by the server: {_counts(report['server_closes'])})",
        f"  reconnects: re-authorized {rc['reauthorized']}, token refused {rc['reauth_failed']}, "
        f"failed {rc['failed']}",
        f"  updates received {report['updates']}; client CPU {report['client']['cpu_seconds']} s "
        f"({report['client']['event_loop']}) over {report['elapsed_seconds']} s",
    ]
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
        fh.write("\n")
