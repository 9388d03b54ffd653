"""Stage 2 of the search: routes by history length, and each route's blend.

With each strategy's best model, every validation row's candidate lists are computed once
(stage 1). Users are put into fine history bins (quantiles of their history length; an
empty history is its own bin). The champion is the best single strategy over all rows, or a
blend searched over all of them (cross-fitted: searched on one half of the users, scored on
the other) where the guard lets it (``guard.beats``, ``guard.not_behind``). Per bin, a
challenger (the bin's best single strategy or a blend searched on its users) replaces the
champion only where it is significantly better there, after Holm's correction over the bins
(``guard.holm_departures``). Adjacent bins with the same choice make one route; beyond
``max_routes``, the bins whose own choice gains least over their neighbour's are merged into
it. Every list is made by the request path's own blend, rules and page
(``Recommender.strategies_for`` and ``ranked_page``).

Over 500 lines because of its numpy-style docstrings (the code itself is under 500): the route
search is one object whose steps share the validation rows and the clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from recsys.offline.tuning import guard
from recsys.offline.tuning.bins import cut, history_bins
from recsys.offline.tuning.folds import Validation
from recsys.offline.tuning.options import Clock, TuneOptions
from recsys.offline.tuning.trace import Studies, bin_label, study_trace

# Weights under this are "off": the route does not call the strategy at all.
MIN_WEIGHT = 0.05

# One searchable option: its per-row values, weights and fusion method.
Option = tuple[np.ndarray, dict[str, float], str]


def single_routes(name: str) -> list[dict[str, Any]]:
    """Routes serving ``name`` alone (popularity for empty histories if ``name`` cannot score
    them, as the request path would fall back anyway, but without marking answers degraded).

    Parameters
    ----------
    name : str
        Strategy name.

    Returns
    -------
    list[dict[str, Any]]
        Profile route dicts (``name``, ``max_history``, ``weights``, ``blend``).
    """
    return serve_newcomers(
        [{"name": "all", "max_history": None, "weights": {name: 1.0}, "blend": None}]
    )


def normalise(w: dict[str, float]) -> dict[str, float]:
    """Weights under MIN_WEIGHT off, the rest scaled so the largest is 1 (fusion is scale-free).

    Parameters
    ----------
    w : dict[str, float]
        Strategy -> raw weight.

    Returns
    -------
    dict[str, float]
        Strategy -> weight in (0, 1], rounded to 4 decimals; empty when every weight is off.
    """
    w = {s: float(v) for s, v in w.items() if v >= MIN_WEIGHT}
    top = max(w.values(), default=0.0)
    return {s: round(v / top, 4) for s, v in w.items()} if top > 0 else {}


def serve_newcomers(routes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``routes`` with empty histories (every new shopper, whether or not validation had any)
    sent only to strategies that can score them. Where the first route has none, those
    users get popularity through a route of their own: what the request path would fall back
    to (and what validation scored for them), but not marked degraded. The first route keeps
    the weights of its strategies that can (its others are never asked for such users).

    Parameters
    ----------
    routes : list[dict[str, Any]]
        Profile route dicts, by ascending ``max_history``.

    Returns
    -------
    list[dict[str, Any]]
        The routes, with at most one more (``h0``: popularity) in front.
    """
    from strategies import scores_empty_history

    first = routes[0]
    able = {s: w for s, w in first["weights"].items() if scores_empty_history(s)}
    if first["max_history"] == 0:
        weights = normalise(able) or {"popular": 1.0}
        return [{**first, "weights": weights}, *routes[1:]]
    if able:
        return routes
    hi = first["max_history"]
    return [
        {"name": "h0", "max_history": 0, "weights": {"popular": 1.0}, "blend": None},
        {**first, "name": "h" + bin_label(1, hi)},
        *routes[1:],
    ]


