"""Per-request deadlines and priorities.

``run_with_deadline`` runs the strategies of one request in parallel in a per-process thread pool
and returns whatever finished in time; a strategy that misses the deadline (or raises) is left
out and counted in ``DEADLINE_MISSES`` so the request path can blend the rest and say
``degraded`` rather than make the user wait. The pool is created lazily and re-created after a
fork (a pool inherited from the gunicorn master has no live threads).

Priorities come from the ``X-Priority`` header (``low`` | ``normal`` | ``high``). Under overload
(more requests in flight in this worker than ``OVERLOAD_IN_FLIGHT``) ``admission()`` tells the
request path to answer low-priority requests from the cache or popularity only.

``ScoringGate`` lets at most ``SCORING_SLOTS`` requests of one process score at once; the others
wait their turn, high priority first, then in arrival order, for at most their deadline.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from recsys.errors import RecsysError
from recsys.lifecycle import on_after_fork
from recsys.metrics import (
    DEADLINE_MISSES,
    IN_FLIGHT,
    REQUESTS_SHED,
    SCORING_BATCH,
    SCORING_TIMEOUTS,
    SCORING_WAIT,
    STRATEGY_LATENCY,
)

log = logging.getLogger(__name__)

PRIORITIES = ("low", "normal", "high")
PRIORITY_HEADER = "X-Priority"
# Deadline multipliers: a low-priority request gives up sooner, a high-priority one waits longer.
PRIORITY_DEADLINE_FACTOR = {"low": 0.5, "normal": 1.0, "high": 2.0}
DEFAULT_POOL_SIZE = 8
DEFAULT_OVERLOAD_IN_FLIGHT = 3

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_pid: int | None = None
_pool_size = DEFAULT_POOL_SIZE
_in_flight = 0


def configure(pool_size: int) -> None:
    """Set the pool size used the next time the pool is created (app start / after fork)."""
    global _pool_size
    _pool_size = max(1, int(pool_size))


def get_executor() -> ThreadPoolExecutor:
    """This process's strategy pool, created on first use and again after a fork."""
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
    """Forget the inherited pool, scoring gate and in-flight count (a lifecycle hook)."""
    global _pool, _pool_pid, _in_flight, _gate, _gate_key
    with _lock:
        _pool, _pool_pid, _in_flight = None, None, 0
        _gate, _gate_key = None, None


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

    ``deadline_s=None`` waits for every task (offline evaluation). This is the ``runner`` the
    request path (``recsys.service.Recommender(runner=run_with_deadline)``) uses when serving.

    Returns ``(results, missed)``: ``results[name]`` is the task's return value; ``missed`` lists
    the names that missed the deadline or raised (logged), in the order given. Missed tasks are
    cancelled if they have not started; a running one finishes in the background and its result
    is discarded. A single task runs in the caller's thread (no pool hop) but still honours the
    deadline after the fact: a late result is dropped, like in the parallel case, so behaviour
    does not depend on how many strategies a route has.
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
    tasks: Mapping[str, Callable[[], Any]], deadline_s: float | None
) -> tuple[dict[str, Any], list[str]]:
    """The tasks one after another in the caller's thread, under ``run_with_deadline``'s rules:
    a task that raises, that would start after the deadline, or that finished after it is
    dropped, logged and counted as missed. No pool hop, but a running task cannot be abandoned.

    The request path's default (``STRATEGY_PARALLEL`` false): under gunicorn on the 2-core
    benchmark box, 8 uncached clients, the pool cost 8.8-13.7 ms of worker CPU per request
    against 7.5-8.8 ms inline (README, "Model runtime").
    """
    results: dict[str, Any] = {}
    missed: list[str] = []
    limit = float("inf") if deadline_s is None else max(0.0, float(deadline_s))
    start = time.perf_counter()
    for name, fn in tasks.items():
        t0 = time.perf_counter()
        if t0 - start > limit:
            log.warning("strategy %s not started: %.0f ms deadline passed", name, limit * 1e3)
        else:
            try:
                value = fn()
            except Exception:
                log.exception("strategy %s failed; dropped from the response", name)
                value = _MISSED
            t1 = time.perf_counter()
            STRATEGY_LATENCY.labels(name).observe(t1 - t0)
            if value is not _MISSED and t1 - start <= limit:
                results[name] = value
                continue
            if value is not _MISSED:
                log.warning("strategy %s missed the %.0f ms deadline", name, limit * 1e3)
        DEADLINE_MISSES.labels(name).inc()
        missed.append(name)
    return results, missed


# -- priorities and overload --------------------------------------------------------------------
def request_started() -> None:
    global _in_flight
    with _lock:
        _in_flight += 1
    IN_FLIGHT.inc()


def request_finished() -> None:
    global _in_flight
    with _lock:
        _in_flight = max(0, _in_flight - 1)
    IN_FLIGHT.dec()


