"""Choose blend weights for the shipped default without looking at the test part.

Protocol: split ml-100k as the benchmark does (75/25 stratified per item, seed 42), then split
the *training* part again the same way (seed 43) into fit / validation. Every strategy is fitted
once on "fit"; each candidate ServingConfig is scored on "validation" through
``recsys.core.recommender.Recommender.recommend_batch`` (the request path). The best candidates are
then confirmed on the real test part by ``recsys evaluate`` (see README, "Evaluation and
experiments").

    .venv/bin/python bench/tune_blend.py [--data ../shared/datasets/ml-100k] [--skip deep]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recsys.core.config import ServingConfig
from recsys.core.recommender import Recommender
from recsys.core.types import RecRequest, histories_from_data
from recsys.offline.evaluation import metrics as M  # noqa: E402
from recsys.offline.evaluation.configs import EvalConfig  # noqa: E402
from recsys.offline.evaluation.datasets import load_movielens_100k  # noqa: E402
from recsys.offline.evaluation.runner import train_models  # noqa: E402
from recsys.offline.evaluation.splits import split_data  # noqa: E402
from strategies import STRATEGY_NAMES  # noqa: E402


def ndcg(recommender, histories, users, relevant, items, k=10) -> float:
    rec = np.full((len(users), k), -1, dtype=np.int64)
    for s in range(0, len(users), 256):
        res = recommender.recommend_batch(
            histories[s : s + 256], [RecRequest(n=k)] * len(histories[s : s + 256])
        )
        for r, rr in enumerate(res, start=s):
            ids = [it.item_id for it in rr.items][:k]
            rec[r, : len(ids)] = items.indices(ids)
    return float(np.nanmean(M.ranking_metrics(rec, relevant, k)["ndcg"]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=None)
    ap.add_argument("--skip", action="append", default=[])
    args = ap.parse_args()
    data = load_movielens_100k(args.data)
    train, _test = split_data(data, "stratified-item", seed=42)
    fit, val = split_data(train, "stratified-item", seed=43)
    names = [s for s in STRATEGY_NAMES if s not in args.skip and s != "content"]
    every = {s: {"enabled": s in names} for s in STRATEGY_NAMES}
    cfg = EvalConfig(
        name="all",
        serving={"strategies": every, "routing": {"warm_strategies": names}},
    )
    t0 = time.perf_counter()
    models, times = train_models([cfg], fit)
    print(f"trained on fit part in {time.perf_counter() - t0:.1f}s: {times}", flush=True)
    loaded = models["all"]
    pos = val.event_type != 5
    rel = sp.csr_matrix(
        (np.ones(int(pos.sum()), np.float32), (val.user_idx[pos], val.item_idx[pos])),
        shape=(data.n_users, data.n_items),
    )
    rel.sum_duplicates()
    users = np.flatnonzero(np.diff(rel.indptr) > 0)
    relevant = rel[users]
    histories = histories_from_data(fit, users)

    def score(overrides: dict) -> float:
        sc = ServingConfig.default().with_overrides(overrides)
        return ndcg(Recommender(loaded.get, sc), histories, users, relevant, fit.items)

    results = []
    for s in names:
        only = {x: {"enabled": x == s, "weight": 1.0} for x in STRATEGY_NAMES}
        o = {"strategies": only, "routing": {"warm_strategies": [s], "cold_strategies": [s]}}
        results.append((score(o), f"{s} alone", o))
        print(f"{results[-1][0]:.4f}  {s} alone", flush=True)
    grid = {
        "ease": [1.0],
        "als": [0.0, 0.3, 0.6],
        "bpr": [0.0, 0.3],
        "deep": [0.0, 0.3, 0.6] if "deep" in names else [0.0],
        "popular": [0.0, 0.1],
    }
    for blend, norm in (("weighted", "minmax"), ("weighted", "rank"), ("rrf", "minmax")):
        for combo in itertools.product(*grid.values()):
            w = dict(zip(grid, combo, strict=True))
            strategies = {s: {"enabled": w.get(s, 0.0) > 0, "weight": w.get(s, 0.0)} for s in names}
            warm = [s for s in names if w.get(s, 0.0) > 0]
            o = {
                "strategies": strategies,
                "routing": {"warm_strategies": warm, "blend": blend, "normalize": norm},
            }
            label = f"{blend}/{norm} " + " ".join(f"{s}={v}" for s, v in w.items())
            results.append((score(o), label, o))
            print(f"{results[-1][0]:.4f}  {label}", flush=True)
    results.sort(key=lambda r: -r[0])
    print(f"\nmachine: {platform.machine()} {os.cpu_count()} cores; validation users {len(users)}")
    print("top 5 on validation:")
    for v, label, o in results[:5]:
        print(f"{v:.4f}  {label}\n        {json.dumps(o)}")


if __name__ == "__main__":
    main()
