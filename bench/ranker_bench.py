"""What the learned ranker adds to an uncached request, at 200 candidates per strategy.

Trains popularity, EASE and ALS on ml-100k's oldest 80 % of events, a ranker over their
candidates on the newest fold of that part (``recsys.offline.tuning.ranking``, as ``recsys
tune`` does), then times ``Recommender.recommend`` for the same users with and without it
(models in memory, one thread, candidates_per_strategy 200, the ranker's generators being the
route's strategies, so the difference is the rank stage alone: features, booster, reorder).

    .venv/bin/python bench/ranker_bench.py --data ../shared/datasets/ml-100k

Prints the pool size, the rounds and leaves of the booster, and per request the median and
p95 of: the rank stage's time (``on_stage``), the booster's predict alone, and recommend()
with and without the ranker.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(int(q * len(xs)), len(xs) - 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "datasets", "ml-100k"))
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument(
        "--per-generator",
        type=int,
        default=None,
        help="Pool this many of each generator's candidates (default: the trained ranker's, "
        "100); 200 pools every candidate.",
    )
    args = ap.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import numpy as np
    from threadpoolctl import threadpool_limits

    from recsys.core.config import ServingConfig
    from recsys.core.recommender import Recommender
    from recsys.core.stages import USER, Batch
    from recsys.core.types import RecRequest
    from recsys.models.profile import ServingProfile
    from recsys.offline.evaluation.datasets import load_movielens_100k
    from recsys.offline.evaluation.splits import split_data
    from recsys.offline.tuning.folds import Validation, validation_folds
    from recsys.offline.tuning.hyper import candidates, loaded
    from recsys.offline.tuning.ranking import fit_ranker
    from strategies import get_strategy_class

    gens = ["als", "ease", "popular"]
    data = load_movielens_100k(args.data)
    train, _ = split_data(data, "time", fraction=0.2)
    folds = validation_folds(train, "time", fraction=0.2, folds=1)
    val = Validation(folds, 10, "ndcg")
    cands = {}
    for g in gens:
        m = get_strategy_class(g)().fit(val.trains[0])
        cands[g] = candidates(g, [m], val)
    routes = [{"name": "all", "max_history": None, "weights": dict.fromkeys(gens, 1.0)}]
    overrides = ServingProfile(routes=routes).serving_overrides()
    overrides["routing"]["candidates_per_strategy"] = args.candidates
    halves = np.random.default_rng(0).integers(0, 2, size=train.n_users)[val.users]
    ranker, report = fit_ranker(val, cands, overrides, halves, train)
    if ranker is None:
        sys.exit(f"the guard kept the blend ({report['verdict']}): no ranker to time")
    if args.per_generator:
        ranker.per_generator = args.per_generator
    models = {g: loaded(g, get_strategy_class(g)().fit(train), train) for g in gens}
    cfg = ServingConfig.default().with_overrides(overrides)
    stage_t: list[float] = []

    def on_stage(name: str, s: float) -> None:
        if name == "rank":
            stage_t.append(s)

    plain = Recommender(models=models.get, config=cfg)
    ranked = Recommender(models=models.get, config=cfg, ranker=ranker, on_stage=on_stage)
    from recsys.core.types import histories_from_data

    hs = histories_from_data(train)[: args.users]
    req = RecRequest(n=10)
    t_plain, t_ranked, t_pred, pools = [], [], [], []
    with threadpool_limits(1):
        for h in hs[:20]:  # warm-up
            plain.recommend(h, req)
            ranked.recommend(h, req)
        stage_t.clear()
        for h in hs:
            t0 = time.perf_counter()
            plain.recommend(h, req)
            t1 = time.perf_counter()
            ranked.recommend(h, req)
            t2 = time.perf_counter()
            t_plain.append(t1 - t0)
            t_ranked.append(t2 - t1)
        stage_main = list(stage_t)
        for h in hs[:100]:
            b = ranked.run_stages(Batch(USER, [h], [req]))
            rows, x = ranker.pool(b.per[0], b.blended[0], h, 0)
            pools.append(len(rows))
            t0 = time.perf_counter()
            ranker.predict(x)
            t_pred.append(time.perf_counter() - t0)
    dump = ranker.booster.dump_model()
    leaves = sum(t["num_leaves"] for t in dump["tree_info"])
    print(
        f"ranker: {ranker.booster.num_trees()} trees, {leaves} leaves, "
        f"{len(ranker.features)} features; out of fold {report['out_of_fold']}"
    )
    print(
        f"pool per request (candidates_per_strategy {args.candidates}, {len(gens)} generators, "
        f"top {ranker.per_generator} each): median {statistics.median(pools):.0f}, "
        f"max {max(pools)}"
    )
    ms = 1000.0
    print("| per request | median ms | p95 ms |\n|---|---:|---:|")
    rows = [
        ("rank stage (features + booster + reorder)", stage_main),
        ("booster predict alone", t_pred),
        ("recommend() without ranker", t_plain),
        ("recommend() with ranker", t_ranked),
    ]
    for name, xs in rows:
        print(f"| {name} | {statistics.median(xs) * ms:.3f} | {_pct(xs, 0.95) * ms:.3f} |")
    diff = [b - a for a, b in zip(t_plain, t_ranked, strict=True)]
    print(
        f"| added by the ranker (paired difference) | {statistics.median(diff) * ms:.3f} "
        f"| {_pct(diff, 0.95) * ms:.3f} |"
    )


if __name__ == "__main__":
    main()
