"""deploy/: the Grafana dashboard and the Prometheus alert rules use only metrics (and labels)
the service exposes, every alert has a runbook section, and the metrics the issue asked for are
there (at 0 before anything happened). `promtool check rules` and the rules' unit tests run in
scripts/ci_alerts.sh."""

from __future__ import annotations

import json
import os
import re

import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
ROOT = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir)
DEPLOY = os.path.join(ROOT, "deploy")
RUNBOOKS = os.path.join(ROOT, "docs", "runbooks.md")
# Series Prometheus makes itself, and the labels it adds to every scraped series.
PROMETHEUS_OWN = {"up"}
TARGET_LABELS = {"job", "instance"}
# Grafana's variables, replaced so that the expression parses as PromQL.
_GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def _dashboard_exprs() -> list[str]:
    with open(os.path.join(DEPLOY, "grafana", "recsys-dashboard.json")) as f:
        dash = json.load(f)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for v in dash["templating"]["list"]:
        if v["type"] == "query":  # label_values(METRIC, LABEL) is Grafana's, not PromQL
            metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", v["query"]).groups()
            exprs.append(f"count by ({label}) ({metric})")
    return exprs


def _alert_rules() -> dict[str, dict]:
    with open(os.path.join(DEPLOY, "prometheus", "alerts.yml")) as f:
        return {r["alert"]: r for g in yaml.safe_load(f)["groups"] for r in g["rules"]}


def _alert_exprs() -> list[str]:
    return [r["expr"] for r in _alert_rules().values()]


def _selectors(expr: str) -> list[tuple[str, set[str]]]:
    """Each series selector of ``expr`` (parsed as PromQL): its metric name and label names."""
    for var, value in _GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    expr = re.sub(r"\$(\w+)", r".*", expr)  # $job in a matcher: any value
    found = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            found.append((node.name, {m.name for m in node.matchers.matchers}))

    promql_parser.walk(promql_parser.parse(expr), pre_visit=visit)
    return found


def _exposed(text: str) -> dict[str, set[str]]:
    """Sample name -> the label names it carries."""
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


@pytest.fixture
def exposed(served_app):
    client = served_app.test_client()
    for _ in range(2):  # a miss (every strategy scores) then a hit
        assert client.get("/v1/users/u6/recommendations").status_code == 200
    return _exposed(client.get("/metrics").get_data(as_text=True))


def test_every_metric_of_the_dashboard_and_alerts_exists(exposed):
    exprs = _dashboard_exprs() + _alert_exprs()
    assert len(exprs) >= 20
    selectors = [sel for e in exprs for sel in _selectors(e)]
    used = {name for name, _ in selectors}
    assert {
        "recsys_degraded_answers_total",
        "recsys_ready",
        "recsys_deadline_misses_total",
        "recsys_request_latency_seconds_bucket",
        "recsys_requests_total",
        "up",
    } <= used
    missing = sorted(used - set(exposed) - PROMETHEUS_OWN)
    assert not missing, f"used by deploy/ but not in /metrics: {missing}"
    wrong = sorted(
        f"{name}{{{label}}}"
        for name, labels in selectors
        if name in exposed
        for label in labels - exposed[name] - TARGET_LABELS
    )
    assert not wrong, f"labels used by deploy/ that /metrics does not carry: {wrong}"


def test_the_metric_check_sees_every_selector():
    """The parser finds names of any prefix and each selector's labels (so the test above
    cannot pass by missing a metric)."""
    expr = 'sum(rate(foo_total{job=~"$job",status=~"5.."}[$__rate_interval])) / on() up'
    assert _selectors(expr) == [("foo_total", {"job", "status"}), ("up", set())]


def test_alert_rules_cover_what_on_call_needs():
    rules = _alert_rules()
    assert {
        "RecsysDown",
        "RecsysNotReady",
        "RecsysHighDegradedRatio",
        "RecsysDeadlineMisses",
        "RecsysHigh5xxRate",
        "RecsysHighLatencyP99",
    } <= set(rules)
    for rule in rules.values():
        assert rule["annotations"]["summary"] and rule["labels"]["severity"] in ("page", "warn")


def _anchor(heading: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_has_a_runbook_section():
    with open(RUNBOOKS) as f:
        anchors = {_anchor(m) for m in re.findall(r"^#{2,3} (.+)$", f.read(), re.MULTILINE)}
    for name, rule in _alert_rules().items():
        url = rule["annotations"].get("runbook_url", "")
        page, _, anchor = url.partition("#")
        assert page == "docs/runbooks.md", f"{name}: runbook_url {url!r}"
        assert anchor == _anchor(name) and anchor in anchors, f"{name}: no section #{anchor}"


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
