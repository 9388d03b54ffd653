"""Admission: priority, deadline and overload shedding of one request, and the in-flight
count they read.

Priorities come from the ``X-Priority`` header (``low`` | ``normal`` | ``high``). Under overload
(more requests in flight in this worker than ``OVERLOAD_IN_FLIGHT``) ``admission()`` tells the
request path to answer low-priority requests from the cache or popularity only.

The in-flight count and the per-request metrics (count, latency by endpoint and route) are
kept here and only here: the Flask hooks (``init_app``) and the WSGI fast path
(``recsys.web.fastpath``) both call ``request_started`` / ``request_finished``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from flask import Flask, g, request

from recsys.config import get_config
from recsys.errors import RecsysError
from recsys.ops.lifecycle import on_after_fork
from recsys.ops.metrics import IN_FLIGHT, REQUEST_LATENCY, REQUESTS, REQUESTS_SHED

PRIORITIES = ("low", "normal", "high")
PRIORITY_HEADER = "X-Priority"
# Deadline multipliers: a low-priority request gives up sooner, a high-priority one waits longer.
PRIORITY_DEADLINE_FACTOR = {"low": 0.5, "normal": 1.0, "high": 2.0}

_lock = threading.Lock()
_in_flight = 0


@on_after_fork
def reset_after_fork(_app=None) -> None:
    """Forget the in-flight count inherited from the master (a lifecycle hook).

    Parameters
    ----------
    _app : Flask or None, optional
        The app the hook is called with (unused).

    Returns
    -------
    None
    """
    global _in_flight
    with _lock:
        _in_flight = 0


# -- priorities and overload --------------------------------------------------------------------
def request_started() -> None:
    """Count one more request in flight in this process (and in the ``IN_FLIGHT`` gauge).

    Returns
    -------
    None
    """
    global _in_flight
    with _lock:
        _in_flight += 1
    IN_FLIGHT.inc()


def request_finished() -> None:
    """Count one request fewer in flight in this process (never below 0).

    Returns
    -------
    None
    """
    global _in_flight
    with _lock:
        _in_flight = max(0, _in_flight - 1)
    IN_FLIGHT.dec()


def in_flight() -> int:
    """Requests being handled by this process now (including the caller's).

    Returns
    -------
    int
        The in-flight count, at least 0.
    """
    return _in_flight


def parse_priority(value: str | None) -> str:
    """``X-Priority`` header value -> ``low|normal|high``.

    Parameters
    ----------
    value : str or None
        The header's value, case and surrounding spaces ignored; None or empty: ``normal``.

    Returns
    -------
    str
        One of ``PRIORITIES``.

    Raises
    ------
    RecsysError
        (400) a value that is not one of ``PRIORITIES``.
    """
    if value is None or value == "":
        return "normal"
    p = value.strip().lower()
    if p not in PRIORITIES:
        raise RecsysError(
            f"{PRIORITY_HEADER} must be one of {', '.join(PRIORITIES)}; got {value!r}"
        )
    return p


@dataclass(frozen=True)
class Admission:
    """How the request path should treat one request.

    ``priority``: low|normal|high. ``deadline_s``: the per-request deadline to give
    ``run_with_deadline`` (scaled by priority). ``shed``: the worker is overloaded and this is a
    low-priority request: answer from the cache if present, else from popularity only (the
    response should say ``degraded``), and skip the personalised strategies.
    """

    priority: str
    deadline_s: float
    shed: bool


def admission(
    priority_header: str | None = None,
    base_deadline_ms: float | None = None,
    overload_in_flight: int | None = None,
) -> Admission:
    """Decide priority, deadline and shedding for the current request (call once per request).

    Arguments default to the current Flask request's ``X-Priority`` header and the app's
    settings (``DEADLINE_MS``, ``OVERLOAD_IN_FLIGHT``). A shed request is counted in
    ``REQUESTS_SHED``. Raises ``RecsysError`` (400) for an invalid header value.

    Parameters
    ----------
    priority_header : str, optional
        The ``X-Priority`` value.
    base_deadline_ms : float, optional
        The deadline of a normal-priority request.
    overload_in_flight : int, optional
        Requests in flight above which low-priority requests are shed.

    Returns
    -------
    Admission
        The request's priority, deadline and whether it is shed.
    """
    if priority_header is None or base_deadline_ms is None or overload_in_flight is None:
        from flask import current_app, has_request_context

        if priority_header is None and has_request_context():
            priority_header = request.headers.get(PRIORITY_HEADER)
        cfg = get_config(current_app)
        if base_deadline_ms is None:
            base_deadline_ms = cfg.deadline_ms
        if overload_in_flight is None:
            overload_in_flight = cfg.overload_in_flight
    priority = parse_priority(priority_header)
    deadline_s = base_deadline_ms / 1000.0 * PRIORITY_DEADLINE_FACTOR[priority]
    shed = priority == "low" and in_flight() > overload_in_flight
    if shed:
        REQUESTS_SHED.labels(priority).inc()
    return Admission(priority=priority, deadline_s=deadline_s, shed=shed)


# -- per-request accounting ------------------------------------------------------------------------
_latency_children: dict[tuple[str, str], object] = {}
_request_children: dict[tuple[str, str], object] = {}


def observe_request(endpoint: str, route: str, status: str, seconds: float | None) -> None:
    """Count one answered request and, unless ``seconds`` is None, its latency.

    Parameters
    ----------
    endpoint : str
        The Flask endpoint name (not the raw path).
    route : str
        The recommendation route (a learned profile's route name such as ``"h0"``, else
        ``"cold"`` or ``"warm"``; ``"similar"``, ``"popular"``; ``"none"`` where not a
        recommendation).
    status : str
        The HTTP status code, as text.
    seconds : float or None
        The request's duration, in seconds; None: count it without a latency.

    Returns
    -------
    None
    """
    counter = _request_children.get((endpoint, status))
    if counter is None:
        counter = _request_children[(endpoint, status)] = REQUESTS.labels(endpoint, status)
    counter.inc()  # type: ignore[attr-defined]
    if seconds is None:
        return
    child = _latency_children.get((endpoint, route))
    if child is None:
        child = _latency_children[(endpoint, route)] = REQUEST_LATENCY.labels(endpoint, route)
    child.observe(seconds)  # type: ignore[attr-defined]


def init_app(app: Flask) -> None:
    """Time and count every Flask request (the endpoint name, not the raw path, keeps label
    cardinality bounded) and keep the in-flight count.

    Parameters
    ----------
    app : Flask
        The application to instrument.

    Returns
    -------
    None
    """

    @app.before_request
    def _start_timer():
        g.recsys_t0 = time.perf_counter()
        request_started()

    @app.teardown_request
    def _observe(_exc):
        t0 = g.pop("recsys_t0", None)
        if t0 is None:
            return
        request_finished()
        endpoint = request.endpoint or "unmatched"
        if endpoint == "ops.metrics":
            return  # scrapes would otherwise dominate the histogram
        REQUEST_LATENCY.labels(endpoint, g.get("recsys_route", "none")).observe(
            time.perf_counter() - t0
        )

    @app.after_request
    def _count(response):
        REQUESTS.labels(request.endpoint or "unmatched", str(response.status_code)).inc()
        return response
