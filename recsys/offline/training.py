"""Train strategies from the SQL store and save them as repository versions.

For each strategy: fit on the oldest (1 - holdout) share of events, measure ranking metrics on
the newest share (a time holdout: the model only sees the past, like in production), then fit
again on *all* events and save that model with the holdout metrics. Shared by ``recsys train``
and the admin API.

Holdout protocol (what the recorded metrics mean): test users are those with a positive event in
the holdout window; relevant items are their positive holdout items they had not interacted with
before the cutoff; recommendations exclude items from the user's pre-cutoff history (as serving
excludes seen items); users with no pre-cutoff history are included (cold users count).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from features.interactions import InteractionData
from features.machine import machine_memory_bytes
from recsys.errors import ModelError
from recsys.models.repository import ModelRepository
from recsys.offline.evaluation.metrics import evaluate_recommendations
from recsys.offline.evaluation.splits import time_split
from recsys.ops import jobs
from strategies.base import Strategy, UserBatch

log = logging.getLogger(__name__)

DEFAULT_HOLDOUT = 0.1
GATE_METRIC = "ndcg@10"
EVAL_K = 10
# Bound evaluation cost on large stores; a fixed-seed sample keeps versions comparable.
MAX_EVAL_USERS = 20_000
_EVAL_BATCH = 512


@dataclass
class TrainResult:
    """What training one strategy produced.

    Attributes
    ----------
    strategy : str
        Strategy name.
    version : str
        The version saved.
    path : str
        Its folder in the model store.
    metrics : dict[str, Any]
        Holdout metrics (``holdout_metrics`` plus the ``holdout`` protocol); empty without a
        holdout.
    fit_seconds : float
        Wall time of the final fit on all data, in seconds.
    holdout_seconds : float
        Wall time of the fit on the training share plus the evaluation, in seconds.
    activated : bool
        Whether the version was activated.
    note : str or None
        Why it was not activated (the gate); None otherwise.
    previous : str or None
        The version active before; None when none was, or when not activated.
    timings : dict[str, float]
        Step -> seconds (``holdout_fit``, ``evaluate``, ``fit``, ``save``).
    """

    strategy: str
    version: str
    path: str
    metrics: dict[str, Any]
    fit_seconds: float  # the final fit on all data
    holdout_seconds: float  # fit on the training share + evaluation
    activated: bool = False
    note: str | None = None  # why it was not activated (gate), if so
    previous: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Returns
        -------
        dict[str, Any]
            The result for JSON output (times rounded to milliseconds; ``timings`` left out).
        """
        return {
            "strategy": self.strategy,
            "version": self.version,
            "path": self.path,
            "metrics": self.metrics,
            "fit_seconds": round(self.fit_seconds, 3),
            "holdout_seconds": round(self.holdout_seconds, 3),
            "activated": self.activated,
            "previous": self.previous,
            "note": self.note,
        }


def holdout_split(
    data: InteractionData, fraction: float = DEFAULT_HOLDOUT
) -> tuple[InteractionData, InteractionData]:
    """The time holdout: the newest ``fraction`` of events to test.

    Parameters
    ----------
    data : InteractionData
        All events.
    fraction : float
        Share of the events, the newest, that go to test, in (0, 1).

    Returns
    -------
    tuple[InteractionData, InteractionData]
        ``(train, test)``.
    """
    return time_split(data, fraction=fraction)


