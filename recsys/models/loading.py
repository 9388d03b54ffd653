"""Loading one model version for the runtime: the slot it lives in, warm-up, the memory budget.

``recsys.models.runtime.ModelRuntime`` decides *which* versions this process holds and when they
change; this module does the work for one version, with no state of its own:

* ``load_and_warm`` verifies and loads a version through the repository (CPU-only in the
  gunicorn master: ``CpuOnly``), derives its serving variant (``serving_variant``: the CPU
  precision) and warms it up on a few real users (``warm_up``, ``warmup_histories``).
* ``batched`` wraps a strategy that declares ``batched`` in a ``BatchedModel`` (micro-batching),
  which reloads it on CUDA in a worker when the saved model asked for it (``wants_gpu``).
* ``Slot`` is what the runtime holds per strategy; ``retire`` closes one that no longer serves,
  ``evict_lru`` picks the least recently used slots to drop when the memory budget is exceeded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from features.interactions import EVENT_CODE, History, user_batch
from recsys.models.artifacts import model_nbytes
from recsys.models.batched_model import BatchedModel
from recsys.models.repository import LoadedModel, ModelRepository
from strategies.base import Strategy

log = logging.getLogger(__name__)

# A strategy's ``strategy_settings.load_mode``: loaded at start, or on first use.
LOAD_MODES = ("preload", "lazy")
DEFAULT_LOAD_MODE = "preload"
WARMUP_USERS = 8
WARMUP_EVENTS = 400


@dataclass
class Slot:
    """One loaded version held by the runtime.

    Parameters
    ----------
    loaded : LoadedModel
        The model as served (the deep model wrapped in ``BatchedModel``).
    load_seconds : float
        How long verifying, loading and warming it took.
    warmed : bool
        Whether it was warmed up.
    last_used : float
        The runtime's clock when it last served (least recently used eviction).
    """

    loaded: LoadedModel
    load_seconds: float
    warmed: bool
    last_used: float


@dataclass(frozen=True)
class BatchSettings:
    """How a ``batched`` strategy is micro-batched (``BATCH_*`` settings).

    Parameters
    ----------
    max_size : int
        Most requests merged into one forward pass.
    max_delay_ms : float
        Longest a request waits for others to join its batch.
    concurrency : int
        Batches in their forward pass at once.
    inline_when_idle : bool
        Score a lone request on the caller's thread when no batch is running.
    """

    max_size: int
    max_delay_ms: float
    concurrency: int
    inline_when_idle: bool


def wants_gpu(path: str) -> bool:
    """Whether a saved model asked for CUDA-when-available (its ``device`` parameter).

    Parameters
    ----------
    path : str
        The version's directory.

    Returns
    -------
    bool
        True for ``device`` ``auto`` or ``cuda``; False otherwise or if unreadable.
    """
    try:
        with open(os.path.join(path, "params.json")) as f:
            return json.load(f).get("params", {}).get("device", "auto") in ("auto", "cuda")
    except (OSError, ValueError, AttributeError):
        return False


class CpuOnly:
    """Resolver result that loads a strategy on the CPU (for the gunicorn master: no CUDA).

    Parameters
    ----------
    cls : type[Strategy]
        The strategy class the repository's resolver returned.
    """

    def __init__(self, cls: type[Strategy]) -> None:
        self.cls = cls

    def load(self, path: str) -> Strategy:
        """Load the strategy saved at ``path`` on the CPU.

        Parameters
        ----------
        path : str
            The version's directory.

        Returns
        -------
        Strategy
            The loaded model.
        """
        try:
            return self.cls.load(path, device="cpu")
        except TypeError:  # this strategy's load has no device argument: it is CPU-only anyway
            return self.cls.load(path)


def serving_variant(loaded: LoadedModel, cpu_precision: str | None) -> LoadedModel:
    """A model that serves on the CPU in ``cpu_precision`` (the deep model: int8 by default,
    ``DEEP_CPU_PRECISION``), derived from the verified fp32 weights at load. On CUDA, or for
    models without precisions, the loaded model as it is. The sequence model serves as trained
    (fp32 unless trained with ``precision``): int8 kept its accuracy but doubled the time of a
    one-user call on the CPU (docs/sequence.md).

    Parameters
    ----------
    loaded : LoadedModel
        The version as the repository loaded it.
    cpu_precision : str or None
        The wanted CPU precision; None or empty keeps the model as it is.

    Returns
    -------
    LoadedModel
        ``loaded`` itself, or a copy holding the quantized model (and its size).
    """
    want, model = cpu_precision, loaded.model
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


def load_and_warm(
    repository: ModelRepository,
    strategy: str,
    version: str,
    *,
    cpu_only: bool,
    cpu_precision: str | None,
    warmup: bool,
) -> tuple[LoadedModel, bool]:
    """Verify and load one version, derive its serving variant, warm it up.

    Parameters
    ----------
    repository : ModelRepository
        Verifies checksums and loads the version.
    strategy, version : str
        What to load.
    cpu_only : bool
        Load on the CPU whatever the model asked for (the gunicorn master).
    cpu_precision : str or None
        See ``serving_variant``.
    warmup : bool
        Whether to warm the model up (``warm_up``).

    Returns
    -------
    tuple of (LoadedModel, bool)
        The model to serve (not yet batched) and whether it was warmed.

    Raises
    ------
    ModelError
        From the repository (unknown, corrupt or unloadable version); any other exception is
        the warm-up's.
    """
    loader = repository
    if cpu_only:
        inner = repository.resolver
        loader = dataclasses.replace(repository, resolver=lambda name: CpuOnly(inner(name)))
    loaded = serving_variant(loader.load_version(strategy, version), cpu_precision)
    warmed = warm_up(loaded, repository) if warmup else True
    return loaded, warmed


def batched(
    loaded: LoadedModel,
    settings: BatchSettings,
    *,
    cuda_in_worker: bool,
    reload: Callable[[], Strategy],
) -> LoadedModel:
    """``loaded`` with its model wrapped in a ``BatchedModel`` if its strategy is ``batched``.

    Parameters
    ----------
    loaded : LoadedModel
        The model to serve.
    settings : BatchSettings
        The micro-batching settings.
    cuda_in_worker : bool
        Reload the model on CUDA in a worker (it was loaded on the CPU in the master).
    reload : callable
        Loads the model again (for ``cuda_in_worker``).

    Returns
    -------
    LoadedModel
        ``loaded`` itself, or a copy holding the batched model.
    """
    if not type(loaded.model).batched:  # the strategy's capability (strategies.base)
        return loaded
    return dataclasses.replace(
        loaded,
        model=BatchedModel(
            loaded.model,
            settings.max_size,
            settings.max_delay_ms,
            path=loaded.path,
            cuda_in_worker=cuda_in_worker,
            reload=reload,
            concurrency=settings.concurrency,
            inline_when_idle=settings.inline_when_idle,
        ),
    )


def retire(slot: Slot) -> None:
    """Stop serving ``slot``: in-flight requests keep their reference; a closed batcher makes
    them score unbatched.

    Parameters
    ----------
    slot : Slot
        The slot no longer held.

    Returns
    -------
    None
    """
    if isinstance(slot.loaded.model, BatchedModel):
        slot.loaded.model.close()


def evict_lru(models: dict[str, Slot], budget_bytes: int, keep: str) -> list[tuple[str, Slot]]:
    """Remove the least recently used slots other than ``keep`` until ``models`` fit the budget.

    The caller holds its lock over ``models`` and retires what comes back.

    Parameters
    ----------
    models : dict of str to Slot
        The slots held, changed in place.
    budget_bytes : int
        The memory budget.
    keep : str
        The strategy just installed: never evicted (kept, with a warning, if it alone exceeds
        the budget).

    Returns
    -------
    list of (str, Slot)
        The evicted strategies and their slots, in eviction order.
    """
    evicted = []
    total = sum(s.loaded.nbytes for s in models.values())
    while total > budget_bytes:
        others = [(s.last_used, name) for name, s in models.items() if name != keep]
        if not others:
            log.warning(
                "%s alone (%.1f MiB) exceeds the model memory budget (%.1f MiB); kept",
                keep,
                total / 2**20,
                budget_bytes / 2**20,
            )
            break
        _, victim = min(others)
        slot = models.pop(victim)
        total -= slot.loaded.nbytes
        log.info("evicted %s (least recently used) to stay within the budget", victim)
        evicted.append((victim, slot))
    return evicted


def warm_up(loaded: LoadedModel, repository: ModelRepository) -> bool:
    """Score a few real users (newest histories in the store) and a few similar-item lists.

    Parameters
    ----------
    loaded : LoadedModel
        The model to warm (unbatched).
    repository : ModelRepository
        Where the recent events come from (``recent_events``).

    Returns
    -------
    bool
        True (it was warmed); exceptions of the model's scoring propagate.
    """
    model = loaded.model
    if hasattr(model, "warm_up"):  # not a strategy (the ranker): it warms itself
        model.warm_up()
        return True
    histories = warmup_histories(loaded, repository)
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


def warmup_histories(loaded: LoadedModel, repository: ModelRepository) -> list[History]:
    """The histories of up to ``WARMUP_USERS`` users among the newest ``WARMUP_EVENTS`` events.

    Parameters
    ----------
    loaded : LoadedModel
        The model whose item ids index the histories.
    repository : ModelRepository
        Where the recent events come from (``recent_events``).

    Returns
    -------
    list of History
        One per user; with no events in the store, one synthetic history over the first items
        (none for a model without items).
    """
    by_user: dict[int, list[tuple[str, str, float, Any]]] = {}
    try:
        rows = repository.recent_events(WARMUP_EVENTS)
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