def in_flight() -> int:
    """Requests being handled by this process now (including the caller's)."""
    return _in_flight


def parse_priority(value: str | None) -> str:
    """``X-Priority`` header value -> ``low|normal|high`` (missing -> normal; bad -> 400)."""
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

    Arguments default to the current Flask request's ``X-Priority`` header and the app config
    (``DEADLINE_MS``, ``OVERLOAD_IN_FLIGHT``). A shed request is counted in ``REQUESTS_SHED``.
    Raises ``RecsysError`` (400) for an invalid header value.
    """
    if priority_header is None or base_deadline_ms is None or overload_in_flight is None:
        from flask import current_app, has_request_context, request

        if priority_header is None and has_request_context():
            priority_header = request.headers.get(PRIORITY_HEADER)
        cfg = current_app.config
        if base_deadline_ms is None:
            base_deadline_ms = float(cfg.get("DEADLINE_MS", 250))
        if overload_in_flight is None:
            overload_in_flight = int(cfg.get("OVERLOAD_IN_FLIGHT", DEFAULT_OVERLOAD_IN_FLIGHT))
    priority = parse_priority(priority_header)
    deadline_s = base_deadline_ms / 1000.0 * PRIORITY_DEADLINE_FACTOR[priority]
    shed = priority == "low" and in_flight() > overload_in_flight
    if shed:
        REQUESTS_SHED.labels(priority).inc()
    return Admission(priority=priority, deadline_s=deadline_s, shed=shed)


# -- scoring turns ----------------------------------------------------------------------------
_RANK = {"high": 0, "normal": 1, "low": 2}
_WAITING, _TAKEN, _DONE = "waiting", "taken", "done"


class _Job:
    """One ``ScoringGate.combine`` caller's work, while it waits."""

    __slots__ = ("key", "job", "t0", "ticket", "state", "result", "error", "waited")

    def __init__(self, key: Any, job: Any, t0: float):
        self.key, self.job, self.t0 = key, job, t0
        self.ticket: tuple[int, int] = (0, 0)
        self.state = _WAITING
        self.result: Any = None
        self.error: BaseException | None = None
        self.waited = 0.0

    def __lt__(self, other: _Job) -> bool:
        return self.ticket < other.ticket


