"""The search behind ``recsys tune``: routes, blend weights and hyperparameters from the data.

Nothing here is tuned to one dataset; every choice is measured on a validation slice cut from
the data it is given, the way the caller's test is cut (``time``: the newest events;
``leave-last-out``: each user's last event; ``random-user``/``stratified-item``: a seeded random
share). The search runs in three stages within one time budget:

1. **Strategy hyperparameters.** One Optuna study (TPE sampler, seeded) per strategy: each
   trial fits the strategy on the validation slice's training part and scores it alone on the
   validation users it can serve (``Strategy.scores_empty_history``). The class defaults are the
   first trial, so a tuned strategy is never worse on validation than the shipped one. Cheap
   strategies run more trials; the budget left by one passes on to the next.
2. **Routes and blend.** With each strategy's best model, every validation user's candidate
   lists are computed once (``Recommender.candidates``). Users are put into fine history bins
   (quantiles of their history length; an empty history is always its own bin), and for every
   run of adjacent bins an Optuna study searches blend weights and the fusion method
   (weighted / RRF), evaluated through the request path's own blend, rules and page
   (``Recommender.strategies_for`` and ``ranked_page``) with median pruning after half of the
   users. Each run is searched twice, on two halves of its users, and each half's winner is
   scored on the other half (cross-fitting): the route keeps the blend only if that honest
   figure is at least the best single strategy's there, else it serves that single strategy
   (the per-route guard). Dynamic programming then picks the cut points (at most
   ``max_routes`` routes) that maximise the cross-fitted total.
3. **Guard.** The chosen profile and every single strategy (and popularity) are run through the
   full ``Recommender.recommend_batch`` path with the real models on the validation users. The
   profile passes if its mean is at least the best single configuration's and popularity's and
   a paired test (``recsys.offline.evaluation.stats.compare``) finds it not significantly worse;
   otherwise the best single configuration is what the result recommends serving.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from features.interactions import InteractionData

log = logging.getLogger(__name__)

OBJECTIVE_METRICS = ("ndcg", "recall", "hit_rate", "precision", "map", "mrr")
VALIDATIONS = ("time", "leave-last-out", "random-user", "stratified-item")
# Weights under this are "off": the route does not call the strategy at all.
MIN_WEIGHT = 0.05
_BATCH = 256
MAX_FOLDS = 3


@dataclass
class TuneOptions:
    """What ``tune`` searches and how long (see the module docstring)."""

    objective: str = "ndcg@10"
    budget_s: float = 300.0
    # Trials per study at most (None: the budget decides, up to a per-study ceiling).
    max_trials: int | None = None
    validation: str = "time"
    fraction: float = 0.2  # validation share (time: newest events; random: share of events)
    # Validation folds: the slice is cut again from the rest, older (see ``validation_folds``).
    # None: as many as it takes to reach ``min_rows`` validation rows (at most 3).
    folds: int | None = None
    min_rows: int = 2000
    seed: int = 42
    strategies: Sequence[str] | None = None  # None: every strategy that imports and fits
    max_routes: int = 4
    n_bins: int = 6
    min_bin_users: int = 25
    # Coverage-constrained objective: each route's lists should cover at least this share
    # of the catalogue; shortfall is subtracted from the objective.
    min_coverage: float | None = None
    tune_params: bool = True  # False: class defaults, only routes and weights are searched
    # Routes given instead of searched (``recsys tune --routes``): only evaluated and guarded.
    routes: list[dict[str, Any]] | None = None
    storage: str | None = None  # an Optuna storage URL to keep the studies for inspection
    # Level of the paired test a departure from a default must pass (a tuned hyperparameter
    # over the shipped one, a route's own strategy or blend over the overall best strategy).
    alpha: float = 0.1
    progress: bool = False

    def metric(self) -> tuple[str, int]:
        m = re.fullmatch(r"([a-z_]+)@(\d+)", self.objective)
        if not m or m.group(1) not in OBJECTIVE_METRICS or int(m.group(2)) < 1:
            raise ValueError(
                f"objective must be METRIC@K with METRIC one of {', '.join(OBJECTIVE_METRICS)}"
                f" (got {self.objective!r})"
            )
        return m.group(1), int(m.group(2))

    def check(self) -> TuneOptions:
        self.metric()
        if self.validation not in VALIDATIONS:
            raise ValueError(f"validation must be one of {', '.join(VALIDATIONS)}")
        if not 0.0 < self.fraction < 1.0:
            raise ValueError("the validation fraction must be between 0 and 1")
        if self.budget_s <= 0:
            raise ValueError("the budget must be > 0 seconds")
        if not 1 <= self.max_routes <= 8:
            raise ValueError("max_routes must be in 1..8")
        if self.folds is not None and not 1 <= self.folds <= MAX_FOLDS:
            raise ValueError(f"folds must be in 1..{MAX_FOLDS}")
        if self.strategies is not None:
            check_strategy_names(self.strategies)
        return self


def parse_budget(text: str | float) -> float:
    """``"5m"``, ``"90s"``, ``"1h"``, ``"300"`` -> seconds."""
    if isinstance(text, int | float):
        return float(text)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not m:
        raise ValueError(f"a budget is a number with an optional s/m/h unit, got {text!r}")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def parse_strategies(text: str | None) -> list[str] | None:
    """``"popular,ease,sequence"`` -> the names (None for none given). Unknown names are a
    ``ValueError`` naming the known ones: a typo must not silently shrink the search."""
    if text is None or not str(text).strip():
        return None
    names = [s.strip() for s in str(text).split(",") if s.strip()]
    check_strategy_names(names)
    return names


def check_strategy_names(names: Sequence[str]) -> None:
    from strategies import STRATEGY_NAMES

    unknown = [s for s in names if s not in STRATEGY_NAMES]
    if unknown or not names:
        raise ValueError(
            f"unknown strategies {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"known strategies: {', '.join(STRATEGY_NAMES)}"
        )


# -- hyperparameter spaces ---------------------------------------------------------------------
# Each maps an Optuna trial to the strategy's __init__ kwargs; SPACES pairs it with the trial values
# that reproduce the class defaults (enqueued first). Ranges are wide and, where a parameter
# has a natural scale in the data (popularity's half-life: the data's time span), relative to it.


@dataclass
class DataStats:
    span_days: float
    n_users: int
    n_items: int

    @classmethod
    def of(cls, data: InteractionData) -> DataStats:
        span = float(data.ts.max() - data.ts.min()) / 86400.0 if len(data) else 1.0
        return cls(max(span, 1.0 / 24), data.n_users, data.n_items)

    def half_life_range(self) -> tuple[float, float]:
        return max(self.span_days / 2000.0, 1.0 / 24), max(self.span_days * 2.0, 1.0)


def _popular_space(trial, stats: DataStats) -> dict[str, Any]:
    if trial.suggest_categorical("decay", [True, False]):
        lo, hi = stats.half_life_range()
        return {"half_life_days": trial.suggest_float("half_life_days", lo, hi, log=True)}
    return {"half_life_days": None}


def _popular_defaults(stats: DataStats) -> list[dict[str, Any]]:
    lo, hi = stats.half_life_range()
    return [{"decay": True, "half_life_days": min(max(7.0, lo), hi)}, {"decay": False}]


def _als_space(trial, _stats: DataStats) -> dict[str, Any]:
    return {
        "factors": trial.suggest_categorical("factors", [16, 32, 64, 128]),
        "regularization": trial.suggest_float("regularization", 0.01, 100.0, log=True),
        "alpha": trial.suggest_float("alpha", 0.1, 100.0, log=True),
        "binary": trial.suggest_categorical("binary", [True, False]),
    }


def _bpr_space(trial, _stats: DataStats) -> dict[str, Any]:
    return {
        "factors": trial.suggest_categorical("factors", [32, 64, 128]),
        "learning_rate": trial.suggest_float("learning_rate", 0.003, 0.1, log=True),
        "regularization": trial.suggest_float("regularization", 1e-4, 0.1, log=True),
        "iterations": trial.suggest_int("iterations", 20, 200, step=20),
    }


def _ease_space(trial, _stats: DataStats) -> dict[str, Any]:
    return {"l2": trial.suggest_float("l2", 1.0, 20000.0, log=True)}


def _content_space(trial, _stats: DataStats) -> dict[str, Any]:
    return {
        "category_repeat": trial.suggest_int("category_repeat", 0, 3),
        "ngram_max": trial.suggest_int("ngram_max", 1, 2),
        "recency_half_life": trial.suggest_float("recency_half_life", 1.0, 200.0, log=True),
    }


def _deep_space(trial, _stats: DataStats) -> dict[str, Any]:
    return {
        "hidden": [int(trial.suggest_categorical("hidden", ["200", "600"]))],
        "dropout": trial.suggest_float("dropout", 0.2, 0.8),
        "lr": trial.suggest_float("lr", 3e-4, 3e-3, log=True),
        "max_steps": trial.suggest_int("max_steps", 100, 800, step=50),
    }


def _fixed(*values: dict[str, Any]) -> Callable[[DataStats], list[dict[str, Any]]]:
    return lambda _stats: list(values)


# name -> (the space: trial -> __init__ kwargs, the trial values that reproduce the shipped
# defaults, enqueued first). One table, so a strategy's space and its defaults sit together.
SPACES: dict[str, tuple[Callable, Callable[[DataStats], list[dict[str, Any]]]]] = {
    "popular": (_popular_space, _popular_defaults),
    "als": (
        _als_space,
        _fixed({"factors": 32, "regularization": 15.0, "alpha": 1.0, "binary": True}),
    ),
    "bpr": (
        _bpr_space,
        _fixed({"factors": 64, "learning_rate": 0.01, "regularization": 0.01, "iterations": 60}),
    ),
    "ease": (_ease_space, _fixed({"l2": 500.0})),
    "content": (
        _content_space,
        _fixed({"category_repeat": 2, "ngram_max": 1, "recency_half_life": 10.0}),
    ),
    "deep": (
        _deep_space,
        _fixed({"hidden": "600", "dropout": 0.5, "lr": 1e-3, "max_steps": 400}),
    ),
}
# The strategies searched beyond their defaults. Any other (e.g. the opt-in sequence model,
# minutes per fit) is fitted once with its defaults: further trials would repeat that fit.
SEARCHED = tuple(SPACES)


def _space(name: str, trial, stats: DataStats) -> dict[str, Any]:
    entry = SPACES.get(name)
    return entry[0](trial, stats) if entry else {}  # no declared space: its defaults only


def _defaults(name: str, stats: DataStats) -> list[dict[str, Any]]:
    """Trial values reproducing the shipped defaults (and for popularity, no decay too)."""
    entry = SPACES.get(name)
    return entry[1](stats) if entry else [{}]


# -- the validation slice ------------------------------------------------------------------------
def validation_split(
    data: InteractionData, mode: str, fraction: float = 0.2, seed: int = 42
) -> tuple[InteractionData, InteractionData]:
    """Cut the validation slice from ``data`` the way a test part is cut (see module doc)."""
    from recsys.offline.evaluation.splits import split_data

    if mode == "time":
        return split_data(data, "time", fraction=fraction)
    return split_data(data, mode, seed=seed, ratio=1.0 - fraction)


def validation_folds(
    data: InteractionData,
    mode: str,
    fraction: float = 0.2,
    seed: int = 42,
    folds: int | None = None,
    min_rows: int = 2000,
) -> list[tuple[InteractionData, InteractionData]]:
    """One or more ``(train, validation)`` cuts of ``data``, each made the way the test is cut.

    The first is ``validation_split``. A further fold cuts the same way again from the previous
    fold's training part (``time``: the next older slice; ``leave-last-out``: each user's
    second-to-last event, and so on), or with another seed for the random splits. One slice can
    be too small to tell strategies apart: the unit of every comparison is a validation user
    (a row), and leave-last-out has one target per user (943 on ml-100k, where two strategies'
    nDCG@10 differ by less than its noise), a time slice only the users active in it (228 on
    ml-100k). ``folds=None`` adds folds until the rows (users with a target, summed over the
    folds) reach ``min_rows``, at most ``MAX_FOLDS``."""
    out: list[tuple[InteractionData, InteractionData]] = []
    src = data
    limit = folds or MAX_FOLDS
    while len(out) < limit:
        if mode in ("time", "leave-last-out") or not out:
            train, val = validation_split(src, mode, fraction, seed)
        else:
            train, val = validation_split(data, mode, fraction, seed + len(out))
        if len(train) == 0 or len(val) == 0:
            break
        out.append((train, val))
        src = train
        if folds is None and sum(len(np.unique(v.user_idx)) for _, v in out) >= min_rows:
            break
    return out


class Validation:
    """Validation rows: one per (fold, user with a target), with the user's history in that
    fold's training part and the relevant items. Every row of a fold is scored with models
    fitted on that fold's training part; ``train`` is the first (newest) fold's."""

    def __init__(
        self,
        folds: Sequence[tuple[InteractionData, InteractionData]],
        k: int,
        metric: str,
    ):
        import scipy.sparse as sp

        from recsys.core.types import histories_from_data
        from recsys.offline.evaluation.splits import relevant_matrix

        self.trains = [t for t, _ in folds]
        self.train, self.k, self.metric = self.trains[0], k, metric
        users, fold_of, rels, self.histories = [], [], [], []
        for f, (train, val) in enumerate(folds):
            rel = relevant_matrix(val, train.n_users, train.n_items)
            u = np.flatnonzero(np.diff(rel.indptr) > 0)
            users.append(u)
            fold_of.append(np.full(len(u), f, dtype=np.int64))
            rels.append(rel[u])
            self.histories.extend(histories_from_data(train, u))
        self.users = np.concatenate(users)
        self.fold_of = np.concatenate(fold_of)
        self.relevant = sp.vstack(rels, format="csr")
        self.hist_len = np.array([len(h.positive_items()) for h in self.histories], np.int64)
        # Rows of one user, for tests that pair per user (rows of one user are not independent).
        _, self.user_row = np.unique(self.users, return_inverse=True)

    def __len__(self) -> int:
        return len(self.users)

    @property
    def n_folds(self) -> int:
        return len(self.trains)

    def rows_of(self, fold: int) -> np.ndarray:
        return np.flatnonzero(self.fold_of == fold)

    def values(self, rec_ids: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Per-row objective values of ``rec_ids`` (of the validation rows ``rows``)."""
        from recsys.offline.evaluation.metrics import ranking_metrics

        rel = self.relevant if rows is None else self.relevant[rows]
        return ranking_metrics(rec_ids, rel, self.k)[self.metric]

    def paired(
        self, a: np.ndarray, b: np.ndarray, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Two per-row value arrays as per-user means over the rows where both are defined:
        the units of a paired test (one user's rows in two folds are not independent)."""
        groups = self.user_row if rows is None else self.user_row[rows]
        ok = np.isfinite(a) & np.isfinite(b)
        _, g = np.unique(groups[ok], return_inverse=True)
        counts = np.bincount(g)
        return np.bincount(g, weights=a[ok]) / counts, np.bincount(g, weights=b[ok]) / counts


def _loaded(name: str, model, data: InteractionData):
    from recsys.models.repository import LoadedModel

    return LoadedModel(name, "tune", model, data.items, data.users, {}, "", 0)


# -- the search ----------------------------------------------------------------------------------
@dataclass
class _Clock:
    """The budget, and a progress bar over it (seconds)."""

    budget_s: float
    progress: bool
    start: float = field(default_factory=time.perf_counter)
    bar: Any = None

    def __post_init__(self) -> None:
        if self.progress:
            from tqdm.auto import tqdm

            # disable=None: no bar (no carriage returns) when stderr is not a terminal.
            self.bar = tqdm(
                total=round(self.budget_s), unit="s", desc="tune", dynamic_ncols=True, disable=None
            )

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return max(self.budget_s - self.elapsed(), 0.0)

    def tick(self, desc: str | None = None) -> None:
        if self.bar is not None and not self.bar.disable:
            if desc:
                self.bar.set_description(desc[:40])
            self.bar.n = min(round(self.elapsed()), self.bar.total)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None and not self.bar.disable:
            self.bar.n = self.bar.total
            self.bar.close()


class Tuner:
    """One tuning run over ``data`` (see ``tune``)."""

    # Stage shares of the budget: hyperparameters, routes and weights (the guard takes the rest).
    SHARE_PARAMS = 0.6
    SHARE_ROUTES = 0.3
    MAX_TRIALS_PARAMS = 30
    MAX_TRIALS_ROUTES = 80

    def __init__(self, data: InteractionData, options: TuneOptions):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.data = data
        self.opt = options.check()
        self.metric, self.k = options.metric()
        self.clock = _Clock(options.budget_s, options.progress)
        self.stats = DataStats.of(data)
        self.trace: dict[str, Any] = {"params": {}, "routes": {}}
        self.study_prefix = datetime.now(UTC).strftime("tune-%Y%m%dT%H%M%SZ")

    # -- stage 0: the slice ------------------------------------------------------------------
    def _prepare(self) -> None:
        folds = validation_folds(
            self.data,
            self.opt.validation,
            self.opt.fraction,
            self.opt.seed,
            self.opt.folds,
            self.opt.min_rows,
        )
        if not folds:
            raise ValueError("the validation split left an empty training or validation part")
        self.val = Validation(folds, self.k, self.metric)
        if len(self.val) == 0:
            raise ValueError("no validation user has a positive event to predict")
        # Two halves of the validation users, for every cross-fitted estimate (by user: one
        # user's rows in several folds stay on one side).
        halves = np.random.default_rng(self.opt.seed).integers(0, 2, size=self.data.n_users)
        self.fold = halves[self.val.users]
        self.train = self.val.train
        log.info(
            "tune: %d validation rows in %d fold(s) (%s slice, %d training events)",
            len(self.val),
            self.val.n_folds,
            self.opt.validation,
            len(self.train),
        )

    def _strategies(self) -> list[str]:
        from strategies import STRATEGY_NAMES, available_strategies, opt_in

        # Opt-in strategies (minutes of CPU to fit) are searched only when named.
        names = list(self.opt.strategies or [n for n in STRATEGY_NAMES if not opt_in(n)])
        out = [
            name
            for name in available_strategies(names)
            if name != "content" or self.data.item_meta is not None
        ]
        if "popular" not in out:
            out.append("popular")  # the request path's fallback is always there
        return out

    def _study(self, name: str, pruner=None):
        import optuna

        return optuna.create_study(
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=self.opt.seed, multivariate=True),
            pruner=pruner,
            storage=self.opt.storage,
            study_name=f"{self.study_prefix}:{name}" if self.opt.storage else None,
        )

    # -- stage 1: hyperparameters ------------------------------------------------------------
    def _candidates(self, name: str, models: list) -> list:
        """Per validation row, the strategy's candidates as the request path computes them
        (each fold's rows with the model fitted on that fold's training part)."""
        from recsys.core.recommender import Recommender
        from recsys.core.types import RecRequest

        rec = Recommender(models=lambda _n: None)
        out: list = []
        for f, model in enumerate(models):
            lm = _loaded(name, model, self.val.trains[f])
            rows = self.val.rows_of(f)
            hs = [self.val.histories[r] for r in rows]
            for start in range(0, len(hs), _BATCH):
                chunk = hs[start : start + _BATCH]
                out.extend(rec.candidates(name, lm, chunk, [RecRequest(n=self.k)] * len(chunk)))
        return out

    def _served_by(self, name: str) -> np.ndarray:
        from strategies import scores_empty_history

        if scores_empty_history(name):
            return np.ones(len(self.val), dtype=bool)
        return self.val.hist_len > 0

    def _alone(self, name: str, cands: list) -> np.ndarray:
        """Per-user values of the strategy's own top k (NaN where it cannot serve)."""
        rec_ids = np.full((len(cands), self.k), -1, dtype=np.int64)
        for row, c in enumerate(cands):
            top = c.idx[: self.k] if c.idx is not None else self.train.items.indices(c.ids)
            rec_ids[row, : len(top)] = top[: self.k]
        v = self.val.values(rec_ids)
        v[~self._served_by(name)] = np.nan
        return v

    def _fit(self, name: str, params: dict[str, Any]) -> list:
        """One model per validation fold, each fitted on that fold's training part."""
        from strategies import get_strategy_class

        cls = get_strategy_class(name)
        return [cls(**params).fit(train) for train in self.val.trains]

    def _tune_params(self, names: list[str]) -> None:
        import optuna

        self.params: dict[str, dict[str, Any]] = {}
        self.cands: dict[str, list] = {}
        self.models: dict[str, Any] = {}
        budget_end = self.clock.elapsed() + self.clock.left() * self.SHARE_PARAMS
        # Defaults first for every strategy (the baseline, and each strategy's cost).
        studies, cost = {}, {}
        for name in names:
            self.clock.tick(f"{name}: defaults")
            study = self._study(name)
            best: dict[str, Any] = {}
            first: dict[str, Any] = {}
            every: list[np.ndarray] = []  # each trial's per-user values

            def objective(trial, name=name, best=best, first=first, every=every):
                params = _space(name, trial, self.stats) if self.opt.tune_params else {}
                t0 = time.perf_counter()
                try:
                    model = self._fit(name, params)
                except Exception as e:  # a bad corner of the space must not end the run
                    log.warning("tune: %s%s failed: %s", name, params, e)
                    raise optuna.TrialPruned() from e
                cands = self._candidates(name, model)
                values = self._alone(name, cands)
                value = float(np.nanmean(values))
                trial.set_user_attr("seconds", round(time.perf_counter() - t0, 3))
                trial.set_user_attr("kwargs", params)
                entry = dict(value=value, params=params, cands=cands, model=model, values=values)
                every.append(values)
                if not first:
                    first.update(entry)  # the shipped defaults
                if not best or value > best["value"]:
                    best.update(entry)
                self.clock.tick(f"{name}: trial {trial.number}")
                return value

            defaults = _defaults(name, self.stats) if self.opt.tune_params else [{}]
            for d in defaults:
                study.enqueue_trial(d, skip_if_exists=True)
            t0 = time.perf_counter()
            study.optimize(objective, n_trials=len(defaults))
            cost[name] = (time.perf_counter() - t0) / len(defaults)
            studies[name] = (study, objective, best, first, every)
        if self.opt.tune_params:
            # Then the search, cheapest strategy first: each gets an equal share of what is
            # left, and what a cheap one does not use passes on to the dearer ones.
            order = sorted((n for n in names if n in SEARCHED), key=lambda n: cost[n])
            cap = self.opt.max_trials or self.MAX_TRIALS_PARAMS
            for i, name in enumerate(order):
                study, objective, _, _, _ = studies[name]
                share = (budget_end - self.clock.elapsed()) / (len(order) - i)
                n = min(cap - len(study.trials), int(share / max(cost[name], 1e-3)))
                if n > 0 and share > 0:
                    study.optimize(objective, n_trials=n, timeout=share)
        for name in names:
            study, _, best, first, every = studies[name]
            if not best:
                log.warning("tune: %s never fitted; left out", name)
                continue
            trace = _study_trace(study)
            if len(every) > 1 and first:  # a search was made (one trial: nothing to judge)
                # Tuned hyperparameters replace the shipped ones only when the *search* is
                # significantly better than the defaults out of fold: the trial picked on one
                # half of the users is scored on the other half (and back). A lucky trial on
                # a small slice, picked and scored on the same users, is not evidence.
                oos = self._crossfit_pick(every)
                verdict, better, _ = self._beats(first["values"], oos, "defaults", "tuned")
                trace["vs_defaults"] = verdict
                if not better:
                    best = first
            trace["chosen"] = best["params"]
            self.params[name] = best["params"]
            self.cands[name] = best["cands"]
            self.models[name] = [
                _loaded(name, m, t) for m, t in zip(best["model"], self.val.trains, strict=True)
            ]
            self.trace["params"][name] = trace

    def _crossfit_pick(self, values: list[np.ndarray]) -> np.ndarray:
        """Per-user values of "pick the best of ``values`` on one fold, score it on the
        other", both ways: an honest figure for a selection among many candidates."""
        out = np.full(len(self.val), np.nan)
        for f in (0, 1):
            mine = self.fold == f
            if not mine.any() or mine.all():
                return values[int(np.argmax([np.nanmean(v) for v in values]))]
            means = [np.nanmean(v[mine]) if np.isfinite(v[mine]).any() else -1.0 for v in values]
            out[~mine] = values[int(np.argmax(means))][~mine]
        return out

    # -- stage 2: routes -------------------------------------------------------------------------
    def _config(self, weights: dict[str, float], blend: str):
        from recsys.core.config import ServingConfig

        names = list(self.cands)
        return ServingConfig.default().with_overrides(
            {
                "strategies": {s: {"enabled": True, "weight": 1.0} for s in names},
                "routing": {
                    "routes": [{"name": "r", "max_history": None, "weights": weights}],
                    "blend": blend,
                },
            }
        )

    def _lists(self, weights: dict[str, float], blend: str, rows: np.ndarray) -> np.ndarray:
        """Top-k of the validation users ``rows`` under one route's weights, through the
        request path's strategy choice, blend, rules and page (``Recommender``)."""
        from recsys.core.recommender import Recommender
        from recsys.core.types import RecRequest

        rec = Recommender(models=lambda _n: None, config=self._config(weights, blend))
        req = RecRequest(n=self.k)
        out = np.full((len(rows), self.k), -1, dtype=np.int64)
        items = self.train.items
        for j, u in enumerate(rows.tolist()):
            h = self.val.histories[u]
            names = [s for s in rec.strategies_for("r", h) if s in self.cands]
            route: str | None = "r"
            if not names:  # the request path's fallback: popularity, ranked on its own
                names, route = ["popular"], None
            per = {s: self.cands[s][u] for s in names}
            page = rec.ranked_page(per, h, req, route)
            if page:
                out[j, : len(page)] = items.indices([it.item_id for it in page])
        return out

    def _route_value(self, weights, blend, rows) -> tuple[np.ndarray, float]:
        lists = self._lists(weights, blend, rows)
        v = self.val.values(lists, rows)
        mean = float(np.nanmean(v)) if v.size else 0.0
        if self.opt.min_coverage:
            cov = len(np.unique(lists[lists >= 0])) / max(self.train.n_items, 1)
            mean -= max(0.0, self.opt.min_coverage - cov)
        return v, mean

    def _search_weights(
        self,
        label: str,
        rows: np.ndarray,
        n_trials: int,
        timeout: float,
        priors: Sequence[dict[str, float]] = (),
        names: Sequence[str] | None = None,
    ):
        """One study over weights and fusion for the users ``rows``; returns
        ``(weights, blend, study)``. Each strategy alone, an even blend and ``priors`` (blends
        of the strongest strategies, the shipped default's) are the first trials. ``names``:
        the strategies searched (default: every candidate)."""
        import optuna

        names = list(self.cands) if names is None else list(names)
        starts = [{x: float(x == s) for x in names} for s in names]
        starts += [{s: 1.0 for s in names}, *priors]
        study = self._study(
            label, optuna.pruners.MedianPruner(n_startup_trials=len(starts) + 4, n_warmup_steps=0)
        )
        for w in starts:
            study.enqueue_trial(
                {**{f"w_{x}": float(w.get(x, 0.0)) for x in names}, "blend": "weighted"},
                skip_if_exists=True,
            )
        half = rows[: max(len(rows) // 2, 1)]
        rest = rows[len(half) :]

        def objective(trial):
            w = {s: trial.suggest_float(f"w_{s}", 0.0, 1.0) for s in names}
            blend = trial.suggest_categorical("blend", ["weighted", "rrf"])
            w = _normalise(w)
            if not w:
                return 0.0
            v1, _ = self._route_value(w, blend, half)
            trial.report(float(np.nanmean(v1)) if v1.size else 0.0, 0)
            if trial.should_prune():
                raise optuna.TrialPruned()
            v2, _ = self._route_value(w, blend, rest) if len(rest) else (np.zeros(0), 0.0)
            v = np.concatenate([v1, v2])
            value = float(np.nanmean(v)) if v.size else 0.0
            if self.opt.min_coverage:
                value = self._route_value(w, blend, rows)[1]
            return value

        # The first trials always run: they are what the searched ones are measured against.
        # The rest run while the budget lasts.
        study.optimize(objective, n_trials=len(starts))
        if n_trials > len(starts) and timeout > 0:
            study.optimize(objective, n_trials=n_trials - len(starts), timeout=timeout)
        done = [t for t in study.trials if t.value is not None]
        best = max(done, key=lambda t: t.value)
        p = best.params
        weights = _normalise({s: p[f"w_{s}"] for s in names})
        return weights, p["blend"], study

    def _bins(self) -> list[tuple[int, int | None]]:
        """Fine history bins ``(lo, hi)`` (inclusive; hi None = no bound) over the validation
        users: an empty history alone, then quantiles of the rest, each with enough users."""
        n = self.val.hist_len
        min_users = min(self.opt.min_bin_users, max(len(n) // 4, 1))
        edges: list[int] = []  # inclusive upper bounds
        if (n == 0).sum() >= min_users and (n > 0).any():
            edges.append(0)
        pos = np.sort(n[n > 0])
        parts = max(self.opt.n_bins - len(edges), 1)
        for q in np.linspace(0, 1, parts + 1)[1:-1]:
            if len(pos):
                edges.append(int(np.quantile(pos, q, method="lower")))
        edges = sorted(set(edges))
        bins, lo = [], 0
        for e in edges:
            if ((n >= lo) & (n <= e)).sum() >= min_users and (n > e).sum() >= min_users:
                bins.append((lo, e))
                lo = e + 1
        bins.append((lo, None))
        return bins

    def _priors(self, singles: dict[str, np.ndarray]) -> list[dict[str, float]]:
        """Starting blends: the two and three strongest strategies evenly, and the shipped
        default's warm weights (what an operator would try first)."""
        from recsys.core.config import DEFAULT_CONFIG

        ranked = sorted(singles, key=lambda s: -float(np.nanmean(singles[s])))
        out = [{s: 1.0 for s in ranked[:2]}, {s: 1.0 for s in ranked[:3]}]
        shipped = DEFAULT_CONFIG["strategies"]
        warm = DEFAULT_CONFIG["routing"]["warm_strategies"]
        out.append({s: shipped[s]["weight"] for s in warm if s in self.cands})
        return out

    def _crossfit(self, label, rows, fold, cap, timeout, priors, names=None) -> dict[str, Any]:
        """Search blend weights on each half of ``rows`` and score each half's winner on the
        other half: honest (out-of-fold) per-user values. The blend served is the winner that
        scores best on all of ``rows``. ``names``: the strategies searched (default: all)."""
        oos = np.full(len(rows), np.nan)
        found = []
        for f in (0, 1):
            fit_rows, held = rows[fold[rows] == f], rows[fold[rows] != f]
            if len(fit_rows) == 0 or len(held) == 0:
                continue
            w, blend, study = self._search_weights(
                f"{label}/fold{f}", fit_rows, cap, timeout, priors, names
            )
            found.append((w, blend, _study_trace(study, keep_trials=False)))
            oos[fold[rows] != f] = self._route_value(w, blend, held)[0]
        if len(found) < 2 or not np.isfinite(oos).all():
            return {}
        scored = [(self._route_value(w, b, rows)[1], w, b) for w, b, _ in found]
        _, w, b = max(scored, key=lambda x: x[0])
        return {
            "weights": w,
            "blend": b,
            "values": oos,
            "folds": [{"weights": fw, "blend": fb, "study": t} for fw, fb, t in found],
        }

    def _search_routes(self) -> tuple[list[dict[str, Any]], np.ndarray, dict[str, Any]]:
        """Routes (profile dicts), their honest per-user values, and a trace.

        1. The champion: a blend searched over all validation users (cross-fitted) if its
           out-of-fold values are significantly better than the best single strategy's,
           else that strategy.
        2. Per fine history bin, a challenger (the bin's best single strategy, or a blend
           searched on the bin's users, cross-fitted) replaces the champion only where it is
           significantly better on the bin's users (``_beats``), after Holm's correction
           over all the bins tested.
        3. Adjacent bins with the same choice make one route; beyond ``max_routes``, the
           bins whose own choice gains least over their neighbour's are merged into it."""
        from recsys.offline.evaluation import stats
        from strategies import scores_empty_history

        bins = self._bins()
        n = self.val.hist_len
        every = np.arange(len(self.val))
        fold = self.fold
        singles = {s: self._single_values(s) for s in self.cands}
        means = {s: float(np.nanmean(v)) for s, v in singles.items()}
        best_single = max(means, key=lambda s: means[s])
        priors = self._priors(singles)
        cap = self.opt.max_trials or self.MAX_TRIALS_ROUTES
        share = self.clock.left() * self.SHARE_ROUTES / (1 - self.SHARE_PARAMS)
        # Half of the time for the overall blend, half for the bins (by their users).
        self.clock.tick("routes: all users")
        overall = self._crossfit("all", every, fold, cap, share / 4, priors)
        options: dict[str, tuple[np.ndarray, dict[str, float], str]] = {
            s: (singles[s], {s: 1.0}, "weighted") for s in singles
        }
        champion, champion_verdict = best_single, None
        if overall:
            options["blend"] = (overall["values"], overall["weights"], overall["blend"])
            # The overall blend is the champion when it is significantly better than the best
            # single strategy, or, as an ensemble of models the data cannot tell apart, when
            # its honest (cross-fitted) figure is at least the single's overall and not
            # significantly behind on the newest fold: averaging tied models lowers the
            # variance of what is served.
            champion_verdict, better, _ = self._beats(
                singles[best_single], overall["values"], best_single, "blend"
            )
            if better:
                champion = "blend"
            elif self._not_behind(singles[best_single], overall["values"]):
                champion = "blend"
                champion_verdict += (
                    "; blend kept: not behind out of fold overall, and not significantly "
                    "behind on the newest fold"
                )
        trace: dict[str, Any] = {
            "bins": [_bin_label(lo, hi) for lo, hi in bins],
            "singles": {s: round(m, 6) for s, m in means.items()},
            "champion": champion,
            "champion_verdict": champion_verdict,
            "overall": {k: v for k, v in overall.items() if k != "values"},
            "per_bin": {},
        }
        if overall:
            trace["overall"]["oos"] = round(float(np.nanmean(overall["values"])), 6)
        per_bin = []
        for lo, hi in bins:
            rows = np.flatnonzero((n >= lo) & ((n <= hi) if hi is not None else True))
            label = _bin_label(lo, hi)
            self.clock.tick(f"routes: history {label}")
            opts = {k: (v[rows], w, b) for k, (v, w, b) in options.items()}
            found = {}
            # A bin of empty histories only: the strategies that cannot score one would be
            # dropped by the request path anyway, so their weights are not searched (fewer
            # dimensions for the same trials, and no meaningless weight in the profile).
            names = [s for s in self.cands if scores_empty_history(s)] if hi == 0 else None
            if len(bins) > 1 and (names is None or names):
                found = self._crossfit(
                    label, rows, fold, cap, share / 4 * len(rows) / len(every), priors, names
                )
            if found:
                opts["bin blend"] = (found["values"], found["weights"], found["blend"])
            bin_means = {k: float(np.nanmean(v)) for k, (v, _, _) in opts.items()}
            best = max(bin_means, key=lambda k: bin_means[k])
            test = None
            if best != champion:
                test = self._beats(opts[champion][0], opts[best][0], champion, best, rows)
            per_bin.append({"label": label, "rows": rows, "opts": opts, "best": best, "test": test})
            trace["per_bin"][label] = {
                "users": int(len(rows)),
                "means": {k: round(v, 6) for k, v in bin_means.items()},
                "challenger": best if best != champion else None,
                "verdict": test[0] if test else None,
                "choice": champion,
                "folds": found.get("folds"),
            }
        # A challenger takes its bin only if it survives Holm's step-down over every bin's
        # test: with six bins tested at alpha each, one would pass by chance every other run,
        # and a route cut on that is noise served to real users. Holm keeps the chance of any
        # false departure within alpha (family-wise), and is never weaker than Bonferroni.
        tested = {i: b["test"][2] for i, b in enumerate(per_bin) if b["test"]}
        held = stats.holm(tested, self.opt.alpha)
        for i, b in enumerate(per_bin):
            label = b["label"]
            choice = champion
            if b["test"] and b["test"][1]:
                if i in held:
                    choice = b["best"]
                else:
                    trace["per_bin"][label]["verdict"] += (
                        f"; not significant after Holm's correction over {len(tested)} bins"
                    )
            b["choice"], b["option"] = choice, b["opts"][choice]
            trace["per_bin"][label]["choice"] = choice
        # Merge runs of equal choices; then, while there are too many, the cheapest merge.
        runs = []
        for i, b in enumerate(per_bin):
            key = (tuple(sorted(b["option"][1].items())), b["option"][2])
            if runs and runs[-1]["key"] == key:
                runs[-1]["bins"].append(i)
            else:
                runs.append({"key": key, "bins": [i], "option": b["option"]})

        def newcomer_route(runs) -> int:
            """1 if ``serve_newcomers`` may add a route for empty histories before these."""
            return 0 if any(scores_empty_history(s) for s in runs[0]["option"][1]) else 1

        # That added route counts towards max_routes (the profile's hard limit is
        # MAX_ROUTES); only with max_routes 1 can it make two.
        while len(runs) > 1 and len(runs) + newcomer_route(runs) > self.opt.max_routes:
            costs = []
            for r in range(len(runs)):
                for nb in (r - 1, r + 1):
                    if 0 <= nb < len(runs):
                        rows = np.concatenate([per_bin[i]["rows"] for i in runs[r]["bins"]])
                        own = np.nansum(self._route_value(*runs[r]["option"][1:], rows)[0])
                        other = np.nansum(self._route_value(*runs[nb]["option"][1:], rows)[0])
                        costs.append((own - other, r, nb))
            _, r, nb = min(costs)
            runs[nb]["bins"] = sorted(runs[nb]["bins"] + runs[r]["bins"])
            del runs[r]
        routes, values, lo = [], np.full(len(self.val), np.nan), 0
        for k, run in enumerate(runs):
            last = run["bins"][-1]
            hi = None
            if k < len(runs) - 1:
                hi = _cut(n[per_bin[last]["rows"]].max(), n[per_bin[last + 1]["rows"]].min())
            _, weights, blend = run["option"]
            routes.append(
                {"name": "h" + _bin_label(lo, hi), "max_history": hi, "weights": weights,
                 "blend": blend}
            )  # fmt: skip
            for i in run["bins"]:
                b = per_bin[i]
                if b["option"][1] == weights and b["option"][2] == blend:
                    values[b["rows"]] = b["option"][0]
                else:  # merged into a neighbour's choice: score that choice here
                    values[b["rows"]] = self._route_value(weights, blend, b["rows"])[0]
            lo = (hi or 0) + 1
        return serve_newcomers(routes), values, trace

    def _single_values(self, name: str) -> np.ndarray:
        """Per-user values of ``name`` alone (popularity where it cannot serve, as served)."""
        return self.val.values(self._lists({name: 1.0}, "weighted", np.arange(len(self.val))))

    def _beats(
        self, base: np.ndarray, new: np.ndarray, a: str, b: str, rows: np.ndarray | None = None
    ) -> tuple[str, bool, float]:
        """Is ``new`` significantly better than ``base`` (paired over the same users, at the
        gate's level ``alpha``)? The rule every departure from a default must pass. The
        arrays hold values of the validation rows ``rows`` (all rows if None). Returns the
        verdict line, the decision and the test's p-value (for a correction over several).

        With several folds, ``new`` must also be at least as good on the newest fold alone
        (the slice closest to what will be served): a gain that only the older folds show is
        drift, not something to bet the default on."""
        c = self._paired_test(base, new, a, b, rows)
        if c is None:
            return "too few users to compare", False, 1.0
        better = bool(c.significant and c.diff > 0)
        newest = self._newest_means(base, new, rows)
        if better and newest is not None and newest[1] < newest[0]:
            verdict = (
                f"{c.verdict}, but not on the newest fold ({newest[1]:.4f} vs {newest[0]:.4f})"
            )
            return verdict, False, c.p_value
        return c.verdict, better, c.p_value

    def _paired_test(self, base, new, a="A", b="B", rows=None):
        """The gate's paired test of ``new`` against ``base`` (values of the validation rows
        ``rows``, all if None), one user one unit; None with fewer than two users."""
        from recsys.offline.evaluation import stats

        base_u, new_u = self.val.paired(base, new, rows)
        if len(base_u) < 2:
            return None
        return stats.compare(
            base_u, new_u, self.opt.objective, a, b, resamples=1000, alpha=self.opt.alpha
        )

    def _newest_means(
        self, base: np.ndarray, new: np.ndarray, rows: np.ndarray | None = None
    ) -> tuple[float, float] | None:
        """Means of ``base`` and ``new`` over the newest fold's rows (of ``rows``) where both
        are defined; None with a single fold or no such row."""
        if self.val.n_folds < 2:
            return None
        fold_of = self.val.fold_of if rows is None else self.val.fold_of[rows]
        ok = (fold_of == 0) & np.isfinite(base) & np.isfinite(new)
        return (float(base[ok].mean()), float(new[ok].mean())) if ok.any() else None

    def _not_behind(self, base: np.ndarray, new: np.ndarray) -> bool:
        """``new``'s mean is at least ``base``'s over all validation rows (where both are
        defined), and ``new`` is not significantly worse on the newest fold's rows.

        For a tie the point estimate on one fold is a coin flip, not evidence: the newest
        fold holds a third of the rows or fewer, and two tied configurations trade places
        between folds. It vetoes the ensemble only when the newest slice shows a real loss
        (drift), at the gate's level."""
        ok = np.isfinite(base) & np.isfinite(new)
        if not ok.any() or new[ok].mean() < base[ok].mean():
            return False
        if self.val.n_folds < 2:
            return True
        rows = self.val.rows_of(0)
        c = self._paired_test(base[rows], new[rows], rows=rows)
        return c is None or not (c.significant and c.diff < 0)

    # -- stage 3: the guard through the full request path ------------------------------------------
    def _served(self, overrides: dict[str, Any], models: dict[str, list]) -> np.ndarray:
        from recsys.core.config import ServingConfig
        from recsys.core.recommender import Recommender
        from recsys.core.types import RecRequest

        cfg = ServingConfig.default().with_overrides(overrides)
        out = np.full((len(self.val), self.k), -1, dtype=np.int64)
        for f in range(self.val.n_folds):
            fold_models = {name: ms[f] for name, ms in models.items()}
            rec = Recommender(models=fold_models.get, config=cfg)
            rows = self.val.rows_of(f)
            for start in range(0, len(rows), _BATCH):
                chunk = rows[start : start + _BATCH]
                hs = [self.val.histories[r] for r in chunk]
                res = rec.recommend_batch(hs, [RecRequest(n=self.k)] * len(hs))
                for row, r in zip(chunk.tolist(), res, strict=True):
                    ids = [it.item_id for it in r.items][: self.k]
                    out[row, : len(ids)] = self.train.items.indices(ids)
        return self.val.values(out)

    def _guard(self, profile_over, models) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        from recsys.offline.evaluation import stats
        from recsys.offline.evaluation.configs import single_strategy_overrides

        values = {"profile": self._served(profile_over, models)}
        for s in self.cands:
            values[s] = self._served(single_strategy_overrides(s), models)
        means = {k: float(np.nanmean(v)) for k, v in values.items()}
        singles = [s for s in self.cands]
        best = max(singles, key=lambda s: means[s])
        checks = []
        passed = True
        for base in dict.fromkeys([best, "popular"]):
            base_u, prof_u = self.val.paired(values[base], values["profile"])
            c = stats.compare(base_u, prof_u, self.opt.objective, base, "profile", seed=0)
            ok = means["profile"] >= means[base] - 1e-12 and not (c.significant and c.diff < 0)
            passed &= ok
            checks.append({"baseline": base, "ok": ok, "verdict": c.verdict, "diff": c.diff})
        guard = {
            "verdict": "passed" if passed else "failed",
            "best_single": best,
            "means": {k: round(v, 6) for k, v in means.items()},
            "checks": checks,
            "reason": (
                f"profile {means['profile']:.4f} >= best single {best} {means[best]:.4f} "
                f"and popular {means['popular']:.4f} on validation"
                if passed
                else "profile is worse than "
                + ", ".join(c["baseline"] for c in checks if not c["ok"])
                + f" on validation ({means['profile']:.4f} vs best single {best} "
                f"{means[best]:.4f})"
            ),
        }
        return guard, values

    def _route_metrics(self, routes, values) -> dict[str, Any]:
        n = self.val.hist_len
        out, lo = {}, 0
        for r in routes:
            hi = r["max_history"]
            mask = (n >= lo) & ((n <= hi) if hi is not None else True)
            v = values[mask]
            out[r["name"]] = {
                "users": int(mask.sum()),
                self.opt.objective: round(float(np.nanmean(v)), 6) if v.size else None,
            }
            lo = (hi or 0) + 1
        return out

    # -- the whole run -----------------------------------------------------------------------------
    def run(self):
        from recsys.models.profile import ServingProfile

        try:
            self._prepare()
            names = self._strategies()
            self._tune_params(names)
            if self.opt.routes is not None:
                routes = [dict(r) for r in self.opt.routes]
                cross = None
                self.trace["routes"] = {"given": True}
            else:
                routes, cross, self.trace["routes"] = self._search_routes()
            used = {s for r in routes for s, w in r["weights"].items() if w > 0} | {"popular"}
            params = {s: self.params[s] for s in sorted(used) if s in self.params}
            draft = ServingProfile(routes=routes, params=params, objective=self.opt.objective)
            draft.check()
            self.clock.tick("guard")
            guard, values = self._guard(draft.serving_overrides(), self.models)
            if guard["verdict"] != "passed":
                best = guard["best_single"]
                log.warning("tune: guard failed (%s); falling back to %s", guard["reason"], best)
                guard["fallback"] = best
                routes = single_routes(best)
                params = {s: self.params[s] for s in {best, "popular"} if s in self.params}
            validation = {
                "slice": self.opt.validation,
                "fraction": self.opt.fraction,
                "users": int(len(np.unique(self.val.users))),
                "rows": int(len(self.val)),
                "folds": int(self.val.n_folds),
                "train_events": int(len(self.train)),
                "overall": {self.opt.objective: guard["means"]["profile"]},
                "routes": self._route_metrics(routes, values["profile"]),
                "baselines": {s: guard["means"][s] for s in self.cands},
            }
            if cross is not None:
                validation["cross_fitted"] = round(float(np.nanmean(cross)), 6)
            return ServingProfile(
                routes=routes,
                params=params,
                objective=self.opt.objective,
                validation=validation,
                guard=guard,
                trace={**self.trace, "seconds": round(self.clock.elapsed(), 1)},
                data={
                    "events": int(len(self.data)),
                    "users": int(self.data.n_users),
                    "items": int(self.data.n_items),
                    "span_days": round(self.stats.span_days, 2),
                },
                created_at=datetime.now(UTC).isoformat(),
            ).check()
        finally:
            self.clock.close()


def single_routes(name: str) -> list[dict[str, Any]]:
    """Routes serving ``name`` alone (popularity for empty histories if ``name`` cannot score
    them, as the request path would fall back anyway, but without marking answers degraded)."""
    return serve_newcomers(
        [{"name": "all", "max_history": None, "weights": {name: 1.0}, "blend": None}]
    )


def _normalise(w: dict[str, float]) -> dict[str, float]:
    """Weights under MIN_WEIGHT off, the rest scaled so the largest is 1 (fusion is scale-free)."""
    w = {s: float(v) for s, v in w.items() if v >= MIN_WEIGHT}
    top = max(w.values(), default=0.0)
    return {s: round(v / top, 4) for s, v in w.items()} if top > 0 else {}


def _cut(left_max: int, right_min: int) -> int:
    """Where a route boundary goes between two bins: the geometric middle of the gap between
    the longest history on the left and the shortest on the right (history lengths grow by
    ratios; users seen at serving time have longer histories than in the validation slice)."""
    left_max, right_min = int(left_max), int(right_min)
    if right_min - left_max <= 1:
        return left_max
    return min(max(left_max, int(math.sqrt(max(left_max, 1) * right_min))), right_min - 1)


def serve_newcomers(routes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``routes`` with empty histories (every new shopper, whether or not validation had any)
    sent only to strategies that can score them. Where the first route has none, those
    users get popularity through a route of their own: what the request path would fall back
    to (and what validation scored for them), but not marked degraded. The first route keeps
    the weights of its strategies that can (its others are never asked for such users)."""
    from strategies import scores_empty_history

    first = routes[0]
    able = {s: w for s, w in first["weights"].items() if scores_empty_history(s)}
    if first["max_history"] == 0:
        weights = _normalise(able) or {"popular": 1.0}
        return [{**first, "weights": weights}, *routes[1:]]
    if able:
        return routes
    hi = first["max_history"]
    return [
        {"name": "h0", "max_history": 0, "weights": {"popular": 1.0}, "blend": None},
        {**first, "name": "h" + _bin_label(1, hi)},
        *routes[1:],
    ]


def _bin_label(lo: int, hi: int | None) -> str:
    if hi is None:
        return f"{lo}+"
    return f"{lo}" if hi == lo else f"{lo}-{hi}"


def _study_trace(study, keep_trials: bool = True) -> dict[str, Any]:
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    out: dict[str, Any] = {
        "trials": len(study.trials),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
    }
    if done:
        best = max(done, key=lambda t: t.value)
        out["best_value"] = round(float(best.value), 6)
        out["best_params"] = best.user_attrs.get("kwargs", best.params)
        out["first_value"] = round(float(done[0].value), 6)
    if keep_trials:
        out["history"] = [
            {
                "n": t.number,
                "value": None if t.value is None else round(float(t.value), 6),
                "params": t.user_attrs.get("kwargs", t.params),
                "seconds": t.user_attrs.get("seconds"),
                "state": t.state.name.lower(),
            }
            for t in study.trials
        ]
    return out


def tune(data: InteractionData, options: TuneOptions | None = None):
    """Search a serving profile for ``data`` (see the module docstring); returns an unsaved
    ``recsys.models.profile.ServingProfile`` whose ``guard`` says whether it passed."""
    return Tuner(data, options or TuneOptions()).run()


def tune_config(
    cfg: Any,
    train: InteractionData,
    split: str,
    seed: int,
    ratio: float,
    fraction: float | None,
    budget_s: float,
    progress: bool,
    **options: Any,
):
    """Fill a ``tuned`` configuration in from a search on ``train`` alone: the validation slice
    is cut from it the way ``split`` cut the test part (time: its newest share; leave-last-out:
    each user's last training event; random splits: a random share). Returns the profile."""
    share = (fraction or 0.2) if split == "time" else 1.0 - ratio
    opts = TuneOptions(
        budget_s=budget_s,
        validation=split,
        fraction=share,
        seed=seed,
        progress=progress,
        **options,
    )
    profile = tune(train, opts)
    cfg.serving = profile.serving_overrides()
    cfg.serving["profile"] = cfg.name
    cfg.params = {s: dict(p) for s, p in profile.params.items()}
    cfg.description = f"self-tuned on the training part ({budget_s:.0f} s budget)"
    log.info("tuned profile for %s:\n%s", cfg.name, profile.summary())
    return profile
