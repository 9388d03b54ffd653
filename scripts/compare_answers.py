"""Print the answers a source tree gives on a prepared store, to compare two trees byte for byte.

``scripts/api_snapshot.py`` checks a small synthetic shop; this checks a real one, with every
strategy trained (``bench/serve_bench.py --prepare``): 40 warm users' lists with ``explain``
(items, scores, per-strategy sources, route, degraded), the popular list, and the similar items
of the 10 most popular items.

    for t in /tmp/base .; do
      .venv/bin/python scripts/compare_answers.py --tree $t --instance /work/bench-inst \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/recsys_bench_ab \\
        --redis-url redis://127.0.0.1:6379/8 > /tmp/answers-$(basename $t).json
    done
    cmp /tmp/answers-base.json /tmp/answers-..json && echo identical
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", required=True, help="the source tree whose code answers")
    ap.add_argument("--instance", required=True, help="folder with models/ (serve_bench)")
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--redis-url", required=True)
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "bench"))
    import serve_bench  # the store's warm users, as the serving benchmark samples them

    users, _ = serve_bench.sample_ids(args, n_users=60, n_items=10)
    client = serve_bench.tree_client(args, args.tree, "compare")
    out: dict[str, list] = {}
    for u in users[:40]:
        body = client.get(f"/v1/users/{u}/recommendations?n=10&explain=true").get_json()
        out[u] = [
            [i["item_id"], i["score"], sorted(i.get("sources", {}).items())] for i in body["items"]
        ] + [body["route"], body["degraded"]]
    popular = client.get("/v1/popular?n=20").get_json()
    out["popular"] = [[i["item_id"], i["score"]] for i in popular["items"]]
    for item in [x[0] for x in out["popular"][:10]]:
        body = client.get(f"/v1/items/{item}/similar?n=10").get_json()
        out[f"similar:{item}"] = [[i["item_id"], i["score"]] for i in body["items"]]
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
