"""Per-model serving statistics from the service's own Prometheus metrics.

Loads, load failures, load time, scoring calls, scoring latency percentiles and deadline misses
per strategy, read from the same exposition ``/metrics`` serves, so under gunicorn they cover
every worker (``recsys.ops.metrics``), and they agree with what Prometheus would compute.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


def _quantile(buckets: dict[float, float], q: float) -> float | None:
    les = sorted(buckets)
    total = buckets[les[-1]] if les else 0.0
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le in les:
        c = buckets[le]
        if c >= rank:
            if math.isinf(le):
                return prev_le
            return le if c == prev_c else prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return prev_le


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def stats_by_strategy(text: str | None = None) -> dict[str, dict[str, Any]]:
    """Model load and scoring statistics per strategy, from the metrics exposition.

    Parameters
    ----------
    text : str or None, optional
        A text exposition to read; None: this process's (or the workers') own.

    Returns
    -------
    dict
        ``{strategy: {"loads", "load_failures", "load_seconds_mean", "scored",
        "latency_ms": {"p50", "p95", "p99"}, "deadline_misses"}}`` (only strategies with
        any); latencies are in milliseconds, None where unknown.
    """
    if text is None:
        from recsys.ops import metrics

        text = metrics.exposition()[0].decode()
    raw: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"loads": 0.0, "load_sum": 0.0, "fail": 0.0, "scored": 0.0, "miss": 0.0}
    )
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            strategy = s.labels.get("strategy")
            if strategy is None:
                continue
            if s.name == "recsys_model_load_seconds_count":
                raw[strategy]["loads"] += s.value
            elif s.name == "recsys_model_load_seconds_sum":
                raw[strategy]["load_sum"] += s.value
            elif s.name == "recsys_model_load_failures_total":
                raw[strategy]["fail"] += s.value
            elif s.name == "recsys_strategy_latency_seconds_count":
                raw[strategy]["scored"] += s.value
            elif s.name == "recsys_strategy_latency_seconds_bucket":
                le = s.labels["le"]
                buckets[strategy][math.inf if le == "+Inf" else float(le)] += s.value
            elif s.name == "recsys_deadline_misses_total":
                raw[strategy]["miss"] += s.value
    out = {}
    for strategy, r in sorted(raw.items()):
        b = buckets.get(strategy, {})
        out[strategy] = {
            "loads": int(r["loads"]),
            "load_failures": int(r["fail"]),
            "load_seconds_mean": round(r["load_sum"] / r["loads"], 4) if r["loads"] else None,
            "scored": int(r["scored"]),
            "latency_ms": {f"p{int(q * 100)}": _ms(_quantile(b, q)) for q in (0.5, 0.95, 0.99)},
            "deadline_misses": int(r["miss"]),
        }
    return out


EMPTY = {
    "loads": 0,
    "load_failures": 0,
    "load_seconds_mean": None,
    "scored": 0,
    "latency_ms": {"p50": None, "p95": None, "p99": None},
    "deadline_misses": 0,
}
