"""Training the learned second stage (``recsys.core.ranker``) on the tuner's validation rows.

Every validation row (a user of a fold, with their history in that fold's training part and
the items they went on to take) becomes one query group: the pool of every generator's
candidates (the tuner's stage-1 candidates, computed with models fitted on the fold's
training part), the blend of the chosen profile, and features computed with ``ItemStats`` of
that fold's training part alone, so nothing after the fold's cut is seen. The label is whether
the user took the item in the validation slice.

The ranker is kept only if the guard finds it not worse than the blend **out of fold**: the
rows are split by user into the tuner's two halves; a model trained on one half (its
iteration count found by early stopping on a fifth of that half's users) ranks the other half,
and those lists go through the request path's rules and page against the blend's own lists
on the same rows. Per route of the profile (its empty histories apart), it orders only the
segments where its mean is at least the blend's (elsewhere the blend serves); over all rows it
must then have at least the blend's mean and not be significantly worse (paired test, one user
one unit). The served model is then trained on every row with the halves' mean iteration count,
over the item counts of all the data.

Repeat items (the user's own past items in the pool, let through the rules) are used when
the validation targets show that users take items again (``REPEAT_SHARE`` of them or more).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys.core.ranker import segment
from recsys.offline.tuning import guard
from recsys.offline.tuning.folds import Validation

log = logging.getLogger(__name__)

# Candidates each generator (and the blend) puts into the pool.
PER_GENERATOR = 100
# Share of validation targets already in the user's history from which repeats are pooled.
REPEAT_SHARE = 0.01
MAX_ROUNDS = 400
MIN_ROUNDS = 50
EARLY_STOP = MIN_ROUNDS


def booster_params(k: int, seed: int, threads: int = 2) -> dict[str, Any]:
    """LightGBM's settings for the ranker (``lambdarank`` optimising nDCG at ``k``).

    Parameters
    ----------
    k : int
        The cut-off the lists are judged at.
    seed : int
        Random seed (bagging, feature sampling).
    threads : int
        Training threads.

    Returns
    -------
    dict
    """
    return {
        "objective": "lambdarank",
        "metric": "ndcg",
        "eval_at": [k],
        "lambdarank_truncation_level": max(2 * k, 20),
        "learning_rate": 0.05,
        "num_leaves": 15,
        "min_data_in_leaf": 100,
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "num_threads": threads,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "verbose": -1,
    }


@dataclass
class Group:
    """One validation row's pool: its item rows, features, labels and what the lists need."""

    row: int
    segment: str
    rows: np.ndarray
    x: np.ndarray
    y: np.ndarray
    fused: Any
    history: Any


def repeat_share(val: Validation) -> float:
    """Share of the validation targets the user already had in their history.

    Parameters
    ----------
    val : Validation
        The validation rows.

    Returns
    -------
    float
    """
    hits = total = 0
    items = val.train.items
    for r, h in enumerate(val.histories):
        rel = val.relevant.indices[val.relevant.indptr[r] : val.relevant.indptr[r + 1]]
        total += len(rel)
        if len(h):
            hits += int(np.isin(rel, h.item_idx(items)).sum())
    return hits / max(total, 1)


def build_groups(
    val: Validation,
    cands: dict[str, list],
    generators: Sequence[str],
    rec,
    rankers: Sequence,
) -> list[Group]:
    """Every validation row's pool and features (see the module docstring).

    Parameters
    ----------
    val : Validation
        The validation rows.
    cands : dict[str, list]
        Strategy -> its candidates per row (the tuner's stage 1).
    generators : sequence of str
        The ranker's generators.
    rec : Recommender
        Over the profile's configuration: routes, strategies, blend.
    rankers : sequence of Ranker
        One per fold (its ``ItemStats`` from that fold's training part); no booster needed.

    Returns
    -------
    list of Group
        One per row, in row order.
    """
    names = rec.config.route_names()
    able = set(rec.strategies_able_empty(generators))
    out = []
    for r, h in enumerate(val.histories):
        route = rec.route(h)
        wanted = [s for s in rec.strategies_for(route, h) if s in cands]
        fuse_route: str | None = route
        if not wanted:
            wanted, fuse_route = ["popular"], None
        fused = rec.fuse({s: cands[s][r] for s in wanted}, fuse_route)
        rk = rankers[int(val.fold_of[r])]
        if fuse_route is None:  # the request path's fallback: the ranker leaves it alone
            none = np.zeros(0, np.int64)
            out.append(Group(r, segment(route, h), none, np.zeros((0, 0)), none, fused, h))
            continue
        gens = [g for g in generators if g in wanted or (h.positive_items() or g in able)]
        per = {g: cands[g][r] for g in gens}
        rows, x = rk.pool(per, fused, h, names.index(route) if route in names else 0)
        rel = val.relevant.indices[val.relevant.indptr[r] : val.relevant.indptr[r + 1]]
        y = np.isin(rows, rel).astype(np.float32)
        out.append(Group(r, segment(route, h), rows, x, y, fused, h))
    return out


