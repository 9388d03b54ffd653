"""Choose the ``sequence`` model's hyperparameters on a validation split, never on the test part.

The evaluation split (``--split``, as ``recsys evaluate`` makes it) is applied first and its test
part is thrown away; the same protocol is applied again to the training part, giving
fit / validation. Each candidate is fitted once on the fit part and scored on the validation
part after every ``--every`` epochs (the model alone, seen items excluded, top 10 over the
catalogue, as ``recsys evaluate --config sequence`` serves it), so one fit gives the whole
epoch curve. Prints one row per (candidate, epochs) and the best.

    .venv/bin/python bench/sequence_tune.py --data /work/shared/datasets/ml-100k \
        --split leave-last-out --grid max_len=50,200 --grid dropout=0.2,0.5 --epochs 40

Results and the choice: docs/sequence.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recsys.cli.evaluate import load_dataset  # noqa: E402
from recsys.offline.evaluation import metrics as M  # noqa: E402
from recsys.offline.evaluation.splits import split_data  # noqa: E402
from strategies.base import UserBatch  # noqa: E402
from strategies.sequence import SequenceStrategy, ordered_sequences  # noqa: E402


def validation_parts(data, split: str, fraction: float):
    """(fit part, validation part): the evaluation split's train part, split again."""
    train, _test = split_data(data, split, fraction=fraction if split == "time" else None)
    return split_data(train, split, fraction=fraction if split == "time" else None)


def scorer(fit, val, k: int = 10):
    """A function(model) -> {hr@k, ndcg@k} over the validation users."""
    import scipy.sparse as sp

    relevant = sp.csr_matrix(
        (np.ones(len(val), np.float32), (val.user_idx, val.item_idx)),
        shape=(fit.n_users, fit.n_items),
    )
    relevant.data[:] = 1.0
    users = np.flatnonzero(np.diff(relevant.indptr) > 0)
    seen = fit.matrix(binary=True)
    seqs, types = ordered_sequences(fit)

    def score(model) -> dict[str, float]:
        rec = np.empty((len(users), k), np.int64)
        for start in range(0, len(users), 256):
            rows = users[start : start + 256]
            batch = UserBatch(
                matrix=seen[rows],
                sequences=[seqs[u] for u in rows],
                types=[types[u] for u in rows],
                user_index=rows,
            )
            exclude = [seen[u].indices for u in rows]
            rec[start : start + len(rows)], _ = model.recommend(batch, n=k, exclude=exclude)
        means, _ = M.evaluate_recommendations(rec, relevant[users], k=k)
        return {f"hr@{k}": means[f"hit_rate@{k}"], f"ndcg@{k}": means[f"ndcg@{k}"]}

    return score


def parse_grid(items: list[str]) -> list[dict]:
    axes = []
    for item in items:
        name, _, values = item.partition("=")
        axes.append([(name, json.loads(v)) for v in values.split(",")])
    return [dict(combo) for combo in itertools.product(*axes)] or [{}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="leave-last-out", choices=["leave-last-out", "time"])
    ap.add_argument("--fraction", type=float, default=0.2, help="time split: test share")
    ap.add_argument("--grid", action="append", default=[], help="NAME=V1,V2 (JSON values)")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--max-seconds", type=float, default=600.0)
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    data = load_dataset(args.data)
    fit, val = validation_parts(data, args.split, args.fraction)
    score = scorer(fit, val)
    print(f"{args.data} {args.split}: fit {len(fit)} events, validation {len(val)} events")
    print(f"{'params':<44} {'epochs':>6} {'steps':>6} {'fit_s':>7} {'HR@10':>7} {'nDCG@10':>8}")
    rows = []
    for params in parse_grid(args.grid):
        model = SequenceStrategy(
            **{
                **params,
                "epochs": args.epochs,
                "max_steps": None,
                "max_seconds": args.max_seconds,
                "device": "cpu",
            }
        )
        t0 = time.perf_counter()
        spent = [0.0]

        def on_epoch(epoch, m, params=params, t0=t0, spent=spent):
            if epoch % args.every:
                return
            t = time.perf_counter()
            got = score(m)
            spent[0] += time.perf_counter() - t
            row = {
                "params": params,
                "epochs": epoch,
                "steps": m.steps_,
                "fit_s": time.perf_counter() - t0 - spent[0],
                **got,
            }
            rows.append(row)
            print(
                f"{json.dumps(params):<44} {epoch:>6} {m.steps_:>6} {row['fit_s']:>7.1f} "
                f"{got['hr@10']:>7.4f} {got['ndcg@10']:>8.4f}",
                flush=True,
            )

        model.on_epoch = on_epoch
        model.fit(fit)
    best = max(rows, key=lambda r: r["hr@10"])
    print("best:", json.dumps(best))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"data": args.data, "split": args.split, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
