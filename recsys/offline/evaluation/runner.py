"""Offline evaluation of serving configurations through the service's own request path.

``evaluate(configs, data, split, k, seed)``:

1. splits the data (seeded) into train and test;
2. trains every strategy any configuration needs, on the training part only, once per distinct
   (strategy, hyperparameters) pair, so configurations that share a model share its training;
3. for each configuration builds a ``recsys.core.recommender.Recommender`` over those models and
asks it,
   through ``recommend_batch`` (the same router, blend and business rules as the HTTP API), for
   the top k of every test user, whose history is their training events;
4. scores the lists against the test events (``recsys.offline.evaluation.metrics``), overall and per
   segment (route as served; training-history buckets 0, 1-4, 5-19, 20+), with bootstrap
   intervals, and compares every configuration with the first (or every pair) with paired tests
   over users (``recsys.offline.evaluation.stats``).

The returned dict is what ``report.write_report`` stores as ``report.json``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from features.interactions import InteractionData
from recsys.offline.evaluation import metrics as M
from recsys.offline.evaluation import stats
from recsys.offline.evaluation.configs import EvalConfig, load_configs, serving_config
from recsys.offline.evaluation.splits import relevant_matrix, split_data

log = logging.getLogger(__name__)

HISTORY_BUCKETS = (("0", 0, 0), ("1-4", 1, 4), ("5-19", 5, 19), ("20+", 20, None))
BATCH = 256


def _param_key(name: str, params: dict[str, Any]) -> str:
    return name + json.dumps(params, sort_keys=True, default=str)


def _needed_strategies(config) -> list[str]:
    """Strategies a ServingConfig may call: enabled ones on either route."""
    names: list[str] = []
    for route in config.route_names():
        for s in config.route_strategies(route):
            if s not in names:
                names.append(s)
    # The request path falls back to popularity when a route has nothing to serve with.
    if "popular" not in names:
        names.append("popular")
    return names


def train_models(
    configs: Sequence[EvalConfig],
    train: InteractionData,
    progress: Callable | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Fit what each configuration needs; returns per-config {strategy: LoadedModel} and times.

    Parameters
    ----------
    configs : Sequence[EvalConfig]
        The configurations; a strategy with the same hyperparameters is fitted once for all.
    train : InteractionData
        The training part.
    progress : Callable or None
        tqdm-like factory (``progress(total=, desc=, unit=)``) for a progress bar; None: none.

    Returns
    -------
    tuple[dict[str, dict[str, Any]], dict[str, float]]
        Config name -> {strategy: ``LoadedModel``} (a strategy that cannot be built is left
        out, with a warning), and strategy label -> fit time in seconds.
    """
    from recsys.models.repository import LoadedModel
    from strategies import get_strategy_class

    fitted: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    times: dict[str, float] = {}
    per_config: dict[str, dict[str, Any]] = {}
    jobs = []
    for cfg in configs:
        sc = serving_config(cfg)
        gens = cfg.ranker.generators if cfg.ranker is not None else []
        for s in dict.fromkeys([*_needed_strategies(sc), *gens]):
            key = _param_key(s, cfg.params.get(s, {}))
            jobs.append((cfg.name, s, key, cfg.params.get(s, {})))
    n_models = len({j[2] for j in jobs})
    bar = progress(total=n_models, desc="train", unit="model") if progress else None
    for cfg_name, s, key, params in jobs:
        if key in unavailable:
            continue
        if key not in fitted:
            try:
                cls = get_strategy_class(s)
            except ValueError as e:
                # Same policy as the request path: a strategy with no model is skipped.
                log.warning("strategy %s unavailable, evaluated without it: %s", s, e)
                unavailable[key] = str(e)
                if bar is not None:
                    bar.update(1)
                continue
            t0 = time.perf_counter()
            model = cls(**params).fit(train)
            label = s if s not in times else f"{s}{params}"
            times[label] = time.perf_counter() - t0
            fitted[key] = LoadedModel(
                strategy=s,
                version="eval",
                model=model,
                items=train.items,
                users=train.users,
                meta={"params": params},
                path="",
                nbytes=0,
            )
            log.info("trained %s in %.2fs", s, times[label])
            if bar is not None:
                bar.update(1)
        per_config.setdefault(cfg_name, {})[s] = fitted[key]
    if bar is not None:
        bar.close()
    return per_config, times


