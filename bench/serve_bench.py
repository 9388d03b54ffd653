"""Serving benchmark: the real service under gunicorn with Redis, driven over HTTP on 127.0.0.1.

    # once: a private database with Online Retail imported and every model trained
    .venv/bin/python bench/serve_bench.py --prepare
    # the benchmark (about 2-3 minutes): starts `recsys serve` (2 workers), measures, stops it
    .venv/bin/python bench/serve_bench.py
    # only /healthz against cached lists with and without item data, 3 alternating rounds
    .venv/bin/python bench/serve_bench.py --cached-only 3
    # against a server you started yourself (no memory figures unless --server-pid is given)
    .venv/bin/python bench/serve_bench.py --url http://127.0.0.1:8000

Scenarios (each a bounded, self-stopping run of --duration seconds at --concurrency clients):
/healthz (the floor), cached recommendations (warm users whose result is already cached),
uncached recommendations (warm users; every request has a unique ``exclude`` value, so the cache
key is new and the full request path runs) at each of --uncached-clients (1,2,4,8; --plot
draws latency and throughput against them), similar items, event ingestion one event per request
and 100 per request. Then the deep model's micro-batching versus unbatched scoring at 16
concurrent callers (in this process, on the served model version, one torch thread like a
worker), and memory: RSS and PSS (``/proc/<pid>/smaps_rollup``) of the master and each worker
with every model loaded. Prints a Markdown table for the README.

The load generator is ``wrk`` when installed (C, so the client steals little CPU from the
server on a small box); otherwise Python threads with keep-alive ``http.client`` connections.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
RECSYS = os.path.join(os.path.dirname(sys.executable), "recsys")

GOALS = {
    "cached_vs_healthz": 0.70,
    "uncached_p99_ms": 30.0,
    "batching_speedup": 3.0,
    "total_pss_mb": 1024.0,
}


# -- set-up ------------------------------------------------------------------------------------
def bench_env(args) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        RECSYS_DATABASE_URL=args.database_url,
        RECSYS_REDIS_URL=args.redis_url,
        RECSYS_REDIS_PREFIX=args.redis_prefix,
        RECSYS_MODEL_DIR=args.model_dir,
        RECSYS_INSTANCE_PATH=args.instance,
        RECSYS_WORKERS=str(args.workers),
        RECSYS_THREADS=str(args.threads),
        RECSYS_PRELOAD_MODELS="true",
        RECSYS_ADMIN_TOKEN=args.admin_token,
        RECSYS_NEAR_CACHE_TTL=str(args.near_cache_ttl),
    )
    return env


def ensure_database(database_url: str) -> None:
    """Create the PostgreSQL database of ``database_url`` when it does not exist (through the
    server's ``postgres`` database); other backends are left alone. Also used by
    scripts/stress_tests.sh for its lanes."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        return
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        exists = c.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": url.database}
        ).first()
        if not exists:
            c.execute(text(f'CREATE DATABASE "{url.database}"'))
    admin.dispose()


def prepare(args) -> None:
    """Create the database if needed, migrate, import Online Retail, train every strategy
    (the opt-in sequence model included)."""
    ensure_database(args.database_url)
    env = bench_env(args)
    for cmd in (
        ["db", "upgrade"],
        ["import", "online-retail", "--if-empty"],
        ["train", "--if-missing", "--quiet"],
        # Opt-in strategies (not trained by a bare `recsys train`), for --warm-strategies.
        ["train", "sequence", "--if-missing", "--quiet"],
        ["models", "list"],
    ):
        print("$ recsys", " ".join(cmd), flush=True)
        subprocess.run([RECSYS, *cmd], env=env, cwd=ROOT, check=True)


