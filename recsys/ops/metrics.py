"""Prometheus metrics, correct across gunicorn workers.

Under gunicorn, ``gunicorn.conf.py`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder
*before* anything imports ``prometheus_client`` (the client picks its value class at import), so
every worker writes its samples to its own mmap file there; ``/metrics`` then aggregates them
with ``MultiProcessCollector`` and the ``child_exit`` hook calls ``mark_dead`` for dead
workers. Without that variable (tests, ``flask run``) the default in-process registry is used.

This module imports nothing of ours: every layer may report through it. The metric objects below
are imported by the other parts of the service (the request path calls
``CACHE_HITS.inc()``, the micro-batcher reports through ``observe_batch``, ...). Label values are
bounded sets (endpoint names, strategy names, route names), never user or item ids.
"""

from __future__ import annotations

import os

from flask import g
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Latency buckets in seconds: sub-millisecond cached answers up to slow cold starts.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)

REQUEST_LATENCY = Histogram(
    "recsys_request_latency_seconds",
    "HTTP request latency by endpoint and route (the route that answered: a learned profile's "
    "route name such as h0 or h1-5, else cold/warm; similar, popular; 'none' where not a "
    "recommendation)",
    ["endpoint", "route"],
    buckets=LATENCY_BUCKETS,
)
REQUESTS = Counter(
    "recsys_requests_total", "HTTP requests by endpoint and status code", ["endpoint", "status"]
)
STRATEGY_LATENCY = Histogram(
    "recsys_strategy_latency_seconds",
    "Time one strategy takes to score a request (inside the deadline pool)",
    ["strategy"],
    buckets=LATENCY_BUCKETS,
)
CACHE_HITS = Counter("recsys_cache_hits_total", "Recommendation cache hits")
CACHE_MISSES = Counter("recsys_cache_misses_total", "Recommendation cache misses")
CACHE_NEAR_HITS = Counter(
    "recsys_cache_near_hits_total",
    "Cache hits answered from the worker's near cache, without Redis (NEAR_CACHE_TTL)",
)
BATCH_SIZE = Histogram(
    "recsys_batch_size",
    "Requests sharing one forward pass of the deep model (micro-batcher)",
    buckets=(1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128),
)
QUEUE_WAIT = Histogram(
    "recsys_batch_queue_wait_seconds",
    "Time a request waited in the micro-batcher queue before its batch ran",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1),
)
SCORING_WAIT = Histogram(
    "recsys_scoring_wait_seconds",
    "Time a request waited for a scoring turn in its worker (SCORING_SLOTS)",
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
SCORING_BATCH = Histogram(
    "recsys_scoring_batch_size",
    "Requests scored together in one scoring turn (the turn's holder takes compatible waiters)",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
)
SCORING_TIMEOUTS = Counter(
    "recsys_scoring_timeouts_total",
    "Requests answered from popularity because no scoring turn came within their deadline",
    ["priority"],
)
DEADLINE_MISSES = Counter(
    "recsys_deadline_misses_total",
    "Strategies dropped from a response because they missed the request deadline or failed",
    ["strategy"],
)
REQUESTS_SHED = Counter(
    "recsys_requests_shed_total",
    "Requests answered from cache/popularity only because the worker was overloaded",
    ["priority"],
)
MODEL_LOAD_SECONDS = Histogram(
    "recsys_model_load_seconds",
    "Time to load (checksum, read, warm up) one model version",
    ["strategy"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
MODEL_LOAD_FAILURES = Counter(
    "recsys_model_load_failures_total", "Model versions that failed to load", ["strategy"]
)
DEGRADED_REASONS = (
    "shed",  # overloaded: answered from cache/popularity only
    "store_unavailable",  # SQL down: no history, popularity
    "scoring_timeout",  # no scoring turn within the deadline: popularity
    "model_unavailable",  # the route's model is not loaded: popularity
    "strategy_dropped",  # a strategy raised or missed the deadline and was left out
)
DEGRADED = Counter(
    "recsys_degraded_answers_total",
    "Recommendation answers marked degraded, by their first reason (one count per answer)",
    ["reason"],
)
EVENT_TYPES = ("view", "click", "cart", "purchase", "rating", "dislike")
EVENTS_INGESTED = Counter(
    "recsys_events_ingested_total",
    "Events stored by POST /v1/events, by type (duplicates of a stored event not counted)",
    ["type"],
)
# Gauges are per process; "liveall" keeps one series per live worker (a pid label) and drops
# series of dead workers, so the sharing across workers stays visible.
MODELS_LOADED = Gauge(
    "recsys_models_loaded", "Models held in memory by this process", multiprocess_mode="liveall"
)
MODEL_MEMORY_BYTES = Gauge(
    "recsys_model_memory_bytes",
    "Bytes of model arrays held by this process, per strategy",
    ["strategy"],
    multiprocess_mode="liveall",
)
STAGE_LATENCY = Histogram(
    "recsys_stage_seconds",
    "Time one stage of the recommendation pipeline took (recsys.serving.pipeline): snapshot, "
    "cache_lookup, history, turn_wait, route, candidates, blend, rules, render, cache_store, "
    "fields",
    ["stage"],
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)
IN_FLIGHT = Gauge(
    "recsys_in_flight_requests",
    "Requests being handled by this process now",
    multiprocess_mode="livesum",
)


def observe_batch(size: int, queue_wait_s: float) -> None:
    """Callback for the deep model's micro-batcher: one call per executed batch.

    Parameters
    ----------
    size : int
        Requests in the batch.
    queue_wait_s : float
        How long the batch's first request waited before it ran, in seconds (negative
        values count as 0).

    Returns
    -------
    None
    """
    BATCH_SIZE.observe(size)
    QUEUE_WAIT.observe(max(0.0, queue_wait_s))


def note_degraded(
    shed: bool = False,
    store_unavailable: bool = False,
    scoring_timeout: bool = False,
    model_unavailable: bool = False,
    strategy_dropped: bool = False,
) -> bool:
    """Count one degraded answer under its first reason (in the parameters' order).

    Parameters
    ----------
    shed : bool, optional
        Overloaded: answered from cache or popularity only.
    store_unavailable : bool, optional
        SQL down: no history, popularity.
    scoring_timeout : bool, optional
        No scoring turn within the deadline: popularity.
    model_unavailable : bool, optional
        The route's model is not loaded: popularity.
    strategy_dropped : bool, optional
        A strategy raised or missed the deadline and was left out.

    Returns
    -------
    bool
        Whether the answer is degraded (any flag set).
    """
    flags = (shed, store_unavailable, scoring_timeout, model_unavailable, strategy_dropped)
    for reason, flag in zip(DEGRADED_REASONS, flags, strict=True):
        if flag:
            DEGRADED.labels(reason).inc()
            return True
    return False


def _zero_labels() -> None:
    """Every labelled counter with a bounded label set starts at 0, so a dashboard's rate()
    and an alert see the series before the first event rather than "no data"."""
    for reason in DEGRADED_REASONS:
        DEGRADED.labels(reason)
    for etype in EVENT_TYPES:
        EVENTS_INGESTED.labels(etype)
    for priority in ("high", "normal", "low"):
        REQUESTS_SHED.labels(priority)
        SCORING_TIMEOUTS.labels(priority)
    from strategies import STRATEGY_NAMES

    for strategy in STRATEGY_NAMES:
        DEADLINE_MISSES.labels(strategy)
        MODEL_LOAD_FAILURES.labels(strategy)


_zero_labels()


def set_route(route: str) -> None:
    """Record the route of the current request for the latency histogram.

    Parameters
    ----------
    route : str
        The route label: the name of the route that answered (a learned profile's route such as
        ``"h0"`` or ``"h1-5"``, else ``"cold"`` or ``"warm"``), ``"similar"`` or ``"popular"``.

    Returns
    -------
    None
    """
    g.recsys_route = route


def multiprocess_dir() -> str | None:
    """The prometheus multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``).

    Returns
    -------
    str or None
        The directory; None when unset or empty (single-process metrics).
    """
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition(*collectors) -> tuple[bytes, str]:
    """The text exposition: aggregated over every worker under gunicorn, else this process;
    plus ``collectors`` (metrics computed at scrape time, e.g. the active model versions).
    Process metrics (``process_*``): the default registry's for this process, or under
    gunicorn every worker's and the master's, labelled by pid (recsys.ops.procmetrics).

    Parameters
    ----------
    *collectors : prometheus_client collector
        Extra collectors registered for this scrape only.

    Returns
    -------
    tuple of (bytes, str)
        The exposition body and its content type.
    """
    extra = CollectorRegistry()
    for collector in collectors:
        extra.register(collector)
    if multiprocess_dir():
        from prometheus_client import multiprocess

        from recsys.ops.procmetrics import ServerProcessCollector

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(ServerProcessCollector())
        return generate_latest(registry) + generate_latest(extra), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY) + generate_latest(extra), CONTENT_TYPE_LATEST


def mark_dead(pid: int) -> None:
    """Called by gunicorn's ``child_exit`` so a dead worker's live gauges disappear.

    Parameters
    ----------
    pid : int
        The worker process that exited. Nothing happens outside multiprocess mode.

    Returns
    -------
    None
    """
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
