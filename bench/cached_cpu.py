"""CPU per request of ``/healthz`` and of cached ``GET /v1/users/<id>/recommendations`` in one
process, through the app's whole WSGI stack (request-id layer, fast path, Flask), no HTTP server
and no load generator.

``bench/serve_bench.py`` measures the served ratio "cached / healthz throughput" under gunicorn
and wrk, where the server's HTTP parsing and the client share the two cores; this isolates what
the application adds on a cache hit, so a change to the hit path shows up even on a busy machine
(``time.process_time``), plus the Redis server's CPU over the same requests (``INFO cpu``; run it
on an otherwise idle Redis). Run it from each source tree to compare versions, or with
``RECSYS_NEAR_CACHE_TTL=30`` against ``0`` to see what the near cache saves::

    RECSYS_DATABASE_URL=... RECSYS_REDIS_URL=... RECSYS_MODEL_DIR=... \\
        .venv/bin/python bench/cached_cpu.py --requests 20000 --rounds 3

against a store prepared like ``bench/serve_bench.py --prepare``.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one BLAS thread, as in a gunicorn worker
sys.path.insert(0, os.getcwd())  # the tree it is run from, not the installed one
sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))
from uncached_cpu import heavy_users  # noqa: E402


def environ(path: str, query: str = "") -> dict:
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }


def call(app, env: dict) -> tuple[str, bytes]:
    got: list[str] = []

    def start_response(status, headers, exc_info=None):
        got.append(status)

    body = b"".join(app(dict(env), start_response))
    return got[0], body


def redis_cpu(client) -> float:
    """Seconds of CPU the Redis server has used (user + system; every client's, so run this
    on an otherwise idle Redis)."""
    if client is None:
        return 0.0
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def cpu_per_request(app, envs: list[dict], n: int, redis_client=None) -> tuple[float, float]:
    """(this process's, the Redis server's) CPU seconds per request."""
    r0, c0 = redis_cpu(redis_client), time.process_time()
    for k in range(n):
        call(app, envs[k % len(envs)])
    c1, r1 = time.process_time(), redis_cpu(redis_client)
    return (c1 - c0) / n, (r1 - r0) / n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=20_000, help="per scenario and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--users", type=int, default=50)
    args = p.parse_args()
    from recsys import create_app

    app = create_app()
    url = app.config.get("REDIS_URL")
    redis_client = None
    if url:
        import redis

        redis_client = redis.Redis.from_url(url)
    users = heavy_users(app, args.users)
    if not users:
        print("needs a store with users of more than 20 events")
        return 1
    scenarios = {
        "/healthz": [environ("/healthz")],
        "cached, default fields": [
            environ(f"/v1/users/{u}/recommendations", "n=10") for u in users
        ],
        "cached, fields=": [
            environ(f"/v1/users/{u}/recommendations", "n=10&fields=") for u in users
        ],
    }
    for name, envs in scenarios.items():  # fill the cache; warm up
        for env in envs * 3:
            status, body = call(app, env)
            if not status.startswith("200"):
                print(f"{name}: {status} {body[:200]!r}")
                return 1
        if name != "/healthz" and b'"cached":true' not in body:
            print(f"{name}: not served from the cache (is Redis configured?)")
            return 1
    got: dict[str, list[float]] = {k: [] for k in scenarios}
    server: dict[str, list[float]] = {k: [] for k in scenarios}
    for rnd in range(args.rounds):
        for name, envs in scenarios.items():
            app_s, redis_s = cpu_per_request(app, envs, args.requests, redis_client)
            got[name].append(app_s * 1e6)
            server[name].append(redis_s * 1e6)
            print(
                f"round {rnd + 1} {name:24s} {app_s * 1e6:7.1f} us CPU per request here, "
                f"{redis_s * 1e6:5.1f} us in Redis"
            )
    med = {k: statistics.median(v) for k, v in got.items()}
    red = {k: statistics.median(v) for k, v in server.items()}
    h = med["/healthz"]
    parts = []
    for name in ("cached, default fields", "cached, fields="):
        total = med[name] + red[name]
        parts.append(
            f"{name} {med[name]:.1f} us + Redis {red[name]:.1f} us = {total:.1f} us "
            f"(+{total - h:.1f} over /healthz)"
        )
    near = app.config.get("NEAR_CACHE_TTL") or 0
    print(
        f"medians of {args.rounds} rounds, {args.requests} requests each "
        f"(NEAR_CACHE_TTL={near}): /healthz {h:.1f} us; " + "; ".join(parts)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
