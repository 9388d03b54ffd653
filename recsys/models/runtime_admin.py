"""The admin side of the model runtime: activate, roll back, load, unload; status, pending.

``RuntimeAdmin`` is a base class of ``recsys.models.runtime.ModelRuntime`` and only that: these
are methods of the runtime, kept in their own module so that the runtime's module holds the
hot path, polling, preloading and the process lifecycle. They run on the runtime's state (the
attributes annotated below) and its steps ``_load_lock``, ``_load``, ``_install``,
``_ensure_loaded``, ``_drop``, ``_maybe_refresh`` and ``refresh`` (see ``ModelRuntime``).

Every change goes through the model repository first (the SQL active version, the load mode),
so other workers and servers follow by polling; a new version is loaded and warmed beside the
serving one before the swap, and a failed load changes nothing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from recsys.errors import ModelError
from recsys.models.activation import activation_stack
from recsys.models.batched_model import BatchedModel
from recsys.models.loading import DEFAULT_LOAD_MODE, Slot, retire
from recsys.models.repository import ModelRepository


class RuntimeAdmin:
    """Admin operations, status rows and pending preloads of ``ModelRuntime`` (its base class;
    see the module docstring)."""

    repository: ModelRepository
    clock: Callable[[], float]
    _lock: threading.RLock
    _models: dict[str, Slot]
    _active: dict[str, str]
    _modes: dict[str, str]
    _errors: dict[str, tuple[str, str, float]]
    _evicted: set[str]
    _verified: dict[str, str]
    preload_enabled: bool

    def pending(self) -> list[dict[str, Any]]:
        """Active versions not ready here: preload models not yet loaded and warmed, and lazy
        ones (an admin ``unload``) whose files have not verified in this process or whose
        last load failed (with the last error, if loading or verifying failed).

        Returns
        -------
        list of dict
            ``strategy``, ``version``, ``load_mode`` ``"lazy"`` for a lazy one and, if its last
            load failed, ``error``; empty with preloading off. A model evicted for the budget
            is not pending (it reloads on use).
        """
        self._maybe_refresh()
        return self._pending()

    def _pending(self) -> list[dict[str, Any]]:
        if not self.preload_enabled:
            return []
        out = []
        for strategy, version in sorted(self._active.items()):
            slot = self._models.get(strategy)
            if self._modes.get(strategy, DEFAULT_LOAD_MODE) != "preload":
                # Lazy (e.g. after an admin unload): not held in memory, but readiness still
                # checks it: its files must verify, and a failed load here keeps it pending.
                err = self._errors.get(strategy)
                failed = err is not None and err[0] == version
                loaded = slot is not None and slot.loaded.version == version
                if failed or not (loaded or self._verified.get(strategy) == version):
                    item = {"strategy": strategy, "version": version, "load_mode": "lazy"}
                    if failed:
                        item["error"] = err[1]
                    out.append(item)
                continue
            if strategy in self._evicted:
                continue  # dropped for the budget on purpose; it reloads on use
            if slot is None or slot.loaded.version != version or not slot.warmed:
                item: dict[str, Any] = {"strategy": strategy, "version": version}
                err = self._errors.get(strategy)
                if err and err[0] == version:
                    item["error"] = err[1]
                out.append(item)
        return out

    def status(self) -> list[dict[str, Any]]:
        """One row per strategy known here: active version, loaded version, memory, state.

        Returns
        -------
        list of dict
            Sorted by strategy: ``strategy``, ``active_version``, ``loaded_version``, ``state``
            (loaded, stale, failed, evicted or not_loaded), ``load_mode``, ``pending``,
            ``nbytes``, ``load_seconds``, ``idle_seconds``, ``warmed``, ``batched``, ``error``
            and ``pid``.
        """
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

    def describe(self, strategy: str) -> dict[str, Any]:
        """The status row of one strategy.

        Parameters
        ----------
        strategy : str
            The strategy name.

        Returns
        -------
        dict
            Its row of ``status()``, or just ``{"strategy": strategy}`` if unknown here.
        """
        return next((r for r in self.status() if r["strategy"] == strategy), {"strategy": strategy})

    def activate(self, strategy: str, version: str, actor: str = "admin") -> dict[str, Any]:
        """Load and warm ``version`` beside the serving one, record it as active, swap.

        Parameters
        ----------
        strategy, version : str
            What to activate.
        actor : str
            Who asked (the activation history).

        Returns
        -------
        dict
            ``strategy``, ``version`` and ``previous_version``.

        Raises
        ------
        ModelError
            Nothing changed (the old version keeps serving, SQL untouched): the version is
            unknown, corrupt or fails to load/warm.
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
                retire(new)
                raise
            with self._lock:
                self._active[strategy] = version
            self._install(strategy, new)
        return {"strategy": strategy, "version": version, "previous_version": previous}

    def rollback(self, strategy: str, actor: str = "admin") -> dict[str, Any]:
        """Re-activate the previous version: loaded and warmed first, then swapped.

        Parameters
        ----------
        strategy : str
            The strategy to roll back.
        actor : str
            Who asked (the activation history).

        Returns
        -------
        dict
            ``strategy``, ``version`` (now active) and ``previous_version``.

        Raises
        ------
        ModelError
            No version to roll back to, or it fails to load.
        """
        with self._load_lock(strategy):
            previous = self._active.get(strategy)
            target = self.rollback_target(strategy)
            new = self._load(strategy, target) if target else None
            try:
                version = self.repository.rollback(strategy, actor=actor)
            except BaseException:
                if new is not None:
                    retire(new)
                raise
            if new is None or new.loaded.version != version:
                # History changed under us (another admin): load what SQL now says is active.
                if new is not None:
                    retire(new)
                new = self._load(strategy, version)
            with self._lock:
                self._active[strategy] = version
            self._install(strategy, new)
        return {"strategy": strategy, "version": version, "previous_version": previous}

    def rollback_target(self, strategy: str) -> str | None:
        """The version a rollback of ``strategy`` would activate, from the activation history.

        Parameters
        ----------
        strategy : str
            The strategy name.

        Returns
        -------
        str or None
            The version active before the current one; None if there is none.
        """
        history = self.repository.activation_history(strategy)
        stack = activation_stack([SimpleNamespace(**h) for h in history])
        return stack[-2] if len(stack) >= 2 else None

    def load(self, strategy: str, version: str | None = None) -> dict[str, Any]:
        """Load the active version now and mark the strategy ``preload`` for every worker.

        Parameters
        ----------
        strategy : str
            The strategy name.
        version : str, optional
            If given, it must be the active version.

        Returns
        -------
        dict
            The strategy's status row (``describe``).

        Raises
        ------
        ModelError
            404 without an active version, 409 if ``version`` is not the active one, or the
            load failed.
        """
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
        """Drop the model from memory everywhere and mark it ``lazy`` (reloads on next use).

        Parameters
        ----------
        strategy : str
            The strategy name.

        Returns
        -------
        dict
            The strategy's status row (``describe``).

        Raises
        ------
        ModelError
            404 if the strategy has no active version and is not loaded.
        """
        self.refresh(apply=False)
        if strategy not in self._active and strategy not in self._models:
            raise ModelError(f"strategy {strategy!r} has no active version", 404)
        self._set_mode(strategy, "lazy")
        self._drop(strategy)
        return self.describe(strategy)

    def _set_mode(self, strategy: str, mode: str) -> None:
        self.repository.set_load_mode(strategy, mode)
        with self._lock:
            self._modes[strategy] = mode
