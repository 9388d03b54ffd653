"""The scoring gate: at most ``SCORING_SLOTS`` requests of one process score at once.

The others wait their turn, high priority first, then in arrival order, for at most their
deadline; the holder of a turn also scores the compatible waiters (``ScoringGate.combine``).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

from recsys.ops.lifecycle import on_after_fork
from recsys.ops.metrics import SCORING_BATCH, SCORING_TIMEOUTS, SCORING_WAIT

_lock = threading.Lock()

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
        """Turns in use and callers waiting for one (for tests and diagnostics).

        Returns
        -------
        dict of str to int
            ``slots`` (0: no limit), ``busy`` (turns held) and ``waiting`` (callers queued).
        """
        with self._cond:
            return {"slots": self.slots, "busy": self._busy, "waiting": len(self._jobs)}

    def acquire(self, priority: str = "normal", timeout_s: float | None = None) -> bool:
        """Wait for a scoring turn (always granted at once without a slot limit).

        Parameters
        ----------
        priority : str, optional
            ``low``, ``normal`` or ``high``: higher priorities are served first.
        timeout_s : float or None, optional
            Seconds to wait at most; None: no limit.

        Returns
        -------
        bool
            True with a turn (``release`` it); False when none came within ``timeout_s``.
        """
        if not self.slots:
            return True
        with self._cond:
            # A key of its own: never taken into another holder's combined turn.
            return self._enter(_Job(object(), None, 0.0), priority, timeout_s) is _TAKEN

    def release(self) -> None:
        """Give back a turn ``acquire`` granted, waking the waiters.

        Returns
        -------
        None
        """
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
        """Score ``job`` in a turn, together with compatible waiters.

        The caller that gets a turn takes, besides its own job, up to ``max_batch - 1`` jobs of
        the same ``key`` still waiting (in turn order: priority, then arrival), and runs
        ``run_batch([(job, seconds waited), ...])`` once for all of them: one pass of every
        model over several users costs much less per user than one pass each (the deep
        model's weights and the Python around each strategy are paid once). Each taken
        waiter gets its own result (or the batch's error) without a turn of its own, however
        long the batch takes: its deadline is in the batch's. A waiter not taken gives up at
        its timeout. Without a slot limit there is no queue and nothing to combine.

        Parameters
        ----------
        key : Any
            Hashable; only jobs of equal keys are scored together.
        job : Any
            This caller's work, passed to ``run_batch``.
        run_batch : callable
            ``run_batch([(job, seconds waited), ...])`` -> one result per job, in order.
        priority : str, optional
            ``low``, ``normal`` or ``high``.
        timeout_s : float or None, optional
            Seconds to wait for a turn; None: no limit.
        max_batch : int, optional
            Jobs per batch at most, this caller's included.

        Returns
        -------
        tuple of (bool, Any, float)
            ``(scored, result, waited)``: ``scored`` is False (and ``result`` None) when no turn
            came within ``timeout_s``; ``waited`` in seconds.

        Raises
        ------
        RuntimeError
            ``run_batch`` raised for a batch this job was taken into (the cause is chained).
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
        """A scoring turn for the duration of a ``with`` block.

        ``with gate.turn(p, t) as waited:`` seconds waited for the turn, or None if none came
        within ``timeout_s`` (the body then runs without a turn and should not score).

        Parameters
        ----------
        priority : str, optional
            ``low``, ``normal`` or ``high``.
        timeout_s : float or None, optional
            Seconds to wait at most; None: no limit.

        Returns
        -------
        contextmanager
            Yields the seconds waited (float) or None; the turn is released on exit.
        """
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


@on_after_fork
def reset_after_fork(_app=None) -> None:
    """Forget the gate inherited from the master (a lifecycle hook).

    Parameters
    ----------
    _app : Flask or None, optional
        The app the hook is called with (unused).

    Returns
    -------
    None
    """
    global _gate, _gate_key
    with _lock:
        _gate, _gate_key = None, None


def scoring_gate(slots: int) -> ScoringGate:
    """This process's gate, made on first use (and again after a fork, or for another setting).

    Parameters
    ----------
    slots : int
        Concurrent scoring turns; 0: no limit. ``SCORING_SLOTS`` unset is resolved by the
        caller (``recsys.models.runtime.scoring_slots``).

    Returns
    -------
    ScoringGate
        The shared gate for ``slots`` in this process.
    """
    global _gate, _gate_key
    key = (os.getpid(), int(slots))
    if _gate_key != key:
        with _lock:
            if _gate_key != key:
                _gate, _gate_key = ScoringGate(key[1]), key
    return _gate
