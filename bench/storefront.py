"""Storefront replay: shoppers send events and ask for recommendations between them.

The read-after-write path of a shop: a shopper acts (an event), the next page asks for their
list. Each shopper is a real user of the prepared store (Online Retail, or ml-100k with
``--dataset ml-100k``), who replays a session:

    GET  /v1/users/<u>/recommendations?n=10     a page with the shopper's list
    ...  think time, exponential with mean --think-ms
    POST /v1/events                             view 60 %, click 25 %, purchase 15 %
    ...  render gap, uniform in [0, --gap-ms]: the next page asks for the list
    GET  /v1/users/<u>/recommendations?n=10     (and so on, --steps per session on average)

Views and clicks replay the user's own items from the store, oldest first (cycling); a purchase
buys one item of the list just shown. Purchases are "seen" (``seen_types``), so a list that
reflects the purchase no longer contains the item: **freshness** is the share of lists, asked
after a purchase was acknowledged (201), that do not contain the purchased item; it is
reported for lists asked more than 200 ms after the acknowledgement and for those asked within
200 ms. (Views and clicks change a list too, but not observably from outside.)

Shoppers run in client processes of threads (one keep-alive connection each); a user is
replayed by one shopper at a time. At each load (``--loads``: shoppers at once, up to
saturation) it prints recommendation latency p50/p99/p99.9 (client-side, including the
client's own queueing), recommendations and events per second, the share of cached answers,
freshness, and CPU seconds per 1,000 recommendations from /proc: the gunicorn workers,
PostgreSQL and Redis (events included: they are part of the path), with the workers' busy
share of the machine's cores.

    # the load at which the workers are 50 % busy (issue 32's latency goal), measured there
    .venv/bin/python bench/storefront.py --target-busy 0.5 --duration 20 \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench_ml --instance /tmp/ml

    # once per dataset: a private database, the data imported, the default strategies trained
    .venv/bin/python bench/storefront.py --prepare --dataset ml-100k \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench_ml --instance /tmp/ml
    .venv/bin/python bench/storefront.py --dataset ml-100k --loads 8,32,128 \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench_ml --instance /tmp/ml
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from servekit import (  # noqa: E402
    ROOT,
    free_port,
    machine,
    prepare,
    service_cpu,
    start_server,
    wait_ready,
    worker_cpu,
)

FRESH_AFTER_S = 0.2
REC = "/v1/users/{u}/recommendations?n=10"
ML100K = os.path.join(os.path.dirname(ROOT), "shared", "datasets", "ml-100k")


def shoppers(database_url: str, limit: int, seed: int) -> list[tuple[str, list[str]]]:
    """Up to ``limit`` users with 5-300 events: ``(user id, their items oldest first)``."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    with engine.connect() as c:
        users = [
            r[0]
            for r in c.execute(
                text(
                    "SELECT u.id FROM users u JOIN events e ON e.user_id = u.id "
                    "WHERE u.external_id NOT LIKE 'bench-%' "
                    "GROUP BY u.id HAVING COUNT(*) BETWEEN 5 AND 300"
                )
            )
        ]
        random.Random(seed).shuffle(users)
        out = []
        for uid in users[:limit]:
            rows = c.execute(
                text(
                    "SELECT u.external_id, i.external_id FROM events e "
                    "JOIN users u ON u.id = e.user_id JOIN items i ON i.id = e.item_id "
                    "WHERE e.user_id = :u ORDER BY e.ts, e.id LIMIT 60"
                ),
                {"u": uid},
            ).all()
            out.append((rows[0][0], list(dict.fromkeys(r[1] for r in rows))))
    engine.dispose()
    if not out:
        raise SystemExit("no shoppers in the store: run with --prepare first")
    return out


