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
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flask import Flask, current_app

from features.interactions import EVENT_CODE, History, user_batch
from recsys.config import get_config
from recsys.errors import DB_UNAVAILABLE, ModelError, RateLimitedLog
from recsys.models.activation import activation_stack
from recsys.models.artifacts import model_nbytes
from recsys.models.batched_model import BatchedModel
from recsys.models.repository import LoadedModel, ModelRepository, get_repository
from recsys.ops import metrics
from recsys.ops.lifecycle import on_after_fork
from recsys.ops.polling import BackgroundPoll
from strategies.base import Strategy

log = logging.getLogger(__name__)
_poll_log = RateLimitedLog(log, every_s=60.0)

LOAD_MODES = ("preload", "lazy")
DEFAULT_LOAD_MODE = "preload"
WARMUP_USERS = 8
WARMUP_EVENTS = 400
# After a failed lazy load, wait this long before trying the same version again, so a broken
# version does not make every request pay for a failing checksum pass.
RETRY_FAILED_S = 30.0


@dataclass
class _Slot:
    loaded: LoadedModel  # as served (the deep model wrapped in BatchedModel)
    load_seconds: float
    warmed: bool
    last_used: float  # the runtime's clock


def _wants_gpu(path: str) -> bool:
    """Whether a saved model asked for CUDA-when-available (its ``device`` parameter)."""
    try:
        with open(os.path.join(path, "params.json")) as f:
            return json.load(f).get("params", {}).get("device", "auto") in ("auto", "cuda")
    except (OSError, ValueError, AttributeError):
        return False


class _CpuOnly:
    """Resolver result that loads a strategy on the CPU (for the gunicorn master: no CUDA)."""

    def __init__(self, cls: type[Strategy]) -> None:
        self.cls = cls

    def load(self, path: str) -> Strategy:
        try:
            return self.cls.load(path, device="cpu")
        except TypeError:  # this strategy's load has no device argument: it is CPU-only anyway
            return self.cls.load(path)


