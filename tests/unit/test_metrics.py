"""The request metrics render as Prometheus counters and a cumulative histogram."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gateway.transport.metrics import Metrics


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_requests_by_method_and_outcome_and_cumulative_latency_buckets() -> None:
    m = Metrics()
    m.observe("auth.signIn", "ok", 0.0004)
    m.observe("auth.signIn", "ok", 0.001)  # exactly on a bound: counted in le="0.001"
    m.observe("auth.signIn", "401", 0.3)
    m.observe("auth.signIn", "401", 9.0)  # beyond the last bound: only in +Inf
    m.closed(4001)
    got = samples(m)
    assert got[("gateway_requests_total", (("method", "auth.signIn"), ("outcome", "ok")))] == 2
    assert got[("gateway_requests_total", (("method", "auth.signIn"), ("outcome", "401")))] == 2

    def bucket(le: str) -> float:
        return got[("gateway_request_seconds_bucket", (("le", le), ("method", "auth.signIn")))]

    assert [bucket(le) for le in ("0.0005", "0.001", "0.25", "0.5", "5.0", "+Inf")] == [1, 2, 2, 3, 3, 4]
    assert got[("gateway_request_seconds_count", (("method", "auth.signIn"),))] == 4
    assert abs(got[("gateway_request_seconds_sum", (("method", "auth.signIn"),))] - 9.3014) < 1e-9
    assert got[("gateway_closes_total", (("code", "4001"),))] == 1
