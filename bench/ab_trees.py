"""Serve the same prepared store from two source trees (and a bare Flask app), in one run.

For "behaviour unchanged, not slower" checks of a refactor: each tree is started as gunicorn
with the project's ``gunicorn.conf.py`` (2 workers x 4 threads, the tree's own code through
``PYTHONPATH``) on the store ``bench/serve_bench.py --prepare`` made, and driven by wrk (or
Python threads) with the same scenarios, in alternating rounds (A, B, A, B ...) so that drift
of a shared machine falls on both. A bare Flask app answering a constant JSON under the same
gunicorn settings is the fixed floor the brief asks for: a ratio to it does not hide a falling
floor.

    .venv/bin/python bench/serve_bench.py --prepare --instance /work/bench-inst \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/recsys_bench_ab \\
        --redis-url redis://127.0.0.1:6379/8
    git worktree add /tmp/base <old commit>
    .venv/bin/python bench/ab_trees.py --a /tmp/base --b . --rounds 3 --instance /work/bench-inst \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/recsys_bench_ab \\
        --redis-url redis://127.0.0.1:6379/8

Prints one Markdown table: requests/s and p99 per scenario and tree (median over rounds), and
each tree's figure over the bare Flask floor.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import floors  # noqa: E402
import loadgen  # noqa: E402
import servekit as sb  # noqa: E402

BARE_APP = floors.BARE_APP


def start(
    tree: str, args, port: int, app: str = "wsgi:app", bare: bool = False
) -> subprocess.Popen:
    """gunicorn for ``tree`` with that tree's own gunicorn.conf.py (the project's for the bare
    app, whose folder has none)."""
    env = sb.bench_env(args)
    env["PYTHONPATH"] = tree
    if not bare and tree == os.path.abspath(args.b) and args.b_path:
        # A dependency tree B adds that the shared venv lacks (pip install --target DIR ...).
        env["PYTHONPATH"] = os.pathsep.join([tree, args.b_path])
    conf = os.path.join(tree, "gunicorn.conf.py")
    # The bare app: gunicorn's own threaded worker with the same counts (our conf's hooks and
    # worker class belong to the service).
    settings = ["-k", "gthread", "-w", str(args.workers), "--threads", str(args.threads)]
    log = open(os.path.join(args.instance, f"ab_{os.path.basename(tree) or 'tree'}.log"), "w")
    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", *(settings if bare else ["-c", conf])]
        + ["--bind", f"127.0.0.1:{port}", "--log-level", "warning", app],
        env=env,
        cwd=tree,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def scenarios(users: list[str], items: list[str]) -> list[tuple[str, list]]:
    rec = "/v1/users/{u}/recommendations?n=10"
    return [
        ("healthz", [("GET", "/healthz", None)]),
        ("cached", [("GET", rec.format(u=u), None) for u in users[:50]]),
        ("uncached", [("GET", rec.format(u=u) + "&exclude=ab-UNIQ", None) for u in users]),
        ("similar", [("GET", f"/v1/items/{i}/similar?n=10", None) for i in items]),
        ("popular", [("GET", "/v1/popular?n=10", None)]),
    ]


def measure(tree: str, args, drive, specs_of, run_id: str) -> dict[str, dict]:
    """Each scenario against ``tree``'s server, with its CPU milliseconds per request: the
    gunicorn workers, PostgreSQL (the benchmark database's backends) and Redis."""
    port = sb.free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(tree, args, port)
    try:
        sb.wait_ready(base, proc, timeout=300)
        if args.warmup > 0:  # a new server's first seconds (imports, first connections) unmeasured
            drive(base, specs_of[0][1], args.concurrency, args.warmup, run_id + "w")
        out = {}
        for name, specs in specs_of:
            if name == "cached":
                for _, path, _ in specs:  # fill the cache first
                    sb.get_json(base, path)
            w0, s0 = sb.worker_cpu(proc.pid), sb.service_cpu(args.database_url)
            r = out[name] = drive(base, specs, args.concurrency, args.duration, run_id)
            w1, s1 = sb.worker_cpu(proc.pid), sb.service_cpu(args.database_url)
            n = max(r["requests"], 1)
            r["cpu_ms"] = (
                1000 * sum(max(0.0, w1[w] - w0.get(w, 0.0)) for w in w1) / n,
                1000 * (s1["postgres"] - s0["postgres"]) / n,
                1000 * (s1["redis"] - s0["redis"]) / n,
            )
        return out
    finally:
        stop(proc)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--a", required=True, help="source tree A (e.g. a worktree of the old commit)")
    p.add_argument("--b", required=True, help="source tree B")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="seconds of the first scenario's load, not measured, after each server starts",
    )
    p.add_argument("--database-url", required=True)
    p.add_argument("--redis-url", required=True)
    p.add_argument("--redis-prefix", default="recsys-ab")
    p.add_argument("--instance", required=True)
    p.add_argument("--tool", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument(
        "--scenarios",
        default="healthz,cached,uncached,similar,popular",
        help="which scenarios, comma-separated",
    )
    p.add_argument(
        "--cornac-venv", default=None, help="also cornac.serving (bench/floors.py) each round"
    )
    p.add_argument(
        "--ml100k", default=os.path.join(os.path.dirname(ROOT), "shared", "datasets", "ml-100k")
    )
    p.add_argument(
        "--b-path",
        default=None,
        metavar="DIR",
        help="a folder put on tree B's PYTHONPATH after it: a dependency B adds that the venv "
        "lacks, installed with pip install --target DIR",
    )
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for both trees' servers, e.g. RECSYS_ACCESS_LOG=false (repeatable)",
    )
    args = p.parse_args()
    args.server_env = [tuple(kv.split("=", 1)) for kv in args.server_env]
    args.model_dir = os.path.join(args.instance, "models")
    args.workers, args.threads, args.near_cache_ttl = 2, 4, 0.0
    args.admin_token = "bench-admin-token"
    drive = loadgen.run_wrk if args.tool != "python" and shutil.which("wrk") else loadgen.run_python
    users, items = sb.sample_ids(args, n_users=200, n_items=300)
    wanted = args.scenarios.split(",")
    specs = [(n, sp) for n, sp in scenarios(users, items) if n in wanted]
    trees = {"A": os.path.abspath(args.a), "B": os.path.abspath(args.b)}
    got: dict[str, dict[str, list]] = {"A": {}, "B": {}, "ref": {}}
    print(sb.machine(), flush=True)
    refs = floors.FloorServers(2, 4, args.instance, args.cornac_venv, args.ml100k).__enter__()
    try:
        rounds(args, drive, specs, trees, refs, got)
    finally:
        refs.__exit__(None, None, None)
    report(args, specs, trees, got)
    return 0


