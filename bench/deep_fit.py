"""One ``deep`` fit on a store's events, timed, with its holdout quality: what changes to the
training loop are measured with (docs/models.md, "Training cost"; docs/scale.md).

    .venv/bin/python bench/deep_fit.py --database-url postgresql+psycopg://...scale_m
    .venv/bin/python bench/deep_fit.py --database-url ... --param max_epoch_steps=400

Loads every event of the store (``recsys.store.training_data.load_interactions``), holds out the
newest 10 % (``recsys.offline.training.holdout_split``, as ``recsys train`` does), fits
``DeepStrategy`` with the defaults and any ``--param`` on the rest, and prints the steps, wall
and CPU seconds of the fit, the threads torch trained with, and nDCG@10 and friends of up to
``--eval-users`` test users (``holdout_metrics``). Run it from two source trees (``git
worktree``) on the same store to compare them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.getcwd())  # the tree it is run from
sys.path.insert(1, ROOT)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--database-url", required=True)
    p.add_argument("--param", action="append", default=[], help="NAME=VALUE (JSON), repeatable")
    p.add_argument("--eval-users", type=int, default=5000)
    args = p.parse_args()
    import torch
    from sqlalchemy import create_engine

    from recsys.offline.training import holdout_metrics, holdout_split
    from recsys.store.training_data import load_interactions
    from strategies.deep import DeepStrategy

    params = {}
    for text in args.param:
        key, _, value = text.partition("=")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    t0 = time.perf_counter()
    data = load_interactions(create_engine(args.database_url))
    train, test = holdout_split(data, 0.1)
    print(
        f"{len(data):,} events, {data.n_users:,} users, {data.n_items:,} items, "
        f"loaded in {time.perf_counter() - t0:.1f} s; params {params or 'defaults'}"
    )
    model = DeepStrategy(**params)
    t, c = time.perf_counter(), time.process_time()
    model.fit(train)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    print(
        f"fit: {model.steps_:,} steps, {wall:.1f} s wall, {cpu:.1f} s CPU, loss {model.loss_}, "
        f"{torch.get_num_threads()} threads ({1000 * wall / max(model.steps_, 1):.1f} ms a step)"
    )
    t = time.perf_counter()
    metrics = holdout_metrics(model, train, test, max_users=args.eval_users)
    keys = ("ndcg@10", "recall@10", "coverage@10", "eval_users")
    print("holdout:", {k: metrics.get(k) for k in keys}, f"({time.perf_counter() - t:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