def _segment_of_history(n_events: np.ndarray) -> np.ndarray:
    labels = np.empty(len(n_events), dtype=object)
    for name, lo, hi in HISTORY_BUCKETS:
        mask = (n_events >= lo) & ((n_events <= hi) if hi is not None else True)
        labels[mask] = name
    return labels


def _summaries(
    per_user: dict[str, np.ndarray],
    mask: np.ndarray,
    resamples: int,
    seed: int,
    with_intervals: bool = True,
) -> dict[str, Any]:
    metrics, intervals = {}, {}
    for key, values in per_user.items():
        v = values[mask]
        v = v[np.isfinite(v)]
        if with_intervals:
            mean, lo, hi = stats.mean_ci(v, resamples=resamples, seed=seed)
            intervals[key] = [lo, hi]
        else:
            mean = float(v.mean()) if v.size else float("nan")
        metrics[key] = mean
    return {"metrics": metrics, "intervals": intervals}


def evaluate(
    configs: Sequence[EvalConfig | str],
    data: InteractionData,
    split: str = "stratified-item",
    k: int = 10,
    seed: int = 42,
    *,
    ratio: float = 0.75,
    cutoff: str | None = None,
    fraction: float | None = None,
    resamples: int = stats.DEFAULT_RESAMPLES,
    all_pairs: bool = True,
    progress: Callable | None = None,
    dataset_name: str | None = None,
    relevant: str = "all",
    tune_budget: float = 300.0,
    tune_options: dict[str, Any] | None = None,
    tuner: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Evaluate ``configs`` (EvalConfig objects or ``--config`` strings) on ``data``.

    Parameters
    ----------
    configs : Sequence[EvalConfig or str]
        The configurations (see ``configs.load_config`` for the strings); at least one.
    data : InteractionData
        All events; split here.
    split : str
        Split name (``splits.SPLITS``): ``stratified-item``, ``random-user``, ``time`` or
        ``leave-last-out``.
    k : int
        Cut-off of every metric, >= 1.
    seed : int
        Random seed of the split and of the resampling.
    ratio : float
        Training share of the ``stratified-item`` and ``random-user`` splits, in (0, 1).
    cutoff : str or None
        ``time`` split: ISO date (UTC when naive); events before it train. None: use
        ``fraction``.
    fraction : float or None
        ``time`` split without ``cutoff``: share of the events, the newest, that go to test
        (None: 0.2).
    resamples : int
        Bootstrap / permutation resamples of the intervals and tests.
    all_pairs : bool
        True: compare every pair of configurations; False: each against the first.
    progress : Callable or None
        tqdm-like factory (``progress(total=, desc=, unit=)``) for progress bars; None: none.
    dataset_name : str or None
        Name in the report; None: ``data.info["dataset"]`` (else "data").
    relevant : str
        "all" (every positive test event counts, the Recommenders protocol) or "new" (only
        items absent from the user's training events: discovery).
    tune_budget : float
        Seconds of search for each ``tuned`` configuration, which sees the training part only.
    tune_options : dict[str, Any] or None
        Further ``TuneOptions`` fields for the search; None: the defaults.
    tuner : Callable[..., Any] or None
        What fills a tuned configuration in (``recsys.offline.tuning.search.tune_config``;
        evaluation does not import the tuner, which itself evaluates with this package's
        splits and metrics). Required when a configuration is ``tuned``.

    Returns
    -------
    dict[str, Any]
        The report (see the module docstring and ``report.write_report``).

    Raises
    ------
    ValueError
        No configuration, ``k`` < 1, an unknown split or ``relevant``, a split leaving an
        empty part, or a tuned configuration without ``tuner``.
    """
    from recsys.core.recommender import Recommender
    from recsys.core.types import RecRequest, histories_from_data

    if not configs:
        raise ValueError("give at least one configuration")
    cfgs = load_configs(list(configs))
    names = [c.name for c in cfgs]
    if k < 1:
        raise ValueError("k must be >= 1")
    t_start = time.perf_counter()
    cpu_start = time.process_time()
    timings: dict[str, Any] = {}

    t0 = time.perf_counter()
    train, test = split_data(data, split, seed=seed, ratio=ratio, cutoff=cutoff, fraction=fraction)
    timings["split_s"] = time.perf_counter() - t0
    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"the {split} split left an empty train or test part")

    # Relevant items: every positive test event (Recommenders: every test rating counts).
    relevant_all = relevant_matrix(test, data.n_users, data.n_items)
    if relevant == "new":
        # Discovery protocol: an item the user already had in training is not a success to
        # recommend again (repeat purchases would otherwise reward "buy it again" lists).
        seen = train.matrix(binary=True)
        relevant_all = relevant_all - relevant_all.multiply(seen > 0)
        relevant_all.eliminate_zeros()
    elif relevant != "all":
        raise ValueError("relevant must be 'all' or 'new'")
    test_users = np.flatnonzero(np.diff(relevant_all.indptr) > 0)
    relevant_m = relevant_all[test_users]
    train_len = np.bincount(train.user_idx, minlength=data.n_users)[test_users]
    hist_bucket = _segment_of_history(train_len)
    item_users = np.diff(train.matrix(binary=True).tocsc().indptr)
    n_train_users = int(np.count_nonzero(np.bincount(train.user_idx, minlength=data.n_users)))

    profiles: dict[str, Any] = {}
    if tuner is None and any(cfg.tune for cfg in cfgs):
        raise ValueError(
            "a tuned configuration needs tuner= (recsys.offline.tuning.search.tune_config)"
        )
    for cfg in cfgs:
        if cfg.tune:
            t0 = time.perf_counter()
            profile = tuner(
                cfg,
                train,
                split,
                seed,
                ratio,
                fraction,
                tune_budget,
                progress is not None,
                **(tune_options or {}),
            )
            profiles[cfg.name] = profile
            timings.setdefault("tune_s", {})[cfg.name] = time.perf_counter() - t0
    models, train_times = train_models(cfgs, train, progress=progress)
    timings["train_s"] = train_times

    histories = histories_from_data(train, test_users)
    report_configs: dict[str, Any] = {}
    per_user_all: dict[str, dict[str, np.ndarray]] = {}
    lists_all: dict[str, np.ndarray] = {}
    rec_times: dict[str, float] = {}
    for cfg in cfgs:
        sc = serving_config(cfg)
        loaded = models.get(cfg.name, {})
        # No catalogue view: every training item is available and there is no category filter.
        # A ranker's item counts are the training part's (the tuner's data).
        recommender = Recommender(models=loaded.get, config=sc, catalog=None, ranker=cfg.ranker)
        rec_ids = np.full((len(test_users), k), -1, dtype=np.int64)
        routes = np.empty(len(test_users), dtype=object)
        bar = (
            progress(total=len(test_users), desc=f"recommend {cfg.name}", unit="user")
            if progress
            else None
        )
        t0 = time.perf_counter()
        for start in range(0, len(test_users), BATCH):
            hs = histories[start : start + BATCH]
            results = recommender.recommend_batch(hs, [RecRequest(n=k) for _ in hs])
            for row, res in enumerate(results, start=start):
                ids = [it.item_id for it in res.items][:k]
                rec_ids[row, : len(ids)] = train.items.indices(ids)
                routes[row] = res.route
            if bar is not None:
                bar.update(len(hs))
        rec_times[cfg.name] = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        means, per_user = M.evaluate_recommendations(
            rec_ids, relevant_m, k=k, item_users=item_users, n_train_users=n_train_users
        )
        per_user_all[cfg.name] = per_user
        lists_all[cfg.name] = rec_ids
        everyone = np.ones(len(test_users), dtype=bool)
        overall = _summaries(per_user, everyone, resamples, seed)
        overall["metrics"][f"coverage@{k}"] = means[f"coverage@{k}"]
        segments: dict[str, dict[str, Any]] = {"route": {}, "history": {}}
        for route in dict.fromkeys([*sc.route_names(), *routes.tolist()]):
            mask = routes == route
            if mask.any():
                seg = _summaries(per_user, mask, resamples, seed, with_intervals=False)
                segments["route"][route] = {"n_users": int(mask.sum()), **seg}
        for name, _, _ in HISTORY_BUCKETS:
            mask = hist_bucket == name
            if mask.any():
                seg = _summaries(per_user, mask, min(resamples, 500), seed)
                seg["metrics"][f"coverage@{k}"] = M.coverage(rec_ids[mask], data.n_items, k)
                segments["history"][name] = {"n_users": int(mask.sum()), **seg}
        if cfg.name in profiles:
            extra = {"profile": profiles[cfg.name].to_dict()}
        else:
            extra = {}
        report_configs[cfg.name] = {
            **cfg.to_dict(),
            **extra,
            "serving_resolved": sc.to_dict(),
            "strategies_trained": sorted(loaded),
            "strategies_unavailable": [x for x in _needed_strategies(sc) if x not in loaded],
            "metrics": overall["metrics"],
            "intervals": overall["intervals"],
            "segments": segments,
            "timings": {
                "recommend_s": rec_times[cfg.name],
                "users_per_s": len(test_users) / max(rec_times[cfg.name], 1e-9),
            },
        }

    comparisons = compare_configs(
        names, per_user_all, lists_all, data.n_items, k, resamples, seed, all_pairs
    )
    timings["recommend_s"] = rec_times
    timings["total_s"] = time.perf_counter() - t_start
    # CPU seconds of this process (all threads): comparable across runs on a shared machine.
    timings["cpu_s"] = time.process_time() - cpu_start
    return {
        "dataset": {
            "name": dataset_name or data.info.get("dataset", "data"),
            "n_events": len(data),
            "n_users": data.n_users,
            "n_items": data.n_items,
        },
        "split": {
            "name": split,
            "seed": seed,
            "ratio": ratio if split in ("stratified-item", "random-user") else None,
            "cutoff": cutoff,
            "fraction": fraction,
            "n_train": len(train),
            "n_test": len(test),
            "n_test_users": len(test_users),
            "relevant": relevant,
            "n_relevant": int(relevant_m.nnz),
        },
        "k": k,
        "seed": seed,
        "resamples": resamples,
        "main_metric": f"ndcg@{k}",
        "configs": report_configs,
        "comparisons": comparisons,
        "timings": timings,
    }


def compare_configs(
    names: list[str],
    per_user: dict[str, dict[str, np.ndarray]],
    lists: dict[str, np.ndarray],
    n_items: int,
    k: int,
    resamples: int,
    seed: int,
    all_pairs: bool = False,
) -> list[dict[str, Any]]:
    """Paired tests of every pair (B after A in the given order), or of each against the first.

    Parameters
    ----------
    names : list[str]
        Configuration names, in report order.
    per_user : dict[str, dict[str, np.ndarray]]
        Config name -> metric key -> ``(n_users,)`` values (NaN: undefined), same users in the
        same order for every configuration.
    lists : dict[str, np.ndarray]
        Config name -> ``(n_users, >= k)`` recommended item indices (-1 padded).
    n_items : int
        Catalogue size (for coverage).
    k : int
        Cut-off.
    resamples : int
        Bootstrap / permutation resamples per test.
    seed : int
        Random seed of the resampling.
    all_pairs : bool
        True: every pair; False: each configuration against the first.

    Returns
    -------
    list[dict[str, Any]]
        ``Comparison.to_dict()`` of every metric of every pair, coverage last for each pair.
    """
    if all_pairs:
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    else:
        pairs = [(names[0], b) for b in names[1:]]
    out = []
    for a, b in pairs:
        for key in per_user[a]:
            va, vb = per_user[a][key], per_user[b][key]
            both = np.isfinite(va) & np.isfinite(vb)
            c = stats.compare(va[both], vb[both], key, a, b, resamples=resamples, seed=seed)
            out.append(c.to_dict())
        c = stats.compare_sets(
            lists[a][:, :k], lists[b][:, :k], n_items, f"coverage@{k}", a, b, resamples, seed
        )
        out.append(c.to_dict())
    return out
