"""The search behind ``recsys tune``: routes, blend weights and hyperparameters from the data.

Nothing here is tuned to one dataset; every choice is measured on a validation slice cut from
the data it is given, the way the caller's test is cut (``time``: the newest events;
``leave-last-out``: each user's last event; ``random-user``/``stratified-item``: a seeded random
share; ``folds``). The search runs in three stages within one time budget:

1. **Strategy hyperparameters** (``hyper``). One Optuna study (TPE sampler, seeded) per
   strategy: each trial fits the strategy on the validation slice's training part and scores
   it alone on the validation users it can serve (``Strategy.scores_empty_history``). The class
   defaults are the first trial (``spaces``), so a tuned strategy is never worse on validation
   than the shipped one. Cheap strategies run more trials; the budget left by one passes on to
   the next.
2. **Routes and blend** (``routes``). With each strategy's best model, every validation user's
   candidate lists are computed once (``Recommender.candidates``). Users are put into fine
   history bins (quantiles of their history length; an empty history is always its own bin),
   and blend weights and the fusion method (weighted / RRF) are searched over all users and per
   bin, evaluated through the request path's own blend, rules and page
   (``Recommender.strategies_for`` and ``ranked_page``) with median pruning after half of the
   users. Each search runs twice, on two halves of its users, and each half's winner is scored
   on the other half (cross-fitting): a bin departs from the overall champion only if that
   honest figure is significantly better there (``guard``). Adjacent bins with the same choice
   make one route (at most ``max_routes``).
3. **Guard.** The chosen profile and every single strategy (and popularity) are run through the
   full ``Recommender.recommend_batch`` path with the real models on the validation users. The
   profile passes if its mean is at least the best single configuration's and popularity's and
   a paired test (``recsys.offline.evaluation.stats.compare``) finds it not significantly worse
   (``guard.guard_verdict``); otherwise the best single configuration is what the result
   recommends serving.

The modules: ``options`` (``TuneOptions``, the budget), ``spaces`` (hyperparameter spaces),
``folds`` (the validation rows), ``guard`` (the statistical tests, pure functions), ``hyper``
(stage 1), ``routes`` (stage 2), ``trace`` (studies and the trace); this one composes them.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import numpy as np

from features.interactions import InteractionData
from recsys.offline.tuning import guard
from recsys.offline.tuning.folds import BATCH, Validation, validation_folds
from recsys.offline.tuning.hyper import search_params
from recsys.offline.tuning.options import Clock, TuneOptions
from recsys.offline.tuning.routes import RouteSearch, route_metrics, single_routes
from recsys.offline.tuning.spaces import DataStats
from recsys.offline.tuning.trace import Studies

log = logging.getLogger(__name__)


class Tuner:
    """One tuning run over ``data`` (see ``tune``).

    Parameters
    ----------
    data : InteractionData
        The events to tune on.
    options : TuneOptions
        The search options (checked here: ``ValueError`` when one is out of range).
    """

    # Stage shares of the budget: hyperparameters, routes and weights (the guard takes the rest).
    SHARE_PARAMS = 0.6
    SHARE_ROUTES = 0.3
    MAX_TRIALS_PARAMS = 30
    MAX_TRIALS_ROUTES = 80
    # Share of the budget kept for the learned ranker's training (``TuneOptions.ranker``):
    # about what it took at S and M (tens of seconds on at most ``max_rows`` rows).
    RANKER_SHARE = 0.1

    def __init__(self, data: InteractionData, options: TuneOptions):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.data = data
        self.opt = options.check()
        self.metric, self.k = options.metric()
        self.clock = Clock(options.budget_s, options.progress)
        self.stats = DataStats.of(data)
        self.trace: dict[str, Any] = {"params": {}, "routes": {}}
        self.studies = Studies(options.seed, options.storage)
        # Estimated seconds of each strategy's fits (``_fit_plan``) and the seconds kept off
        # the search's clock for the refits and the ranker.
        self.fold_s: dict[str, float] = {}
        self.refit_s: dict[str, float] = {}
        self.reserve_s = 0.0

    # -- stage 0: the slice ------------------------------------------------------------------
    def _prepare(self) -> None:
        """Cut the validation folds (``self.val``) and the halves for cross-fitting."""
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
        self.val = Validation(folds, self.k, self.metric, self.opt.max_rows, self.opt.seed)
        if len(self.val) == 0:
            raise ValueError("no validation user has a positive event to predict")
        # Two halves of the validation users, for every cross-fitted estimate (by user: one
        # user's rows in several folds stay on one side).
        halves = np.random.default_rng(self.opt.seed).integers(0, 2, size=self.data.n_users)
        self.halves = halves[self.val.users]
        self.train = self.val.train
        log.info(
            "tune: %d validation rows in %d fold(s) (%s slice, %d training events)",
            len(self.val),
            self.val.n_folds,
            self.opt.validation,
            len(self.train),
        )

    def _strategies(self) -> list[str]:
        """The strategies searched: those named (or every one not opt-in) that import, and
        popularity (the request path's fallback) in any case."""
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
        return [name for name in out if name == "popular" or not self._over_budget(name)]

    def _fit_plan(self, names: list[str]) -> list[str]:
        """The strategies whose fits fit the time budget, and the budget left to the search.

        Each searched strategy costs at least one fit per fold (its defaults) here and one on
        all events afterwards (``recsys tune``'s refit), whatever the search does: their
        estimated seconds (``Strategy.estimate_cost``) are counted against ``budget_s``
        cheapest first, a strategy that would take the total past it is left out (popularity
        never), and the refits' estimate is kept out of the search's clock.
        """
        from strategies import get_strategy_class

        def seconds(name: str, data: InteractionData) -> float:
            cost = get_strategy_class(name).estimate_cost(data.n_users, data.n_items, len(data))
            return float(cost[1] or 0.0)

        fold = {n: sum(seconds(n, t) for t in self.val.trains) for n in names}
        refit = {n: seconds(n, self.data) for n in names}
        self.fold_s = fold
        kept, total = [], 0.0
        for name in sorted(names, key=lambda n: fold[n] + refit[n]):
            cost = fold[name] + refit[name]
            if name != "popular" and total + cost > self.opt.budget_s:
                why = (
                    f"{name}: left out: its fits (~{cost:.0f} s estimated: {self.val.n_folds} "
                    f"fold(s) and the refit) would take the run past its {self.opt.budget_s:.0f} "
                    "s budget"
                )
                log.warning("tune: %s", why)
                self.trace.setdefault("left_out", {})[name] = why
                continue
            kept.append(name)
            total += cost
        self.refit_s = {n: refit[n] for n in kept}
        reserve = sum(refit[n] for n in kept)
        if self.opt.ranker:
            reserve += self.RANKER_SHARE * self.opt.budget_s
        self.reserve_s = min(reserve, 0.8 * self.clock.budget_s)
        self.clock.budget_s -= self.reserve_s
        return [n for n in names if n in kept]

    def _after_defaults(self, left_out: dict[str, str], rate: float, score_s: float) -> None:
        """Settle the reserve once the defaults are fitted: the refits of strategies left out
        (``hyper.search_params``) are given back to the search, and those of the kept ones
        are scaled by the measured rate (a run at 3x the estimates refits at 3x too); the
        guard (the profile and each strategy through the request path: about two trials'
        scoring, ``score_s``, per strategy) is kept off the clock too, so that search + guard
        + ranker + refits stay within the budget."""
        for name, why in left_out.items():
            self.trace.setdefault("left_out", {})[name] = why
        kept = [n for n in self.refit_s if n not in left_out]
        refits = sum(self.refit_s[n] for n in kept) * max(rate, 1.0)
        ranker = self.RANKER_SHARE * self.opt.budget_s if self.opt.ranker else 0.0
        guard = 2 * len(kept) * score_s
        reserve = min(refits + ranker + guard, 0.8 * self.opt.budget_s)
        self.clock.budget_s += self.reserve_s - reserve
        self.reserve_s = reserve
        self.trace["fit_rate"] = round(rate, 2)

    def _over_budget(self, name: str) -> bool:
        """Whether ``recsys train``'s budget leaves the strategy out (said once in the log);
        the fits of a search are each as large as a training run's holdout fit."""
        from recsys.offline.training import over_budget
        from strategies import get_strategy_class

        why = over_budget(
            get_strategy_class(name),
            self.data,
            {},
            self.opt.memory_budget_bytes,
            self.opt.fit_time_limit_s,
        )
        if why is not None:
            log.warning("tune: %s", why)
            self.trace.setdefault("left_out", {})[name] = why
        return why is not None

    # -- stage 1: hyperparameters ------------------------------------------------------------
    def _tune_params(self, names: list[str]) -> None:
        """Each strategy's hyperparameters, candidates and models (``hyper.search_params``)."""
        tuned = search_params(
            names,
            self.val,
            self.halves,
            self.stats,
            self.opt,
            self.clock,
            self.studies,
            share=self.SHARE_PARAMS,
            max_trials=self.opt.max_trials or self.MAX_TRIALS_PARAMS,
            estimates=self.fold_s,
            settle=self._after_defaults,
        )
        self.params, self.cands, self.models = tuned.params, tuned.cands, tuned.models
        self.trace["params"].update(tuned.trace)

    # -- stage 2: routes -------------------------------------------------------------------------
    def _search_routes(self) -> tuple[list[dict[str, Any]], np.ndarray, dict[str, Any]]:
        """Routes, their cross-fitted per-row values and the trace (``routes.RouteSearch``)."""
        search = RouteSearch(self.val, self.cands, self.halves, self.opt, self.clock, self.studies)
        return search.run(
            self.SHARE_ROUTES / (1 - self.SHARE_PARAMS),
            self.opt.max_trials or self.MAX_TRIALS_ROUTES,
        )

    # -- stage 3: the guard through the full request path ------------------------------------------
    def _served(self, overrides: dict[str, Any]) -> np.ndarray:
        """Per-row values of the configuration ``overrides`` through the full request path
        (``Recommender.recommend_batch``), each fold's rows with that fold's models."""
        from recsys.core.config import ServingConfig
        from recsys.core.recommender import Recommender
        from recsys.core.types import RecRequest

        cfg = ServingConfig.default().with_overrides(overrides)
        out = np.full((len(self.val), self.k), -1, dtype=np.int64)
        for f in range(self.val.n_folds):
            fold_models = {name: ms[f] for name, ms in self.models.items()}
            rec = Recommender(models=fold_models.get, config=cfg)
            rows = self.val.rows_of(f)
            for start in range(0, len(rows), BATCH):
                chunk = rows[start : start + BATCH]
                hs = [self.val.histories[r] for r in chunk]
                res = rec.recommend_batch(hs, [RecRequest(n=self.k)] * len(hs))
                for row, r in zip(chunk.tolist(), res, strict=True):
                    ids = [it.item_id for it in r.items][: self.k]
                    out[row, : len(ids)] = self.train.items.indices(ids)
        return self.val.values(out)

    def _guard(self, profile_over: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The profile and every single strategy served; the guard's verdict on them."""
        from recsys.offline.evaluation.configs import single_strategy_overrides

        values = {"profile": self._served(profile_over)}
        for s in self.cands:
            values[s] = self._served(single_strategy_overrides(s))
        verdict = guard.guard_verdict(
            values, list(self.cands), self.val.guard_rows(), self.opt.objective
        )
        return verdict, values

    # -- the whole run -----------------------------------------------------------------------------
    def run(self):
        """Run the three stages within the budget (see the module docstring).

        Returns
        -------
        ServingProfile
            Checked and unsaved; its ``guard`` says whether the searched profile passed (when it
            did not, the profile serves the best single strategy instead).
        """
        from recsys.models.profile import ServingProfile

        try:
            self._prepare()
            names = self._fit_plan(self._strategies())
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
            verdict, values = self._guard(draft.serving_overrides())
            if verdict["verdict"] != "passed":
                best = verdict["best_single"]
                log.warning("tune: guard failed (%s); falling back to %s", verdict["reason"], best)
                verdict["fallback"] = best
                routes = single_routes(best)
                params = {s: self.params[s] for s in {best, "popular"} if s in self.params}
            validation = {
                "slice": self.opt.validation,
                "fraction": self.opt.fraction,
                "users": int(len(np.unique(self.val.users))),
                "rows": int(len(self.val)),
                "folds": int(self.val.n_folds),
                "train_events": int(len(self.train)),
                "overall": {self.opt.objective: verdict["means"]["profile"]},
                "routes": route_metrics(
                    routes, values["profile"], self.val.hist_len, self.opt.objective
                ),
                "baselines": {s: verdict["means"][s] for s in self.cands},
            }
            if cross is not None:
                validation["cross_fitted"] = round(float(np.nanmean(cross)), 6)
            self.final = ServingProfile(
                routes=routes,
                params=params,
                objective=self.opt.objective,
                validation=validation,
                guard=verdict,
                trace={**self.trace, "seconds": round(self.clock.elapsed(), 1)},
                data={
                    "events": int(len(self.data)),
                    "users": int(self.data.n_users),
                    "items": int(self.data.n_items),
                    "span_days": round(self.stats.span_days, 2),
                },
                created_at=datetime.now(UTC).isoformat(),
            ).check()
            return self.final
        finally:
            self.clock.close()

    def fit_ranker(self):
        """Train the learned second stage over the chosen profile (after ``run``), on the
        same validation rows, and guard it out of fold (``recsys.offline.tuning.ranking``).

        Returns
        -------
        tuple
            ``(Ranker or None, report)``: None when the guard keeps the blend.
        """
        from recsys.offline.tuning.ranking import fit_ranker

        return fit_ranker(
            self.val,
            self.cands,
            self.final.serving_overrides(),
            self.halves,
            self.data,
            seed=self.opt.seed,
            alpha=self.opt.alpha,
            objective=self.opt.objective,
            repeats=self.opt.ranker_repeats,
            # ``recsys tune``: its share of the budget (``RANKER_SHARE``); evaluations: no limit
            budget_s=self.RANKER_SHARE * self.opt.budget_s if self.opt.ranker else None,
        )


def tune(data: InteractionData, options: TuneOptions | None = None):
    """Search a serving profile for ``data`` (see the module docstring); returns an unsaved
    ``recsys.models.profile.ServingProfile`` whose ``guard`` says whether it passed.

    Parameters
    ----------
    data : InteractionData
        The events to tune on.
    options : TuneOptions or None
        The search options; None: the defaults.

    Returns
    -------
    ServingProfile
        The profile, unsaved.

    Raises
    ------
    ValueError
        An option out of range.
    """
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
    each user's last training event; random splits: a random share). Returns the profile.

    Parameters
    ----------
    cfg : EvalConfig
        The ``tuned`` configuration; its ``serving``, ``params`` and ``description`` are set.
    train : InteractionData
        The evaluation's training part.
    split : str
        The evaluation's split name (and the validation's).
    seed : int
        Random seed of the search and of random validation splits.
    ratio : float
        Training share of the random splits (the validation share is ``1 - ratio``).
    fraction : float or None
        ``time`` split: test share (None: 0.2), reused as the validation share.
    budget_s : float
        Search budget, in seconds.
    progress : bool
        Show a progress bar.
    **options : Any
        Further ``TuneOptions`` fields.

    Returns
    -------
    ServingProfile
        The profile the configuration now stands for.
    """
    share = (fraction or 0.2) if split == "time" else 1.0 - ratio
    opts = TuneOptions(
        budget_s=budget_s,
        validation=split,
        fraction=share,
        seed=seed,
        progress=progress,
        **options,
    )
    # ``tuned`` and ``ranked`` in one evaluation share one search: ``ranked`` is the same
    # profile with the ranker on top, so their comparison isolates the ranker.
    key = (id(train), len(train), repr(opts))
    if _LAST.get("key") == key:
        tuner, profile = _LAST["tuner"], _LAST["profile"]
    else:
        tuner = Tuner(train, opts)
        profile = tuner.run()
        _LAST.clear()
        _LAST.update(key=key, tuner=tuner, profile=profile)
    cfg.serving = profile.serving_overrides()
    cfg.serving["profile"] = cfg.name
    cfg.params = {s: dict(p) for s, p in profile.params.items()}
    cfg.description = f"self-tuned on the training part ({budget_s:.0f} s budget)"
    log.info("tuned profile for %s:\n%s", cfg.name, profile.summary())
    if getattr(cfg, "rank", False):
        ranker, report = tuner.fit_ranker()
        cfg.ranker = ranker
        cfg.ranker_report = report
        if ranker is not None:
            cfg.params.update({g: dict(tuner.params.get(g, {})) for g in ranker.generators})
        cfg.description += "; learned ranker " + ("on top" if ranker else "kept out by the guard")
    return profile


# The last search ``tune_config`` ran (see there).
_LAST: dict[str, Any] = {}