def stop_at(deadline: float, stopped: list[int]):
    """A LightGBM callback that ends the training once ``time.monotonic()`` passes
    ``deadline`` (the booster keeps the rounds made so far), noting each stop's round in
    ``stopped``.

    Parameters
    ----------
    deadline : float
        ``time.monotonic()`` value.
    stopped : list of int
        Appended to (the round) when the callback stops a training.

    Returns
    -------
    callable
        The callback.
    """
    import lightgbm as lgb

    def callback(env) -> None:
        if time.monotonic() > deadline:
            stopped.append(env.iteration + 1)
            raise lgb.callback.EarlyStopException(env.iteration, env.evaluation_result_list or [])

    callback.order = 40  # after the early-stopping callback (30)
    return callback


def _train(
    groups: Sequence[Group],
    params: dict,
    rounds: int,
    valid: Sequence[Group] = (),
    callbacks: Sequence = (),
):
    """One booster over ``groups`` (early stopping on ``valid`` when given; ``callbacks``:
    further LightGBM callbacks, e.g. ``stop_at``)."""
    import lightgbm as lgb

    def dataset(gs, ref=None):
        return lgb.Dataset(
            np.concatenate([g.x for g in gs]),
            np.concatenate([g.y for g in gs]),
            group=[len(g.y) for g in gs],
            reference=ref,
            free_raw_data=True,
        )

    train = dataset(groups)
    if valid:
        v = dataset(valid, train)
        return lgb.train(
            params,
            train,
            rounds,
            valid_sets=[v],
            callbacks=[lgb.early_stopping(EARLY_STOP, verbose=False, min_delta=0.0), *callbacks],
        )
    return lgb.train(params, train, rounds, callbacks=list(callbacks))


def _useful(groups: Sequence[Group]) -> list[Group]:
    """Groups that teach something: a positive and a negative in the pool."""
    return [g for g in groups if 0 < g.y.sum() < len(g.y)]


def _lists(rec, rk, groups, scores, k, seen_ok) -> np.ndarray:
    """Top-k item indices of the groups, ranked (``scores``: one array per group) or blended
    (``scores`` None), through the request path's rules and page."""
    from recsys.core.types import RecRequest

    req = RecRequest(n=k)
    out = np.full((len(groups), k), -1, dtype=np.int64)
    items = rk.stats.items
    for j, g in enumerate(groups):
        if scores is None or not len(g.rows):
            page = rec.page_of(g.fused, g.history, req)
        else:
            page = rec.page_of(rk.order(g.rows, g.x, scores[j], g.fused), g.history, req, seen_ok)
        if page:
            out[j, : len(page)] = items.indices([it.item_id for it in page])
    return out


