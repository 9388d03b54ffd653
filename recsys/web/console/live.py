"""The Live screen's data: one compact snapshot of the service's own ``/metrics``.

The snapshot holds cumulative counters and histogram buckets, parsed from the same exposition
``/metrics`` serves (under gunicorn: aggregated over every worker). The page keeps the previous
snapshot and draws rates and percentiles from the difference of two, as Prometheus' ``rate``
and ``histogram_quantile`` would; no state is kept on the server.
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


#: Snapshots kept for the Live screen's history (at one per ``HISTORY_STEP_S``: 5 minutes).
HISTORY_POINTS = 100
HISTORY_STEP_S = 3.0


class History:
    """The Live screen's recent snapshots, shared by every worker and kept across page loads:
    a Redis list when the cache is Redis (one snapshot per ``HISTORY_STEP_S`` slot, whichever
    worker samples first: ``SET NX`` on the slot), else this process's memory.

    Parameters
    ----------
    client : redis.Redis or None
        The Redis client; None: in memory.
    key : str
        The list's key (the slot keys are ``key:slot:<n>``).
    clock : Callable[[], float]
        Unix seconds (tests move it).
    """

    def __init__(self, client: Any, key: str, clock=time.time) -> None:
        from collections import deque

        self.client, self.key, self.clock = client, key, clock
        self._local: deque[dict[str, Any]] = deque(maxlen=HISTORY_POINTS)

    def add(self, snap: dict[str, Any]) -> bool:
        """Keep ``snap`` unless one was kept in its time slot already.

        Parameters
        ----------
        snap : dict[str, Any]
            A ``snapshot``.

        Returns
        -------
        bool
            Whether it was kept.
        """
        import json

        slot = int(snap["t"] // HISTORY_STEP_S)
        if self.client is None:
            if self._local and int(self._local[-1]["t"] // HISTORY_STEP_S) == slot:
                return False
            self._local.append(snap)
            return True
        ttl = int(HISTORY_STEP_S * HISTORY_POINTS) + 60
        if not self.client.set(f"{self.key}:slot:{slot}", b"1", nx=True, ex=int(ttl)):
            return False
        pipe = self.client.pipeline(transaction=False)
        pipe.rpush(self.key, json.dumps(snap, separators=(",", ":")))
        pipe.ltrim(self.key, -HISTORY_POINTS, -1)
        pipe.expire(self.key, ttl)
        pipe.execute()
        return True

    def recent(self) -> list[dict[str, Any]]:
        """The kept snapshots, oldest first, those older than the window left out.

        Returns
        -------
        list[dict[str, Any]]
            Snapshots.
        """
        import json

        if self.client is None:
            rows = list(self._local)
        else:
            rows = [json.loads(r) for r in self.client.lrange(self.key, 0, -1)]
        since = self.clock() - HISTORY_STEP_S * HISTORY_POINTS
        return [r for r in rows if r["t"] >= since]
