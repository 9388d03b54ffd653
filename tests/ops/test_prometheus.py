"""Prometheus metrics in one process (the gunicorn multiprocess case is in test_gunicorn.py).

(Named test_prometheus.py because tests/offline/test_metrics.py holds the ranking-metric tests.)
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from recsys.ops import metrics


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_exposition_after_traffic(client):
    for _ in range(3):
        assert client.get("/healthz").status_code == 200
    client.get("/no/such/page")
    metrics.CACHE_HITS.inc()
    metrics.CACHE_MISSES.inc(2)
    metrics.observe_batch(8, 0.001)
    r = client.get("/metrics")
    assert r.status_code == 200 and r.mimetype == "text/plain"
    text = r.get_data(as_text=True)
    for name in (
        "recsys_request_latency_seconds",
        "recsys_strategy_latency_seconds",
        "recsys_cache_hits_total",
        "recsys_cache_misses_total",
        "recsys_batch_size",
        "recsys_batch_queue_wait_seconds",
        "recsys_deadline_misses_total",
        "recsys_model_load_seconds",
        "recsys_models_loaded",
        "recsys_model_memory_bytes",
    ):
        assert f"# TYPE {name}" in text, name
    s = _samples(text)
    key = ("endpoint", "health.healthz"), ("route", "none")
    assert s[("recsys_request_latency_seconds_count", key)] >= 3
    assert s[("recsys_requests_total", (("endpoint", "unmatched"), ("status", "404")))] >= 1
    assert s[("recsys_batch_size_count", ())] >= 1
    # /metrics scrapes are not timed (they would swamp the histogram).
    assert not any(k[0].startswith("recsys_request_latency") and "ops.metrics" in str(k) for k in s)


def test_route_label_and_model_gauges(make_app):
    from recsys.models.repository import get_repository
    from recsys.models.runtime import get_runtime
    from tests import runtime_support as rs

    app = make_app()
    get_repository(app).resolver = rs.resolver
    get_repository(app).save_version(
        rs.fit("tiny_a"), rs.sample_data(), version="v1", activate=True
    )

    @app.get("/_routed")
    def routed():
        metrics.set_route("warm")
        return {"ok": True}

    client = app.test_client()
    client.get("/_routed")
    lm = get_runtime(app).get("tiny_a")
    s = _samples(client.get("/metrics").get_data(as_text=True))
    assert s[("recsys_request_latency_seconds_count", (("endpoint", "routed"), ("route", "warm")))]
    assert s[("recsys_model_memory_bytes", (("strategy", "tiny_a"),))] == lm.nbytes
    assert s[("recsys_models_loaded", ())] >= 1
    assert s[("recsys_model_load_seconds_count", (("strategy", "tiny_a"),))] >= 1
