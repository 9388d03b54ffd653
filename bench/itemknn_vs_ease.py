"""Fit time and peak memory of item-kNN against EASE, next to their ``estimate_cost`` figures.

    .venv/bin/python bench/itemknn_vs_ease.py [--data ml100k retail synth:5000,50000,500000]
        [--strategies ease,itemknn] [--skip-over-gib 6] [--json OUT]

Each fit runs in a fresh process (one core: ``OMP/OPENBLAS/MKL_NUM_THREADS=1``), so its peak
RSS (``ru_maxrss``) is its own; the table shows the RSS before the fit (data loaded), the peak,
their difference and the strategy's own estimate (``Strategy.estimate_cost``, the figure the
training budget compares, docs/scale.md). ``synth:I,U,E`` is a power-law catalogue of I items,
U users and E events (Zipf popularity with exponent 1.1, users' activity log-normal, seed 0).
A fit whose estimate exceeds ``--skip-over-gib`` is not run (its estimate is still printed).
Quality is measured by ``recsys evaluate --config itemknn --config ease`` (docs/scale.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

GIB = 2**30


def synthetic(n_items: int, n_users: int, n_events: int, seed: int = 0):
    """A power-law catalogue: Zipf item popularity, log-normal user activity, purchases.

    Parameters
    ----------
    n_items : int
        Items.
    n_users : int
        Users.
    n_events : int
        Events.
    seed : int
        Random seed.

    Returns
    -------
    InteractionData
        The events, one a second from 2025-01-01.
    """
    import numpy as np

    from features.interactions import InteractionData

    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, n_items + 1) ** 1.1
    items = rng.choice(n_items, n_events, p=pop / pop.sum())
    act = rng.lognormal(0.0, 1.0, n_users)
    users = rng.choice(n_users, n_events, p=act / act.sum())
    return InteractionData.from_arrays(
        users.astype(str).tolist(),
        items.astype(str).tolist(),
        event_types=["purchase"] * n_events,
        timestamps=1_735_689_600 + np.arange(n_events),
        all_item_ids=[str(i) for i in range(n_items)],
    )


def load(spec: str):
    """The data set named ``spec`` (``ml100k``, ``retail``, ``synth:I,U,E``).

    Parameters
    ----------
    spec : str
        Data set name.

    Returns
    -------
    InteractionData
        Its events.
    """
    from recsys.offline.evaluation.datasets import load_movielens_100k, load_online_retail

    if spec == "ml100k":
        return load_movielens_100k()
    if spec == "retail":
        return load_online_retail()
    if spec.startswith("synth:"):
        i, u, e = (int(x) for x in spec[len("synth:") :].split(","))
        return synthetic(i, u, e)
    raise SystemExit(f"unknown data set {spec!r}")


def rss_bytes() -> int:
    """Current resident set size of this process.

    Returns
    -------
    int
        Bytes (from /proc/self/statm).
    """
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def one(spec: str, name: str) -> dict:
    """Fit ``name`` on ``spec`` in this process and measure it (the child's job).

    Parameters
    ----------
    spec : str
        Data set.
    name : str
        Strategy.

    Returns
    -------
    dict
        Sizes, seconds, RSS before the fit and peak RSS (bytes).
    """
    from strategies import get_strategy_class

    data = load(spec)
    cls = get_strategy_class(name)
    before = rss_bytes()
    t0 = time.perf_counter()
    model = cls().fit(data)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    w = getattr(model, "weights_", None)
    return {
        "data": spec,
        "strategy": name,
        "users": data.n_users,
        "items": data.n_items,
        "events": len(data),
        "fit_s": seconds,
        "rss_before": before,
        "peak_rss": peak,
        "model_nnz": int(w.nnz) if w is not None else None,
    }


def main() -> None:
    """Run every (data set, strategy) fit in its own process and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["ml100k", "retail", "synth:5000,50000,500000"])
    ap.add_argument("--strategies", default="ease,itemknn")
    ap.add_argument("--skip-over-gib", type=float, default=6.0)
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--one", nargs=2, metavar=("DATA", "STRATEGY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(*args.one)))
        return
    from strategies import get_strategy_class

    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    env["MKL_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    rows = []
    print(
        f"{'data':<26} {'strategy':<8} {'items':>7} {'users':>8} {'events':>9} {'fit s':>8} "
        f"{'RSS before':>11} {'peak RSS':>9} {'fit +RSS':>9} {'estimate':>9} {'est. s':>7}"
    )
    for spec in args.data:
        for name in args.strategies.split(","):
            cmd = [sys.executable, __file__, "--one", spec, name]
            sizes = None
            if spec.startswith("synth:"):
                sizes = [int(x) for x in spec[len("synth:") :].split(",")]
            if sizes is not None:
                i, u, e = sizes
                est, est_s = get_strategy_class(name).estimate_cost(u, i, e)
                if est > args.skip_over_gib * GIB:
                    print(
                        f"{spec:<26} {name:<8} {i:>7} {u:>8} {e:>9} {'skipped':>8} {'':>11} "
                        f"{'':>9} {'':>9} {est / GIB:>8.2f}G {est_s or 0:>7.0f}"
                    )
                    rows.append({"data": spec, "strategy": name, "skipped": True, "est": est})
                    continue
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            est, est_s = get_strategy_class(name).estimate_cost(r["users"], r["items"], r["events"])
            r["estimate"], r["estimate_s"] = est, est_s
            rows.append(r)
            print(
                f"{spec:<26} {name:<8} {r['items']:>7} {r['users']:>8} {r['events']:>9} "
                f"{r['fit_s']:>8.1f} {r['rss_before'] / GIB:>10.2f}G {r['peak_rss'] / GIB:>8.2f}G "
                f"{(r['peak_rss'] - r['rss_before']) / GIB:>8.2f}G {est / GIB:>8.2f}G "
                f"{est_s or 0:>7.1f}",
                flush=True,
            )
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
