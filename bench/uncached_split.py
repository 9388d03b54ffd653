"""CPU per uncached recommendation, split into this process / PostgreSQL / Redis, for two trees.

``bench/uncached_cpu.py`` counts only the app's own CPU. This one also counts what the request
costs the servers it talks to, from /proc: the PostgreSQL backends connected to the benchmark's
database, and a private ``redis-server`` started for the run (the shared Redis serves every
session on the machine, so its CPU says nothing about one process). Each tree runs in a child
process of its own (its ``recsys`` package first on ``sys.path``), the trees alternating, so on
a loaded machine both see the same neighbours; CPU seconds, not wall time, are compared.

    .venv/bin/python bench/uncached_split.py --a /work/wt-base --b . --rounds 3 --requests 400 \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/<db> \\
        --instance <bench/storefront.py --prepare instance>

``--mode exclude`` (default) asks each warm user for a list with a unique ``exclude`` (every
request a miss, as ``bench/uncached_cpu.py``, each user about once); ``--mode event`` posts a
view, then asks for the user's plain list, cycling over ``--users`` warm users (the
storefront's read after an event; refresh-ahead off, so the read computes; the event's own CPU
is counted too). ``--profile FILE`` writes a CPU-time cProfile of tree B's last round.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def child(args) -> int:
    """Run the requests in this process against ``args.tree``; print one JSON line."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")  # one BLAS thread, as in a gunicorn worker
    from servekit import ROOT, proc_cpu, service_cpu

    tree = os.path.abspath(args.tree)
    if ROOT != tree and ROOT in sys.path:  # servekit put its own tree first
        sys.path.remove(ROOT)
    sys.path.insert(0, tree)

    os.environ.update(
        RECSYS_DATABASE_URL=args.database_url,
        RECSYS_REDIS_URL=args.redis_url,
        RECSYS_MODEL_DIR=os.path.join(args.instance, "models"),
        RECSYS_PRELOAD_MODELS="true",
        RECSYS_REDIS_PREFIX=f"split-{uuid.uuid4().hex}",
        RECSYS_ACCESS_LOG="false",
        RECSYS_REFRESH_AHEAD="false",
    )
    import logging

    from recsys import create_app

    app = create_app()
    logging.getLogger().setLevel(logging.ERROR)
    import recsys

    assert os.path.dirname(recsys.__file__).startswith(os.path.abspath(args.tree)), recsys.__file__
    from uncached_cpu import heavy_users

    users = heavy_users(app, 400)[: args.users if args.mode == "event" else None]
    items = _items(app)
    client = app.test_client()
    run = uuid.uuid4().hex[:8]

    split = {"post": [0.0, 0.0, 0.0], "get": [0.0, 0.0, 0.0]}  # app, pg, redis seconds
    watched: list = []

    def servers() -> tuple[float, float]:
        if not watched:
            return 0.0, 0.0
        return sum(_cpu(p) for p in watched[1:]), _cpu(watched[0])

    def timed_call(what: str, fn):
        p0, r0 = servers()
        c0 = time.process_time()
        r = fn()
        c1 = time.process_time()
        p1, r1 = servers()
        acc = split[what]
        acc[0] += c1 - c0
        acc[1] += p1 - p0
        acc[2] += r1 - r0
        return r

    def one(k: int) -> None:
        u = users[k % len(users)]
        if args.mode == "event":
            r = timed_call(
                "post",
                lambda: client.post(
                    "/v1/events",
                    json={"user_id": u, "item_id": items[k % len(items)], "type": "view"},
                ),
            )
            assert r.status_code in (200, 201), r.get_data()
            r = timed_call("get", lambda: client.get(f"/v1/users/{u}/recommendations?n=10"))
        else:
            r = client.get(f"/v1/users/{u}/recommendations?n=10&exclude=r{run}-{k}")
        assert r.status_code == 200 and r.get_json()["cached"] is False, r.get_data()[:300]

    for k in range(40):  # warm-up: models, catalogue, connections, item id map
        one(k)
    watched[:] = [args.redis_pid, *_backends(args.database_url)]
    for acc in split.values():
        acc[:] = [0.0, 0.0, 0.0]
    prof = None
    if args.profile:
        import cProfile

        prof = cProfile.Profile(time.process_time)
    n = args.requests
    redis_pid = args.redis_pid
    s0, r0 = service_cpu(args.database_url)["postgres"], proc_cpu(redis_pid)[1]
    c0, w0 = time.process_time(), time.perf_counter()
    if prof is not None:
        prof.enable()
    for k in range(n):
        one(40 + k)
    if prof is not None:
        prof.disable()
        prof.dump_stats(args.profile)
    c1, w1 = time.process_time(), time.perf_counter()
    s1, r1 = service_cpu(args.database_url)["postgres"], proc_cpu(redis_pid)[1]
    ms = 1000 / n
    print(
        json.dumps(
            {
                "tree": args.tree,
                "app": (c1 - c0) * ms,
                "pg": (s1 - s0) * ms,
                "redis": (r1 - r0) * ms,
                "wall": (w1 - w0) * ms,
                **{
                    f"{what}_{part}": acc[i] * ms
                    for what, acc in split.items()
                    for i, part in enumerate(("app", "pg", "redis"))
                },
            }
        )
    )
    return 0