def priors(singles: dict[str, np.ndarray]) -> list[dict[str, float]]:
    """Starting blends from the strategies' per-row values alone (``singles``): the two and
    three strongest evenly, and the shipped default's warm weights (what an operator would
    try first).

    Parameters
    ----------
    singles : dict[str, np.ndarray]
        Strategy -> its per-row values alone.

    Returns
    -------
    list[dict[str, float]]
        Starting weight dicts.
    """
    from recsys.core.config import DEFAULT_CONFIG

    ranked = sorted(singles, key=lambda s: -float(np.nanmean(singles[s])))
    out = [{s: 1.0 for s in ranked[:2]}, {s: 1.0 for s in ranked[:3]}]
    shipped = DEFAULT_CONFIG["strategies"]
    warm = DEFAULT_CONFIG["routing"]["warm_strategies"]
    out.append({s: shipped[s]["weight"] for s in warm if s in singles})
    return out


def route_metrics(
    routes: Sequence[dict[str, Any]], values: np.ndarray, hist_len: np.ndarray, objective: str
) -> dict[str, Any]:
    """Per route, its validation rows (by history length) and their mean of ``values``.

    Parameters
    ----------
    routes : Sequence[dict[str, Any]]
        Profile route dicts, by ascending ``max_history``.
    values : np.ndarray
        Per-row values.
    hist_len : np.ndarray
        Each row's history length.
    objective : str
        Metric key of the mean in the answer.

    Returns
    -------
    dict[str, Any]
        Route name -> ``{"users": int, objective: mean (6 decimals) or None}``.
    """
    n = hist_len
    out, lo = {}, 0
    for r in routes:
        hi = r["max_history"]
        mask = (n >= lo) & ((n <= hi) if hi is not None else True)
        v = values[mask]
        out[r["name"]] = {
            "users": int(mask.sum()),
            objective: round(float(np.nanmean(v)), 6) if v.size else None,
        }
        lo = (hi or 0) + 1
    return out


def _newcomer_route(runs: list[dict[str, Any]]) -> int:
    """1 if ``serve_newcomers`` may add a route for empty histories before these runs."""
    from strategies import scores_empty_history

    return 0 if any(scores_empty_history(s) for s in runs[0]["option"][1]) else 1