def holdout_metrics(
    model: Strategy,
    train: InteractionData,
    test: InteractionData,
    k: int = EVAL_K,
    max_users: int = MAX_EVAL_USERS,
    seed: int = 42,
) -> dict[str, Any]:
    """Ranking metrics of a model fitted on ``train`` against the ``test`` events.

    Parameters
    ----------
    model : Strategy
        The model, fitted on ``train``.
    train : InteractionData
        The training part (the users' histories; seen items are excluded).
    test : InteractionData
        The test part; only items new to a user count as relevant.
    k : int
        Cut-off.
    max_users : int
        At most this many test users are evaluated (a fixed-seed sample beyond).
    seed : int
        Seed of that sample.

    Returns
    -------
    dict[str, Any]
        Metric key (``"<metric>@k"``, ``coverage@k``, ``novelty@k``) -> mean, rounded to 6
        decimals, plus ``eval_users``, ``eval_users_total`` and ``cold_users``; empty when no
        test user has a new relevant item.
    """
    train_m = train.matrix()
    test_m = test.matrix(binary=True)
    # Relevant: new positive items only (seen ones are excluded from recommendations anyway).
    seen = train_m.copy()
    seen.data[:] = 1.0
    relevant = (test_m - test_m.multiply(seen)).tocsr()
    relevant.eliminate_zeros()
    users = np.flatnonzero(np.diff(relevant.indptr) > 0)
    n_candidates = len(users)
    if len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    if len(users) == 0:
        return {}
    seqs = train.sequences()
    has_history = np.diff(train_m.indptr) > 0
    rec = np.empty((len(users), k), dtype=np.int64)
    for start in range(0, len(users), _EVAL_BATCH):
        rows = users[start : start + _EVAL_BATCH]
        sub = train_m[rows]
        batch = UserBatch(
            matrix=sub,
            sequences=[seqs[u] for u in rows],
            user_index=np.where(has_history[rows], rows, -1).astype(np.int64),
        )
        exclude = [sub.indices[sub.indptr[i] : sub.indptr[i + 1]] for i in range(len(rows))]
        ids, _ = model.recommend(batch, n=k, exclude=exclude)
        rec[start : start + len(rows)] = ids
    item_users = np.diff(sp.csc_matrix(train_m).indptr)
    means, _per_user = evaluate_recommendations(
        rec, relevant[users], k=k, item_users=item_users, n_train_users=train.n_users
    )
    out: dict[str, Any] = {name: round(float(v), 6) for name, v in means.items()}
    out["eval_users"] = int(len(users))
    out["eval_users_total"] = int(n_candidates)
    out["cold_users"] = int((~has_history[users]).sum())
    return out


def _cutoff_iso(test: InteractionData) -> str | None:
    if not len(test):
        return None
    return datetime.fromtimestamp(int(test.ts.min()), UTC).isoformat()


@contextmanager
def _step(bar: tqdm, timings: dict[str, float], key: str, desc: str) -> Iterator[None]:
    """Show ``desc``, time the block into ``timings[key]``, then advance the bar (and the
    recorded job's progress, ``recsys.ops.jobs``, when the run is recorded)."""
    bar.set_description(desc)
    # A disabled bar counts nothing, so the steps done are counted here.
    done = bar.__dict__.setdefault("recsys_done", 0)
    jobs.report(done / max(bar.total or 1, 1), desc, force=True)
    t0 = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - t0
    bar.update()
    bar.recsys_done = done + 1
    jobs.report((done + 1) / max(bar.total or 1, 1), desc)


def model_dir_error(model_dir: str, e: OSError) -> str:
    """One line for a model directory that cannot be written (read-only, full, a file where a
    directory should be).

    Parameters
    ----------
    model_dir : str
        The model directory (``MODEL_DIR``).
    e : OSError
        What writing under it raised.

    Returns
    -------
    str
        ``cannot write to the model directory DIR: REASON (PATH); nothing was saved``.
    """
    where = f" ({e.filename})" if e.filename else ""
    return (
        f"cannot write to the model directory {os.path.abspath(model_dir)}: "
        f"{e.strerror or e}{where}; nothing was saved"
    )


# Share of the machine's memory a training run may plan for when no budget is set: half, so
# that issue 29's "12 GB on the 24 GB machine" holds and EASE's 12.5 GiB at L is refused.
DEFAULT_BUDGET_SHARE = 0.5