class ModelRuntime:
    """Loaded model versions of this process. Thread-safe; see the module docstring."""

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
        self._models: dict[str, _Slot] = {}
        self._active: dict[str, str] = {}
        self._modes: dict[str, str] = {}
        self._errors: dict[str, tuple[str, str, float]] = {}  # strategy -> (version, msg, when)
        self._evicted: set[str] = set()
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
        """The active version of ``strategy``, loading it now if needed; None if unavailable.

        None means: no active version, or it failed to load (logged, retried after a while).
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
        """What this process serves now: strategy -> loaded version (loaded models only)."""
        return {s: slot.loaded.version for s, slot in list(self._models.items())}

    def wanted_versions(self) -> dict[str, str]:
        """The active versions in the SQL store as last polled (what it will serve)."""
        self._maybe_refresh()
        return dict(self._active)

    # -- loading --------------------------------------------------------------------------------
    def _ensure_loaded(self, strategy: str, version: str) -> _Slot:
        with self._load_lock(strategy):
            slot = self._models.get(strategy)
            if slot is not None and slot.loaded.version == version:
                return slot
            new = self._load(strategy, version)
            self._install(strategy, new)
            return new

    def serving_variant(self, loaded: LoadedModel) -> LoadedModel:
        """A model that serves on the CPU in ``cpu_precision`` (the deep model: int8 by
        default, ``DEEP_CPU_PRECISION``), derived from the verified fp32 weights at load. On
        CUDA, or for models without precisions, the loaded model as it is. The sequence model
        serves as trained (fp32 unless trained with ``precision``): int8 kept its accuracy but
        doubled the time of a one-user call on the CPU (docs/sequence.md)."""
        want, model = self.cpu_precision, loaded.model
        device = getattr(model, "serving_device_", None)
        if (
            not want
            or want not in type(model).precisions
            or device is None
            or device.type != "cpu"
            or getattr(model, "serving_precision_", None) == want
        ):
            return loaded
        variant = model.quantized(want)
        return dataclasses.replace(loaded, model=variant, nbytes=model_nbytes(variant))

    def _load(self, strategy: str, version: str) -> _Slot:
        """Verify, load and warm one version (not yet serving). Raises ModelError."""
        t0 = time.perf_counter()
        repo = self.repository
        if self._cpu_only:
            inner = repo.resolver
            repo = dataclasses.replace(repo, resolver=lambda name: _CpuOnly(inner(name)))
        try:
            loaded = self.serving_variant(repo.load_version(strategy, version))
            warmed = self._warm_up(loaded)
        except ModelError as e:
            self._errors[strategy] = (version, e.description, self.clock())
            metrics.MODEL_LOAD_FAILURES.labels(strategy).inc()
            raise
        except Exception as e:
            # The repository wraps load errors; anything else (warm-up crashed) is still a
            # version we must not serve.
            msg = f"{strategy}/{version}: warm-up failed: {type(e).__name__}: {e}"
            self._errors[strategy] = (version, msg, self.clock())
            metrics.MODEL_LOAD_FAILURES.labels(strategy).inc()
            log.exception("warm-up of %s/%s failed", strategy, version)
            raise ModelError(msg) from e
        if type(loaded.model).batched:  # the strategy's capability (strategies.base)
            loaded = dataclasses.replace(
                loaded,
                model=BatchedModel(
                    loaded.model,
                    self.batch_max_size,
                    self.batch_max_delay_ms,
                    path=loaded.path,
                    cuda_in_worker=self._cpu_only and _wants_gpu(loaded.path),
                    reload=lambda: self.repository.load_version(strategy, version).model,
                    concurrency=self.batch_concurrency,
                    inline_when_idle=self.batch_inline_when_idle,
                ),
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
        return _Slot(loaded=loaded, load_seconds=seconds, warmed=warmed, last_used=self.clock())

    def _install(self, strategy: str, slot: _Slot) -> None:
        """Swap ``slot`` in (one dict assignment under the lock), then enforce the budget."""
        with self._lock:
            old = self._models.get(strategy)
            self._models[strategy] = slot
            self._evicted.discard(strategy)
            self._evict(keep=strategy)
        if old is not None and old is not slot:
            self._retire(old)
        self._publish()

    def _retire(self, slot: _Slot) -> None:
        # In-flight requests keep their reference; a closed batcher makes them score unbatched.
        if isinstance(slot.loaded.model, BatchedModel):
            slot.loaded.model.close()

    def _evict(self, keep: str) -> None:
        total = sum(s.loaded.nbytes for s in self._models.values())
        while total > self.budget_bytes:
            others = [(s.last_used, name) for name, s in self._models.items() if name != keep]
            if not others:
                log.warning(
                    "%s alone (%.1f MiB) exceeds the model memory budget (%.1f MiB); kept",
                    keep,
                    total / 2**20,
                    self.budget_bytes / 2**20,
                )
                return
            _, victim = min(others)
            slot = self._models.pop(victim)
            self._evicted.add(victim)
            total -= slot.loaded.nbytes
            log.info("evicted %s (least recently used) to stay within the budget", victim)
            self._retire(slot)

    def _publish(self) -> None:
        models = dict(self._models)
        metrics.MODELS_LOADED.set(len(models))
        names = set(models) | set(self._active) | self._evicted
        for name in names:
            slot = models.get(name)
            metrics.MODEL_MEMORY_BYTES.labels(name).set(slot.loaded.nbytes if slot else 0)

    def _warm_up(self, loaded: LoadedModel) -> bool:
        """Score a few real users (newest histories in the store) and a few similar-item lists."""
        if not self.warmup:
            return True
        model = loaded.model
        histories = self._warmup_histories(loaded)
        if histories:
            batch = user_batch(histories, len(loaded.items))
            model.recommend(batch, n=10)
            # And one user alone, the shape a single request has.
            model.recommend(user_batch(histories[:1], len(loaded.items)), n=10)
        if len(loaded.items):
            try:
                model.similar_items(np.arange(min(2, len(loaded.items))), n=10)
            except NotImplementedError:
                pass
        return True

    def _warmup_histories(self, loaded: LoadedModel) -> list[History]:
        by_user: dict[int, list[tuple[str, str, float, Any]]] = {}
        try:
            rows = self.repository.recent_events(WARMUP_EVENTS)
        except Exception:  # noqa: BLE001 - no store (e.g. schema missing) -> synthetic warm-up
            log.debug("warm-up: could not read histories", exc_info=True)
            rows = []
        for user_id, item, typ, value, ts in rows:
            if len(by_user) >= WARMUP_USERS and user_id not in by_user:
                continue
            by_user.setdefault(user_id, []).append((item, typ, value, ts))
        out = []
        for events in by_user.values():
            out.append(
                History(
                    item_idx=loaded.items.indices([e[0] for e in events]),
                    event_type=np.array([EVENT_CODE.get(e[1], 0) for e in events], np.int8),
                    value=np.array([e[2] or 1.0 for e in events], np.float32),
                    ts=np.array([int(e[3].timestamp()) if e[3] else 0 for e in events], np.int64),
                )
            )
        if not out and len(loaded.items):
            # An empty store: a synthetic history over the first items still exercises the path.
            k = min(5, len(loaded.items))
            out.append(
                History(
                    item_idx=np.arange(k),
                    event_type=np.full(k, EVENT_CODE["purchase"], np.int8),
                    value=np.ones(k, np.float32),
                    ts=np.zeros(k, np.int64),
                )
            )
        return out

    # -- start-up and readiness ------------------------------------------------------------------
    def preload(self, cpu_only: bool = False) -> list[str]:
        """Load every active preload-mode version now; returns the strategies that failed.

        ``cpu_only``: the gunicorn master calls this before forking; no CUDA may be touched there.
        """
        self.refresh(apply=False)
        failed = []
        self._cpu_only = cpu_only
        try:
            for strategy, version in sorted(self._active.items()):
                if self._modes.get(strategy, DEFAULT_LOAD_MODE) != "preload":
                    continue
                err = self._errors.get(strategy)
                if err and err[0] == version and self.clock() - err[2] < RETRY_FAILED_S:
                    failed.append(strategy)
                    continue
                try:
                    self._ensure_loaded(strategy, version)
                except ModelError as e:
                    log.error("preload of %s/%s failed: %s", strategy, version, e.description)
                    failed.append(strategy)
        finally:
            self._cpu_only = False
        return failed

    def warm_up(self) -> None:
        """Warm every loaded model again (e.g. after the store was filled)."""
        for slot in list(self._models.values()):
            inner = slot.loaded.model
            inner = inner.inner if isinstance(inner, BatchedModel) else inner
            self._warm_up(dataclasses.replace(slot.loaded, model=inner))
            slot.warmed = True

    def pending(self) -> list[dict[str, Any]]:
        """Preload models not yet loaded and warmed (with the last error, if loading failed)."""
        self._maybe_refresh()
        return self._pending()

    def _pending(self) -> list[dict[str, Any]]:
        if not self.preload_enabled:
            return []
        out = []
        for strategy, version in sorted(self._active.items()):
            if self._modes.get(strategy, DEFAULT_LOAD_MODE) != "preload":
                continue
            if strategy in self._evicted:
                continue  # dropped for the budget on purpose; it reloads on use
            slot = self._models.get(strategy)
            if slot is None or slot.loaded.version != version or not slot.warmed:
                item: dict[str, Any] = {"strategy": strategy, "version": version}
                err = self._errors.get(strategy)
                if err and err[0] == version:
                    item["error"] = err[1]
                out.append(item)
        return out

    def ready(self) -> bool:
        """True once every active preload model is loaded and warmed."""
        self.ensure_preloading()
        return self._polled and not self.pending()

    def ensure_preloading(self) -> None:
        """Start a background preload in this process if something is pending and none runs."""
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

    def status(self) -> list[dict[str, Any]]:
        """One row per strategy known here: active version, loaded version, memory, state."""
        self._maybe_refresh()
        now = self.clock()
        rows = []
        pending = {p["strategy"] for p in self.pending()}
        for name in sorted(set(self._active) | set(self._models) | set(self._errors)):
            slot = self._models.get(name)
            active = self._active.get(name)
            err = self._errors.get(name)
            if slot is not None and slot.loaded.version == active:
                state = "loaded"
            elif slot is not None:
                state = "stale"  # a newer active version is being loaded
            elif err and err[0] == active:
                state = "failed"
            elif name in self._evicted:
                state = "evicted"
            else:
                state = "not_loaded"
            rows.append(
                {
                    "strategy": name,
                    "active_version": active,
                    "loaded_version": slot.loaded.version if slot else None,
                    "state": state,
                    "load_mode": self._modes.get(name, DEFAULT_LOAD_MODE),
                    "pending": name in pending,
                    "nbytes": slot.loaded.nbytes if slot else 0,
                    "load_seconds": round(slot.load_seconds, 4) if slot else None,
                    "idle_seconds": round(now - slot.last_used, 3) if slot else None,
                    "warmed": bool(slot and slot.warmed),
                    "batched": bool(slot and isinstance(slot.loaded.model, BatchedModel)),
                    "error": err[1] if err else None,
                    "pid": os.getpid(),
                }
            )
        return rows

    # -- admin operations -------------------------------------------------------------------------
    def activate(self, strategy: str, version: str, actor: str = "admin") -> dict[str, Any]:
        """Load and warm ``version`` beside the serving one, record it as active, swap.

        Raises ModelError (nothing changed: the old version keeps serving, SQL untouched) if the
        version is unknown, corrupt or fails to load/warm.
        """
        with self._load_lock(strategy):
            previous = self._active.get(strategy)
            slot = self._models.get(strategy)
            if previous == version and slot is not None and slot.loaded.version == version:
                return {"strategy": strategy, "version": version, "previous_version": previous}
            new = self._load(strategy, version)
            try:
                self.repository.activate(strategy, version, actor=actor)
            except BaseException:
                self._retire(new)
                raise
            with self._lock:
                self._active[strategy] = version
            self._install(strategy, new)
        return {"strategy": strategy, "version": version, "previous_version": previous}

    def rollback(self, strategy: str, actor: str = "admin") -> dict[str, Any]:
        """Re-activate the previous version: loaded and warmed first, then swapped."""
        with self._load_lock(strategy):
            previous = self._active.get(strategy)
            target = self._rollback_target(strategy)
            new = self._load(strategy, target) if target else None
            try:
                version = self.repository.rollback(strategy, actor=actor)
            except BaseException:
                if new is not None:
                    self._retire(new)
                raise
            if new is None or new.loaded.version != version:
                # History changed under us (another admin): load what SQL now says is active.
                if new is not None:
                    self._retire(new)
                new = self._load(strategy, version)
            with self._lock:
                self._active[strategy] = version
            self._install(strategy, new)
        return {"strategy": strategy, "version": version, "previous_version": previous}

    def _rollback_target(self, strategy: str) -> str | None:
        from types import SimpleNamespace

        history = self.repository.activation_history(strategy)
        stack = activation_stack([SimpleNamespace(**h) for h in history])
        return stack[-2] if len(stack) >= 2 else None

    def load(self, strategy: str, version: str | None = None) -> dict[str, Any]:
        """Load the active version now and mark the strategy ``preload`` for every worker."""
        self.refresh(apply=False)
        active = self._active.get(strategy)
        if active is None:
            raise ModelError(f"strategy {strategy!r} has no active version", 404)
        if version is not None and version != active:
            raise ModelError(
                f"{strategy}: {version} is not the active version ({active}); activate it instead",
                409,
            )
        self._ensure_loaded(strategy, active)
        self._set_mode(strategy, "preload")
        return self.describe(strategy)

    def unload(self, strategy: str) -> dict[str, Any]:
        """Drop the model from memory everywhere and mark it ``lazy`` (reloads on next use)."""
        self.refresh(apply=False)
        if strategy not in self._active and strategy not in self._models:
            raise ModelError(f"strategy {strategy!r} has no active version", 404)
        self._set_mode(strategy, "lazy")
        self._drop(strategy)
        return self.describe(strategy)

    def describe(self, strategy: str) -> dict[str, Any]:
        return next((r for r in self.status() if r["strategy"] == strategy), {"strategy": strategy})

    def _drop(self, strategy: str) -> None:
        with self._lock:
            slot = self._models.pop(strategy, None)
        if slot is not None:
            self._retire(slot)
            log.info("unloaded %s/%s", strategy, slot.loaded.version)
        self._publish()

    def _set_mode(self, strategy: str, mode: str) -> None:
        self.repository.set_load_mode(strategy, mode)
        with self._lock:
            self._modes[strategy] = mode

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
            "error" not in p or now - self._errors[p["strategy"]][2] >= RETRY_FAILED_S
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
        """Poll the store now and (by default) apply changes synchronously."""
        with self._poll_lock:
            self._poll()
        if apply:
            self._apply()

    # -- process lifecycle -------------------------------------------------------------------------
    def after_fork(self) -> None:
        """In a new worker: fresh locks and threads; publish gauges; poll on the next request."""
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
    0 (no limit) with CUDA (the device the strategy itself would choose)."""
    if configured is not None:
        return int(configured)
    from strategies.deep import resolve_device

    return 1 if resolve_device().type == "cpu" else 0


@on_after_fork
def _after_fork(app: Flask | None) -> None:
    rt = app.extensions.get("recsys.runtime") if app is not None else None
    if rt is not None:
        rt.after_fork()
