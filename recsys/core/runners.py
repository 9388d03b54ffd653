"""Runners: how the strategies of one request run under its deadline.

A runner takes named tasks (no arguments) and a deadline and returns ``(results, missed)``.
``run_inline`` (the default everywhere: offline evaluation with no deadline, serving with
``STRATEGY_PARALLEL`` off) runs them one after another in the caller's thread;
``run_with_deadline`` runs them in parallel in a per-process thread pool and keeps whatever
finished in time. Both follow the same rules: a task that raises, that would start after the
deadline or that finished after it is dropped, logged and counted in ``DEADLINE_MISSES``, so
the request path can blend the rest and say ``degraded`` rather than make the user wait. The
pool is created lazily and re-created after a fork (a pool inherited from the gunicorn master
has no live threads).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from recsys.config import Settings
from recsys.ops.lifecycle import on_after_fork
from recsys.ops.metrics import DEADLINE_MISSES, STRATEGY_LATENCY

log = logging.getLogger(__name__)

# Runs named tasks under a deadline: (results, missed).
Runner = Callable[[dict[str, Callable[[], Any]], float | None], tuple[dict[str, Any], list[str]]]

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_pid: int | None = None
_pool_size = Settings.default("DEADLINE_POOL_SIZE")  # until configure() (the app's setting)


def configure(pool_size: int) -> None:
    """Set the pool size used the next time the pool is created (app start / after fork).

    Parameters
    ----------
    pool_size : int
        Worker threads (at least 1 is used).
    """
    global _pool_size
    _pool_size = max(1, int(pool_size))


def get_executor() -> ThreadPoolExecutor:
    """This process's strategy pool, created on first use and again after a fork.

    Returns
    -------
    concurrent.futures.ThreadPoolExecutor
    """
    global _pool, _pool_pid
    pid = os.getpid()
    if _pool is None or _pool_pid != pid:
        with _lock:
            if _pool is None or _pool_pid != pid:
                # The old pool (if inherited across fork) has no threads in this process; drop
                # it without shutdown(), which would wait on threads that do not exist here.
                _pool = ThreadPoolExecutor(_pool_size, thread_name_prefix="recsys-strategy")
                _pool_pid = pid
    return _pool


@on_after_fork
def reset_after_fork(_app=None) -> None:
    """Forget the inherited pool (a lifecycle hook).

    Parameters
    ----------
    _app : object, optional
        The application the hook is called with (unused).
    """
    global _pool, _pool_pid
    with _lock:
        _pool, _pool_pid = None, None


def _timed(name: str, fn: Callable[[], Any]) -> Callable[[], Any]:
    def run():
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            STRATEGY_LATENCY.labels(name).observe(time.perf_counter() - t0)

    return run


def run_with_deadline(
    tasks: Mapping[str, Callable[[], Any]], deadline_s: float | None
) -> tuple[dict[str, Any], list[str]]:
    """Run each task (no arguments) in parallel; keep those finished within ``deadline_s``.

    This is the ``runner`` the request path
    (``recsys.core.recommender.Recommender(runner=run_with_deadline)``) uses when serving.
    Missed tasks are cancelled if they have not started; a running one finishes in the
    background and its result is discarded. A single task runs in the caller's thread (no pool
    hop) but still honours the deadline after the fact: a late result is dropped, like in the
    parallel case, so behaviour does not depend on how many strategies a route has.

    Parameters
    ----------
    tasks : Mapping of str to callable
        Name -> task taking no arguments.
    deadline_s : float or None
        Seconds from the call (negative counts as 0); ``None`` waits for every task (offline
        evaluation).

    Returns
    -------
    results : dict of str to Any
        ``results[name]`` is the task's return value.
    missed : list of str
        The names that missed the deadline or raised (logged, counted in
        ``DEADLINE_MISSES``), in the order given.
    """
    results: dict[str, Any] = {}
    missed: list[str] = []
    if not tasks:
        return results, missed
    deadline_s = None if deadline_s is None else max(0.0, float(deadline_s))
    if len(tasks) == 1:
        return run_inline(tasks, deadline_s)

    pool = get_executor()
    futures: dict[str, Future] = {name: pool.submit(_timed(name, fn)) for name, fn in tasks.items()}
    wait(futures.values(), timeout=deadline_s)
    for name, fut in futures.items():
        if fut.done() and not fut.cancelled():
            exc = fut.exception()
            if exc is None:
                results[name] = fut.result()
                continue
            log.error("strategy %s failed; dropped from the response", name, exc_info=exc)
        else:
            fut.cancel()
            log.warning("strategy %s missed the %.0f ms deadline", name, (deadline_s or 0) * 1000)
        DEADLINE_MISSES.labels(name).inc()
        missed.append(name)
    return results, missed


_MISSED = object()


def run_inline(
    tasks: Mapping[str, Callable[[], Any]],
    deadline_s: float | None,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[dict[str, Any], list[str]]:
    """The tasks one after another in the caller's thread, under ``run_with_deadline``'s rules:
    a task that raises, that would start after the deadline, or that finished after it is
    dropped, logged and counted as missed. No pool hop, but a running task cannot be abandoned.

    The request path's default (``STRATEGY_PARALLEL`` false): under gunicorn the pool cost
    more worker CPU per request than running inline (docs/design-notes.md).

    Parameters
    ----------
    tasks : Mapping of str to callable
        Name -> task taking no arguments, run in this order.
    deadline_s : float or None
        Seconds from the call (negative counts as 0); ``None``: no deadline.
    clock : callable
        Returns seconds (monotonic); injectable for tests.

    Returns
    -------
    results : dict of str to Any
        Values of the tasks that finished in time.
    missed : list of str
        Names of the tasks dropped, in the order given.
    """
    results: dict[str, Any] = {}
    missed: list[str] = []
    limit = float("inf") if deadline_s is None else max(0.0, float(deadline_s))
    start = clock()
    for name, fn in tasks.items():
        t0 = clock()
        if t0 - start > limit:
            log.warning("strategy %s not started: %.0f ms deadline passed", name, limit * 1e3)
        else:
            try:
                value = fn()
            except Exception:
                log.exception("strategy %s failed; dropped from the response", name)
                value = _MISSED
            t1 = clock()
            STRATEGY_LATENCY.labels(name).observe(t1 - t0)
            if value is not _MISSED and t1 - start <= limit:
                results[name] = value
                continue
            if value is not _MISSED:
                log.warning("strategy %s missed the %.0f ms deadline", name, limit * 1e3)
        DEADLINE_MISSES.labels(name).inc()
        missed.append(name)
    return results, missed
