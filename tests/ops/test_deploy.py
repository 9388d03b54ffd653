"""deploy/: the Grafana dashboard and the Prometheus alert rules use only metrics the service
exposes, and the metrics the issue asked for are there (at 0 before anything happened)."""

from __future__ import annotations

import json
import os
import re

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
ROOT = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir)
DEPLOY = os.path.join(ROOT, "deploy")
# Series Prometheus makes itself, not the service.
PROMETHEUS_OWN = {"up"}
_METRIC = re.compile(r"\b([a-z_][a-z0-9_]*)\s*(?:\{|\[|\)|$|\s*[<>=!])")


def _dashboard_exprs() -> list[str]:
    with open(os.path.join(DEPLOY, "grafana", "recsys-dashboard.json")) as f:
        dash = json.load(f)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return exprs


def _alert_exprs() -> list[str]:
    with open(os.path.join(DEPLOY, "prometheus", "alerts.yml")) as f:
        rules = yaml.safe_load(f)
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def _metrics_in(expr: str) -> set[str]:
    names = set(re.findall(r"\b((?:recsys|process)_[a-z0-9_]+)\b", expr))
    names |= {m for m in re.findall(r"\b(up)\s*\{", expr)}
    return names


def _exposed(text: str) -> set[str]:
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


@pytest.fixture
def exposed(served_app):
    client = served_app.test_client()
    for _ in range(2):  # a miss (every strategy scores) then a hit
        assert client.get("/v1/users/u6/recommendations").status_code == 200
    return _exposed(client.get("/metrics").get_data(as_text=True))


def test_every_metric_of_the_dashboard_and_alerts_exists(exposed):
    exprs = _dashboard_exprs() + _alert_exprs()
    assert len(exprs) >= 20
    used = set().union(*(_metrics_in(e) for e in exprs))
    assert {"recsys_degraded_answers_total", "recsys_ready", "recsys_deadline_misses_total"} <= used
    missing = sorted(used - exposed - PROMETHEUS_OWN)
    assert not missing, f"used by deploy/ but not in /metrics: {missing}"


def test_alert_rules_cover_what_on_call_needs():
    with open(os.path.join(DEPLOY, "prometheus", "alerts.yml")) as f:
        rules = {r["alert"]: r for g in yaml.safe_load(f)["groups"] for r in g["rules"]}
    assert {"RecsysHighDegradedRatio", "RecsysNotReady", "RecsysDeadlineMisses"} <= set(rules)
    for rule in rules.values():
        assert rule["annotations"]["summary"] and rule["labels"]["severity"] in ("page", "warn")


def test_new_metrics_exist_from_the_start(served_app):
    text = served_app.test_client().get("/metrics").get_data(as_text=True)
    samples = {
        (s.name, tuple(sorted(s.labels.items())))
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    names = {n for n, _ in samples}
    for reason in (
        "shed",
        "store_unavailable",
        "scoring_timeout",
        "model_unavailable",
        "strategy_dropped",
    ):
        assert ("recsys_degraded_answers_total", (("reason", reason),)) in samples
    for etype in ("view", "click", "cart", "purchase", "rating", "dislike"):
        assert ("recsys_events_ingested_total", (("type", etype),)) in samples
    assert ("recsys_deadline_misses_total", (("strategy", "ease"),)) in samples
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total"} <= names
    assert ("recsys_ready", ()) in samples
    versions = served_app.extensions["recsys.model_versions"]
    for strategy, version in versions.items():
        key = ("recsys_model_active_info", (("strategy", strategy), ("version", version)))
        assert key in samples