class ScoringGate:
    """At most ``slots`` callers of this process score at once (0: no limit).

    Why: scoring is CPU work under the GIL. With every gunicorn thread of a worker scoring at
    once, the threads take turns on one core's worth of GIL; each request's Redis and SQL round
    trips then wait for the GIL behind the others' computation (up to the 5 ms switch interval
    per hand-back), and the switching itself costs CPU. Waiting for a turn instead keeps the
    history lookup and the cache write (I/O, outside the gate) overlapped with other requests'
    scoring while the scoring runs without interference. Measured under gunicorn on the 2-core
    box, 8 uncached clients: README, "Serving benchmark".

    Waiters are served high priority first, then in arrival order; one that gets no turn within
    its timeout (its request's deadline) gets ``None`` and the caller answers degraded.
    ``combine`` (what the request path uses) also lets the holder of a turn score the
    compatible waiters with it; ``acquire``/``release`` and ``turn`` take a plain turn. Both
    wait in the same queue.
    """

    def __init__(self, slots: int):
        self.slots = max(0, int(slots))
        self._cond = threading.Condition()
        self._busy = 0
        # Waiters for a turn, of ``acquire`` and ``combine`` alike (few: one per waiting
        # thread); the next turn goes to the smallest ticket (priority rank, arrival).
        self._jobs: list[_Job] = []
        self._arrival = itertools.count()

    def _enter(self, mine: _Job, priority: str, timeout_s: float | None) -> str:
        """Take a slot for ``mine``, waiting in turn order if there is none (caller holds
        ``_cond``): ``_TAKEN`` when it holds a slot now, ``_DONE`` when another holder scored
        it in a combined turn, ``_WAITING`` when ``timeout_s`` passed first (no longer
        queued)."""
        if self._busy < self.slots and not self._jobs:
            self._busy += 1
            return _TAKEN
        mine.ticket = (_RANK.get(priority, 1), next(self._arrival))
        self._jobs.append(mine)
        end = None if timeout_s is None else time.monotonic() + max(0.0, timeout_s)
        while True:
            if mine.state is _DONE:
                return _DONE
            if mine.state is _WAITING:
                if self._busy < self.slots and min(self._jobs) is mine:
                    self._jobs.remove(mine)
                    self._busy += 1
                    if self._jobs and self._busy < self.slots:
                        self._cond.notify_all()  # another slot is free for the next in line
                    return _TAKEN
                remaining = None if end is None else end - time.monotonic()
                if remaining is not None and remaining <= 0:
                    self._jobs.remove(mine)
                    self._cond.notify_all()  # the head may have changed
                    return _WAITING
                self._cond.wait(remaining)
            else:  # taken: scored by the holder of a turn, which always finishes
                self._cond.wait()

    def stats(self) -> dict[str, int]:
        """Turns in use and callers waiting for one (for tests and diagnostics)."""
        with self._cond:
            return {"slots": self.slots, "busy": self._busy, "waiting": len(self._jobs)}

    def acquire(self, priority: str = "normal", timeout_s: float | None = None) -> bool:
        if not self.slots:
            return True
        with self._cond:
            # A key of its own: never taken into another holder's combined turn.
            return self._enter(_Job(object(), None, 0.0), priority, timeout_s) is _TAKEN

    def release(self) -> None:
        if not self.slots:
            return
        with self._cond:
            self._busy -= 1
            if self._jobs:
                self._cond.notify_all()

    def combine(
        self,
        key: Any,
        job: Any,
        run_batch: Callable[[list[tuple[Any, float]]], list[Any]],
        priority: str = "normal",
        timeout_s: float | None = None,
        max_batch: int = 8,
    ) -> tuple[bool, Any, float]:
        """Score ``job`` in a turn, together with compatible waiters: ``(scored, result,
        waited)``; ``scored`` is False when no turn came within ``timeout_s``.

        The caller that gets a turn takes, besides its own job, up to ``max_batch - 1`` jobs of
        the same ``key`` still waiting (in turn order: priority, then arrival), and runs
        ``run_batch([(job, seconds waited), ...])`` once for all of them: one pass of every
        model over several users costs much less per user than one pass each (the deep
        model's weights and the Python around each strategy are paid once). Each taken
        waiter gets its own result (or the batch's error) without a turn of its own, however
        long the batch takes: its deadline is in the batch's. A waiter not taken gives up at
        its timeout. Without a slot limit there is no queue and nothing to combine.
        """
        t0 = time.perf_counter()
        if not self.slots:
            return True, run_batch([(job, 0.0)])[0], 0.0
        mine = _Job(key, job, t0)
        with self._cond:
            got = self._enter(mine, priority, timeout_s)
            if got is _DONE:
                return self._outcome(mine)
            if got is _WAITING:
                waited = time.perf_counter() - t0
                SCORING_WAIT.observe(waited)
                SCORING_TIMEOUTS.labels(priority).inc()
                return False, None, waited
            batch = [mine]
            if max_batch > 1:
                for other in sorted(self._jobs):
                    if len(batch) >= max_batch:
                        break
                    if other.key == key:
                        other.state = _TAKEN
                        batch.append(other)
                if len(batch) > 1:
                    self._jobs = [j for j in self._jobs if j.state is _WAITING]
        start = time.perf_counter()
        for j in batch:
            j.waited = start - j.t0
            SCORING_WAIT.observe(j.waited)
        SCORING_BATCH.observe(len(batch))
        try:
            results = run_batch([(j.job, j.waited) for j in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch gave {len(results)} results for {len(batch)} jobs")
        except BaseException as e:
            with self._cond:
                for j in batch[1:]:
                    j.error, j.state = e, _DONE
                self._busy -= 1
                self._cond.notify_all()
            raise
        with self._cond:
            for j, result in zip(batch[1:], results[1:], strict=True):
                j.result, j.state = result, _DONE
            self._busy -= 1
            self._cond.notify_all()
        return True, results[0], mine.waited

    @staticmethod
    def _outcome(job: _Job) -> tuple[bool, Any, float]:
        if job.error is not None:
            raise RuntimeError("scoring failed in a combined turn") from job.error
        return True, job.result, job.waited

    @contextmanager
    def turn(self, priority: str = "normal", timeout_s: float | None = None):
        """``with gate.turn(p, t) as waited:`` seconds waited for the turn, or None if none came
        within ``timeout_s`` (the body then runs without a turn and should not score)."""
        t0 = time.perf_counter()
        ok = self.acquire(priority, timeout_s)
        waited = time.perf_counter() - t0
        if self.slots:
            SCORING_WAIT.observe(waited)
        if not ok:
            SCORING_TIMEOUTS.labels(priority).inc()
            yield None
            return
        try:
            yield waited
        finally:
            self.release()


_gate: ScoringGate | None = None
_gate_key: tuple[int, int] | None = None  # (pid, slots) it was made for


def scoring_gate(slots: int | None) -> ScoringGate:
    """This process's gate, made on first use (and again after a fork, or for another setting).
    ``slots`` None: 1 where the deep model would run on the CPU, 0 (no limit) with CUDA."""
    global _gate, _gate_key
    if slots is None:
        from strategies.deep import resolve_device

        slots = 1 if resolve_device().type == "cpu" else 0
    key = (os.getpid(), int(slots))
    if _gate_key != key:
        with _lock:
            if _gate_key != key:
                _gate, _gate_key = ScoringGate(key[1]), key
    return _gate
