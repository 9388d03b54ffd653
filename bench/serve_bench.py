"""Serving benchmark: the real service under gunicorn with Redis, driven over HTTP on 127.0.0.1.

    # once: a private database with Online Retail imported and every model trained
    .venv/bin/python bench/serve_bench.py --prepare
    # the benchmark (about 2-3 minutes): starts `recsys serve` (2 workers), measures, stops it
    .venv/bin/python bench/serve_bench.py
    # only /healthz against cached lists with and without item data, 3 alternating rounds
    .venv/bin/python bench/serve_bench.py --cached-only 3
    # against a server you started yourself (no memory figures unless --server-pid is given)
    .venv/bin/python bench/serve_bench.py --url http://127.0.0.1:8000
    # with cornac.serving beside it (a venv outside the repo: bench/floors.py)
    .venv/bin/python bench/serve_bench.py --cached-only 3 --cornac-venv /tmp/cornac-venv

Scenarios (each a bounded, self-stopping run of --duration seconds at --concurrency clients):
/healthz (the floor), cached recommendations (warm users whose result is already cached),
uncached recommendations (warm users; every request has a unique ``exclude`` value, so the cache
key is new and the full request path runs) at each of --uncached-clients (1,2,4,8; --plot
draws latency and throughput against them), similar items, event ingestion one event per request
and 100 per request. Then the deep model's micro-batching versus unbatched scoring at 16
concurrent callers (in this process, on the served model version, one torch thread like a
worker), and memory: RSS and PSS (``/proc/<pid>/smaps_rollup``) of the master and each worker
with every model loaded. Prints a Markdown table for the README.

Fixed references, measured in the same run (``bench/floors.py``): a bare Flask app answering a
constant JSON under the same gunicorn worker and thread counts, at the start and at the end,
and with ``--cornac-venv`` cornac.serving's recommend and its 400 floor; our paths are also
reported as ratios to them, so a falling floor does not hide behind a ratio to our own
``/healthz``. Before/after comparisons of two source trees: ``bench/ab_trees.py``; the
read-after-write path of a shop: ``bench/storefront.py``. The pieces: ``servekit`` (set-up,
server, /proc), ``loadgen`` (wrk or Python), ``deep_batching``, ``floors``.

The load generator is ``wrk`` when installed (C, so the client steals little CPU from the
server on a small box); otherwise Python threads with keep-alive ``http.client`` connections.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import floors  # noqa: E402
from deep_batching import deep_batching  # noqa: E402
from loadgen import Spec, run_python, run_wrk  # noqa: E402
from servekit import (  # noqa: E402,F401  (ensure_database, tree_client: used by other scripts)
    ROOT,
    cpu_split,
    ensure_database,
    free_port,
    get_json,
    machine,
    patch_json,
    prepare,
    sample_ids,
    server_memory,
    service_cpu,
    set_warm_strategies,
    stage_breakdown,
    stage_totals,
    start_server,
    tree_client,
    wait_ready,
    worker_cpu,
)

GOALS = {
    "cached_vs_healthz": 0.70,
    "uncached_p99_ms": 30.0,
    "batching_speedup": 3.0,
    "total_pss_mb": 1024.0,
}


# -- memory ------------------------------------------------------------------------------------
def plot_uncached(unc: dict[int, dict], path: str) -> None:
    """p50/p95/p99 latency and throughput of uncached requests against the client count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = sorted(unc)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for q, style in (("p50_ms", "o-"), ("p95_ms", "s--"), ("p99_ms", "^-")):
        ax.plot(cs, [unc[c][q] for c in cs], style, label=q.replace("_ms", ""))
    ax.axhline(30, color="grey", lw=0.8, ls=":", label="goal: p99 < 30 ms")
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("latency (ms)")
    ax.set_xticks(cs)
    ax2 = ax.twinx()
    ax2.bar(cs, [unc[c]["rps"] for c in cs], alpha=0.15, color="C3", width=0.6)
    ax2.set_ylabel("req/s (bars)")
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Uncached warm-user recommendations")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main --------------------------------------------------------------------------------------
def cached_only(base: str, args, drive, urls: list[str], run_id: str, refs) -> int:
    """/healthz against cached lists with the default item fields (title, price, image_url)
    and with none (``fields=``), and the floors (bare Flask, cornac), in alternating rounds."""
    for url in urls:  # fill the cache
        get_json(base, url)
    kinds = {
        "/healthz": (base, [("GET", "/healthz", None)]),
        "cached, default fields": (base, [("GET", u, None) for u in urls]),
        "cached, fields=": (base, [("GET", u + "&fields=", None) for u in urls]),
        **{name: (b, specs) for name, b, specs in refs.scenarios},
    }
    got: dict[str, list[float]] = {k: [] for k in kinds}
    for rnd in range(args.cached_only):
        for name, (where, specs) in kinds.items():
            r = drive(where, specs, args.concurrency, args.duration, run_id)
            got[name].append(r["rps"])
            print(
                f"round {rnd + 1} {name:28s} {r['rps']:8.0f} req/s  p99 {r['p99_ms']:6.2f} ms"
                f"  errors {r['errors']}",
                flush=True,
            )
    med = {k: statistics.median(v) for k, v in got.items()}
    print()
    print(
        f"medians of {args.cached_only} alternating rounds, {args.concurrency} connections, "
        f"{args.duration:.0f} s each (load average {os.getloadavg()[0]:.1f} at the end):"
    )
    print()
    print(
        "| scenario | req/s (median) | rounds | / bare Flask | / cornac recommend "
        "| / cornac floor |"
    )
    print("|---|---:|---|---:|---:|---:|")
    for name, vals in got.items():
        print(
            f"| {name} | {med[name]:.0f} | {', '.join(f'{v:.0f}' for v in vals)} | "
            f"{_ratio(med, name, 'bare Flask, constant JSON')} | "
            f"{_ratio(med, name, 'cornac.serving recommend')} | "
            f"{_ratio(med, name, 'cornac.serving floor (400)')} |"
        )
    print()
    print(
        f"cached (item fields) / /healthz: "
        f"**{med['cached, default fields'] / med['/healthz']:.0%}** (goal >= 85%)"
    )
    return 0


