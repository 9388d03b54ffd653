"""One compact snapshot of the service's own ``/metrics`` (the console's Live screen, the Overview).

The snapshot holds cumulative counters and histogram buckets, parsed from the same exposition
``/metrics`` serves (under gunicorn: aggregated over every worker). The page keeps the previous
snapshot and draws rates and percentiles from the difference of two, as Prometheus' ``rate``
and ``histogram_quantile`` would; the console keeps a short history of them
(``recsys.web.console.live.History``) so the charts survive a reload.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

# Endpoints left out of the request rate and latency: the console itself and scrapes.
_INTERNAL_PREFIXES = ("console", "ops.", "health.", "static")


def _internal(endpoint: str) -> bool:
    return endpoint.startswith(_INTERNAL_PREFIXES)


def _le(value: str) -> float:
    return math.inf if value in ("+Inf", "inf") else float(value)


class _Hist:
    def __init__(self) -> None:
        self.buckets: dict[float, float] = defaultdict(float)
        self.count = 0.0
        self.sum = 0.0

    def to_dict(self) -> dict[str, Any]:
        les = sorted(self.buckets)
        return {
            # JSON has no infinity: the last bucket's bound is null.
            "le": [None if math.isinf(x) else x for x in les],
            "counts": [self.buckets[x] for x in les],
            "count": self.count,
            "sum": self.sum,
        }


def snapshot(text: str, now: float | None = None) -> dict[str, Any]:
    """Parse a Prometheus text exposition into the Live screen's cumulative figures.

    Parameters
    ----------
    text : str
        Prometheus text exposition (``/metrics``'s body).
    now : float or None
        Timestamp of the figures, in Unix seconds; None means ``time.time()``.

    Returns
    -------
    dict[str, Any]
        ``t`` (seconds), cumulative ``requests``, ``errors`` (5xx), ``cache_hits``,
        ``cache_misses``, ``shed``, ``degraded`` (reason -> count), ``deadline_misses``
        (strategy -> count), and the histograms ``latency`` and ``strategy_latency`` (strategy
        -> histogram), each ``{"le", "counts", "count", "sum"}`` in seconds (``le`` None: +Inf).
        The console's, operations', health and static endpoints are left out of the request
    figures.
    """
    requests = errors = hits = misses = shed = 0.0
    degraded: dict[str, float] = defaultdict(float)
    misses_by: dict[str, float] = defaultdict(float)
    latency = _Hist()
    per_strategy: dict[str, _Hist] = defaultdict(_Hist)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name, labels, value = s.name, s.labels, s.value
            if name == "recsys_requests_total":
                if not _internal(labels.get("endpoint", "")):
                    requests += value
                    if labels.get("status", "").startswith("5"):
                        errors += value
            elif name.startswith("recsys_request_latency_seconds"):
                if _internal(labels.get("endpoint", "")):
                    continue
                _add(latency, name[len("recsys_request_latency_seconds") :], labels, value)
            elif name.startswith("recsys_strategy_latency_seconds"):
                hist = per_strategy[labels.get("strategy", "?")]
                _add(hist, name[len("recsys_strategy_latency_seconds") :], labels, value)
            elif name == "recsys_cache_hits_total":
                hits += value
            elif name == "recsys_cache_misses_total":
                misses += value
            elif name == "recsys_requests_shed_total":
                shed += value
            elif name == "recsys_degraded_answers_total":
                degraded[labels.get("reason", "?")] += value
            elif name == "recsys_deadline_misses_total":
                misses_by[labels.get("strategy", "?")] += value
    return {
        "t": time.time() if now is None else now,
        "requests": requests,
        "errors": errors,
        "latency": latency.to_dict(),
        "cache_hits": hits,
        "cache_misses": misses,
        "shed": shed,
        "degraded": dict(degraded),
        "deadline_misses": dict(misses_by),
        "strategy_latency": {k: v.to_dict() for k, v in sorted(per_strategy.items())},
    }


def _add(hist: _Hist, suffix: str, labels: dict[str, str], value: float) -> None:
    if suffix == "_bucket":
        hist.buckets[_le(labels["le"])] += value
    elif suffix == "_count":
        hist.count += value
    elif suffix == "_sum":
        hist.sum += value


def quantile(le: list[float | None], counts: list[float], q: float) -> float | None:
    """``histogram_quantile`` over cumulative ``counts`` per upper bound ``le`` (None: +Inf),
    linear within a bucket; None with no observations. The page has the same function in
    JavaScript (static/console.js); this one is its reference in the tests.

    Parameters
    ----------
    le : list[float or None]
        Bucket upper bounds, ascending, in seconds; None is +Inf.
    counts : list[float]
        Cumulative observation counts per bound, same length as ``le``.
    q : float
        The quantile, in [0, 1].

    Returns
    -------
    float or None
        The estimated quantile (seconds); the highest finite bound when it falls in the +Inf
        bucket; None with no observations.
    """
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    prev_le, prev_c = 0.0, 0.0
    for bound, c in zip(le, counts, strict=True):
        if c >= rank:
            if bound is None:
                return prev_le  # in the +Inf bucket: the highest finite bound
            if c == prev_c:
                return bound
            return prev_le + (bound - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = (bound if bound is not None else prev_le), c
    return prev_le