class Shopper:
    """One shopper thread's loop over sessions (see the module docstring)."""

    def __init__(self, base: str, users: list, cfg: dict, stop_at: float, seed: int):
        host, port = base.removeprefix("http://").split(":")
        self.addr = (host, int(port))
        self.users, self.cfg, self.stop_at = users, cfg, stop_at
        self.rng = random.Random(seed)
        self.conn = http.client.HTTPConnection(*self.addr, timeout=10)
        self.lat: list[float] = []
        self.fresh: list[tuple[float, bool]] = []  # (seconds since the ack, fresh)
        self.recs = self.events = self.cached = self.errors = 0
        self.failures: dict[str, int] = {}  # "GET 503" -> count (status 0: no answer)

    def failed(self, method: str, status: int) -> None:
        self.errors += 1
        key = f"{method} {status}"
        self.failures[key] = self.failures.get(key, 0) + 1

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            self.conn.request(method, path, body=body, headers=headers)
            r = self.conn.getresponse()
            return r.status, r.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection(*self.addr, timeout=10)
            return 0, b""

    def sleep(self, seconds: float) -> bool:
        """Sleep unless that passes the end; False when the run is over."""
        if time.monotonic() + seconds >= self.stop_at:
            return False
        time.sleep(seconds)
        return True

    def run(self) -> None:
        cfg, rng = self.cfg, self.rng
        while time.monotonic() < self.stop_at:
            user, items = self.users[rng.randrange(len(self.users))]
            pos, probe = 0, None
            for _ in range(max(1, round(rng.expovariate(1 / cfg["steps"])))):
                t0 = time.perf_counter()
                status, body = self.call("GET", REC.format(u=user))
                dt = time.perf_counter() - t0
                if status != 200:
                    self.failed("GET", status)
                    shown = []
                else:
                    self.recs += 1
                    self.lat.append(dt)
                    answer = json.loads(body)
                    shown = [it["item_id"] for it in answer.get("items", ())]
                    self.cached += bool(answer.get("cached"))
                    if probe is not None:
                        self.fresh.append((t0 - probe[1], probe[0] not in shown))
                probe = None
                if not self.sleep(rng.expovariate(1000 / cfg["think_ms"])):
                    return
                kind = rng.choices(("view", "click", "purchase"), (60, 25, 15))[0]
                if kind == "purchase" and shown:
                    item = rng.choice(shown)
                else:
                    kind = "view" if kind == "purchase" else kind
                    item, pos = items[pos % len(items)], pos + 1
                event = {"id": uuid.uuid4().hex, "user_id": user, "item_id": item, "type": kind}
                status, _ = self.call("POST", "/v1/events", json.dumps(event).encode())
                if status not in (200, 201):
                    self.failed("POST", status)
                    continue
                self.events += 1
                if kind == "purchase":
                    probe = (item, time.perf_counter())
                if not self.sleep(rng.uniform(0, cfg["gap_ms"] / 1000)):
                    return


def client_process(base, users, cfg, threads, duration, seed, out) -> None:
    """``threads`` shoppers in this process; puts their merged figures on ``out``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop_at = time.monotonic() + duration
    # Each user is replayed by one shopper at a time: the users are dealt out to the threads.
    shops = [
        Shopper(base, users[k::threads] or users, cfg, stop_at, seed * 1000 + k)
        for k in range(threads)
    ]
    ts = [threading.Thread(target=s.run, daemon=True) for s in shops]
    cpu0 = time.process_time()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put(
        {
            "lat": [x for s in shops for x in s.lat],
            "fresh": [x for s in shops for x in s.fresh],
            "recs": sum(s.recs for s in shops),
            "events": sum(s.events for s in shops),
            "cached": sum(s.cached for s in shops),
            "errors": sum(s.errors for s in shops),
            "failures": [f for s in shops for f in s.failures.items()],
            "client_cpu": time.process_time() - cpu0,
        }
    )


def pct(xs: list[float], q: float) -> float:
    """The ``q`` quantile of sorted ``xs`` in milliseconds (nearest rank)."""
    return xs[min(len(xs) - 1, math.ceil(q * len(xs)) - 1)] * 1000 if xs else float("nan")


def run_load(base: str, master: int | None, users, n: int, args, seed: int) -> dict:
    """``n`` shoppers for ``args.duration`` seconds; the figures of the run."""
    cfg = {"think_ms": args.think_ms, "gap_ms": args.gap_ms, "steps": args.steps}
    procs_n = max(1, min(args.client_procs, n))
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    parts = [users[k::procs_n] for k in range(procs_n)]
    sizes = [n // procs_n + (k < n % procs_n) for k in range(procs_n)]
    w0, s0, t0 = worker_cpu(master), service_cpu(args.database_url), time.monotonic()
    procs = [
        ctx.Process(
            target=client_process,
            args=(base, parts[k], cfg, sizes[k], args.duration, seed + k, out),
        )
        for k in range(procs_n)
    ]
    for p in procs:
        p.start()
    got = [out.get() for _ in procs]
    for p in procs:
        p.join()
    wall = time.monotonic() - t0
    w1, s1 = worker_cpu(master), service_cpu(args.database_url)
    lat = sorted(x for g in got for x in g["lat"])
    fresh = [x for g in got for x in g["fresh"]]
    late = [ok for age, ok in fresh if age > FRESH_AFTER_S]
    early = [ok for age, ok in fresh if age <= FRESH_AFTER_S]
    recs = sum(g["recs"] for g in got)
    workers = sum(max(0.0, w1[w] - w0.get(w, 0.0)) for w in w1)
    pg, redis = s1["postgres"] - s0["postgres"], s1["redis"] - s0["redis"]
    per_k = 1000 / max(recs, 1)
    return {
        "shoppers": n,
        "recs": recs,
        "rec_s": recs / wall,
        "events_s": sum(g["events"] for g in got) / wall,
        "p50": pct(lat, 0.5),
        "p99": pct(lat, 0.99),
        "p999": pct(lat, 0.999),
        "cached": sum(g["cached"] for g in got) / max(recs, 1),
        "fresh_late": (sum(late) / len(late)) if late else float("nan"),
        "n_late": len(late),
        "fresh_early": (sum(early) / len(early)) if early else float("nan"),
        "n_early": len(early),
        "errors": sum(g["errors"] for g in got),
        "failures": _merge([f for g in got for f in g["failures"]]),
        "worker_busy": workers / wall / os.cpu_count(),
        "cpu_per_k": (workers + pg + redis) * per_k,
        "cpu_split": f"{workers * per_k:.2f}/{pg * per_k:.2f}/{redis * per_k:.2f}",
        "client_cpu_s": sum(g["client_cpu"] for g in got) / wall,
    }


def _merge(pairs: list) -> dict[str, int]:
    out: dict[str, int] = {}
    for k, v in pairs:
        out[k] = out.get(k, 0) + v
    return out


def row(r: dict) -> str:
    """One Markdown table row of ``run_load``'s figures."""
    return (
        f"| {r['shoppers']} | {r['rec_s']:.0f} | {r['events_s']:.0f} | {r['p50']:.1f} | "
        f"{r['p99']:.1f} | {r['p999']:.1f} | {r['cached']:.0%} | "
        f"{r['fresh_late']:.1%} ({r['n_late']}) | {r['fresh_early']:.1%} ({r['n_early']}) | "
        f"{r['worker_busy']:.0%} | {r['cpu_per_k']:.2f} ({r['cpu_split']}) | {r['errors']}"
        + (f" {r['failures']}" if r["failures"] else "")
        + " |"
    )


