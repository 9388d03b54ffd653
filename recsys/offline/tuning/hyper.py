"""Stage 1 of the search: each strategy's hyperparameters.

One Optuna study (TPE sampler, seeded) per strategy: each trial fits the strategy on every
validation fold's training part and scores it alone on the validation rows it can serve
(``Strategy.scores_empty_history``), its candidates computed the way the request path does
(``Recommender.candidates``). The shipped defaults are the first trials (``spaces``), so a
tuned strategy is never worse on validation than the shipped one. Cheap strategies run more
trials; the budget left by one passes on to the next. Tuned hyperparameters replace the
shipped ones only if the search is significantly better out of fold (``guard.beats``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from features.interactions import InteractionData
from recsys.offline.tuning import guard, spaces
from recsys.offline.tuning.folds import BATCH, Validation
from recsys.offline.tuning.options import Clock, TuneOptions
from recsys.offline.tuning.spaces import DataStats
from recsys.offline.tuning.trace import Studies, study_trace

log = logging.getLogger(__name__)


def loaded(name: str, model, data: InteractionData):
    """A fitted model as the request path holds one (``LoadedModel``), over ``data``'s ids.

    Parameters
    ----------
    name : str
        Strategy name.
    model : Strategy
        The fitted model.
    data : InteractionData
        The data it was fitted on (its user and item id maps).

    Returns
    -------
    LoadedModel
        Version ``"tune"``, no path, size 0.
    """
    from recsys.models.repository import LoadedModel

    return LoadedModel(name, "tune", model, data.items, data.users, {}, "", 0)


def fit_folds(name: str, params: dict[str, Any], trains: Sequence[InteractionData]) -> list:
    """One model per validation fold, each fitted on that fold's training part.

    Parameters
    ----------
    name : str
        Strategy name.
    params : dict[str, Any]
        Hyperparameters for its class.
    trains : Sequence[InteractionData]
        Each fold's training part.

    Returns
    -------
    list
        One fitted model per fold, in order.
    """
    from strategies import get_strategy_class

    cls = get_strategy_class(name)
    return [cls(**params).fit(train) for train in trains]


def candidates(name: str, models: Sequence, val: Validation) -> list:
    """Per validation row, the strategy's candidates as the request path computes them
    (each fold's rows with the model fitted on that fold's training part).

    Parameters
    ----------
    name : str
        Strategy name.
    models : Sequence
        One fitted model per fold (``fit_folds``).
    val : Validation
        The validation rows.

    Returns
    -------
    list
        One ``Candidates`` per validation row, in row order.
    """
    from recsys.core.recommender import Recommender
    from recsys.core.types import RecRequest

    rec = Recommender(models=lambda _n: None)
    out: list = []
    for f, model in enumerate(models):
        lm = loaded(name, model, val.trains[f])
        rows = val.rows_of(f)
        hs = [val.histories[r] for r in rows]
        for start in range(0, len(hs), BATCH):
            chunk = hs[start : start + BATCH]
            out.extend(rec.candidates(name, lm, chunk, [RecRequest(n=val.k)] * len(chunk)))
    return out


def served_by(name: str, hist_len: np.ndarray) -> np.ndarray:
    """Which rows (by history length) the strategy can serve: all, or the non-empty ones.

    Parameters
    ----------
    name : str
        Strategy name.
    hist_len : np.ndarray
        Each row's history length (positive items).

    Returns
    -------
    np.ndarray
        Boolean mask over the rows.
    """
    from strategies import scores_empty_history

    if scores_empty_history(name):
        return np.ones(len(hist_len), dtype=bool)
    return hist_len > 0


def alone(name: str, cands: Sequence, val: Validation) -> np.ndarray:
    """Per-row values of the strategy's own top k (NaN where it cannot serve).

    Parameters
    ----------
    name : str
        Strategy name.
    cands : Sequence
        Its candidates per validation row (``candidates``).
    val : Validation
        The validation rows.

    Returns
    -------
    np.ndarray
        ``(len(val),)`` float64 objective values.
    """
    k = val.k
    rec_ids = np.full((len(cands), k), -1, dtype=np.int64)
    for row, c in enumerate(cands):
        top = c.idx[:k] if c.idx is not None else val.train.items.indices(c.ids)
        rec_ids[row, : len(top)] = top[:k]
    v = val.values(rec_ids)
    v[~served_by(name, val.hist_len)] = np.nan
    return v


def crossfit_pick(values: Sequence[np.ndarray], halves: np.ndarray) -> np.ndarray:
    """Per-row values of "pick the best of ``values`` on one half (``halves``: 0 or 1 per
    row), score it on the other", both ways: an honest figure for a selection among many
    candidates. With one half empty, the best of ``values`` overall.

    Parameters
    ----------
    values : Sequence[np.ndarray]
        Per-row values of each candidate (e.g. each trial), NaN where undefined.
    halves : np.ndarray
        Each row's half, 0 or 1.

    Returns
    -------
    np.ndarray
        Per-row values of the cross-fitted pick.
    """
    out = np.full(len(halves), np.nan)
    for f in (0, 1):
        mine = halves == f
        if not mine.any() or mine.all():
            return values[int(np.argmax([np.nanmean(v) for v in values]))]
        means = [np.nanmean(v[mine]) if np.isfinite(v[mine]).any() else -1.0 for v in values]
        out[~mine] = values[int(np.argmax(means))][~mine]
    return out


@dataclass
class Tuned:
    """Stage 1's result per strategy: the chosen hyperparameters, the validation rows'
    candidates and the models (one per fold, as ``LoadedModel``) with them, and the trace;
    ``left_out``: strategy -> why its fits did not fit the budget left; ``rate``: measured fit
    seconds over estimated seconds, ``score_s``: a trial's seconds of scoring (``FitRate``)."""

    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    cands: dict[str, list] = field(default_factory=dict)
    models: dict[str, list] = field(default_factory=dict)
    trace: dict[str, Any] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)
    rate: float = 1.0
    score_s: float = 0.0