def training_budget_bytes(budget_mb: float | None) -> float | None:
    """The training memory budget in bytes (``TRAIN_MEMORY_BUDGET_MB``).

    Parameters
    ----------
    budget_mb : float or None
        The setting: MiB; None: ``DEFAULT_BUDGET_SHARE`` of ``machine_memory_bytes()``; 0: none.

    Returns
    -------
    float or None
        Bytes; None: no budget (0, or the machine's memory cannot be read).
    """
    if budget_mb is None:
        total = machine_memory_bytes()
        return DEFAULT_BUDGET_SHARE * total if total else None
    return float(budget_mb) * 2**20 if budget_mb > 0 else None


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def over_budget(
    cls: type,
    data: InteractionData,
    params: dict[str, Any],
    budget_bytes: float | None,
    time_limit_s: float | None = None,
) -> str | None:
    """Why strategy class ``cls`` cannot be fitted on ``data`` within the budget.

    Parameters
    ----------
    cls : type
        The strategy class; one without ``estimate_cost`` (not a ``Strategy``) always fits.
    data : InteractionData
        All events (the larger of the two fits).
    params : dict[str, Any]
        Its hyperparameters (``__init__`` keywords) overriding the defaults.
    budget_bytes : float or None
        The memory budget; None: no memory limit.
    time_limit_s : float or None
        The longest estimated single fit allowed (``TRAIN_FIT_TIME_LIMIT_S``); None: none.

    Returns
    -------
    str or None
        A one-line message naming the estimate and the budget, or None when it fits.
    """
    estimate = getattr(cls, "estimate_cost", None)
    if estimate is None or (budget_bytes is None and time_limit_s is None):
        return None
    memory, seconds = estimate(data.n_users, data.n_items, len(data), params)
    sizes = f"{data.n_items:,} items, {data.n_users:,} users, {len(data):,} events"
    if budget_bytes is not None and memory > budget_bytes:
        fit = f" (~{_duration(seconds)} a fit)" if seconds is not None else ""
        return (
            f"{cls.name}: left out: estimated peak memory {_mib(memory)}{fit} for {sizes} "
            f"exceeds the training budget of {_mib(budget_bytes)} (TRAIN_MEMORY_BUDGET_MB; "
            "docs/scale.md)"
        )
    if time_limit_s is not None and seconds is not None and seconds > time_limit_s:
        return (
            f"{cls.name}: left out: estimated {_duration(seconds)} a fit ({_mib(memory)}) for "
            f"{sizes} exceeds the fit time limit of {_duration(time_limit_s)} "
            "(TRAIN_FIT_TIME_LIMIT_S; docs/scale.md)"
        )
    return None


