"""The multi-model runtime: which model versions this process holds, and how they change.

One ``ModelRuntime`` per process (``get_runtime(app)``) sits on top of the model repository
(``recsys.models.repository``), which verifies checksums and loads versions. The runtime adds:

* **Preload or lazy.** Active versions whose ``strategy_settings.load_mode`` is ``preload`` are
  loaded at start: under gunicorn in the master before workers fork (``gunicorn.conf.py``
  ``when_ready``), so every worker shares those pages copy-on-write; others load on first use.
* **Memory budget.** ``MODEL_MEMORY_BUDGET_MB`` per process; when a load goes over it, the least
  recently used *other* models are dropped (a dropped model reloads on its next use).
* **Warm-up.** Every load scores a few real users (the newest histories in the SQL store) once,
  so the first request does not pay for lazy allocations; ``ready()`` stays false until every
  preload model is loaded and warmed (``/readyz``).
* **Atomic swaps.** ``activate``/``rollback`` load and warm the new version beside the old one and
  then swap a single dict entry under a lock; requests already holding the old ``LoadedModel``
  finish with it. If the load fails (a ``ModelError`` from the repository, e.g. a tampered file)
  the old version keeps serving, the SQL active version is not changed, and the error goes back
  to the caller.
* **Other workers and servers** notice activation changes by polling the active versions in SQL
  at most every ``CONFIG_POLL_SECONDS`` (triggered by requests, the poll is one small query; a
  swap it finds is loaded in a background thread so no request waits for it).
* **Micro-batching.** The deep strategy is wrapped so ``score`` goes through
  ``recsys.models.batcher.MicroBatcher`` (``BATCH_MAX_SIZE``, ``BATCH_MAX_DELAY_MS``,
  ``BATCH_CONCURRENCY``): concurrent requests share one forward pass, and up to
  ``BATCH_CONCURRENCY`` batches are in their forward pass at once. The gunicorn master loads
  it on the CPU (no CUDA in a process that forks); a worker with CUDA reloads it there on first
  use.

The work for one version (loading, the CPU-only fallback, serving variants, warm-up, picking
what to evict) is in ``recsys.models.loading``; the admin operations (activate, rollback, load,
unload), the status rows and the pending preloads are methods of the runtime kept in
``recsys.models.runtime_admin`` (``RuntimeAdmin``, its base class).

Over 500 lines only through the numpy-style docstrings of its public API (about 400
lines without them): the code is one unit, not split for length.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable

from flask import Flask, current_app

from recsys.config import get_config
from recsys.errors import DB_UNAVAILABLE, ModelError, RateLimitedLog
from recsys.models import loading
from recsys.models.batched_model import BatchedModel
from recsys.models.loading import DEFAULT_LOAD_MODE, BatchSettings, Slot, retire
from recsys.models.repository import LoadedModel, ModelRepository, get_repository
from recsys.models.runtime_admin import RuntimeAdmin
from recsys.ops import metrics
from recsys.ops.lifecycle import on_after_fork
from recsys.ops.polling import BackgroundPoll

log = logging.getLogger(__name__)
_poll_log = RateLimitedLog(log, every_s=60.0)

# After a failed lazy load, wait this long before trying the same version again, so a broken
# version does not make every request pay for a failing checksum pass.
RETRY_FAILED_S = 30.0


class ModelRuntime(RuntimeAdmin):
    """Loaded model versions of this process. Thread-safe; see the module docstring.

    Parameters
    ----------
    repository : ModelRepository
        Verifies and loads versions; the SQL active versions, load modes and history.
    budget_bytes : int
        The memory budget of the models held (``MODEL_MEMORY_BUDGET_MB``).
    preload_enabled : bool
        Load ``preload``-mode models at start and keep them loaded (``PRELOAD_MODELS``).
    poll_seconds : float
        Poll the active versions at most this often (``CONFIG_POLL_SECONDS``).
    batch_max_size, batch_max_delay_ms, batch_concurrency, batch_inline_when_idle
        Micro-batching of ``batched`` strategies (``recsys.models.loading.BatchSettings``).
    warmup : bool
        Warm every model up when it is loaded.
    cpu_precision : str or None
        The CPU serving precision (``DEEP_CPU_PRECISION``; see ``serving_variant``).
    """

    def __init__(
        self,
        repository: ModelRepository,
        *,
        budget_bytes: int = 768 << 20,
        preload_enabled: bool = True,
        poll_seconds: float = 0.5,
        batch_max_size: int = 32,
        batch_max_delay_ms: float = 2.0,
        batch_concurrency: int = 1,
        batch_inline_when_idle: bool = False,
        warmup: bool = True,
        cpu_precision: str | None = None,
    ) -> None:
        self.repository = repository
        self.budget_bytes = int(budget_bytes)
        self.preload_enabled = bool(preload_enabled)
        self.poll_seconds = float(poll_seconds)
        self.batch_max_size = int(batch_max_size)
        self.batch_max_delay_ms = float(batch_max_delay_ms)
        self.batch_concurrency = int(batch_concurrency)
        self.batch_inline_when_idle = bool(batch_inline_when_idle)
        self.cpu_precision = cpu_precision or None
        self.warmup = warmup
        self.clock: Callable[[], float] = time.monotonic  # idle times, polls, retries (tests)
        self._models: dict[str, Slot] = {}
        self._active: dict[str, str] = {}
        self._modes: dict[str, str] = {}
        self._errors: dict[str, tuple[str, str, float]] = {}  # strategy -> (version, msg, when)
        self._evicted: set[str] = set()
        # strategy -> the lazy version whose files verified here (readiness checks lazy ones too)
        self._verified: dict[str, str] = {}
        self._polled = False
        self._last_poll = 0.0
        self._poller = BackgroundPoll("models", self._refresh_now)
        self._to_drop: list[str] = []
        self._cpu_only = False
        self._init_locks()

    def _init_locks(self) -> None:
        self._lock = threading.RLock()  # guards _models/_active/_modes and swaps
        self._poll_lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}
        self._applying = False
        self._preload_thread: threading.Thread | None = None
        self._pid = os.getpid()

    def _load_lock(self, strategy: str) -> threading.Lock:
        with self._lock:
            return self._load_locks.setdefault(strategy, threading.Lock())

    # -- the hot path ---------------------------------------------------------------------------
    def get(self, strategy: str) -> LoadedModel | None:
        """The active version of ``strategy``, loading it now if needed.

        Parameters
        ----------
        strategy : str
            The strategy name.

        Returns
        -------
        LoadedModel or None
            The loaded model; None when there is no active version, or it failed to load
            (logged, retried after a while).
        """
        self._maybe_refresh()
        slot = self._models.get(strategy)
        if slot is not None:
            slot.last_used = self.clock()
            return slot.loaded
        version = self._active.get(strategy)
        if version is None:
            return None
        err = self._errors.get(strategy)
        if err and err[0] == version and self.clock() - err[2] < RETRY_FAILED_S:
            return None
        try:
            return self._ensure_loaded(strategy, version).loaded
        except ModelError as e:
            log.error("cannot serve %s/%s: %s", strategy, version, e.description)
            return None

    def active_versions(self) -> dict[str, str]:
        """What this process serves now: strategy -> loaded version (loaded models only).

        Returns
        -------
        dict of str to str
            Strategy -> version of each model loaded in this process.
        """
        return {s: slot.loaded.version for s, slot in list(self._models.items())}

    def wanted_versions(self) -> dict[str, str]:
        """The active versions in the SQL store as last polled (what it will serve).

        Returns
        -------
        dict of str to str
            Strategy -> active version (a copy).
        """
        self._maybe_refresh()
        return dict(self._active)

    # -- loading --------------------------------------------------------------------------------
    def _ensure_loaded(self, strategy: str, version: str) -> Slot:
        with self._load_lock(strategy):
            slot = self._models.get(strategy)
            if slot is not None and slot.loaded.version == version:
                return slot
            new = self._load(strategy, version)
            self._install(strategy, new)
            return new

    def serving_variant(self, loaded: LoadedModel) -> LoadedModel:
        """``loaded`` as this runtime serves it on the CPU (``cpu_precision``).

        Parameters
        ----------
        loaded : LoadedModel
            The version as the repository loaded it.

        Returns
        -------
        LoadedModel
            See ``recsys.models.loading.serving_variant``.
        """
        return loading.serving_variant(loaded, self.cpu_precision)

    def _load(self, strategy: str, version: str) -> Slot:
        """Verify, load and warm one version (not yet serving). Raises ModelError."""
        t0 = time.perf_counter()
        try:
            loaded, warmed = loading.load_and_warm(
                self.repository,
                strategy,
                version,
                cpu_only=self._cpu_only,
                cpu_precision=self.cpu_precision,
                warmup=self.warmup,
            )
        except ModelError as e:
            self._errors[strategy] = (version, e.description, self.clock())
            self._verified.pop(strategy, None)
            metrics.MODEL_LOAD_FAILURES.labels(strategy).inc()
            raise
        except Exception as e:
            # The repository wraps load errors; anything else (warm-up crashed) is still a
            # version we must not serve.
            msg = f"{strategy}/{version}: warm-up failed: {type(e).__name__}: {e}"
            self._errors[strategy] = (version, msg, self.clock())
            self._verified.pop(strategy, None)
            metrics.MODEL_LOAD_FAILURES.labels(strategy).inc()
            log.exception("warm-up of %s/%s failed", strategy, version)
            raise ModelError(msg) from e
        loaded = loading.batched(
            loaded,
            BatchSettings(
                self.batch_max_size,
                self.batch_max_delay_ms,
                self.batch_concurrency,
                self.batch_inline_when_idle,
            ),
            cuda_in_worker=self._cpu_only and loading.wants_gpu(loaded.path),
            reload=lambda: self.repository.load_version(strategy, version).model,
        )
        seconds = time.perf_counter() - t0
        metrics.MODEL_LOAD_SECONDS.labels(strategy).observe(seconds)
        self._errors.pop(strategy, None)
        log.info(
            "loaded %s/%s (%.1f MiB) in %.2f s",
            strategy,
            version,
            loaded.nbytes / 2**20,
            seconds,
            extra={"strategy": strategy, "version": version, "load_seconds": round(seconds, 4)},
        )
        return Slot(loaded=loaded, load_seconds=seconds, warmed=warmed, last_used=self.clock())

    def _install(self, strategy: str, slot: Slot) -> None:
        """Swap ``slot`` in (one dict assignment under the lock), then enforce the budget."""
        with self._lock:
            old = self._models.get(strategy)
            self._models[strategy] = slot
            self._evicted.discard(strategy)
            self._evict(keep=strategy)
        if old is not None and old is not slot:
            retire(old)
        self._publish()

    def _evict(self, keep: str) -> None:
        """Drop least recently used models other than ``keep`` over the budget (under the lock)."""
        for victim, slot in loading.evict_lru(self._models, self.budget_bytes, keep):
            self._evicted.add(victim)
            retire(slot)

    def _publish(self) -> None:
        models = dict(self._models)
        metrics.MODELS_LOADED.set(len(models))
        names = set(models) | set(self._active) | self._evicted
        for name in names:
            slot = models.get(name)
            metrics.MODEL_MEMORY_BYTES.labels(name).set(slot.loaded.nbytes if slot else 0)

    # -- start-up and readiness ------------------------------------------------------------------
    def preload(self, cpu_only: bool = False) -> list[str]:
        """Load every active preload-mode version now, and verify every lazy one's files.

        Parameters
        ----------
        cpu_only : bool, optional
            True in the gunicorn master, which calls this before forking: no CUDA may be touched
            there.

        Returns
        -------
        list of str
            The strategies that failed to load (empty: all loaded).
        """
        self.refresh(apply=False)
        failed = []
        self._cpu_only = cpu_only
        try:
            for strategy, version in sorted(self._active.items()):
                lazy = self._modes.get(strategy, DEFAULT_LOAD_MODE) != "preload"
                if lazy and self._verified.get(strategy) == version:
                    continue
                err = self._errors.get(strategy)
                if err and err[0] == version and self.clock() - err[2] < RETRY_FAILED_S:
                    failed.append(strategy)
                    continue
                try:
                    if lazy:
                        self._verify_lazy(strategy, version)
                    else:
                        self._ensure_loaded(strategy, version)
                except ModelError as e:
                    log.error("preload of %s/%s failed: %s", strategy, version, e.description)
                    failed.append(strategy)
        finally:
            self._cpu_only = False
        return failed

    def _verify_lazy(self, strategy: str, version: str) -> None:
        """Check a lazy active version's files against its checksums without loading it (so a
        corrupt version holds ``/readyz`` after an admin ``unload`` too). Raises ModelError."""
        try:
            self.repository.verify_version(strategy, version)
        except ModelError as e:
            self._errors[strategy] = (version, e.description, self.clock())
            raise
        with self._lock:
            self._verified[strategy] = version
        err = self._errors.get(strategy)
        if err and err[0] == version:
            self._errors.pop(strategy, None)

    def warm_up(self) -> None:
        """Warm every loaded model again (e.g. after the store was filled).

        Marks each one warmed; with ``warmup`` off, only marks them.

        Returns
        -------
        None
        """
        for slot in list(self._models.values()):
            inner = slot.loaded.model
            inner = inner.inner if isinstance(inner, BatchedModel) else inner
            if self.warmup:
                loading.warm_up(dataclasses.replace(slot.loaded, model=inner), self.repository)
            slot.warmed = True

    def ready(self) -> bool:
        """True once every active preload model is loaded and warmed and every lazy one's
        files verified (and its last load here, if any, did not fail).

        Starts the background preload if needed.

        Returns
        -------
        bool
            True when the store was polled and no preload model is pending.
        """
        self.ensure_preloading()
        return self._polled and not self.pending()

    def ensure_preloading(self) -> None:
        """Start a background preload in this process if something is pending and none runs.

        Returns
        -------
        None
        """
        if not self.preload_enabled:
            return
        t = self._preload_thread
        if t is not None and t.is_alive():
            return
        with self._lock:
            t = self._preload_thread
            if t is not None and t.is_alive():
                return
            if not self._pending():
                return
            self._preload_thread = threading.Thread(
                target=self.preload, name="recsys-preload", daemon=True
            )
            self._preload_thread.start()

    def _drop(self, strategy: str) -> None:
        with self._lock:
            slot = self._models.pop(strategy, None)
        if slot is not None:
            retire(slot)
            log.info("unloaded %s/%s", strategy, slot.loaded.version)
        self._publish()

    # -- noticing changes made elsewhere ---------------------------------------------------------
    def _maybe_refresh(self) -> None:
        if self._pid != os.getpid():
            self.after_fork()
        if self._polled and self.clock() - self._last_poll < self.poll_seconds:
            return
        if self._polled and self.poll_seconds > 0:
            # Serve what is loaded; poll in the background (recsys.ops.polling).
            self._poller.trigger()
            return
        self._refresh_now()

    def _refresh_now(self) -> None:
        if not self._poll_lock.acquire(blocking=not self._polled):
            return  # another thread is polling right now; serve what we have
        try:
            if self._polled and self.clock() - self._last_poll < self.poll_seconds:
                return
            changed = self._poll()
        except DB_UNAVAILABLE as e:  # an outage: one line now and then, no traceback
            _poll_log.warning("polling active model versions failed: %s", e)
            self._last_poll = self.clock()
            return
        except Exception:  # noqa: BLE001 - a store hiccup must not fail requests
            log.exception("polling active model versions failed")
            self._last_poll = self.clock()
            return
        finally:
            self._poll_lock.release()
        if changed and not self._applying:
            self._applying = True
            threading.Thread(target=self._apply_bg, name="recsys-model-swap", daemon=True).start()

    def _apply_bg(self) -> None:
        try:
            self._apply()
        except Exception:  # noqa: BLE001
            log.exception("applying model changes failed")
        finally:
            self._applying = False

    def _poll(self) -> bool:
        """Read active versions and load modes; True if this process must load/drop something."""
        active = self.repository.active_versions(models_only=True)
        modes = self.repository.load_modes()
        with self._lock:
            old_modes = self._modes
            self._active, self._modes = active, modes
            self._polled = True
            self._last_poll = self.clock()
            # Unload: no longer active, or an admin switched it from preload to lazy (unload).
            self._to_drop = [
                name
                for name in self._models
                if name not in active
                or (
                    old_modes.get(name, DEFAULT_LOAD_MODE) == "preload"
                    and modes.get(name, DEFAULT_LOAD_MODE) == "lazy"
                )
            ]
            stale = any(
                name in active and slot.loaded.version != active[name]
                for name, slot in self._models.items()
            )
        # Preload models this process still lacks (a worker whose master did not preload, or a
        # version that failed earlier and is due for a retry).
        now = self.clock()
        missing = any(
            p.get("load_mode") != "lazy"
            and ("error" not in p or now - self._errors[p["strategy"]][2] >= RETRY_FAILED_S)
            for p in self._pending()
        )
        return bool(self._to_drop) or stale or missing

    def _apply(self) -> None:
        """Bring loaded models in line with the last poll: swap stale, drop, load new preloads."""
        for name in list(self._to_drop):
            if name in self._models and (
                name not in self._active or self._modes.get(name) == "lazy"
            ):
                self._drop(name)
        self._to_drop = []
        for name, version in list(self._active.items()):
            slot = self._models.get(name)
            wanted = (slot is not None and slot.loaded.version != version) or (
                slot is None
                and self.preload_enabled
                and self._modes.get(name, DEFAULT_LOAD_MODE) == "preload"
                and name not in self._evicted
            )
            if not wanted:
                continue
            err = self._errors.get(name)
            if err and err[0] == version and self.clock() - err[2] < RETRY_FAILED_S:
                continue
            try:
                self._ensure_loaded(name, version)
            except ModelError as e:
                # Keep serving the old version here; SQL says otherwise, so say it loudly.
                log.error("could not swap in %s/%s: %s", name, version, e.description)

    def refresh(self, apply: bool = True) -> None:
        """Poll the store now and (by default) apply changes synchronously.

        Parameters
        ----------
        apply : bool, optional
            Also load and swap in the changed versions now; False: only read the store.

        Returns
        -------
        None
        """
        with self._poll_lock:
            self._poll()
        if apply:
            self._apply()

    # -- process lifecycle -------------------------------------------------------------------------
    def after_fork(self) -> None:
        """In a new worker: fresh locks and threads; publish gauges; poll on the next request.

        Returns
        -------
        None
        """
        self._init_locks()
        self._last_poll = 0.0
        self._publish()
        self.ensure_preloading()


def init_app(app: Flask) -> None:
    """Create the runtime lazily (``get_runtime``); nothing is loaded here. Sizes the deadline
    pool (``DEADLINE_POOL_SIZE``).

    Parameters
    ----------
    app : Flask
        The app (its settings: ``recsys.config.get_config``).

    Returns
    -------
    None
    """
    from recsys.core import runners

    runners.configure(get_config(app).deadline_pool_size)
    app.extensions.setdefault("recsys.runtime", None)


def get_runtime(app: Flask | None = None) -> ModelRuntime:
    """The process's runtime for ``app`` (created on first use, cached in app.extensions).

    Parameters
    ----------
    app : Flask, optional
        The app (default: the current one); its settings size the runtime.

    Returns
    -------
    ModelRuntime
        The runtime.
    """
    app = app or current_app._get_current_object()
    rt = app.extensions.get("recsys.runtime")
    if rt is None:
        cfg = get_config(app)
        rt = ModelRuntime(
            get_repository(app),
            budget_bytes=int(cfg.model_memory_budget_mb * 2**20),
            preload_enabled=cfg.preload_models,
            poll_seconds=cfg.config_poll_seconds,
            batch_max_size=cfg.batch_max_size,
            batch_max_delay_ms=cfg.batch_max_delay_ms,
            batch_concurrency=cfg.batch_concurrency,
            batch_inline_when_idle=cfg.batch_inline_when_idle,
            cpu_precision=cfg.deep_cpu_precision or None,
        )
        app.extensions["recsys.runtime"] = rt
    return rt


def scoring_slots(configured: int | None) -> int:
    """``SCORING_SLOTS``: as configured, else 1 where the deep model would run on the CPU and
    0 (no limit) with CUDA (the device the strategy itself would choose).

    Parameters
    ----------
    configured : int or None
        The configured value; None: choose by device.

    Returns
    -------
    int
        Concurrent scoring turns per process; 0: no limit.
    """
    if configured is not None:
        return int(configured)
    from strategies.deep import resolve_device

    return 1 if resolve_device().type == "cpu" else 0


@on_after_fork
def _after_fork(app: Flask | None) -> None:
    rt = app.extensions.get("recsys.runtime") if app is not None else None
    if rt is not None:
        rt.after_fork()
