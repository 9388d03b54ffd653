"""CPU and wall time per uncached ``GET /v1/users/<id>/recommendations`` in one process.

The app's whole WSGI stack (the fast path included) through Flask's test client, one thread, no
load generator: on a shared machine the CPU figure (``time.process_time``) stays comparable
where a server run's throughput follows the neighbours' load. Run it from each source tree to
compare two versions (alternate them a few times)::

    RECSYS_DATABASE_URL=... RECSYS_REDIS_URL=... RECSYS_MODEL_DIR=... \\
        .venv/bin/python bench/uncached_cpu.py --requests 300

against a store prepared like ``bench/serve_bench.py --prepare`` (users with > 20 events).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one BLAS thread, as in a gunicorn worker
sys.path.insert(0, os.getcwd())  # the tree it is run from, not the installed one


def heavy_users(app, limit: int) -> list[str]:
    """Up to ``limit`` users of the store with more than 20 events (warm users), by id."""
    from sqlalchemy import text

    from recsys.store import get_engine

    with app.app_context(), get_engine().connect() as c:
        return [
            r[0]
            for r in c.execute(
                text(
                    "SELECT external_id FROM users u WHERE (SELECT count(*) FROM events e"
                    " WHERE e.user_id = u.id) > 20 ORDER BY id LIMIT :n"
                ),
                {"n": limit},
            )
        ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=300)
    args = p.parse_args()
    from recsys import create_app

    app = create_app()
    users = heavy_users(app, 400)
    if len(users) < 40:
        print("needs a store with at least 40 users of more than 20 events")
        return 1
    client = app.test_client()
    for u in users[:30]:  # warm-up: models, catalogue, connections
        client.get(f"/v1/users/{u}/recommendations?n=10&exclude=w{time.time()}")
    run = f"{time.time()}"
    n = args.requests
    c0, w0 = time.process_time(), time.perf_counter()
    for k in range(n):
        u = users[30 + k % (len(users) - 30)]
        r = client.get(f"/v1/users/{u}/recommendations?n=10&exclude=r{run}-{k}")
        assert r.status_code == 200 and r.get_json()["cached"] is False
    c1, w1 = time.process_time(), time.perf_counter()
    print(
        f"{os.getcwd()}: {n} uncached requests, CPU {1000 * (c1 - c0) / n:.2f} ms/request, "
        f"wall {1000 * (w1 - w0) / n:.2f} ms/request"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