HEADER = (
    "| shoppers | recs/s | events/s | p50 ms | p99 ms | p99.9 ms | cached | fresh, ack > 200 ms "
    "(lists) | fresh, ack <= 200 ms (lists) | worker CPU busy | CPU s per 1,000 recs "
    "(workers/pg/redis) | errors |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"
)


def find_busy(base: str, master: int | None, users, args) -> list[dict]:
    """``--target-busy``: probe doubling loads (``--probe-duration`` each) until the workers'
    CPU share reaches the target, interpolate the shoppers between the two probes around it,
    and measure there for ``--duration``. Prints each probe and the measured row (with the load
    average: on a shared machine the neighbours take cores the workers would use)."""
    if not master:
        raise SystemExit("--target-busy needs the workers' CPU: a started server or --server-pid")
    want, probes = args.target_busy, []
    probe_args = argparse.Namespace(**{**vars(args), "duration": args.probe_duration})
    n = 4
    while True:
        r = run_load(base, master, users, n, probe_args, args.seed + 7 * n)
        r["load_avg"] = os.getloadavg()[0]
        probes.append(r)
        print(f"probe: {row(r)} load average {r['load_avg']:.1f}", flush=True)
        if r["worker_busy"] >= want or n >= args.max_shoppers:
            break
        if len(probes) > 1 and r["rec_s"] < 1.1 * probes[-2]["rec_s"]:
            break  # saturated: twice the shoppers, no more lists (the cores are taken)
        n = min(2 * n, args.max_shoppers)
    hi = probes[-1]
    lo = probes[-2] if len(probes) > 1 else {"shoppers": 0, "worker_busy": 0.0}
    if hi["worker_busy"] < want:
        top = max(probes, key=lambda p: p["worker_busy"])
        last = probes[-2] if len(probes) > 1 else hi
        print(
            f"the workers never reached {want:.0%} of the cores: at most {top['worker_busy']:.0%}"
            f" ({top['shoppers']} shoppers), saturated (no more lists for more shoppers) from "
            f"{hi['shoppers']}; the machine's other load takes the rest (load average "
            f"{os.getloadavg()[0]:.1f}). Measured at {last['shoppers']}, the last load before "
            "saturation: NOT the goal's operating point",
            flush=True,
        )
        n = last["shoppers"]
    else:
        span = max(hi["worker_busy"] - lo["worker_busy"], 1e-9)
        n = round(
            lo["shoppers"] + (want - lo["worker_busy"]) / span * (hi["shoppers"] - lo["shoppers"])
        )
        n = max(1, n)
    r = run_load(base, master, users, n, args, args.seed + 1)
    r["load_avg"] = os.getloadavg()[0]
    print(f"at the target: {row(r)} load average {r['load_avg']:.1f}", flush=True)
    print(
        f"\nWorkers {r['worker_busy']:.0%} busy (target {want:.0%}) at {n} shoppers: "
        f"recommendation p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, p99.9 {r['p999']:.1f} ms; "
        f"fresh {r['fresh_late']:.1%} of {r['n_late']} lists asked > 200 ms after a purchase's "
        f"acknowledgement ({r['fresh_early']:.1%} of {r['n_early']} within 200 ms); "
        f"{r['rec_s']:.0f} lists/s, {r['cached']:.0%} cached; CPU {r['cpu_per_k']:.2f} s per "
        f"1,000 lists ({r['cpu_split']}); load average {r['load_avg']:.1f}",
        flush=True,
    )
    return [*probes, r]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", choices=("online-retail", "ml-100k"), default="online-retail")
    p.add_argument("--ml100k", default=ML100K, help="the ml-100k folder (never committed)")
    p.add_argument(
        "--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/bench_serve"
    )
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    p.add_argument("--redis-prefix", default="recsys-storefront")
    p.add_argument("--instance", default=os.path.join(ROOT, "instance", "bench"))
    p.add_argument("--prepare", action="store_true", help="create/import/train, then exit")
    p.add_argument("--url", default=None, help="a running server instead of starting one")
    p.add_argument(
        "--tree", default=ROOT, help="the source tree the server runs (default: this one)"
    )
    p.add_argument("--server-pid", type=int, default=None, help="its gunicorn master (CPU)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--near-cache-ttl", type=float, default=0.0)
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the server, e.g. RECSYS_ACCESS_LOG=false (repeatable)",
    )
    p.add_argument("--loads", default="8,32,96,192", help="shoppers at once, comma-separated")
    p.add_argument(
        "--target-busy",
        type=float,
        default=None,
        metavar="SHARE",
        help="instead of --loads: find the shoppers at which the gunicorn workers' CPU is this "
        "share of the machine's cores (0.5: the goal's '50 %% busy'), then measure there",
    )
    p.add_argument("--probe-duration", type=float, default=6.0, help="seconds per probe")
    p.add_argument("--max-shoppers", type=int, default=1024, help="--target-busy's ceiling")
    p.add_argument("--duration", type=float, default=15.0, help="seconds per load")
    p.add_argument("--think-ms", type=float, default=250.0, help="mean think time (exponential)")
    p.add_argument("--gap-ms", type=float, default=400.0, help="event -> next page, uniform 0..")
    p.add_argument("--steps", type=float, default=8.0, help="mean events per session")
    p.add_argument("--shoppers", type=int, default=2000, help="distinct users replayed")
    p.add_argument("--client-procs", type=int, default=2, help="client processes")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--admin-token", default="bench-admin-token")
    p.add_argument("--out", default=None, help="also write the figures as JSON lines here")
    args = p.parse_args(argv)
    args.model_dir = os.path.join(args.instance, "models")
    args.server_env = [tuple(kv.split("=", 1)) for kv in args.server_env]
    os.makedirs(args.instance, exist_ok=True)
    if args.prepare:
        data = None
        if args.dataset == "ml-100k":
            data = ["import", "movielens", args.ml100k]
        prepare(args, data, opt_in=False)
        return 0
    users = shoppers(args.database_url, args.shoppers, args.seed)
    where = machine()
    proc, base, master = None, args.url, args.server_pid
    if base is None:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start_server(args, port)
        master = proc.pid
    results = []
    try:
        wait_ready(base, proc, timeout=300)
        print(
            f"{args.dataset}: {len(users)} shoppers; think time exponential, mean "
            f"{args.think_ms:.0f} ms; event -> next list uniform 0-{args.gap_ms:.0f} ms; "
            f"{args.steps:g} events per session on average; {args.duration:.0f} s per load; "
            f"tree {args.tree}; "
            f"server env {dict(args.server_env) or '-'}",
            flush=True,
        )
        print(HEADER, flush=True)
        if args.target_busy:
            results = find_busy(base, master, users, args)
        for k, n in enumerate(int(x) for x in args.loads.split(",") if x.strip()):
            if args.target_busy:
                break
            r = run_load(base, master, users, n, args, args.seed + 100 * k)
            r["load_avg"] = os.getloadavg()[0]
            results.append(r)
            print(row(r), flush=True)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    print()
    print(
        f"Machine: {where}; load average {os.getloadavg()[0]:.1f} at the end. Server: "
        f"`recsys serve`, {args.workers} workers x {args.threads} threads; client: "
        f"{args.client_procs} processes of threads (client CPU "
        + ", ".join(f"{r['client_cpu_s']:.2f}" for r in results)
        + " cores). Latency is client-side."
    )
    if args.out:
        with open(args.out, "a") as f:
            for r in results:
                f.write(json.dumps({"dataset": args.dataset, **r}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
