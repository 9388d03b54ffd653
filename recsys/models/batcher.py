"""Micro-batching: concurrent single requests share one call of a batched function.

A model forward pass costs nearly the same for 1 user as for 32, so when many request threads
each want one user scored, collecting them for a millisecond or two and scoring them together
multiplies throughput. ``MicroBatcher`` runs background runner threads (``concurrency``, one by
default) per process. A runner waits for the first request, keeps collecting until
``max_batch`` requests are queued or ``max_delay_ms`` has passed since the first one arrived,
then calls ``fn(list_of_inputs)`` once and hands each caller its own result (or the exception
``fn`` raised).

With ``concurrency > 1`` only one runner collects at a time (batches are formed in arrival
order) while the others run their batches: when ``fn`` releases the GIL (a torch forward pass
does) the next batch is collected and computed on another core while the previous one is still
in its forward pass. A collector with another runner idle goes at once (waiting would leave a
core idle), unless callers whose batch has just finished are still on their way out of
``submit``: a thread scoring one user after another comes straight back, and waiting those
microseconds for it keeps 16 such callers in batches of ~16 instead of fragments (measured with
``bench/serve_bench.py --deep-only 3``: 3.7-3.8x instead of 2.9-3.0x the unbatched throughput
on 2 cores, 2026-11-30). Under gunicorn on the CPU the scoring gate (``recsys.serving.gate``)
lets one request per worker score at a time, so there the deep model's calls mostly run inline
(``inline_when_idle``) and the rule changes nothing: alternating the server with and without
it four times at 8 uncached clients gave the same throughput and CPU per request (README,
"Serving benchmark"). A collector takes the whole queue, up to ``max_batch``.
``max_delay_ms`` bounds every wait.
``fn`` and the observer must be safe to call from several threads at once.

Fork safety: the threads are started lazily on the first ``submit`` in a process, and a process
that finds itself forked (different pid) or receives the after-fork hook starts from a clean
state, so gunicorn's ``preload_app`` master never owns a thread that its workers would inherit
half-dead.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

X = TypeVar("X")
Y = TypeVar("Y")

# observer(batch_size, queue_wait_s): called once per batch; queue_wait_s is how long the oldest
# request of the batch waited before fn was called (the figure max_delay_ms bounds).
Observer = Callable[[int, float], None]


class BatcherClosed(RuntimeError):
    """Raised by ``submit`` after ``close``."""


class _Pending:
    """One queued request. Its result is signalled by releasing a lock the caller blocks on:
    a bare lock costs a fraction of a ``threading.Event`` (a Condition and a fresh waiter lock
    per wait), and a batch signals every one of its requests."""

    __slots__ = ("x", "enqueued", "_signal", "finished", "result", "error", "abandoned")

    def __init__(self, x: Any) -> None:
        self.x = x
        self.enqueued = time.monotonic()
        self._signal = threading.Lock()
        self._signal.acquire()
        self.finished = False
        self.result: Any = None
        self.error: BaseException | None = None
        # Set by a caller that timed out: the worker skips it instead of computing for nobody.
        self.abandoned = False

    def set(self) -> None:
        """Called once, by the runner, after ``result``/``error`` are in place."""
        self.finished = True
        self._signal.release()

    def wait(self, timeout: float | None) -> bool:
        if timeout is None:
            self._signal.acquire()
            return True
        return self._signal.acquire(timeout=max(0.0, timeout)) or self.finished


_live: weakref.WeakSet[MicroBatcher] = weakref.WeakSet()
_hook_registered = False
_hook_lock = threading.Lock()


def _register_fork_hook() -> None:
    global _hook_registered
    with _hook_lock:
        if _hook_registered:
            return
        try:
            from recsys.ops.lifecycle import on_after_fork
        except ImportError:  # pragma: no cover - flask missing: the pid check still protects us
            _hook_registered = True
            return

        @on_after_fork
        def _reset_batchers(app: object = None) -> None:
            for b in list(_live):
                b._reset_after_fork()

        _hook_registered = True


class MicroBatcher(Generic[X, Y]):
    """Collect concurrent ``submit(x)`` calls into ``fn([x1, x2, ...]) -> [y1, y2, ...]``.

    ``fn`` must return one result per input, in order. ``max_batch`` caps the list length;
    ``max_delay_ms`` caps how long the first request of a batch waits for company;
    ``concurrency`` is how many batches may be in ``fn`` at once (one runner thread each).
    """

    def __init__(
        self,
        fn: Callable[[list[X]], Sequence[Y]],
        max_batch: int = 32,
        max_delay_ms: float = 2.0,
        name: str = "batcher",
        observer: Observer | None = None,
        concurrency: int = 1,
        inline_when_idle: bool = False,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_delay_ms < 0:
            raise ValueError("max_delay_ms must be >= 0")
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.fn = fn
        self.max_batch = int(max_batch)
        self.concurrency = int(concurrency)
        self.max_delay_s = float(max_delay_ms) / 1000.0
        self.name = name
        self.observer = observer
        # Nothing queued and no batch running: run fn([x]) in the caller's thread now (a batch
        # of one either way) instead of handing it to a runner thread and back.
        self.inline_when_idle = bool(inline_when_idle)
        self._closed = False
        self._init_state()
        _live.add(self)
        _register_fork_hook()

    # -- state --------------------------------------------------------------------------------
    def _init_state(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[_Pending] = deque()
        # Held by the one runner that is collecting the next batch; the others are in fn or
        # waiting for their turn to collect.
        self._collect_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._busy = 0  # runners inside fn
        self._inside = 0  # callers inside submit
        self._running = 0  # requests in batches inside fn
        # Set when a collector left part of the queue for an idle runner: that runner takes it
        # at once instead of opening a new wait for company.
        self._flush = False
        self._stopping = False
        self.batches = 0
        self.requests = 0
        self.timeouts = 0
        self.errors = 0
        self.batch_sizes: Counter[int] = Counter()
        self.queue_wait_total_s = 0.0

    def _reset_after_fork(self) -> None:
        """In a forked child: the parent's thread and locks do not exist here; start clean."""
        if self._pid != os.getpid():
            self._init_state()

    def stats(self) -> dict[str, Any]:
        """Counters for metrics and benchmarks (this process only).

        Returns
        -------
        dict
            ``name``, ``batches``, ``requests``, ``timeouts``, ``errors``, ``mean_batch_size``,
            ``batch_sizes`` (size -> count), ``mean_queue_wait_s`` (seconds) and the thread state.
        """
        with self._cond:
            return {
                "name": self.name,
                "batches": self.batches,
                "requests": self.requests,
                "timeouts": self.timeouts,
                "errors": self.errors,
                "mean_batch_size": self.requests / self.batches if self.batches else 0.0,
                "batch_sizes": dict(self.batch_sizes),
                "mean_queue_wait_s": self.queue_wait_total_s / self.batches
                if self.batches
                else 0.0,
                "queued": len(self._queue),
                "concurrency": self.concurrency,
                # Runner threads alive in this process (0 until the first queued request).
                "runners": sum(t.is_alive() for t in self._threads),
                "busy": self._busy,
                "closed": self._closed,
            }

    # -- client side --------------------------------------------------------------------------
    def submit(self, x: X, timeout: float | None = None) -> Y:
        """Queue ``x``, block until its batch ran, return its result.

        Parameters
        ----------
        x : X
            One request, passed to ``fn`` in a list with the batch's others.
        timeout : float or None, optional
            Seconds to wait for the result; None: no limit.

        Returns
        -------
        Y
            ``fn``'s result for ``x``.

        Raises
        ------
        TimeoutError
            No result came within ``timeout`` (the request is then skipped if its batch has not
            started).
        BatcherClosed
            After ``close()``.
        Exception
            Whatever ``fn`` raised for the batch.
        """
        if self._pid != os.getpid():
            self._reset_after_fork()
        p = _Pending(x)
        with self._cond:
            if self._closed:
                raise BatcherClosed(f"micro-batcher {self.name!r} is closed")
            self._inside += 1
            # Alone: nothing queued, no batch running, and no caller of a batch that just
            # finished still on its way out (it may be back in a moment, to share a batch).
            inline = self.inline_when_idle and self._inside == 1 and self._busy == 0
            if inline:
                self._running += 1
                self._busy += 1  # counts as a running batch: arrivals meanwhile queue up
            else:
                self._queue.append(p)
                if len(self._threads) < self.concurrency or not all(
                    t.is_alive() for t in self._threads
                ):
                    self._start_threads()
                # Wake the collector only when it has something new to decide: the first
                # request (it waits for a non-empty queue) or a full batch. In between it is
                # waiting for company with a timeout, and waking it for every arrival cost a
                # thread switch each.
                if len(self._queue) == 1 or len(self._queue) >= self.max_batch:
                    self._cond.notify()
        try:
            return self._await(p, inline, timeout)
        finally:
            with self._cond:
                self._inside -= 1
                # The last caller out of a finished batch: a collector waiting for it goes.
                if self._queue and self._in_transit() <= 0:
                    self._cond.notify()

    def _await(self, p: _Pending, inline: bool, timeout: float | None) -> Y:
        if inline:
            self._execute([p])
            if p.error is not None:
                raise p.error
            return p.result
        if not p.wait(timeout):
            with self._cond:
                # The result may have landed between the wait and the lock; a late result is
                # still a result, so hand it over rather than dropping finished work.
                late = p.finished
                if not late:
                    p.abandoned = True
                    self.timeouts += 1
            if not late:
                raise TimeoutError(
                    f"micro-batcher {self.name!r}: no result within {timeout * 1000:.0f} ms"
                )
        if p.error is not None:
            raise p.error
        return p.result

    def close(self, timeout: float | None = 5.0) -> None:
        """Refuse new requests, finish the queued ones, stop the threads.

        Parameters
        ----------
        timeout : float or None, optional
            Seconds to wait for the threads, in all (not each thread's); None: no limit.

        Returns
        -------
        None
        """
        with self._cond:
            self._closed = True
            self._stopping = True
            threads = list(self._threads)
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> MicroBatcher[X, Y]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- worker side --------------------------------------------------------------------------
    def _start_threads(self) -> None:
        """Top up the runner threads to ``concurrency`` (caller holds ``_cond``)."""
        alive = [t for t in self._threads if t.is_alive()]
        while len(alive) < self.concurrency:
            suffix = f"-{len(alive)}" if self.concurrency > 1 else ""
            t = threading.Thread(
                target=self._run, name=f"microbatch-{self.name}{suffix}", daemon=True
            )
            t.start()
            alive.append(t)
        self._threads = alive

    def _take_batch(self) -> list[_Pending] | None:
        """Block for the next batch; None when stopping with an empty queue."""
        # One collector at a time: runners racing for the same queue would cut it into batches
        # by chance; here one place decides, in arrival order, how the queue is shared.
        with self._collect_lock, self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            # Wait for company until the first request has waited max_delay, unless full.
            deadline = self._queue[0].enqueued + self.max_delay_s
            while len(self._queue) < self.max_batch and not self._stopping and not self._flush:
                # Waiting for company pays while every other runner is busy (no core is left
                # idle by it) or while callers whose batch just finished are still on their
                # way out of ``submit``: a caller scoring one user after another is back within
                # microseconds, and a batch that goes without it leaves it to a batch of one.
                # Otherwise (a free runner, nobody on the way) the requests go now.
                if self._busy < self.concurrency - 1 and self._in_transit() <= 0:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            # At most ``concurrency`` batches in fn at once: a request run inline in its
            # caller's thread (inline_when_idle) holds a slot too, so wait for one to free.
            while self._busy >= self.concurrency and not self._stopping:
                self._cond.wait()
            # The whole queue, up to max_batch. (Sharing it among idle runners, two batches of
            # 8 at once instead of one of 16, measured slower on 2 cores with the wait above:
            # 3.2-3.4x against 3.9x the unbatched throughput at 16 callers; waking and
            # resubmitting 16 threads cost more than the second core gained, 2026-11-30.)
            batch = []
            while self._queue and len(batch) < self.max_batch:
                p = self._queue.popleft()
                if not p.abandoned:
                    batch.append(p)
            # Left over (more than max_batch queued) with another runner idle: it takes the
            # rest at once instead of opening a new wait for company.
            self._flush = bool(self._queue) and self._busy + 1 < self.concurrency
            if batch:
                self._busy += 1
                self._running += len(batch)
            return batch

    def _in_transit(self) -> int:
        """Callers inside ``submit`` that are neither queued nor in a running batch: those
        whose batch has finished and who have not left yet (caller holds ``_cond``)."""
        return self._inside - self._running - len(self._queue)

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if not batch:
                continue
            self._execute(batch)

    def _execute(self, batch: list[_Pending]) -> None:
        """Run one batch (the caller counted it in ``_busy``), hand out the results."""
        started = time.monotonic()
        wait = started - batch[0].enqueued
        try:
            results = self.fn([p.x for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(
                    f"micro-batcher {self.name!r}: fn returned {len(results)} results "
                    f"for {len(batch)} inputs"
                )
            for p, r in zip(batch, results, strict=True):
                p.result = r
            failed = False
        except BaseException as e:  # noqa: BLE001 - every caller must hear about it
            log.warning("micro-batcher %s: batch of %d failed: %s", self.name, len(batch), e)
            for p in batch:
                p.error = e
            failed = True
        for p in batch:
            p.set()
        with self._cond:
            self.batches += 1
            self.requests += len(batch)
            self.errors += int(failed)
            self.batch_sizes[len(batch)] += 1
            self.queue_wait_total_s += wait
            self._busy -= 1
            self._running -= len(batch)
            # A collector waiting for company may now have an idle runner to hand off to.
            self._cond.notify()
        if self.observer is not None:
            try:
                self.observer(len(batch), wait)
            except Exception:  # noqa: BLE001 - metrics must never break serving
                log.exception("micro-batcher %s: observer failed", self.name)