@dataclass
class FitRate:
    """Measured fit seconds against ``Strategy.estimate_cost``'s seconds, over the fits made so
    far: the estimates are single-core, order-of-magnitude figures, and a shared machine (or a
    slower one) runs them several times slower. Fits estimated under ``MIN_ESTIMATE_S`` (fixed
    overheads dominate) do not count; with none yet the rate is 1. Scoring the validation rows
    (a trial's other part, about the same for every strategy) is kept apart: ``score_s``, the
    mean seconds a trial spent on it."""

    MIN_ESTIMATE_S = 1.0
    measured: float = 0.0
    estimated: float = 0.0
    scored: float = 0.0
    trials: int = 0

    def add(self, estimated_s: float, measured_s: float) -> None:
        """Count one strategy's fits.

        Parameters
        ----------
        estimated_s : float
            The seconds its cost estimate predicted.
        measured_s : float
            The seconds the fits took.
        """
        if estimated_s >= self.MIN_ESTIMATE_S:
            self.estimated += estimated_s
            self.measured += measured_s

    def add_scoring(self, seconds: float) -> None:
        """Count one trial's scoring of the validation rows.

        Parameters
        ----------
        seconds : float
            The seconds it took.
        """
        self.scored += seconds
        self.trials += 1

    @property
    def factor(self) -> float:
        """Measured over estimated seconds (1.0 before any fit counted)."""
        return self.measured / self.estimated if self.estimated > 0 else 1.0

    @property
    def score_s(self) -> float:
        """Mean seconds a trial spent scoring (0 before any trial)."""
        return self.scored / self.trials if self.trials else 0.0

    def trial_s(self, estimated_s: float) -> float:
        """Expected seconds of one trial.

        Parameters
        ----------
        estimated_s : float
            The trial's fits as their cost estimates predict them.

        Returns
        -------
        float
            The estimate corrected by ``factor``, plus the mean scoring time.
        """
        return estimated_s * self.factor + self.score_s