def train_strategies(
    data: InteractionData,
    repo: ModelRepository,
    names: Sequence[str],
    params: dict[str, dict[str, Any]] | None = None,
    holdout: float = DEFAULT_HOLDOUT,
    activate: bool = True,
    gate_metric: str | None = None,
    actor: str = "cli",
    progress: bool = True,
    on_result: Callable[[TrainResult], None] | None = None,
    memory_budget_bytes: float | None = None,
    on_refused: Callable[[str, str], None] | None = None,
    fit_time_limit_s: float | None = None,
) -> list[TrainResult]:
    """Train, evaluate, save (and by default activate) each named strategy.

    ``holdout`` = 0 skips the evaluation (no metrics are recorded). With ``gate_metric`` a new
    version that is worse than the active one on that holdout metric is saved but not
    activated (``TrainResult.note`` says why). Raises ``ValueError`` for an unknown strategy.

    Parameters
    ----------
    data : InteractionData
        All events.
    repo : ModelRepository
        Where versions are saved (and activated).
    names : Sequence[str]
        Strategy names, trained in this order.
    params : dict[str, dict[str, Any]] or None
        Strategy name -> hyperparameters; None: the defaults.
    holdout : float
        Newest share of events held out for evaluation, in [0, 1); 0 skips the evaluation.
    activate : bool
        Activate each new version (behind the gate).
    gate_metric : str or None
        Holdout metric a new version must not be worse on than the active one; None: no gate.
    actor : str
        Who trained, recorded in the activation audit.
    progress : bool
        Show a progress bar (only when stderr is a terminal).
    on_result : Callable[[TrainResult], None] or None
        Called with each result as soon as it is ready; None: not called.
    memory_budget_bytes : float or None
        A strategy whose estimated peak memory (``over_budget``) exceeds it is left out, before
        any fitting; None: no budget.
    on_refused : Callable[[str, str], None] or None
        Called with (name, one-line message) for each strategy left out (instead of a log
        warning, so the refusal is said once); None: logged.
    fit_time_limit_s : float or None
        A strategy whose estimated single fit (``over_budget``) takes longer is left out too;
        None: no limit.

    Returns
    -------
    list[TrainResult]
        One per name trained, in order (none for a strategy left out).

    Raises
    ------
    ValueError
        An unknown strategy name (before any training).
    """
    params = params or {}
    classes = {}
    for name in names:
        classes[name] = repo.resolver(name)  # fail before any training for a bad name
    for name in list(names):
        why = over_budget(
            classes[name], data, params.get(name, {}), memory_budget_bytes, fit_time_limit_s
        )
        if why is not None:
            if on_refused is not None:
                on_refused(name, why)  # it says so itself (the CLI: one line on stderr)
            else:
                log.warning("%s", why)
            del classes[name]
    names = [n for n in names if n in classes]
    steps = ("holdout fit", "evaluate", "fit", "save") if holdout > 0 else ("fit", "save")
    split = holdout_split(data, holdout) if holdout > 0 else None
    results: list[TrainResult] = []
    # disable=None: no bar (and no carriage returns) when stderr is not a terminal, e.g. a log.
    bar = tqdm(
        total=len(names) * len(steps),
        disable=None if progress else True,
        unit="step",
        dynamic_ncols=True,
    )
    try:
        for name in names:
            cls = classes[name]
            kwargs = dict(params.get(name, {}))
            timings: dict[str, float] = {}
            metrics: dict[str, Any] = {}
            if split is not None:
                train, test = split
                with _step(bar, timings, "holdout_fit", f"{name}: fit on {len(train)} events"):
                    model = cls(**kwargs).fit(train)
                with _step(bar, timings, "evaluate", f"{name}: evaluate"):
                    metrics = holdout_metrics(model, train, test)
                if metrics:
                    metrics["holdout"] = {
                        "protocol": "time",
                        "fraction": holdout,
                        "cutoff": _cutoff_iso(test),
                        "train_events": len(train),
                        "test_events": len(test),
                    }
                del model
            with _step(bar, timings, "fit", f"{name}: fit on all {len(data)} events"):
                model = cls(**kwargs).fit(data)
            with _step(bar, timings, "save", f"{name}: save"):
                try:
                    version = repo.save_version(model, data, metrics)
                except OSError as e:  # read-only, full, not a directory: nothing was recorded
                    raise ModelError(model_dir_error(repo.root, e)) from e
            result = version_result(
                repo, name, version, metrics, timings, activate, actor, gate_metric
            )
            log.info("trained %s version %s in %.1fs: %s", name, version, timings["fit"], metrics)
            results.append(result)
            if on_result is not None:
                on_result(result)
    finally:
        bar.close()
    return results


def version_result(repo, name, version, metrics, timings, activate, actor, gate_metric):
    """The ``TrainResult`` of a saved version, activated (behind the gate) when asked.

    Parameters
    ----------
    repo : ModelRepository
        The model store.
    name : str
        Strategy name.
    version : str
        The version saved.
    metrics : dict[str, Any]
        Its holdout metrics.
    timings : dict[str, float]
        Step -> seconds; ``fit`` is required.
    activate : bool
        Activate it (behind the gate).
    actor : str
        Who trained, recorded in the activation audit.
    gate_metric : str or None
        The gate's metric; None: no gate.

    Returns
    -------
    TrainResult
        With ``activated`` / ``previous``, or ``note`` saying why the gate refused it.
    """
    result = TrainResult(
        strategy=name,
        version=version,
        path=repo.version_path(name, version),
        metrics=metrics,
        fit_seconds=timings["fit"],
        holdout_seconds=timings.get("holdout_fit", 0.0) + timings.get("evaluate", 0.0),
        timings=timings,
    )
    if activate:
        try:
            result.previous = repo.activate(name, version, actor=actor, gate_metric=gate_metric)
            result.activated = True
        except ModelError as e:
            result.note = e.description
            log.warning("%s", e.description)
    return result
