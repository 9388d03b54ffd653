"""Simulated A/B traffic against a running server, then the experiment report, reconciled.

Replays held-out Online Retail events (the newest ``--fraction`` by time) as clicks through
the HTTP API: for each sampled held-out user it asks ``GET /v1/users/<id>/recommendations``
(the response says which variant served it), then posts each of the user's held-out items as a
``click`` (``POST /v1/events``, no timestamp: the server's clock, so clicks follow exposures).
Each list served is written back as an impression (``POST /v1/impressions``; ``--no-impressions``
skips it). Every call goes through the typed client ``recsys.client.RecsysClient``.
Finally it fetches ``GET /v1/admin/experiments/<name>/report`` and prints the report beside the
client's own tallies (lists served per variant, clicks posted, clicks on shown items), which
must match the server's stored exposures and attributed/unattributed events.

    # 1. a store holding only the events before the held-out cutoff, and models trained on it
    .venv/bin/python bench/simulate_traffic.py --write-train-file /tmp/retail_train.csv.gz
    recsys db upgrade && recsys import online-retail /tmp/retail_train.csv.gz && recsys train
    # 2. a server with the admin token, then the replay
    RECSYS_ADMIN_TOKEN=secret recsys serve --bind 127.0.0.1:8000 &
    .venv/bin/python bench/simulate_traffic.py --url http://127.0.0.1:8000 --token secret
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter, defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recsys.client import ApiError, Event, RecsysClient  # noqa: E402
from recsys.offline.evaluation.datasets import load_online_retail  # noqa: E402
from recsys.offline.evaluation.splits import time_split  # noqa: E402

VARIANTS = [
    {"name": "control", "weight": 0.5, "config": {}},
    {
        "name": "popular",
        "weight": 0.5,
        "config": {"routing": {"cold_strategies": ["popular"], "warm_strategies": ["popular"]}},
    },
]


def _cutoff(data, fraction: float) -> int:
    _train, test = time_split(data, fraction=fraction)
    return int(test.ts.min())


def write_train_file(path: str | None, fraction: float, out: str) -> None:
    """The raw file's lines dated before the cutoff, same columns, for ``recsys import``."""
    import csv
    import datetime as dt
    import gzip
    import io

    from recsys.offline.evaluation.datasets import RETAIL_FILE

    data = load_online_retail(path)
    cut = _cutoff(data, fraction)
    kept = total = 0
    with gzip.open(path or RETAIL_FILE, "rb") as raw, gzip.open(out, "wt", newline="") as dst:
        reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8", errors="replace"))
        writer = csv.writer(dst)
        header = next(reader)
        writer.writerow(header)
        ti = header.index("InvoiceDate")
        for row in reader:
            total += 1
            t = dt.datetime.fromisoformat(row[ti]).replace(tzinfo=dt.UTC).timestamp()
            if t < cut:
                writer.writerow(row)
                kept += 1
    when = dt.datetime.fromtimestamp(cut, dt.UTC).isoformat()
    print(f"wrote {kept} of {total} lines dated before {when} to {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--token", default=os.environ.get("RECSYS_ADMIN_TOKEN"))
    ap.add_argument("--data", default=None, help="Online Retail file (default: bundled)")
    ap.add_argument("--fraction", type=float, default=0.1, help="held-out share (newest)")
    ap.add_argument("--users", type=int, default=300, help="held-out users to replay")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--name", default=f"sim-{int(time.time())}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default=None, help="JSON list of variants (default: A/B)")
    ap.add_argument(
        "--no-impressions",
        dest="impressions",
        action="store_false",
        help="do not write back the lists shown (POST /v1/impressions)",
    )
    ap.add_argument(
        "--write-train-file",
        default=None,
        help="write the Online Retail lines before the held-out cutoff to this .csv.gz and exit",
    )
    args = ap.parse_args()
    if args.write_train_file:
        write_train_file(args.data, args.fraction, args.write_train_file)
        return
    if not args.token:
        sys.exit("give --token or set RECSYS_ADMIN_TOKEN (admin is needed to create experiments)")
    api = RecsysClient(args.url, admin_token=args.token)

    data = load_online_retail(args.data)
    _train, test = time_split(data, fraction=args.fraction)
    users = np.unique(test.user_idx)
    rng = np.random.default_rng(args.seed)
    users = rng.choice(users, size=min(args.users, len(users)), replace=False)

    variants = json.loads(args.variants) if args.variants else VARIANTS
    try:
        api.create_experiment({"name": args.name, "variants": variants})
    except ApiError as e:
        sys.exit(f"could not create the experiment: {e}")
    time.sleep(1.0)  # every worker polls experiments at most every CONFIG_POLL_SECONDS

    served = Counter()
    clicks_posted = 0
    impressions = 0
    clicks_on_shown = defaultdict(int)
    t0 = time.perf_counter()
    for u in users:
        uid = str(data.users.ids[u])
        rec = api.get_user_recommendations(uid, n=args.n)
        request_id = api.last_response.headers.get("X-Request-ID") if api.last_response else None
        if rec["items"] and args.impressions:
            # What a shop does: write back what it showed (shown but not clicked, later).
            api.post_impressions(
                {
                    "user_id": uid,
                    "items": [it["item_id"] for it in rec["items"]],
                    "context": "simulate_traffic",
                    **({"request_id": request_id} if request_id else {}),
                }
            )
            impressions += 1
        variant = (rec.get("experiment") or {}).get("variant")
        shown = {it["item_id"] for it in rec["items"]}
        if variant is not None and shown:
            served[variant] += 1
        held = [str(data.items.ids[i]) for i in np.unique(test.item_idx[test.user_idx == u])]
        events: list[Event] = [{"user_id": uid, "item_id": it, "type": "click"} for it in held]
        if events:
            api.post_events(events)
            clicks_posted += len(events)
            if variant is not None and shown:
                clicks_on_shown[variant] += sum(1 for it in held if it in shown)
    elapsed = time.perf_counter() - t0

    rep = api.get_experiment_report(args.name)
    print(
        f"replayed {len(users)} held-out users, {clicks_posted} clicks, {impressions} "
        f"impression lists in {elapsed:.1f}s "
        f"({platform.node()}, {os.cpu_count()} cores)\n"
    )
    print("variant      exposures  CTR     [95% CI]          clicked-exposures")
    for name, v in rep["variants"].items():
        lo, hi = v["click_through_ci"]
        print(
            f"{name:<12} {v['exposures']:>9}  {v['click_through']:.4f} [{lo:.4f}, {hi:.4f}]"
            f"  {v['exposures_clicked']}"
        )
    for c in rep["comparisons"]:
        print(c["verdict"])
    print("\nreconciliation (client tally vs server report):")
    ok = True
    for name, v in rep["variants"].items():
        att = v["attributed_events"].get("click", 0)
        line_ok = served[name] == v["exposures"] and clicks_on_shown[name] == att
        ok &= line_ok
        print(
            f"  {name:<12} lists served {served[name]:>5} vs exposures {v['exposures']:>5}; "
            f"clicks on shown items {clicks_on_shown[name]:>5} vs attributed {att:>5}"
            f"  {'OK' if line_ok else 'MISMATCH'}"
        )
    stored = rep["events"]["stored"].get("click", 0)
    attributed = rep["events"]["attributed"].get("click", 0)
    unattributed = rep["events"]["unattributed"].get("click", 0)
    line_ok = stored == clicks_posted == attributed + unattributed
    ok &= line_ok
    print(
        f"  clicks posted {clicks_posted} vs stored {stored} = attributed {attributed} + "
        f"unattributed {unattributed}  {'OK' if line_ok else 'MISMATCH'}"
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
