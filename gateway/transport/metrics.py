"""Prometheus metrics, one registry per server so several servers can live in one process.

Request counts and latencies are kept in plain per-method counters (no locks: the event loop is
one thread) and turned into metric families only when /metrics is scraped; prometheus-client's
own Counter and Histogram take a lock per update, which showed up on the request path.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _MethodStats:
    __slots__ = ("buckets", "outcomes", "total")

    def __init__(self) -> None:
        self.outcomes: dict[str, int] = {}
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0


class _RequestCollector:
    def __init__(self) -> None:
        self.stats: dict[str, _MethodStats] = {}

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("gateway_requests", "RPC requests by method and outcome",
                                       labels=["method", "outcome"])
        latency = HistogramMetricFamily("gateway_request_seconds", "RPC handling time by method",
                                        labels=["method"])
        for method, st in sorted(self.stats.items()):
            for outcome, n in sorted(st.outcomes.items()):
                requests.add_metric([method, outcome], n)
            running, cumulative = 0, []
            for bound, n in zip((*BUCKETS, float("inf")), st.buckets, strict=True):
                running += n
                cumulative.append((_le(bound), running))
            latency.add_metric([method], cumulative, st.total)
        yield requests
        yield latency


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.connections = Gauge("gateway_connections_open", "Open WebSocket connections",
                                 registry=self.registry)
        self.authorized = Gauge("gateway_connections_authorized", "Authorized WebSocket connections",
                                registry=self.registry)
        self.closes = Counter("gateway_closes", "Closed connections by close code", ["code"],
                              registry=self.registry)
        self._requests = _RequestCollector()
        self.registry.register(self._requests)

    def observe(self, method: str, outcome: str, seconds: float) -> None:
        st = self._requests.stats.get(method)
        if st is None:
            st = self._requests.stats[method] = _MethodStats()
        st.outcomes[outcome] = st.outcomes.get(outcome, 0) + 1
        st.buckets[bisect_left(BUCKETS, seconds)] += 1
        st.total += seconds

    def closed(self, code: int) -> None:
        self.closes.labels(str(code)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
