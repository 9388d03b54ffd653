"""Session replay: guest sessions scored through the request path, next item as the target.

On Online Retail a session is an invoice (one customer, one timestamp). The events are split in
time (``--fraction`` newest to test, as ``recsys evaluate --split time``); models are trained on
the older part only. Each held-out invoice with at least two distinct items becomes one guest
request: all but its last item (newest first, as ``POST /v1/recommendations`` takes them; the
API treats them as clicks and never recommends them back), and the last item is the target.
HR@10 (and MRR@10) per configuration, through ``recsys.core.recommender.Recommender`` exactly as the
session endpoint calls it:

* ``default``: the shipped configuration (the current session path: short sessions are cold,
  content + popular; five or more items are warm, EASE + deep + popular);
* ``sequence``: the sequence model alone;
* ``default+sequence``: the default with the sequence model added to both routes.

    .venv/bin/python bench/session_replay.py --sessions 2000

Results: docs/sequence.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from recsys.cli.evaluate import load_dataset  # noqa: E402
from recsys.core.config import DEFAULT_CONFIG  # noqa: E402
from recsys.core.recommender import Recommender  # noqa: E402
from recsys.core.types import RecRequest, UserHistory  # noqa: E402
from recsys.offline.evaluation.configs import EvalConfig, serving_config, single_strategy_overrides  # noqa: E402
from recsys.offline.evaluation.runner import train_models  # noqa: E402
from recsys.offline.evaluation.splits import split_data  # noqa: E402
from recsys.web.schemas import MAX_SESSION_ITEMS  # noqa: E402


def sessions(test, limit: int, seed: int) -> list[list[str]]:
    """Held-out invoices as item id lists in line order, repeats dropped, >= 2 items."""
    order = np.lexsort((np.arange(len(test)), test.ts, test.user_idx))
    key = np.stack([test.user_idx[order], test.ts[order]], axis=1)
    starts = np.flatnonzero(np.r_[True, (key[1:] != key[:-1]).any(axis=1)])
    ends = np.r_[starts[1:], len(order)]
    ids = test.items.ids
    out = []
    for a, b in zip(starts, ends, strict=True):
        items = list(dict.fromkeys(str(ids[i]) for i in test.item_idx[order[a:b]]))
        if len(items) >= 2:
            out.append(items[-(MAX_SESSION_ITEMS + 1) :])
    rng = np.random.default_rng(seed)
    if len(out) > limit:
        out = [out[i] for i in sorted(rng.choice(len(out), limit, replace=False))]
    return out


def configs(sequence_params: dict) -> list[EvalConfig]:
    both = {
        "routing": {
            "cold_strategies": [*DEFAULT_CONFIG["routing"]["cold_strategies"], "sequence"],
            "warm_strategies": [*DEFAULT_CONFIG["routing"]["warm_strategies"], "sequence"],
        }
    }
    params = {"sequence": sequence_params}
    return [
        EvalConfig(name="default"),
        EvalConfig(name="sequence", serving=single_strategy_overrides("sequence"), params=params),
        EvalConfig(name="default+sequence", serving=both, params=params),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.path.join(ROOT, "data", "online_retail.csv.gz"))
    ap.add_argument("--fraction", type=float, default=0.2)
    ap.add_argument("--sessions", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--sequence-params", default="{}", help="JSON, e.g. '{\"n_threads\": 1}'")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    data = load_dataset(args.data)
    train, test = split_data(data, "time", fraction=args.fraction)
    replay = sessions(test, args.sessions, args.seed)
    print(
        f"{args.data}: train {len(train)} events, {len(replay)} held-out sessions "
        f"(median {int(np.median([len(s) for s in replay]))} items)"
    )
    cfgs = configs(json.loads(args.sequence_params))
    models, fit_s = train_models(cfgs, train)
    print("fit seconds:", {k: round(v, 1) for k, v in fit_s.items()})
    known = set(str(x) for x in train.items.ids)
    rows = []
    print("| config | sessions | HR@10 | MRR@10 | warm share | ms/session |")
    print("|---|---:|---:|---:|---:|---:|")
    for cfg in cfgs:
        rec = Recommender(models[cfg.name].get, serving_config(cfg))
        hits, rr, warm = [], [], 0
        t0 = time.perf_counter()
        for items in replay:
            prefix, target = items[:-1], items[-1]
            history = UserHistory.from_items(None, prefix[::-1], type="click")
            req = RecRequest(n=10, exclude=list(prefix))
            res = rec.recommend(history, req)
            got = [it.item_id for it in res.items]
            warm += res.route == "warm"
            rank = got.index(target) + 1 if target in got else 0
            hits.append(rank > 0)
            rr.append(1.0 / rank if rank else 0.0)
        ms = (time.perf_counter() - t0) * 1000 / max(len(replay), 1)
        row = {
            "config": cfg.name,
            "sessions": len(replay),
            "hr@10": float(np.mean(hits)),
            "mrr@10": float(np.mean(rr)),
            "warm_share": warm / max(len(replay), 1),
            "ms_per_session": ms,
            "target_known": float(np.mean([s[-1] in known for s in replay])),
        }
        rows.append(row)
        print(
            f"| {cfg.name} | {row['sessions']} | {row['hr@10']:.4f} | {row['mrr@10']:.4f} | "
            f"{row['warm_share']:.2f} | {ms:.1f} |",
            flush=True,
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"fit_s": fit_s, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
