"""The app's own CPU time per request of one source tree, in process (no gunicorn, no network).

Complements ``bench/ab_trees.py``: with the worker and the load generator out of the picture,
two trees' request paths can be compared on the same prepared store. Prints one JSON line of
milliseconds of this process's CPU (``time.process_time``) per request for /v1/popular, similar
items, uncached and cached user lists, and /healthz (PostgreSQL's and Redis's CPU not counted).

    for t in <tree A> .; do
      .venv/bin/python bench/inproc_trees.py --tree $t --instance /work/bench-inst \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/recsys_bench_ab \\
        --redis-url redis://127.0.0.1:6379/8
    done
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", required=True)
    ap.add_argument("--instance", required=True)
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--requests", type=int, default=400)
    args = ap.parse_args()
    sys.path.insert(0, HERE)
    import serve_bench

    users, _ = serve_bench.sample_ids(args, n_users=60, n_items=10)
    client = serve_bench.tree_client(args, args.tree, "inproc")
    items = [i["item_id"] for i in client.get("/v1/popular?n=50").get_json()["items"]]
    paths = {
        "popular": lambda k: "/v1/popular?n=10",
        "similar": lambda k: f"/v1/items/{items[k % len(items)]}/similar?n=10",
        "uncached": lambda k: (
            f"/v1/users/{users[k % len(users)]}/recommendations?n=10&exclude=x{k}"
        ),
        "cached": lambda k: f"/v1/users/{users[k % 20]}/recommendations?n=10",
        "healthz": lambda k: "/healthz",
    }
    out = {"tree": args.tree}
    for name, path in paths.items():
        for k in range(30):  # warm-up (and fill the cache for "cached")
            client.get(path(k))
        n = args.requests if name != "uncached" else args.requests // 2
        t0 = time.process_time()
        for k in range(n):
            resp = client.get(path(k + 1000))
            if resp.status_code != 200:
                raise SystemExit(f"{name}: {resp.status_code} {resp.get_data()[:200]!r}")
        out[name] = round((time.process_time() - t0) / n * 1e3, 3)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
