"""Micro-batching: concurrent single requests share one call of a batched function.

A model forward pass costs nearly the same for 1 user as for 32, so when many request threads
each want one user scored, collecting them for a millisecond or two and scoring them together
multiplies throughput. ``MicroBatcher`` runs one background thread per process that waits for
the first request, keeps collecting until ``max_batch`` requests are queued or ``max_delay_ms``
has passed since the first one arrived, then calls ``fn(list_of_inputs)`` once and hands each
caller its own result (or the exception ``fn`` raised).

Fork safety: the thread is started lazily on the first ``submit`` in a process, and a process
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
    __slots__ = ("x", "enqueued", "done", "result", "error", "abandoned")

    def __init__(self, x: Any) -> None:
        self.x = x
        self.enqueued = time.monotonic()
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        # Set by a caller that timed out: the worker skips it instead of computing for nobody.
        self.abandoned = False


_live: weakref.WeakSet[MicroBatcher] = weakref.WeakSet()
_hook_registered = False
_hook_lock = threading.Lock()


def _register_fork_hook() -> None:
    global _hook_registered
    with _hook_lock:
        if _hook_registered:
            return
        try:
            from recsys.lifecycle import on_after_fork
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
    ``max_delay_ms`` caps how long the first request of a batch waits for company.
    """

    def __init__(
        self,
        fn: Callable[[list[X]], Sequence[Y]],
        max_batch: int = 32,
        max_delay_ms: float = 2.0,
        name: str = "batcher",
        observer: Observer | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_delay_ms < 0:
            raise ValueError("max_delay_ms must be >= 0")
        self.fn = fn
        self.max_batch = int(max_batch)
        self.max_delay_s = float(max_delay_ms) / 1000.0
        self.name = name
        self.observer = observer
        self._closed = False
        self._init_state()
        _live.add(self)
        _register_fork_hook()

    # -- state --------------------------------------------------------------------------------
    def _init_state(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[_Pending] = deque()
        self._thread: threading.Thread | None = None
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
        """Counters for metrics and benchmarks (this process only)."""
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
            }

    # -- client side --------------------------------------------------------------------------
    def submit(self, x: X, timeout: float | None = None) -> Y:
        """Queue ``x``, block until its batch ran, return its result.

        Raises ``TimeoutError`` if no result came within ``timeout`` seconds (the request is
        then skipped if its batch has not started), the exception ``fn`` raised for the batch,
        or ``BatcherClosed`` after ``close()``.
        """
        if self._pid != os.getpid():
            self._reset_after_fork()
        p = _Pending(x)
        with self._cond:
            if self._closed:
                raise BatcherClosed(f"micro-batcher {self.name!r} is closed")
            self._queue.append(p)
            if self._thread is None or not self._thread.is_alive():
                self._start_thread()
            self._cond.notify()
        if not p.done.wait(timeout):
            with self._cond:
                # The result may have landed between the wait and the lock; a late result is
                # still a result, so hand it over rather than dropping finished work.
                late = p.done.is_set()
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
        """Refuse new requests, finish the queued ones, stop the thread."""
        with self._cond:
            self._closed = True
            self._stopping = True
            thread = self._thread
            self._cond.notify_all()
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout)

    def __enter__(self) -> MicroBatcher[X, Y]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- worker side --------------------------------------------------------------------------
    def _start_thread(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"microbatch-{self.name}", daemon=True
        )
        self._thread.start()

    def _take_batch(self) -> list[_Pending] | None:
        """Block for the next batch; None when stopping with an empty queue."""
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            # Wait for company until the first request has waited max_delay, unless full.
            deadline = self._queue[0].enqueued + self.max_delay_s
            while len(self._queue) < self.max_batch and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = []
            while self._queue and len(batch) < self.max_batch:
                p = self._queue.popleft()
                if not p.abandoned:
                    batch.append(p)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if not batch:
                continue
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
                p.done.set()
            with self._cond:
                self.batches += 1
                self.requests += len(batch)
                self.errors += int(failed)
                self.batch_sizes[len(batch)] += 1
                self.queue_wait_total_s += wait
            if self.observer is not None:
                try:
                    self.observer(len(batch), wait)
                except Exception:  # noqa: BLE001 - metrics must never break serving
                    log.exception("micro-batcher %s: observer failed", self.name)
