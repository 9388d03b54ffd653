"""CPU per uncached recommendation request under two configurations, alternated in one process.

On a shared VM the speed of the whole machine drifts by 20-50 % over minutes, so two server runs
minutes apart cannot separate a 10 % change. This script runs one app in-process (Flask's test
client, one thread, no HTTP server), switches ``app.config`` between configuration A and B every
``--per`` requests, and reports the thread CPU time per request of each: both see the same
drift. Every request is a cache miss (a unique ``exclude`` value), for the same warm users the
serving benchmark uses. Only settings read per request can be compared this way (for example
``FAST_MISS_PATH``, ``SCORING_SLOTS``, ``STRATEGY_PARALLEL``).

    .venv/bin/python bench/inproc_ab.py --database-url postgresql+psycopg://...bench_h7 \\
        --instance /tmp/h7/bench --a FAST_MISS_PATH=false --b FAST_MISS_PATH=true

Run ``bench/serve_bench.py --prepare`` with the same arguments first.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def setting(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url", required=True)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--redis-prefix", default="inproc-ab")
    p.add_argument("--instance", required=True, help="the --instance given to serve_bench")
    p.add_argument("--a", type=setting, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--b", type=setting, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--chunks", type=int, default=20, help="alternations (default 20)")
    p.add_argument("--per", type=int, default=50, help="requests per chunk (default 50)")
    args = p.parse_args(argv)
    if not args.a and not args.b:
        p.error("give at least one --a or --b setting")

    # One BLAS/torch thread, as in a gunicorn worker; set before numpy/torch are imported.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    sys.path.insert(0, ROOT)
    from bench.serve_bench import sample_ids
    from recsys.app import create_app
    from recsys.config import update_config

    users, _ = sample_ids(args, n_users=400, n_items=1)
    app = create_app(
        {
            "DATABASE_URL": args.database_url,
            "REDIS_URL": args.redis_url,
            "REDIS_PREFIX": args.redis_prefix,
            "MODEL_DIR": os.path.join(args.instance, "models"),
            "PRELOAD_MODELS": True,
        }
    )
    import torch

    torch.set_num_threads(1)
    client = app.test_client()
    deadline = time.monotonic() + 120
    while client.get("/readyz").status_code != 200:
        if time.monotonic() > deadline:
            print("models not ready after 120 s", file=sys.stderr)
            return 1
        time.sleep(0.2)
    configs = {"A": dict(args.a), "B": dict(args.b)}
    token = random.randrange(10**9)
    k = 0

    def chunk(n: int) -> float:
        nonlocal k
        t0 = time.thread_time()
        for _ in range(n):
            k += 1
            user = users[k % len(users)]
            r = client.get(f"/v1/users/{user}/recommendations?exclude=ab{token}-{k}")
            if r.status_code != 200 or r.get_json()["cached"]:
                raise SystemExit(f"unexpected answer {r.status_code}: {r.get_data()[:200]!r}")
        return (time.thread_time() - t0) / n * 1e3

    chunk(args.per)  # warm-up
    per_config: dict[str, list[float]] = {"A": [], "B": []}
    for _ in range(args.chunks):
        for name, cfg in configs.items():
            update_config(app, **cfg)
            per_config[name].append(chunk(args.per))
    print(
        f"{args.chunks} x {args.per} uncached requests per configuration, alternated; "
        "thread CPU ms per request:"
    )
    for name, values in per_config.items():
        print(
            f"  {name} {json.dumps(configs[name])}: median {statistics.median(values):.2f}, "
            f"min {min(values):.2f}, max {max(values):.2f}"
        )
    a, b = (statistics.median(per_config[n]) for n in ("A", "B"))
    print(f"  B / A (medians): {b / a:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