def tree_client(args, tree: str, label: str):
    """A Flask test client of the app in source tree ``tree``, on the store ``--prepare`` made
    (its own Redis prefix, so nothing cached by an earlier run is served; no access log).
    Used by bench/inproc_trees.py and scripts/compare_answers.py to compare two trees.

    Parameters
    ----------
    args : argparse.Namespace
        ``database_url``, ``redis_url`` and ``instance``.
    tree : str
        The source tree whose ``recsys`` package answers.
    label : str
        The start of the Redis prefix.

    Returns
    -------
    flask.testing.FlaskClient
    """
    import logging
    import uuid

    sys.path.insert(0, os.path.abspath(tree))
    os.environ.update(
        RECSYS_DATABASE_URL=args.database_url,
        RECSYS_REDIS_URL=args.redis_url,
        RECSYS_MODEL_DIR=os.path.join(args.instance, "models"),
        RECSYS_PRELOAD_MODELS="true",
        RECSYS_REDIS_PREFIX=f"{label}-{uuid.uuid4().hex}",
        RECSYS_ACCESS_LOG="false",
    )
    from recsys import create_app

    app = create_app()
    logging.getLogger().setLevel(logging.ERROR)
    return app.test_client()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, port: int) -> subprocess.Popen:
    log = open(os.path.join(args.instance, "serve_bench.log"), "w")
    # `recsys serve` execs gunicorn, so this pid is the gunicorn master.
    return subprocess.Popen(
        [RECSYS, "serve", "--bind", f"127.0.0.1:{port}", "--log-level", "warning"],
        env=bench_env(args),
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stage_totals(base: str) -> dict[str, tuple[float, float]]:
    """``{stage: (seconds, count)}`` of ``recsys_stage_seconds`` (recsys.serving.pipeline) summed
    over the workers; empty for a server without the histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    out: dict[str, list[float]] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name != "recsys_stage_seconds":
            continue
        for sample in fam.samples:
            stage = sample.labels.get("stage")
            if sample.name.endswith("_sum"):
                out.setdefault(stage, [0.0, 0.0])[0] += sample.value
            elif sample.name.endswith("_count"):
                out.setdefault(stage, [0.0, 0.0])[1] += sample.value
    return {k: (v[0], v[1]) for k, v in out.items()}


def stage_breakdown(before: dict, after: dict, requests: int) -> str:
    """Mean milliseconds per request of each stage between two ``stage_totals``."""
    parts = []
    for stage, (secs, _count) in after.items():
        d = secs - before.get(stage, (0.0, 0.0))[0]
        if d > 0:
            parts.append(f"{stage} {1000 * d / max(requests, 1):.2f}")
    return ", ".join(parts)


def get_json(base: str, path: str, token: str | None = None, timeout: float = 10) -> tuple:
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        body = r.read()
    finally:
        conn.close()
    try:
        return r.status, json.loads(body)
    except ValueError:
        return r.status, body.decode(errors="replace")


def patch_json(base: str, path: str, body: dict, token: str) -> tuple[int, dict]:
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.request(
            "PATCH",
            path,
            body=json.dumps(body),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def set_warm_strategies(base: str, args) -> dict | None:
    """``--warm-strategies``: route warm users through them for this run; returns the routing
    change that restores the previous value (None when nothing was changed)."""
    if not args.warm_strategies:
        return None
    want = [s.strip() for s in args.warm_strategies.split(",") if s.strip()]
    _, before = get_json(base, "/v1/admin/routing", token=args.admin_token)
    status, body = patch_json(
        base, "/v1/admin/routing", {"warm_strategies": want}, args.admin_token
    )
    if status != 200:
        raise SystemExit(f"--warm-strategies {want}: {status} {body}")
    # Every worker picks the change up at its next settings poll (CONFIG_POLL_SECONDS).
    time.sleep(2.0)
    print(f"warm route for this run: {want}")
    return {"warm_strategies": before["routing"]["warm_strategies"]}


def wait_ready(base: str, proc: subprocess.Popen | None, timeout: float) -> dict:
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}; see its log")
        try:
            status, body = get_json(base, "/readyz", timeout=2)
            last = body
            if status == 200:
                return body
        except OSError as e:
            last = str(e)
        time.sleep(0.25)
    raise SystemExit(f"server not ready after {timeout:.0f} s: {last}")


def sample_ids(args, n_users: int, n_items: int, seed: int = 42) -> tuple[list[str], list[str]]:
    """Warm users (enough history to be routed warm) and popular items, from the store."""
    from sqlalchemy import create_engine, text

    engine = create_engine(args.database_url)
    with engine.connect() as c:
        users = [
            r[0]
            for r in c.execute(
                text(
                    "SELECT u.external_id FROM users u JOIN events e ON e.user_id = u.id "
                    # Not the event scenarios' own users: they gain events with every run, so
                    # the sample (and what it costs) would drift from run to run.
                    "WHERE u.external_id NOT LIKE 'bench-user-%' "
                    "GROUP BY u.external_id HAVING COUNT(DISTINCT e.item_id) BETWEEN 10 AND 300"
                )
            )
        ]
        items = [
            r[0]
            for r in c.execute(
                text(
                    "SELECT i.external_id FROM items i JOIN events e ON e.item_id = i.id "
                    "GROUP BY i.external_id ORDER BY COUNT(*) DESC LIMIT 2000"
                )
            )
        ]
    engine.dispose()
    rng = random.Random(seed)
    rng.shuffle(users)
    rng.shuffle(items)
    if not users or not items:
        raise SystemExit("the store has no warm users or items: run with --prepare first")
    return users[:n_users], items[:n_items]


# -- load generation -----------------------------------------------------------------------------
# A request spec: (method, path template, body template or None). "UNIQ" in either is replaced by a
# value unique to the request (client id + counter), so keys and idempotency ids never repeat.
Spec = tuple[str, str, str | None]

WRK_LUA = r"""
local specs = %(specs)s
local counter = 0
local me = 0
local next_id = 0
setup = function(thread)
  next_id = next_id + 1
  thread:set("client", next_id)
end
init = function(args)
  me = client or 0
end
request = function()
  counter = counter + 1
  local s = specs[((counter + me * 7919) %% #specs) + 1]
  local uniq = "%(run)s-" .. me .. "-" .. counter
  local path = string.gsub(s[2], "UNIQ", uniq)
  if s[3] ~= nil then
    local body = string.gsub(s[3], "UNIQ", uniq)
    return wrk.format(s[1], path, {["Content-Type"] = "application/json"}, body)
  end
  return wrk.format(s[1], path)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\"requests\": %%d, \"duration_us\": %%d, \"p50\": %%d, \"p95\": %%d, " ..
    "\"p99\": %%d, \"errors\": %%d, \"status_errors\": %%d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def _lua_str(s: str | None) -> str:
    return "nil" if s is None else json.dumps(s)  # JSON string escapes are valid Lua


def run_wrk(base: str, specs: list[Spec], concurrency: int, duration: float, run_id: str) -> dict:
    lua = WRK_LUA % {
        "specs": "{"
        + ",".join(f"{{{_lua_str(m)},{_lua_str(p)},{_lua_str(b)}}}" for m, p, b in specs)
        + "}",
        "run": run_id,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua)
        script = f.name
    try:
        threads = max(1, min(concurrency, 2))
        out = subprocess.run(
            [
                "wrk",
                f"-t{threads}",
                f"-c{concurrency}",
                f"-d{max(1, round(duration))}s",
                "--timeout",
                "5s",
                "-s",
                script,
                base,
            ],
            capture_output=True,
            text=True,
            timeout=duration + 30,
        )
    finally:
        os.unlink(script)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout[-500:]} {out.stderr[-500:]}")
    r = json.loads(line[len("WRKJSON ") :])
    secs = r["duration_us"] / 1e6
    return {
        "requests": r["requests"],
        "rps": r["requests"] / secs if secs else 0.0,
        "p50_ms": r["p50"] / 1000,
        "p95_ms": r["p95"] / 1000,
        "p99_ms": r["p99"] / 1000,
        "errors": r["errors"] + r["status_errors"],
    }


def run_python(
    base: str, specs: list[Spec], concurrency: int, duration: float, run_id: str
) -> dict:
    u = urllib.parse.urlsplit(base)
    stop_at = time.monotonic() + duration
    lat: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
        counter = 0
        while time.monotonic() < stop_at:
            counter += 1
            m, p, b = specs[(counter + k * 7919) % len(specs)]
            uniq = f"{run_id}-{k}-{counter}"
            p = p.replace("UNIQ", uniq)
            headers = {}
            body = None
            if b is not None:
                body = b.replace("UNIQ", uniq)
                headers["Content-Type"] = "application/json"
            t0 = time.perf_counter()
            try:
                conn.request(m, p, body=body, headers=headers)
                r = conn.getresponse()
                r.read()
                if r.status >= 400:
                    errors[k] += 1
            except (OSError, http.client.HTTPException):
                errors[k] += 1
                conn.close()
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
                continue
            lat[k].append(time.perf_counter() - t0)
        conn.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.monotonic() - t0
    all_lat = sorted(x for xs in lat for x in xs)

    def pct(q: float) -> float:
        return all_lat[min(len(all_lat) - 1, int(q * len(all_lat)))] * 1000 if all_lat else 0.0

    return {
        "requests": len(all_lat),
        "rps": len(all_lat) / secs,
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "errors": sum(errors),
    }


# -- the deep model's micro-batching -------------------------------------------------------------
def deep_batching(
    args,
    users: list[str],
    concurrency: int = 16,
    duration: float = 3.0,
    rounds: int = 3,
    strategy: str = "deep",
) -> dict:
    """Throughput of the served deep model (or ``strategy``, e.g. ``sequence``, another batched
    one) at 16 concurrent single-user calls, batched or not.

    Unbatched and batched runs alternate ``rounds`` times (``duration`` seconds each) and the
    figures are the medians, with the range of the per-round ratios: on a shared VM one pair
    of runs moves by 20-30 %, mostly on the unbatched side (16 threads contending for the GIL
    around small torch calls)."""
    os.environ.update(bench_env(args))
    import numpy as np
    import torch
    from sqlalchemy import select

    from features.interactions import EVENT_CODE, History, user_batch
    from recsys import create_app
    from recsys.models.batched_model import BatchedModel
    from recsys.models.repository import get_repository
    from recsys.models.runtime import get_runtime
    from recsys.store.db import session_scope
    from recsys.store.models import Event, Item, User

    torch.set_num_threads(1)  # as in a gunicorn worker
    app = create_app()
    try:
        # As a worker serves it: the runtime's CPU variant (DEEP_CPU_PRECISION) of the version.
        lm = get_runtime(app).serving_variant(get_repository(app).load_version(strategy))
    except Exception as e:  # noqa: BLE001 - report, do not fake
        return {"error": f"no {strategy} model: {e}"}
    batches = []
    with session_scope(app) as s:
        for uid in users[:64]:
            rows = s.execute(
                select(Item.external_id, Event.type, Event.value)
                .join(Item, Item.id == Event.item_id)
                .join(User, User.id == Event.user_id)
                .where(User.external_id == uid)
                .order_by(Event.ts.desc(), Event.id.desc())
                .limit(200)
            ).all()
            h = History(
                item_idx=lm.items.indices([r[0] for r in rows]),
                event_type=np.array([EVENT_CODE[r[1]] for r in rows], np.int8),
                value=np.array([r[2] for r in rows], np.float32),
                ts=np.zeros(len(rows), np.int64),
            )
            batches.append(user_batch([h], len(lm.items)))

    def drive(score) -> tuple[float, float]:
        """(calls per second, CPU milliseconds of this process per call)."""
        stop_at = time.monotonic() + duration
        cpu0 = time.process_time()
        counts = [0] * concurrency

        def worker(k: int) -> None:
            i = k
            while time.monotonic() < stop_at:
                score(batches[i % len(batches)])
                counts[k] += 1
                i += concurrency

        t0 = time.monotonic()
        ts = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        calls = sum(counts)
        return calls / (time.monotonic() - t0), (time.process_time() - cpu0) * 1000 / calls

    inner = lm.model
    inner.score(batches[0])  # warm
    # As the runtime builds it (recsys.models.runtime.get_runtime): the configured batcher settings.
    wrapped = BatchedModel(
        inner,
        int(app.config["BATCH_MAX_SIZE"]),
        float(app.config["BATCH_MAX_DELAY_MS"]),
        concurrency=int(app.config["BATCH_CONCURRENCY"]),
        inline_when_idle=bool(app.config["BATCH_INLINE_WHEN_IDLE"]),
    )
    wrapped.score(batches[0])
    plain, batched = [], []
    for _ in range(rounds):
        plain.append(drive(inner.score))
        batched.append(drive(wrapped.score))
    stats = wrapped.batcher_stats()
    wrapped.close()
    ratios = sorted(b[0] / u[0] for u, b in zip(plain, batched, strict=True))
    median = statistics.median
    return {
        "items": len(lm.items),
        "version": lm.version,
        "precision": getattr(inner, "serving_precision_", "?"),
        "rounds": rounds,
        "unbatched_rps": median([u[0] for u in plain]),
        "batched_rps": median([b[0] for b in batched]),
        "speedup": median(ratios),
        "speedup_range": (ratios[0], ratios[-1]),
        "unbatched_cpu_ms": median([u[1] for u in plain]),
        "batched_cpu_ms": median([b[1] for b in batched]),
        "mean_batch": stats["mean_batch_size"],
        "max_batch": int(app.config["BATCH_MAX_SIZE"]),
        "max_delay_ms": float(app.config["BATCH_MAX_DELAY_MS"]),
        "concurrency": int(app.config["BATCH_CONCURRENCY"]),
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


def smaps(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[0] in ("Rss:", "Pss:"):
                out[parts[0][:-1].lower()] = int(parts[1]) * 1024
    return out


def server_memory(master: int) -> list[dict]:
    with open(f"/proc/{master}/task/{master}/children") as f:
        workers = [int(p) for p in f.read().split()]
    rows = [{"process": f"master {master}", **smaps(master)}]
    rows += [{"process": f"worker {w}", **smaps(w)} for w in workers]
    return rows


def proc_cpu(pid: int | str) -> tuple[str, float]:
    """(command name, CPU seconds so far: user + system) of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        head, tail = f.read().rsplit(")", 1)
    fields = tail.split()
    return head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_cpu(master: int | None) -> dict[int, float]:
    """CPU seconds (user + system) so far of each gunicorn worker (empty without a master)."""
    if not master:
        return {}
    try:
        with open(f"/proc/{master}/task/{master}/children") as f:
            workers = [int(p) for p in f.read().split()]
        return {w: proc_cpu(w)[1] for w in workers}
    except OSError:
        return {}


def service_cpu() -> dict[str, float]:
    """CPU seconds so far of every PostgreSQL and Redis server process on this host (they share
    the box with the server, so their cost per request is part of the picture)."""
    out = {"postgres": 0.0, "redis": 0.0}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            comm, seconds = proc_cpu(pid)
        except OSError:
            continue
        kind = "postgres" if comm.startswith("postgres") else "redis" if "redis" in comm else None
        if kind:
            out[kind] += seconds
    return out


def cpu_split(before: dict[int, float], after: dict[int, float]) -> str:
    """How the scenario's worker CPU was shared, e.g. "62/38": keep-alive connections stay
    with the worker that accepted them, so a few clients may all land on one worker."""
    used = [max(0.0, after[w] - before.get(w, 0.0)) for w in sorted(after)]
    total = sum(used)
    return "/".join(f"{100 * u / total:.0f}" for u in used) if total > 0 else "-"


# -- main --------------------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(x.split(":", 1)[1].strip() for x in f if x.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()
    return f"{cpu}, {os.cpu_count()} cores, load average {load[0]:.1f} at start"


def cached_only(base: str, args, drive, urls: list[str], run_id: str) -> int:
    """/healthz against cached lists with the default item fields (title, price, image_url)
    and with none (``fields=``), in alternating rounds: the cost of rendering item data."""
    for url in urls:  # fill the cache
        get_json(base, url)
    kinds = {
        "/healthz": [("GET", "/healthz", None)],
        "cached, default fields": [("GET", u, None) for u in urls],
        "cached, fields=": [("GET", u + "&fields=", None) for u in urls],
    }
    got: dict[str, list[float]] = {k: [] for k in kinds}
    for rnd in range(args.cached_only):
        for name, specs in kinds.items():
            r = drive(base, specs, args.concurrency, args.duration, run_id)
            got[name].append(r["rps"])
            print(f"round {rnd + 1} {name:24s} {r['rps']:8.0f} req/s  errors {r['errors']}")
    med = {k: statistics.median(v) for k, v in got.items()}
    print()
    print(
        f"medians of {args.cached_only} alternating rounds, {args.concurrency} connections, "
        f"{args.duration:.0f} s each: /healthz {med['/healthz']:.0f} req/s, cached lists with "
        f"item fields {med['cached, default fields']:.0f} req/s "
        f"(**{med['cached, default fields'] / med['/healthz']:.0%}** of /healthz), without "
        f"{med['cached, fields=']:.0f} req/s ({med['cached, fields='] / med['/healthz']:.0%})"
    )
    return 0


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
    args = p.parse_args(argv)
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
            return cached_only(base, args, drive, [rec.format(u=u) for u in cached_users], run_id)
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
        for name, specs in scenarios:
            m = re.search(r"uncached, (\d+) client", name)
            conc = int(m.group(1)) if m else args.concurrency
            cpu0, svc0 = worker_cpu(master), service_cpu()
            st0 = stage_totals(base) if m else {}
            r = drive(base, specs, conc, args.duration, run_id)
            cpu1, svc1 = worker_cpu(master), service_cpu()
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
        mem = server_memory(master) if master else []
        status, listing = get_json(base, "/v1/admin/models", token=args.admin_token)
        if routing_before is not None:
            patch_json(base, "/v1/admin/routing", routing_before, args.admin_token)
    finally:
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
    print(f"- cached recs / healthz throughput: {ratio:.0%} (goal >= 70%)")
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