def search_params(
    names: Sequence[str],
    val: Validation,
    halves: np.ndarray,
    stats: DataStats,
    opt: TuneOptions,
    clock: Clock,
    studies: Studies,
    share: float,
    max_trials: int,
    estimates: dict[str, float] | None = None,
    settle: Callable[[dict[str, str], float, float], None] | None = None,
) -> Tuned:
    """Stage 1 over the strategies ``names`` (see the module docstring) within ``share`` of
    the budget ``clock`` has left, at most ``max_trials`` trials per study. ``halves``: each
    validation row's half for the cross-fitted test against the defaults.

    The defaults are fitted cheapest strategy first (by ``estimates``). Before a strategy's
    defaults, its estimated fits are scaled by the rate measured on the fits before it
    (``FitRate``); a strategy whose scaled fits would not end within the budget ``clock`` has
    left is left out, with one line saying so (``Tuned.left_out``); never popularity, nor a
    strategy of the routes given (``TuneOptions.routes``).

    Parameters
    ----------
    names : Sequence[str]
        Strategy names.
    val : Validation
        The validation rows.
    halves : np.ndarray
        Each validation row's half (0 or 1).
    stats : DataStats
        Data statistics that shape the search spaces.
    opt : TuneOptions
        The search options (objective, alpha, whether hyperparameters are tuned).
    clock : Clock
        The run's budget clock.
    studies : Studies
        Makes the Optuna studies.
    share : float
        Share of the budget left that stage 1 may use, in (0, 1].
    max_trials : int
        Most trials per study (the defaults included).

    estimates : dict[str, float] or None
        Strategy -> estimated seconds of one trial (its fits on every fold, ``estimate_cost``);
        None, or a strategy missing: not checked against the budget.
    settle : callable or None
        Called once the defaults are fitted, before the search, with the strategies left out
        (name -> why), the measured fit rate and a trial's scoring seconds: the caller moves
        its reserve (``Tuner._after_defaults``), and the search's share is taken of what the
        clock then has left.

    Returns
    -------
    Tuned
        The chosen hyperparameters, candidates, models and trace per strategy; a strategy
        that never fitted is left out (with a warning).
    """
    import optuna

    out = Tuned()
    estimates = estimates or {}
    rate = FitRate()
    budget_end = clock.elapsed() + clock.left() * share
    # Defaults first for every strategy (the baseline, and each strategy's cost).
    runs, cost = {}, {}
    # Never left out: popularity (the fallback) and the strategies of routes given to evaluate.
    required = {"popular"} | {s for r in opt.routes or () for s in r.get("weights", {})}
    for name in sorted(names, key=lambda n: estimates.get(n, 0.0)):
        n_defaults = len(spaces.default_trials(name, stats)) if opt.tune_params else 1
        need = rate.trial_s(estimates.get(name, 0.0)) * n_defaults
        if name not in required and name in estimates and need > clock.left():
            why = (
                f"{name}: left out: its default trials would take ~{need:.0f} s (fits: the "
                f"estimate x {rate.factor:.1f}, the rate measured on the fits so far; scoring: "
                f"{rate.score_s:.0f} s a trial) and the search has {clock.left():.0f} s left "
                "of its budget"
            )
            log.warning("tune: %s", why)
            out.left_out[name] = why
            continue
        clock.tick(f"{name}: defaults")
        study = studies.new(name)
        best: dict[str, Any] = {}
        first: dict[str, Any] = {}
        every: list[np.ndarray] = []  # each trial's per-user values
        fitted: list[float] = []  # each trial's fit seconds

        def objective(trial, name=name, best=best, first=first, every=every, fitted=fitted):
            params = spaces.suggest(name, trial, stats) if opt.tune_params else {}
            t0 = time.perf_counter()
            try:
                model = fit_folds(name, params, val.trains)
            except Exception as e:  # a bad corner of the space must not end the run
                log.warning("tune: %s%s failed: %s", name, params, e)
                raise optuna.TrialPruned() from e
            t_fit = time.perf_counter()
            fitted.append(t_fit - t0)
            cands = candidates(name, model, val)
            values = alone(name, cands, val)
            rate.add_scoring(time.perf_counter() - t_fit)
            value = float(np.nanmean(values))
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 3))
            trial.set_user_attr("kwargs", params)
            entry = dict(value=value, params=params, cands=cands, model=model, values=values)
            every.append(values)
            if not first:
                first.update(entry)  # the shipped defaults
            if not best or value > best["value"]:
                best.update(entry)
            clock.tick(f"{name}: trial {trial.number}")
            return value

        defaults = spaces.default_trials(name, stats) if opt.tune_params else [{}]
        for d in defaults:
            study.enqueue_trial(d, skip_if_exists=True)
        t0 = time.perf_counter()
        study.optimize(objective, n_trials=len(defaults))
        cost[name] = (time.perf_counter() - t0) / len(defaults)
        rate.add(estimates.get(name, 0.0) * len(fitted), sum(fitted))
        runs[name] = (study, objective, best, first, every)
    out.rate, out.score_s = rate.factor, rate.score_s
    if settle is not None:
        settle(out.left_out, out.rate, out.score_s)
        budget_end = min(budget_end, clock.elapsed() + clock.left() * share)
    names = [n for n in names if n in runs]
    if opt.tune_params:
        # Then the search, cheapest strategy first: each gets an equal share of what is
        # left, and what a cheap one does not use passes on to the dearer ones.
        order = sorted((n for n in names if n in spaces.SEARCHED), key=lambda n: cost[n])
        for i, name in enumerate(order):
            study, objective, _, _, _ = runs[name]
            left = (budget_end - clock.elapsed()) / (len(order) - i)
            n = min(max_trials - len(study.trials), int(left / max(cost[name], 1e-3)))
            if n > 0 and left > 0:
                study.optimize(objective, n_trials=n, timeout=left)
    for name in names:
        study, _, best, first, every = runs[name]
        if not best:
            log.warning("tune: %s never fitted; left out", name)
            continue
        trace = study_trace(study)
        if len(every) > 1 and first:  # a search was made (one trial: nothing to judge)
            # Tuned hyperparameters replace the shipped ones only when the *search* is
            # significantly better than the defaults out of fold: the trial picked on one
            # half of the users is scored on the other half (and back). A lucky trial on
            # a small slice, picked and scored on the same users, is not evidence.
            oos = crossfit_pick(every, halves)
            rows = val.guard_rows()
            test = guard.beats(
                first["values"], oos, rows, opt.objective, opt.alpha, "defaults", "tuned"
            )
            trace["vs_defaults"] = test.verdict
            if not test.better:
                best = first
        trace["chosen"] = best["params"]
        out.params[name] = best["params"]
        out.cands[name] = best["cands"]
        out.models[name] = [
            loaded(name, m, t) for m, t in zip(best["model"], val.trains, strict=True)
        ]
        out.trace[name] = trace
    return out
