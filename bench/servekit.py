"""What the serving benchmarks share: the server's environment and set-up, starting and
waiting for it, small HTTP helpers, the store's warm users, and CPU/memory read from /proc.

Used by ``bench/serve_bench.py``, ``bench/storefront.py``, ``bench/ab_trees.py`` and
``scripts/compare_answers.py``.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import random
import socket
import subprocess
import sys
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
RECSYS = os.path.join(os.path.dirname(sys.executable), "recsys")


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
        # This tree's code (or --tree's), not the one the venv's editable install points at.
        PYTHONPATH=getattr(args, "tree", None) or ROOT,
    )
    for name, value in getattr(args, "server_env", None) or ():
        env[name] = value
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


def prepare(args, data: list[str] | None = None, opt_in: bool = True) -> None:
    """Create the database if needed, migrate, import ``data`` (default: Online Retail), train
    every strategy (with ``opt_in``, the opt-in sequence model too)."""
    ensure_database(args.database_url)
    env = bench_env(args)
    for cmd in (
        ["db", "upgrade"],
        data or ["import", "online-retail", "--if-empty"],
        ["train", "--if-missing", "--quiet"],
        # Opt-in strategies (not trained by a bare `recsys train`), for --warm-strategies.
        *([["train", "sequence", "--if-missing", "--quiet"]] if opt_in else []),
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
        cwd=getattr(args, "tree", None) or ROOT,
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


def service_cpu(database_url: str | None = None) -> dict[str, float]:
    """CPU seconds so far of the PostgreSQL and Redis server processes on this host (they share
    the box with the server, so their cost per request is part of the picture).

    With ``database_url``, only the PostgreSQL backends connected to its database count (on a
    shared machine other databases' work is not ours; the server's own background processes,
    WAL writer and checkpointer, are left out then). Redis is one process for every user of it:
    all of its CPU counts."""
    database = None
    if database_url:
        database = database_url.rsplit("/", 1)[-1].split("?")[0]
    out = {"postgres": 0.0, "redis": 0.0}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            comm, seconds = proc_cpu(pid)
            kind = (
                "postgres" if comm.startswith("postgres") else "redis" if "redis" in comm else None
            )
            if kind == "postgres" and database:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f" {database} ".encode() not in f.read().replace(b"\0", b" "):
                        continue
        except OSError:
            continue
        if kind:
            out[kind] += seconds
    return out


def cpu_split(before: dict[int, float], after: dict[int, float]) -> str:
    """How the scenario's worker CPU was shared, e.g. "62/38": keep-alive connections stay
    with the worker that accepted them, so a few clients may all land on one worker."""
    used = [max(0.0, after[w] - before.get(w, 0.0)) for w in sorted(after)]
    total = sum(used)
    return "/".join(f"{100 * u / total:.0f}" for u in used) if total > 0 else "-"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(x.split(":", 1)[1].strip() for x in f if x.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()
    return f"{cpu}, {os.cpu_count()} cores, load average {load[0]:.1f} at start"