class RouteSearch:
    """Stage 2 (see the module docstring) over the strategies of ``cands`` (per strategy, the
    candidates of every validation row); ``halves`` (0 or 1 per row, by user) splits the rows
    for every cross-fitted estimate.

    Parameters
    ----------
    val : Validation
        The validation rows.
    cands : dict[str, list]
        Strategy -> its candidates per validation row (stage 1).
    halves : np.ndarray
        Each row's half, 0 or 1.
    opt : TuneOptions
        The search options.
    clock : Clock
        The run's budget clock.
    studies : Studies
        Makes the Optuna studies.
    """

    def __init__(
        self,
        val: Validation,
        cands: dict[str, list],
        halves: np.ndarray,
        opt: TuneOptions,
        clock: Clock,
        studies: Studies,
    ):
        self.val, self.cands, self.halves = val, cands, halves
        self.opt, self.clock, self.studies = opt, clock, studies
        self.k = val.k

    # -- one route's lists and values ------------------------------------------------------------
    def config(self, weights: dict[str, float], blend: str):
        """The serving configuration of one route over every candidate strategy.

        Parameters
        ----------
        weights : dict[str, float]
            Strategy -> blend weight.
        blend : str
            Fusion method: "weighted" or "rrf".

        Returns
        -------
        ServingConfig
            The shipped default with those strategies enabled and one route ``r`` for everyone.
        """
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

    def lists(self, weights: dict[str, float], blend: str, rows: np.ndarray) -> np.ndarray:
        """Top-k of the validation rows ``rows`` under one route's weights, through the
        request path's strategy choice, blend, rules and page (``Recommender``).

        Parameters
        ----------
        weights : dict[str, float]
            Strategy -> blend weight of the route.
        blend : str
            Fusion method: "weighted" or "rrf".
        rows : np.ndarray
            Validation row indices.

        Returns
        -------
        np.ndarray
            ``(len(rows), k)`` item indices, -1 padded.
        """
        from recsys.core.recommender import Recommender
        from recsys.core.types import RecRequest

        rec = Recommender(models=lambda _n: None, config=self.config(weights, blend))
        req = RecRequest(n=self.k)
        out = np.full((len(rows), self.k), -1, dtype=np.int64)
        items = self.val.train.items
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

    def route_value(self, weights, blend, rows) -> tuple[np.ndarray, float]:
        """Per-row values of the rows ``rows`` under one route, and their mean (less the
        coverage shortfall with ``min_coverage``).

        Parameters
        ----------
        weights : dict[str, float]
            Strategy -> blend weight of the route.
        blend : str
            Fusion method: "weighted" or "rrf".
        rows : np.ndarray
            Validation row indices.

        Returns
        -------
        tuple[np.ndarray, float]
            ``(len(rows),)`` values and the (coverage-penalised) mean; 0.0 for no rows.
        """
        lists = self.lists(weights, blend, rows)
        v = self.val.values(lists, rows)
        mean = float(np.nanmean(v)) if v.size else 0.0
        if self.opt.min_coverage:
            cov = len(np.unique(lists[lists >= 0])) / max(self.val.train.n_items, 1)
            mean -= max(0.0, self.opt.min_coverage - cov)
        return v, mean

    def single_values(self, name: str) -> np.ndarray:
        """Per-row values of ``name`` alone (popularity where it cannot serve, as served).

        Parameters
        ----------
        name : str
            Strategy name.

        Returns
        -------
        np.ndarray
            ``(len(val),)`` values.
        """
        return self.val.values(self.lists({name: 1.0}, "weighted", np.arange(len(self.val))))

    def beats(self, base, new, a: str, b: str, rows: np.ndarray | None = None) -> guard.Verdict:
        """``guard.beats`` on the validation rows ``rows`` (all if None).

        Parameters
        ----------
        base, new : np.ndarray
            Per-row values of the default and the departure.
        a, b : str
            Their names, for the verdict.
        rows : np.ndarray or None
            The rows the arrays hold; None: every row.

        Returns
        -------
        guard.Verdict
            The verdict, whether the departure is taken, and the p-value.
        """
        return guard.beats(
            base, new, self.val.guard_rows(rows), self.opt.objective, self.opt.alpha, a, b
        )

    # -- weight studies ----------------------------------------------------------------------------
    def search_weights(
        self,
        label: str,
        rows: np.ndarray,
        n_trials: int,
        timeout: float,
        starting: Sequence[dict[str, float]] = (),
        names: Sequence[str] | None = None,
    ):
        """One study over weights and fusion for the rows ``rows``; returns
        ``(weights, blend, study)``. Each strategy alone, an even blend and ``starting``
        (blends of the strongest strategies, the shipped default's) are the first trials.
        ``names``: the strategies searched (default: every candidate).

        Parameters
        ----------
        label : str
            The study's name.
        rows : np.ndarray
            Validation row indices searched on.
        n_trials : int
            Trials wanted, the first ones included.
        timeout : float
            Seconds for the trials beyond the first ones.
        starting : Sequence[dict[str, float]]
            Further starting weight dicts.
        names : Sequence[str] or None
            The strategies searched; None: every candidate strategy.

        Returns
        -------
        tuple[dict[str, float], str, optuna.Study]
            The best weights (normalised), its fusion method, and the study.
        """
        import optuna

        names = list(self.cands) if names is None else list(names)
        starts = [{x: float(x == s) for x in names} for s in names]
        starts += [{s: 1.0 for s in names}, *starting]
        study = self.studies.new(
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
            w = normalise(w)
            if not w:
                return 0.0
            v1, _ = self.route_value(w, blend, half)
            trial.report(float(np.nanmean(v1)) if v1.size else 0.0, 0)
            if trial.should_prune():
                raise optuna.TrialPruned()
            v2, _ = self.route_value(w, blend, rest) if len(rest) else (np.zeros(0), 0.0)
            v = np.concatenate([v1, v2])
            value = float(np.nanmean(v)) if v.size else 0.0
            if self.opt.min_coverage:
                value = self.route_value(w, blend, rows)[1]
            return value

        # The first trials always run: they are what the searched ones are measured against.
        # The rest run while the budget lasts.
        study.optimize(objective, n_trials=len(starts))
        if n_trials > len(starts) and timeout > 0:
            study.optimize(objective, n_trials=n_trials - len(starts), timeout=timeout)
        done = [t for t in study.trials if t.value is not None]
        best = max(done, key=lambda t: t.value)
        p = best.params
        weights = normalise({s: p[f"w_{s}"] for s in names})
        return weights, p["blend"], study

    def crossfit(self, label, rows, cap, timeout, starting, names=None) -> dict[str, Any]:
        """Search blend weights on each half of ``rows`` and score each half's winner on the
        other half: honest (out-of-fold) per-row values. The blend served is the winner that
        scores best on all of ``rows``. ``names``: the strategies searched (default: all).

        Parameters
        ----------
        label : str
            The studies' name prefix.
        rows : np.ndarray
            Validation row indices.
        cap : int
            Trials per study.
        timeout : float
            Seconds per study beyond its first trials.
        starting : Sequence[dict[str, float]]
            Further starting weight dicts.
        names : Sequence[str] or None
            The strategies searched; None: every candidate strategy.

        Returns
        -------
        dict[str, Any]
            ``weights``, ``blend``, ``values`` (out-of-fold, per row of ``rows``) and ``folds``
            (each half's winner and study trace); empty when a half has no rows or a value is
            undefined.
        """
        fold = self.halves
        oos = np.full(len(rows), np.nan)
        found = []
        for f in (0, 1):
            fit_rows, held = rows[fold[rows] == f], rows[fold[rows] != f]
            if len(fit_rows) == 0 or len(held) == 0:
                continue
            w, blend, study = self.search_weights(
                f"{label}/fold{f}", fit_rows, cap, timeout, starting, names
            )
            found.append((w, blend, study_trace(study, keep_trials=False)))
            oos[fold[rows] != f] = self.route_value(w, blend, held)[0]
        if len(found) < 2 or not np.isfinite(oos).all():
            return {}
        scored = [(self.route_value(w, b, rows)[1], w, b) for w, b, _ in found]
        _, w, b = max(scored, key=lambda x: x[0])
        return {
            "weights": w,
            "blend": b,
            "values": oos,
            "folds": [{"weights": fw, "blend": fb, "study": t} for fw, fb, t in found],
        }

    # -- the search ------------------------------------------------------------------------------
    def run(
        self, share: float, max_trials: int
    ) -> tuple[list[dict[str, Any]], np.ndarray, dict[str, Any]]:
        """Routes (profile dicts), their honest per-row values, and a trace; the studies get
        ``share`` of the budget the clock has left and at most ``max_trials`` trials each.

        1. The champion: a blend searched over all validation users (cross-fitted) if its
           out-of-fold values are significantly better than the best single strategy's,
           else that strategy.
        2. Per fine history bin, a challenger (the bin's best single strategy, or a blend
           searched on the bin's users, cross-fitted) replaces the champion only where it is
           significantly better on the bin's users (``guard.beats``), after Holm's correction
           over all the bins tested.
        3. Adjacent bins with the same choice make one route; beyond ``max_routes``, the
           bins whose own choice gains least over their neighbour's are merged into it.

        Parameters
        ----------
        share : float
            Share of the budget left for stage 2, in (0, 1].
        max_trials : int
            Most trials per study.

        Returns
        -------
        tuple[list[dict[str, Any]], np.ndarray, dict[str, Any]]
            The routes (``serve_newcomers`` applied), the per-row honest values, and the trace.
        """
        bins = history_bins(self.val.hist_len, self.opt.n_bins, self.opt.min_bin_users)
        singles = {s: self.single_values(s) for s in self.cands}
        means = {s: float(np.nanmean(v)) for s, v in singles.items()}
        best_single = max(means, key=lambda s: means[s])
        starting = priors(singles)
        seconds = self.clock.left() * share
        # Half of the time for the overall blend, half for the bins (by their users).
        self.clock.tick("routes: all users")
        every = np.arange(len(self.val))
        # No time left (the budget went to the fits): no blend is searched, the best single
        # strategy is the champion (a search's starting trials alone took minutes at M).
        overall = (
            self.crossfit("all", every, max_trials, seconds / 4, starting)
            if self.clock.left() > 0
            else {}
        )
        options: dict[str, Option] = {s: (singles[s], {s: 1.0}, "weighted") for s in singles}
        champion, champion_verdict = best_single, None
        if overall:
            options["blend"] = (overall["values"], overall["weights"], overall["blend"])
            champion, champion_verdict = self._champion(singles[best_single], best_single, overall)
        trace: dict[str, Any] = {
            "bins": [bin_label(lo, hi) for lo, hi in bins],
            "singles": {s: round(m, 6) for s, m in means.items()},
            "champion": champion,
            "champion_verdict": champion_verdict,
            "overall": {k: v for k, v in overall.items() if k != "values"},
            "per_bin": {},
        }
        if overall:
            trace["overall"]["oos"] = round(float(np.nanmean(overall["values"])), 6)
        per_bin = self._per_bin(bins, options, champion, max_trials, seconds, starting, trace)
        self._holm(per_bin, champion, trace)
        runs = self._merge(per_bin)
        routes, values = self._routes(runs, per_bin)
        return serve_newcomers(routes), values, trace

    def _champion(
        self, single: np.ndarray, best_single: str, overall: dict[str, Any]
    ) -> tuple[str, str]:
        """The overall blend is the champion when it is significantly better than the best
        single strategy, or, as an ensemble of models the data cannot tell apart, when its
        honest (cross-fitted) figure is at least the single's overall and not significantly
        behind on the newest fold: averaging tied models lowers the variance of what is
        served. Returns the champion and the verdict."""
        verdict, better, _ = self.beats(single, overall["values"], best_single, "blend")
        if better:
            return "blend", verdict
        rows = self.val.guard_rows()
        if guard.not_behind(single, overall["values"], rows, self.opt.objective, self.opt.alpha):
            return "blend", verdict + (
                "; blend kept: not behind out of fold overall, and not significantly "
                "behind on the newest fold"
            )
        return best_single, verdict

    def _per_bin(self, bins, options, champion, cap, seconds, starting, trace) -> list[dict]:
        """Per bin, its options (the overall ones on its rows and a blend searched there in
        its users' share of half of ``seconds``), the best and its test against the champion."""
        from strategies import scores_empty_history

        n = self.val.hist_len
        per_bin = []
        for lo, hi in bins:
            rows = np.flatnonzero((n >= lo) & ((n <= hi) if hi is not None else True))
            label = bin_label(lo, hi)
            self.clock.tick(f"routes: history {label}")
            opts = {k: (v[rows], w, b) for k, (v, w, b) in options.items()}
            found = {}
            # A bin of empty histories only: the strategies that cannot score one would be
            # dropped by the request path anyway, so their weights are not searched (fewer
            # dimensions for the same trials, and no meaningless weight in the profile).
            names = [s for s in self.cands if scores_empty_history(s)] if hi == 0 else None
            if len(bins) > 1 and (names is None or names) and self.clock.left() > 0:
                timeout = seconds / 4 * len(rows) / len(self.val)
                found = self.crossfit(label, rows, cap, timeout, starting, names)
            if found:
                opts["bin blend"] = (found["values"], found["weights"], found["blend"])
            bin_means = {k: float(np.nanmean(v)) for k, (v, _, _) in opts.items()}
            best = max(bin_means, key=lambda k: bin_means[k])
            test = None
            if best != champion:
                test = self.beats(opts[champion][0], opts[best][0], champion, best, rows)
            per_bin.append({"label": label, "rows": rows, "opts": opts, "best": best, "test": test})
            trace["per_bin"][label] = {
                "users": int(len(rows)),
                "means": {k: round(v, 6) for k, v in bin_means.items()},
                "challenger": best if best != champion else None,
                "verdict": test[0] if test else None,
                "choice": champion,
                "folds": found.get("folds"),
            }
        return per_bin

    def _holm(self, per_bin: list[dict], champion: str, trace: dict[str, Any]) -> None:
        """Each bin's choice: its challenger only if that survives Holm's step-down over
        every bin's test, else the champion."""
        tests = guard.holm_departures(
            {i: b["test"] for i, b in enumerate(per_bin)}, self.opt.alpha, "bins"
        )
        for i, b in enumerate(per_bin):
            test = tests[i]
            choice = b["best"] if test and test.better else champion
            if test:
                trace["per_bin"][b["label"]]["verdict"] = test.verdict
            b["choice"], b["option"] = choice, b["opts"][choice]
            trace["per_bin"][b["label"]]["choice"] = choice

    def _merge(self, per_bin: list[dict]) -> list[dict[str, Any]]:
        """Runs of adjacent bins with equal choices; then, while there are too many, the
        cheapest merge of a run into its neighbour."""
        runs: list[dict[str, Any]] = []
        for i, b in enumerate(per_bin):
            key = (tuple(sorted(b["option"][1].items())), b["option"][2])
            if runs and runs[-1]["key"] == key:
                runs[-1]["bins"].append(i)
            else:
                runs.append({"key": key, "bins": [i], "option": b["option"]})
        # A route serve_newcomers adds counts towards max_routes (the profile's hard limit is
        # MAX_ROUTES); only with max_routes 1 can it make two.
        while len(runs) > 1 and len(runs) + _newcomer_route(runs) > self.opt.max_routes:
            costs = []
            for r in range(len(runs)):
                for nb in (r - 1, r + 1):
                    if 0 <= nb < len(runs):
                        rows = np.concatenate([per_bin[i]["rows"] for i in runs[r]["bins"]])
                        own = np.nansum(self.route_value(*runs[r]["option"][1:], rows)[0])
                        other = np.nansum(self.route_value(*runs[nb]["option"][1:], rows)[0])
                        costs.append((own - other, r, nb))
            _, r, nb = min(costs)
            runs[nb]["bins"] = sorted(runs[nb]["bins"] + runs[r]["bins"])
            del runs[r]
        return runs

    def _routes(self, runs, per_bin) -> tuple[list[dict[str, Any]], np.ndarray]:
        """The runs as routes (cut between their bins' history lengths) and every row's
        honest value under its route."""
        n = self.val.hist_len
        routes, values, lo = [], np.full(len(self.val), np.nan), 0
        for k, run in enumerate(runs):
            last = run["bins"][-1]
            hi = None
            if k < len(runs) - 1:
                hi = cut(n[per_bin[last]["rows"]].max(), n[per_bin[last + 1]["rows"]].min())
            _, weights, blend = run["option"]
            routes.append(
                {"name": "h" + bin_label(lo, hi), "max_history": hi, "weights": weights,
                 "blend": blend}
            )  # fmt: skip
            for i in run["bins"]:
                b = per_bin[i]
                if b["option"][1] == weights and b["option"][2] == blend:
                    values[b["rows"]] = b["option"][0]
                else:  # merged into a neighbour's choice: score that choice here
                    values[b["rows"]] = self.route_value(weights, blend, b["rows"])[0]
            lo = (hi or 0) + 1
        return routes, values