def fit_ranker(
    val: Validation,
    cands: dict[str, list],
    overrides: dict[str, Any],
    halves: np.ndarray,
    data,
    seed: int = 42,
    alpha: float = 0.1,
    objective: str = "ndcg@10",
    repeats: bool | None = None,
    budget_s: float | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train the ranker on the validation rows and guard it (see the module docstring).

    Parameters
    ----------
    val : Validation
        The validation rows.
    cands : dict[str, list]
        Strategy -> its candidates per row; its strategies are the generators.
    overrides : dict
        The serving configuration the tuner chose (the blend the ranker must not lose to).
    halves : np.ndarray
        Each row's half (0 or 1, by user).
    data : InteractionData
        All the data: the served ranker's item counts.
    seed : int
        Random seed.
    alpha : float
        Level of the paired test.
    objective : str
        Metric name, for the verdict.
    repeats : bool or None
        Pool the user's own past items; None: when ``REPEAT_SHARE`` of the validation targets
        or more are repeats.
    budget_s : float or None
        Seconds for the boosting (``recsys tune``'s share for the ranker): each of the three
        trainings (the two halves', the served one) stops at its third of what is left
        (``stop_at``), keeping the rounds made; None: no limit. (LightGBM's threads on a
        loaded 2-core machine made one training take over 20 minutes at 50k items.)

    Returns
    -------
    tuple
        ``(ranker or None, report)``: None when the guard keeps the blend; the report holds
        the out-of-fold means, the verdict, the iteration count and the top gains.
    """
    from recsys.core.config import ServingConfig
    from recsys.core.ranker import ItemStats, Ranker
    from recsys.core.recommender import Recommender

    generators = sorted(cands)
    start, stopped = time.monotonic(), []

    def limit(parts: int) -> list:  # the callbacks of the next training: its share of the rest
        if budget_s is None:
            return []
        left = max(start + budget_s - time.monotonic(), 0.0)
        return [stop_at(time.monotonic() + left / parts, stopped)]

    share = repeat_share(val)
    repeats = share >= REPEAT_SHARE if repeats is None else bool(repeats)
    cfg = ServingConfig.default().with_overrides(overrides)
    rec = Recommender(models=lambda _n: None, config=cfg)
    rankers = [
        Ranker(None, generators, ItemStats.of(t), PER_GENERATOR, repeats) for t in val.trains
    ]
    groups = build_groups(val, cands, generators, rec, rankers)
    params = booster_params(val.k, seed)
    rng = np.random.default_rng(seed)
    oof: list[np.ndarray | None] = [None] * len(groups)
    iters = []
    for n_left, half in ((3, 0), (2, 1)):
        fit = _useful([g for g in groups if halves[g.row] == half])
        hold = [g for g in groups if halves[g.row] != half]
        if len(fit) < 10:
            continue
        users = val.user_row[[g.row for g in fit]]
        stop = rng.random(int(users.max()) + 1) < 0.2
        inner = [g for g, u in zip(fit, users, strict=True) if not stop[u]]
        early = [g for g, u in zip(fit, users, strict=True) if stop[u]]
        booster = _train(inner, params, MAX_ROUNDS, early or fit[:1], limit(n_left))
        best = int(np.clip(booster.best_iteration, MIN_ROUNDS, MAX_ROUNDS))
        iters.append(best)
        for g in hold:
            if len(g.rows):
                oof[g.row] = booster.predict(g.x, num_iteration=best)
    k = val.k
    rk0 = rankers[0]
    blend_v = val.values(_lists(rec, rk0, groups, None, k, False))
    scored = [j for j, s in enumerate(oof) if s is not None]
    ranked_v = np.full(len(groups), np.nan)
    if scored:
        sub = [groups[j] for j in scored]
        ranked_v[scored] = val.values(
            _lists(rec, rk0, sub, [oof[j] for j in scored], k, repeats), np.asarray(scored)
        )
    # Per segment (a route, its empty histories apart), the ranker orders its lists only where
    # it is not behind the blend there (new shoppers, say, may be too few to learn from);
    # elsewhere the blend serves, and the guard below judges the result.
    route_of = np.asarray([g.segment for g in groups], dtype=object)
    per_route: dict[str, Any] = {}
    for name in dict.fromkeys(route_of.tolist()):
        m = (route_of == name) & np.isfinite(ranked_v)
        if m.any():
            b, r_ = float(blend_v[m].mean()), float(ranked_v[m].mean())
            per_route[name] = {"rows": int(m.sum()), "blend": round(b, 6), "ranked": round(r_, 6)}
    served = [n for n, v in per_route.items() if v["ranked"] >= v["blend"]]
    off = np.isin(route_of, [n for n in per_route if n not in served])
    ranked_v[off & np.isfinite(ranked_v)] = blend_v[off & np.isfinite(ranked_v)]
    rows = val.guard_rows()
    base = np.where(np.isfinite(ranked_v), blend_v, np.nan)
    c = guard.paired_test(base, ranked_v, rows, objective, alpha, "blend", "ranked")
    m_b, m_r = float(np.nanmean(base)), float(np.nanmean(ranked_v)) if scored else float("nan")
    kept = bool(served) and m_r >= m_b and c is not None and not (c.significant and c.diff < 0)
    report: dict[str, Any] = {
        "generators": generators,
        "repeats": repeats,
        "repeat_share": round(share, 4),
        "groups": len(groups),
        "out_of_fold": {"blend": round(m_b, 6), "ranked": round(m_r, 6)},
        "routes": per_route,
        "served_routes": served,
        "verdict": c.verdict if c is not None else "too few users to compare",
        "kept": kept,
        # Rounds at which a training hit its share of ``budget_s`` (the list grows if the
        # served model's training does too); empty: none did.
        "stopped_at_round": stopped,
    }
    if not kept:
        log.warning("ranker: kept the blend (%s)", report["verdict"])
        return None, report
    rounds = int(np.clip(np.mean(iters) * 1.1, MIN_ROUNDS, MAX_ROUNDS))
    final = _train(_useful(groups), params, rounds, callbacks=limit(1))
    routes = None if len(served) == len(per_route) else served
    ranker = Ranker(final, generators, ItemStats.of(data), PER_GENERATOR, repeats, routes=routes)
    report["rounds"] = rounds
    report["gains"] = dict(list(ranker.gains().items())[:12])
    ranker.info = report
    log.info("ranker: %s", report)
    return ranker, report