def rounds(args, drive, specs, trees, refs, got) -> None:
    """``args.rounds`` alternating rounds: the floors, then A and B (B first in even rounds)."""
    for k in range(args.rounds):
        run_id = f"ab{int(time.time())}r{k}"
        for name, base, sp in refs.scenarios:
            r = drive(base, sp, args.concurrency, args.duration, run_id)
            got["ref"].setdefault(name, []).append(r)
            print(f"round {k + 1} {name}: {r['rps']:.0f}/s", flush=True)
        order = ("A", "B") if k % 2 == 0 else ("B", "A")
        for label in order:
            res = measure(trees[label], args, drive, specs, run_id + label)
            for name, r in res.items():
                got[label].setdefault(name, []).append(r)
            print(
                f"round {k + 1} {label}: "
                + ", ".join(f"{n} {r['rps']:.0f}/s" for n, r in res.items()),
                flush=True,
            )


def report(args, specs, trees, got) -> None:
    """The Markdown table of medians, with each round's figures and the ratios."""

    def med(rs, key):
        return statistics.median(r[key] for r in rs)

    def cpu(rs) -> str:
        return "/".join(f"{statistics.median(r['cpu_ms'][i] for r in rs):.2f}" for i in range(3))

    ref = {name: med(rs, "rps") for name, rs in got["ref"].items()}
    floor = ref["bare Flask, constant JSON"]
    print(
        f"\nA = {trees['A']}\nB = {trees['B']}\n{args.rounds} rounds x {args.duration:g} s, "
        f"{args.concurrency} connections, medians (load average {os.getloadavg()[0]:.1f} at "
        f"the end); server env {dict(args.server_env) or '-'}\n"
    )
    for name, rs in got["ref"].items():
        rounds = ", ".join(f"{r['rps']:.0f}" for r in rs)
        print(f"- {name}: {ref[name]:.0f}/s (rounds: {rounds})")
    print()
    print(
        "| scenario | A req/s | B req/s | B/A | A rounds | B rounds | A p99 ms | B p99 ms "
        "| A/bare | B/bare | A CPU ms/req | B CPU ms/req |"
    )
    print("|---|---:|---:|---:|---|---|---:|---:|---:|---:|---|---|")
    for name, _ in specs:
        a, b = med(got["A"][name], "rps"), med(got["B"][name], "rps")
        pa, pb = med(got["A"][name], "p99_ms"), med(got["B"][name], "p99_ms")
        ra = ", ".join(f"{r['rps']:.0f}" for r in got["A"][name])
        rb = ", ".join(f"{r['rps']:.0f}" for r in got["B"][name])
        print(
            f"| {name} | {a:.0f} | {b:.0f} | {b / a:.2f} | {ra} | {rb} | {pa:.1f} | {pb:.1f} "
            f"| {a / floor:.2f} | {b / floor:.2f} | {cpu(got['A'][name])} "
            f"| {cpu(got['B'][name])} |"
        )
    print("\nCPU ms/req: gunicorn workers / PostgreSQL (this database) / Redis (all of it).")
    for label in ("A", "B"):
        h, c = med(got[label].get("healthz", [{"rps": 0}]), "rps"), None
        if "cached" in got[label]:
            c = med(got[label]["cached"], "rps")
        for rname in ("cornac.serving recommend", "cornac.serving floor (400)"):
            if rname in ref and c is not None:
                print(
                    f"- {label}: cached / {rname} {c / ref[rname]:.2f}x, "
                    f"/healthz / {rname} {h / ref[rname]:.2f}x"
                )
        if c is not None and h:
            print(f"- {label}: cached / /healthz {c / h:.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
