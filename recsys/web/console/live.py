"""The Live screen's data: snapshots of the service's own ``/metrics`` (``recsys.ops.livestats``:
``snapshot``, ``quantile``) and their short shared history (``History``), which the page draws
from first, so its charts survive a reload.

The service keeps that history itself, whether or not a page is open: each gunicorn worker runs
a ``Sampler`` thread (started after the fork, ``console_history_sampler``; never in the CLI or
under a test client) that wakes once per ``HISTORY_STEP_S`` slot; the worker that claims the slot
(``History.claim``: ``SET NX`` in Redis) reads ``/metrics`` and keeps the snapshot, the others go
back to sleep. Requests pay nothing for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from recsys.ops.lifecycle import on_after_fork
from recsys.ops.livestats import quantile, snapshot

__all__ = [
    "HISTORY_POINTS",
    "HISTORY_STEP_S",
    "History",
    "Sampler",
    "history_of",
    "quantile",
    "snapshot",
]

log = logging.getLogger(__name__)


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
        self._slot: int | None = None  # the last slot claimed (in memory)
        self._ttl = int(HISTORY_STEP_S * HISTORY_POINTS) + 60

    def claim(self, t: float) -> bool:
        """Take the ``HISTORY_STEP_S`` slot of time ``t`` for this process, unless a snapshot
        was kept (or another worker took it) already.

        Parameters
        ----------
        t : float
            Unix seconds.

        Returns
        -------
        bool
            Whether this caller should keep a snapshot for that slot (``push``).
        """
        slot = int(t // HISTORY_STEP_S)
        if self.client is None:
            if slot == self._slot:
                return False
            self._slot = slot
            return True
        return bool(self.client.set(f"{self.key}:slot:{slot}", b"1", nx=True, ex=self._ttl))

    def push(self, snap: dict[str, Any]) -> None:
        """Keep ``snap`` (its slot claimed with ``claim``), dropping the oldest past
        ``HISTORY_POINTS``.

        Parameters
        ----------
        snap : dict[str, Any]
            A ``snapshot``.
        """
        import json

        if self.client is None:
            self._local.append(snap)
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.rpush(self.key, json.dumps(snap, separators=(",", ":")))
        pipe.ltrim(self.key, -HISTORY_POINTS, -1)
        pipe.expire(self.key, self._ttl)
        pipe.execute()

    def add(self, snap: dict[str, Any]) -> bool:
        """Keep ``snap`` unless one was kept in its time slot already (``claim``, then ``push``).

        Parameters
        ----------
        snap : dict[str, Any]
            A ``snapshot``.

        Returns
        -------
        bool
            Whether it was kept.
        """
        if not self.claim(snap["t"]):
            return False
        self.push(snap)
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


def history_of(app: Any) -> History:
    """``app``'s ``History`` (Redis when its result cache is, else this process's memory), made
    once.

    Parameters
    ----------
    app : Flask
        The service's app.

    Returns
    -------
    History
        The shared history of the Live screen.
    """
    from recsys.serving.cache import get_cache

    kept = app.extensions.get("recsys.console_history")
    if kept is None:
        cache = get_cache(app)
        client = getattr(cache.backend, "client", None) if cache.shared else None
        kept = app.extensions["recsys.console_history"] = History(
            client, cache.key("console", "live")
        )
    return kept


def _metrics_text() -> str:
    from recsys.ops import metrics

    return metrics.exposition()[0].decode()


class Sampler:
    """Keeps ``history`` filled while no page asks: one ``sample`` per ``HISTORY_STEP_S`` slot.

    Parameters
    ----------
    history : History
        Where snapshots go.
    source : Callable[[], str]
        The metrics exposition to sample (default: the service's own ``/metrics`` body).
    clock : Callable[[], float]
        Unix seconds (tests pass their own).
    """

    def __init__(
        self,
        history: History,
        source: Callable[[], str] = _metrics_text,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.history, self.source, self.clock = history, source, clock
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None
        self._failing = False

    def sample(self) -> bool:
        """Keep a snapshot for the current slot, unless another worker (or a page) did.

        Returns
        -------
        bool
            Whether this call kept one. The exposition is read only after the slot is claimed,
            so one worker per slot pays for it.
        """
        now = self.clock()
        if not self.history.claim(now):
            return False
        self.history.push(snapshot(self.source(), now))
        return True

    def delay(self) -> float:
        """Seconds until just past the next slot's start (every worker wakes then)."""
        return HISTORY_STEP_S - self.clock() % HISTORY_STEP_S + 0.05

    def step(self) -> None:
        """One ``sample``; a failure (Redis down) is logged once until it works again."""
        try:
            self.sample()
        except Exception as e:  # noqa: BLE001 - the thread must outlive a Redis outage
            if not self._failing:
                log.warning("live history sampling failed: %s", e)
            self._failing = True
        else:
            self._failing = False

    def _run(self) -> None:
        while not self.stopped.wait(self.delay()):
            self.step()

    def start(self) -> Sampler:
        """Run in a daemon thread until ``stop``."""
        self.thread = threading.Thread(target=self._run, name="recsys-live-sampler", daemon=True)
        self.thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Ask the thread to end and wait for it.

        Parameters
        ----------
        timeout : float or None, optional
            Seconds to wait for the thread at most; None: no limit.
        """
        self.stopped.set()
        if self.thread is not None:
            self.thread.join(timeout)


@on_after_fork
def start_sampler(app: Any) -> Sampler | None:
    """In a gunicorn worker (after the fork): start ``app``'s ``Sampler`` unless
    ``console_history_sampler`` is off or one runs already.

    Parameters
    ----------
    app : Flask or None
        The service's app.

    Returns
    -------
    Sampler or None
        The running sampler; None when off.
    """
    from recsys.config import get_config

    if app is None or not get_config(app).console_history_sampler:
        return None
    running = app.extensions.get("recsys.console_sampler")
    if running is not None and running.thread is not None and running.thread.is_alive():
        return running
    sampler = app.extensions["recsys.console_sampler"] = Sampler(history_of(app)).start()
    return sampler