def _cpu(pid: int) -> float:
    from servekit import proc_cpu

    try:
        return proc_cpu(pid)[1]
    except OSError:
        return 0.0


def _backends(database_url: str) -> list[int]:
    """The PostgreSQL backends connected to the database of ``database_url`` now."""
    database = database_url.rsplit("/", 1)[-1].split("?")[0]
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ")
        except OSError:
            continue
        if cmd.startswith(b"postgres") and f" {database} ".encode() in cmd:
            out.append(int(pid))
    return out


def _items(app) -> list[str]:
    from sqlalchemy import text

    from recsys.store import get_engine

    with app.app_context(), get_engine().connect() as c:
        q = "SELECT external_id FROM items WHERE available ORDER BY id LIMIT 500"
        return [r[0] for r in c.execute(text(q))]


def start_redis() -> tuple[subprocess.Popen, str]:
    from servekit import free_port

    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    import redis

    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        try:
            redis.Redis.from_url(url).ping()
            return proc, url
        except redis.ConnectionError:
            time.sleep(0.05)
    raise SystemExit("private redis-server did not start")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--a", required=True, help="the base tree")
    p.add_argument("--b", default=".", help="the changed tree")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--mode", choices=("exclude", "event"), default="exclude")
    p.add_argument("--users", type=int, default=50, help="--mode event: shoppers cycled")
    p.add_argument("--database-url", required=True)
    p.add_argument("--instance", required=True)
    p.add_argument("--profile", default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tree", help=argparse.SUPPRESS)
    p.add_argument("--redis-url", help=argparse.SUPPRESS)
    p.add_argument("--redis-pid", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    proc, url = start_redis()
    got: dict[str, list[dict]] = {"A": [], "B": []}
    try:
        for k in range(args.rounds):
            for label, tree in (("A", args.a), ("B", args.b)):
                cmd = [
                    sys.executable,
                    os.path.abspath(__file__),
                    "--child",
                    "--tree",
                    tree,
                    "--a",
                    args.a,
                    "--redis-url",
                    url,
                    "--redis-pid",
                    str(proc.pid),
                    "--database-url",
                    args.database_url,
                    "--instance",
                    args.instance,
                    "--requests",
                    str(args.requests),
                    "--mode",
                    args.mode,
                    "--users",
                    str(args.users),
                ]
                if args.profile and label == "B" and k == args.rounds - 1:
                    cmd += ["--profile", args.profile]
                out = subprocess.run(cmd, capture_output=True, text=True, env=_env(tree))
                if out.returncode:
                    print(out.stdout, out.stderr[-3000:])
                    return 1
                r = json.loads(out.stdout.strip().splitlines()[-1])
                got[label].append(r)
                if args.mode == "event":
                    print(
                        f"round {k + 1} {label}: read after the event: app {r['get_app']:.3f}"
                        f" + pg {r['get_pg']:.3f} + redis {r['get_redis']:.3f} ms; the event: "
                        f"app {r['post_app']:.3f} + pg {r['post_pg']:.3f} + redis "
                        f"{r['post_redis']:.3f} ms",
                        flush=True,
                    )
                print(
                    f"round {k + 1} {label}: app {r['app']:.3f} + pg {r['pg']:.3f} + redis "
                    f"{r['redis']:.3f} = {r['app'] + r['pg'] + r['redis']:.3f} ms CPU/request "
                    f"(wall {r['wall']:.2f} ms; load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    for label in ("A", "B"):
        rs = got[label]
        if args.mode == "event":
            med = {
                k: statistics.median(r[k] for r in rs)
                for k in rs[0]
                if k.startswith(("get_", "post_"))
            }
            print(
                f"{label} median, read after the event: app {med['get_app']:.3f}, pg "
                f"{med['get_pg']:.3f}, redis {med['get_redis']:.3f}, total "
                f"{med['get_app'] + med['get_pg'] + med['get_redis']:.3f} ms; the event: total "
                f"{med['post_app'] + med['post_pg'] + med['post_redis']:.3f} ms"
            )
        tot = [r["app"] + r["pg"] + r["redis"] for r in rs]
        print(
            f"{label} median: app {statistics.median(r['app'] for r in rs):.3f}, pg "
            f"{statistics.median(r['pg'] for r in rs):.3f}, redis "
            f"{statistics.median(r['redis'] for r in rs):.3f}, total {statistics.median(tot):.3f}"
            " ms CPU per uncached request"
        )
    return 0


def _env(tree: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.abspath(tree)
    return env


if __name__ == "__main__":
    raise SystemExit(main())
