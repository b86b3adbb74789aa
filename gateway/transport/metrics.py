"""Prometheus metrics, one registry per server so several servers can live in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.connections = Gauge("gateway_connections_open", "Open WebSocket connections",
                                 registry=self.registry)
        self.authorized = Gauge("gateway_connections_authorized", "Authorized WebSocket connections",
                                registry=self.registry)
        self.requests = Counter("gateway_requests", "RPC requests by method and outcome",
                                ["method", "outcome"], registry=self.registry)
        self.latency = Histogram(
            "gateway_request_seconds", "RPC handling time by method", ["method"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.closes = Counter("gateway_closes", "Closed connections by close code", ["code"],
                              registry=self.registry)
        self._req_children: dict[tuple[str, str], Counter] = {}
        self._lat_children: dict[str, Histogram] = {}

    def observe(self, method: str, outcome: str, seconds: float) -> None:
        # Labelled children are cached: .labels() costs more than the increment itself.
        key = (method, outcome)
        child = self._req_children.get(key)
        if child is None:
            child = self._req_children[key] = self.requests.labels(method, outcome)
        child.inc()
        hist = self._lat_children.get(method)
        if hist is None:
            hist = self._lat_children[method] = self.latency.labels(method)
        hist.observe(seconds)

    def closed(self, code: int) -> None:
        self.closes.labels(str(code)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