def _ratio(med: dict[str, float], name: str, ref: str) -> str:
    return f"{med[name] / med[ref]:.2f}x" if med.get(ref) else "-"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/bench_serve"
    )
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    p.add_argument("--redis-prefix", default="recsys-bench")
    p.add_argument("--instance", default=os.path.join(ROOT, "instance", "bench"))
    p.add_argument("--model-dir", default=None, help="default: <instance>/models")
    p.add_argument("--prepare", action="store_true", help="create/import/train, then exit")
    p.add_argument(
        "--near-cache-ttl",
        type=float,
        default=0.0,
        help="the server's NEAR_CACHE_TTL (seconds; 0, the default: off)",
    )
    p.add_argument(
        "--deep-only",
        type=int,
        default=0,
        metavar="N",
        help="only the deep model's batching measurement, N times (no server)",
    )
    p.add_argument(
        "--cached-only",
        type=int,
        default=0,
        metavar="N",
        help="only /healthz vs cached lists with and without item fields, N alternating rounds",
    )
    p.add_argument(
        "--cornac-venv",
        default=None,
        help="a venv with cornac, flask and gunicorn (outside the repo): measure cornac.serving",
    )
    p.add_argument(
        "--ml100k",
        default=os.path.join(os.path.dirname(ROOT), "shared", "datasets", "ml-100k"),
        help="ml-100k folder (cornac's model is trained on its u.data)",
    )
    p.add_argument("--url", default=None, help="benchmark a running server instead")
    p.add_argument("--server-pid", type=int, default=None, help="its gunicorn master (memory)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--duration", type=float, default=8.0, help="seconds per scenario")
    p.add_argument(
        "--uncached-clients",
        default="1,2,4,8",
        help="comma-separated client counts for the uncached scenario (default 1,2,4,8)",
    )
    p.add_argument(
        "--plot", default=None, help="write uncached latency/throughput vs clients to this PNG"
    )
    p.add_argument("--tool", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--admin-token", default="bench-admin-token")
    p.add_argument(
        "--warm-strategies",
        default=None,
        help="routing.warm_strategies during the run, e.g. ease,deep,sequence,popular "
        "(set through the admin API, restored afterwards)",
    )
    p.add_argument(
        "--batching-strategy",
        default="deep",
        help="the batched model whose micro-batching is measured (deep or sequence)",
    )
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the server, e.g. RECSYS_ACCESS_LOG=false (repeatable)",
    )
    args = p.parse_args(argv)
    args.server_env = [tuple(kv.split("=", 1)) for kv in args.server_env]
    args.model_dir = args.model_dir or os.path.join(args.instance, "models")
    os.makedirs(args.instance, exist_ok=True)
    if args.prepare:
        prepare(args)
        return 0
    if args.deep_only:
        # The deep model's batching alone, several times: on a shared VM one run says little.
        users, _ = sample_ids(args, n_users=200, n_items=10)
        ratios = []
        for k in range(args.deep_only):
            d = deep_batching(args, users, strategy=args.batching_strategy)
            if "error" in d:
                print(f"{args.batching_strategy} batching: not measured ({d['error']}).")
                return 1
            ratios.append(d["speedup"])
            lo, hi = d["speedup_range"]
            print(
                f"run {k + 1}: unbatched {d['unbatched_rps']:.0f}/s, batched "
                f"{d['batched_rps']:.0f}/s = {d['speedup']:.1f}x ({d['rounds']} rounds, "
                f"{lo:.1f}-{hi:.1f}x; mean batch {d['mean_batch']:.1f};"
                f" CPU per call {d['unbatched_cpu_ms']:.2f} vs {d['batched_cpu_ms']:.2f} ms)",
                flush=True,
            )
        ratios.sort()
        print(
            f"{args.batching_strategy} batching over {len(ratios)} runs: "
            f"median {ratios[len(ratios) // 2]:.1f}x, "
            f"range {ratios[0]:.1f}-{ratios[-1]:.1f}x (goal >= 3x)"
        )
        return 0

    tool = args.tool
    if tool == "auto":
        tool = "wrk" if shutil.which("wrk") else "python"
    drive = run_wrk if tool == "wrk" else run_python
    started = time.monotonic()
    where = machine()
    proc = None
    base = args.url
    master = args.server_pid
    refs = floors.FloorServers(
        args.workers, args.threads, args.instance, args.cornac_venv, args.ml100k
    ).__enter__()
    if base is None:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start_server(args, port)
        master = proc.pid
    try:
        t0 = time.monotonic()
        ready = wait_ready(base, proc, timeout=300)
        print(
            f"server ready in {time.monotonic() - t0:.1f} s with models {ready['models']}; "
            f"NEAR_CACHE_TTL={args.near_cache_ttl:g}"
        )
        routing_before = set_warm_strategies(base, args)
        users, items = sample_ids(args, n_users=200, n_items=500)
        run_id = f"{int(time.time())}"
        uncached_clients = sorted({int(c) for c in args.uncached_clients.split(",") if c.strip()})
        rec = "/v1/users/{u}/recommendations?n=10"
        cached_users = users[:50]
        if args.cached_only:
            urls = [rec.format(u=u) for u in cached_users]
            return cached_only(base, args, drive, urls, run_id, refs)
        scenarios: list[tuple[str, list[Spec]]] = [
            ("/healthz (floor)", [("GET", "/healthz", None)]),
            ("recommendations, cached", [("GET", rec.format(u=u), None) for u in cached_users]),
            # Uncached warm users at rising concurrency: 1 client is the latency of the request
            # path itself; more clients add queueing for the CPU (on 2 cores, shared with
            # PostgreSQL, Redis and wrk).
            *(
                (
                    f"recommendations, uncached, {c} client{'s' if c > 1 else ''}",
                    [("GET", rec.format(u=u) + f"&exclude=bench{c}-UNIQ", None) for u in users],
                )
                for c in uncached_clients
            ),
            ("similar items", [("GET", f"/v1/items/{i}/similar?n=10", None) for i in items]),
            (
                "events, 1 per request",
                [
                    (
                        "POST",
                        "/v1/events",
                        json.dumps(
                            {
                                "id": "bench-UNIQ",
                                "user_id": f"bench-user-{k}",
                                "item_id": i,
                                "type": "view",
                            }
                        ),
                    )
                    for k, i in enumerate(items[:50])
                ],
            ),
            (
                "events, 100 per request",
                [
                    (
                        "POST",
                        "/v1/events",
                        json.dumps(
                            [
                                {
                                    "id": f"bench-UNIQ-{j}",
                                    "user_id": f"bench-user-{j % 37}",
                                    "item_id": items[(k * 100 + j) % len(items)],
                                    "type": "click",
                                }
                                for j in range(100)
                            ]
                        ),
                    )
                    for k in range(5)
                ],
            ),
        ]
        # Fill the cache for the cached scenario (and check the endpoint answers at all).
        for u in cached_users:
            status, body = get_json(base, rec.format(u=u))
            if status != 200:
                print(f"warning: {rec.format(u=u)} -> {status} {str(body)[:200]}")
                break
        results = []
        refs_first = [
            (n, drive(b, sp, args.concurrency, args.duration, run_id))
            for n, b, sp in refs.scenarios
        ]
        for name, specs in scenarios:
            m = re.search(r"uncached, (\d+) client", name)
            conc = int(m.group(1)) if m else args.concurrency
            cpu0, svc0 = worker_cpu(master), service_cpu(args.database_url)
            st0 = stage_totals(base) if m else {}
            r = drive(base, specs, conc, args.duration, run_id)
            cpu1, svc1 = worker_cpu(master), service_cpu(args.database_url)
            if m:
                r["stages"] = stage_breakdown(st0, stage_totals(base), r["requests"])
            r["split"] = cpu_split(cpu0, cpu1)
            # CPU milliseconds per request: gunicorn workers / PostgreSQL / Redis.
            n = max(r["requests"], 1)
            r["cpu_ms"] = "/".join(
                f"{1000 * v / n:.2f}"
                for v in (
                    sum(max(0.0, cpu1[w] - cpu0.get(w, 0.0)) for w in cpu1),
                    svc1["postgres"] - svc0["postgres"],
                    svc1["redis"] - svc0["redis"],
                )
            )
            results.append((name, r))
            print(
                f"{name:42s} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:6.2f}  p95 {r['p95_ms']:6.2f}"
                f"  p99 {r['p99_ms']:6.2f} ms  errors {r['errors']}  worker CPU {r['split']} %"
                f"  CPU ms/req (workers/pg/redis) {r['cpu_ms']}",
                flush=True,
            )
            if r.get("stages"):
                print(f"    stages, mean ms per request: {r['stages']}", flush=True)
        # The floors once more, at the end: the figure is the mean of the two, the spread shown.
        for (n, first), (_, b, sp) in zip(refs_first, refs.scenarios, strict=True):
            second = drive(b, sp, args.concurrency, args.duration, run_id)
            r = {k: (first[k] + second[k]) / 2 for k in ("rps", "p50_ms", "p95_ms", "p99_ms")}
            r.update(
                requests=first["requests"] + second["requests"],
                errors=first["errors"] + second["errors"],
                spread=f"{first['rps']:.0f}/{second['rps']:.0f}",
            )
            results.append((n, r))
            print(
                f"{n:42s} {r['rps']:8.0f} req/s (start/end {r['spread']})"
                f"  p99 {r['p99_ms']:6.2f} ms",
                flush=True,
            )
        mem = server_memory(master) if master else []
        status, listing = get_json(base, "/v1/admin/models", token=args.admin_token)
        if routing_before is not None:
            patch_json(base, "/v1/admin/routing", routing_before, args.admin_token)
    finally:
        refs.__exit__(None, None, None)
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    deep = deep_batching(args, users, strategy=args.batching_strategy)

    # -- report -----------------------------------------------------------------------------------
    by = dict(results)
    health = by["/healthz (floor)"]["rps"]
    cached = by["recommendations, cached"]["rps"]
    unc = {
        int(re.search(r"(\d+) client", name).group(1)): r
        for name, r in results
        if "uncached" in name
    }
    total_pss = sum(m.get("pss", 0) for m in mem) / 2**20
    total_rss = sum(m.get("rss", 0) for m in mem) / 2**20
    print()
    print(
        f"Machine: {where}. Server: `recsys serve` (gunicorn, {args.workers} workers x "
        f"{args.threads} threads, preload_app), PostgreSQL + Redis on the same host; load: "
        f"{tool}, {args.concurrency} connections, {args.duration:.0f} s per row. "
        f"Command: `.venv/bin/python bench/serve_bench.py`."
    )
    print()
    print(
        "| scenario | req/s | p50 ms | p95 ms | p99 ms | errors | worker CPU split % "
        "| CPU ms per request: workers / PostgreSQL / Redis |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for name, r in results:
        extra = ""
        if name.startswith("events, 100"):
            extra = f" ({r['rps'] * 100:.0f} events/s)"
        print(
            f"| {name}{extra} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['errors']} | {r.get('split', '-')} | {r.get('cpu_ms', '-')} |"
        )
    print()
    if "error" in deep:
        print(f"Deep model batching: not measured ({deep['error']}).")
    else:
        print(
            f"Deep model ({deep['items']} items, version {deep['version']}, serving "
            f"{deep['precision']}), 16 concurrent "
            f"single-user calls, 1 torch thread: unbatched {deep['unbatched_rps']:.0f}/s, "
            f"micro-batched (max {deep['max_batch']}, {deep['max_delay_ms']} ms, "
            f"{deep['concurrency']} batch runner thread(s)) "
            f"{deep['batched_rps']:.0f}/s = **{deep['speedup']:.1f}x** "
            f"(medians of {deep['rounds']} alternating rounds; per-round ratio "
            f"{deep['speedup_range'][0]:.1f}-{deep['speedup_range'][1]:.1f}x; "
            f"mean batch {deep['mean_batch']:.1f}); CPU time per call "
            f"{deep['unbatched_cpu_ms']:.2f} ms unbatched vs {deep['batched_cpu_ms']:.2f} ms "
            f"batched ({deep['unbatched_cpu_ms'] / deep['batched_cpu_ms']:.1f}x less)."
        )
    print()
    if mem:
        loaded = []
        if status == 200:
            loaded = sorted(
                f"{r['strategy']} {r['nbytes'] / 2**20:.1f} MiB"
                for r in listing["runtime"]
                if r["state"] == "loaded"
            )
        print(f"Memory with models loaded ({', '.join(loaded) or 'see /v1/admin/models'}):")
        print()
        print("| process | RSS MiB | PSS MiB |")
        print("|---|---:|---:|")
        for m in mem:
            print(f"| {m['process']} | {m['rss'] / 2**20:.0f} | {m['pss'] / 2**20:.0f} |")
        print(f"| **total** | {total_rss:.0f} (double-counts shared pages) | **{total_pss:.0f}** |")
        print()
    print("Goals:")
    ratio = cached / health if health else 0.0
    print(f"- cached recs / healthz throughput: {ratio:.0%} (goal >= 85%)")
    for ref in (
        "bare Flask, constant JSON",
        "cornac.serving recommend",
        "cornac.serving floor (400)",
    ):
        if ref in by and by[ref]["rps"]:
            print(
                f"- over {ref} ({by[ref]['rps']:.0f} req/s): "
                f"/healthz {health / by[ref]['rps']:.2f}x, "
                f"cached {cached / by[ref]['rps']:.2f}x"
            )
    print(
        "- uncached warm-user p99 (goal < 30 ms): "
        + ", ".join(f"{r['p99_ms']:.1f} ms at {c} client(s)" for c, r in sorted(unc.items()))
    )
    if args.plot and unc:
        plot_uncached(unc, args.plot)
        print(f"(plot: {args.plot})")
    if "speedup" in deep:
        lo, hi = deep["speedup_range"]
        print(
            f"- deep batching: {deep['speedup']:.1f}x, median of {deep['rounds']} rounds "
            f"({lo:.1f}-{hi:.1f}x) (goal >= 3x)"
        )
    if mem:
        print(
            f"- total PSS, {args.workers} workers + master: {total_pss:.0f} MiB (goal < 1024 MiB)"
        )
    print(f"(bench took {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
