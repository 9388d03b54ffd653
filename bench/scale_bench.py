"""Scale benchmark: a synthetic shop of a given size through the whole service, step by step.

    # S (5k items, 20k shoppers, 200k events) on a private SQLite file (about 5-15 minutes)
    .venv/bin/python bench/scale_bench.py
    # M or L, on PostgreSQL (the database is created when missing; --fresh empties it first)
    .venv/bin/python bench/scale_bench.py --size M \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/recsys_scale --fresh
    # a store that already holds the size's data (no synth, no import), the models in --workdir
    # served as they are (--strategies with no names), and the bundled Online Retail store served
    # and measured the same way in the same run (issue 29: "uncached p99 within 2x of Online
    # Retail's in the same run")
    .venv/bin/python bench/scale_bench.py --size L --existing --strategies --workdir DIR \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/recsys_scale --retail
    # cost against size, from the results file (every run appends one JSON line to it)
    .venv/bin/python bench/scale_bench.py --plot docs/scale_cost.png

Steps, each a subprocess of its own with a time limit (--step-timeout; a step that runs past it
is killed with its process tree and reported as "did not finish in N s", and the run goes on
with what it can): `recsys synth` -> `recsys db upgrade` -> `recsys import csv` -> the same
import again (idempotent: must add no event) -> `recsys train <strategy>` for each default
strategy (every available one but the opt-in ones) -> `recsys serve` (2 workers, every model
preloaded) until /readyz answers 200 -> the first similar-items call -> uncached and cached
recommendations for warm users, one client (uncached: a unique ``exclude`` per request, so the
cache key is new and the whole request path runs) -> similar items.

For each step: wall seconds, the peak RSS of the step's process tree (the sum over the process
and its descendants, sampled from /proc every 0.1 s; for serving, the gunicorn master and
workers), and the disk it leaves (the CSV files, the database, the strategy's model folder).
Prints a Markdown table and appends the run as one JSON line to --results.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
RECSYS = os.path.join(os.path.dirname(sys.executable), "recsys")
RESULTS = os.path.join(ROOT, "bench", "scale_results.jsonl")
sys.path.insert(0, os.path.join(ROOT, "bench"))

import servekit  # noqa: E402
from proctree import PeakRss, tree_rss  # noqa: E402
from scale_report import plot, table  # noqa: E402
from servekit import free_port  # noqa: E402


def run_step(name: str, argv: list[str], env: dict, timeout: float, log_dir: str) -> dict:
    """Run one step as a subprocess (its own process group) under a time limit.

    Parameters
    ----------
    name : str
        The step's name (also its log file's).
    argv : list of str
        The command line.
    env : dict
        Its environment.
    timeout : float
        Seconds before the step's process group is killed.
    log_dir : str
        Where its output goes (``<name>.log``).

    Returns
    -------
    dict
        ``step``, ``seconds``, ``peak_rss``, ``status`` (``ok``, ``failed (rc N)`` or
        ``did not finish in N s``) and ``output`` (the log).
    """
    log_path = os.path.join(log_dir, name.replace(" ", "_") + ".log")
    print(f"-- {name}: {' '.join(argv)}", flush=True)
    with open(log_path, "w", encoding="utf-8") as log:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        rss = PeakRss(proc.pid)
        try:
            rc = proc.wait(timeout=timeout)
            status = "ok" if rc == 0 else f"failed (rc {rc})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = f"did not finish in {timeout:g} s"
        seconds = time.monotonic() - t0
        peak = rss.stop()
    with open(log_path, encoding="utf-8", errors="replace") as f:
        output = f.read()
    refused = name.startswith("train ") and ": left out: " in output
    if status.startswith("failed") and refused:  # the training budget said no
        status = "left out: " + output.split(": left out: ", 1)[1].split("\n", 1)[0]
    print(f"   {status}, {seconds:.1f} s, peak RSS {peak / 2**20:.0f} MiB", flush=True)
    if status != "ok":
        print(output[-800:], flush=True)
    return {
        "step": name,
        "seconds": seconds,
        "peak_rss": peak,
        "status": status,
        "output": output,
        "load": load(),
    }


# -- disk ------------------------------------------------------------------------------------
def du(path: str) -> int:
    """Bytes under ``path`` (a file or a folder; 0 when missing).

    Parameters
    ----------
    path : str
        A file or folder.

    Returns
    -------
    int
        The total size of its files.
    """
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for folder, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(folder, f))
            except OSError:
                pass
    return total


def database_bytes(url: str) -> int:
    """The store's size: the SQLite file (with its WAL) or ``pg_database_size``.

    Parameters
    ----------
    url : str
        The SQLAlchemy URL.

    Returns
    -------
    int
        Bytes.
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        return sum(du(u.database + suffix) for suffix in ("", "-wal", "-shm"))
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            return int(c.execute(text("SELECT pg_database_size(current_database())")).scalar())
    finally:
        engine.dispose()


def ensure_database(url: str, fresh: bool) -> None:
    """Create the PostgreSQL database when missing (SQLite: remove the file when ``fresh``).

    Parameters
    ----------
    url : str
        The SQLAlchemy URL.
    fresh : bool
        Start from an empty store (PostgreSQL: ``recsys db downgrade base`` runs as a step).
    """
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if fresh:
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(u.database + suffix):
                    os.remove(u.database + suffix)
        return
    servekit.ensure_database(url)


# -- serving ---------------------------------------------------------------------------------
def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes, float]:
    t0 = time.perf_counter()
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    return r.status, body, time.perf_counter() - t0


def warm_users_and_items(url: str, n_users: int, n_items: int) -> tuple[list[str], list[str]]:
    """Warm users (10..300 distinct items) and the most popular items, from the store."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as c:
        users = [
            r[0]
            for r in c.execute(
                text(
                    "SELECT u.external_id FROM users u JOIN events e ON e.user_id = u.id "
                    "GROUP BY u.external_id HAVING COUNT(DISTINCT e.item_id) BETWEEN 10 AND 300 "
                    "ORDER BY u.external_id LIMIT :n"
                ),
                {"n": n_users},
            )
        ]
        items = [
            r[0]
            for r in c.execute(
                text(
                    "SELECT i.external_id FROM items i JOIN events e ON e.item_id = i.id "
                    "GROUP BY i.external_id ORDER BY COUNT(*) DESC, i.external_id LIMIT :n"
                ),
                {"n": n_items},
            )
        ]
    engine.dispose()
    return users, items


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50 and p99 in milliseconds.

    Parameters
    ----------
    seconds : list of float
        Latencies in seconds.

    Returns
    -------
    dict
        ``p50_ms``, ``p99_ms``, ``n``.
    """
    q = statistics.quantiles(seconds, n=100, method="inclusive")
    return {"p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000, "n": len(seconds)}


def drop_redis_keys(url: str, prefix: str) -> int:
    """Delete this run's keys (the result cache ...) from Redis.

    Parameters
    ----------
    url : str
        The Redis URL.
    prefix : str
        The run's ``RECSYS_REDIS_PREFIX``.

    Returns
    -------
    int
        Keys deleted.
    """
    import redis

    r = redis.Redis.from_url(url)
    n = 0
    batch: list[bytes] = []
    for key in r.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            n += r.unlink(*batch)
            batch = []
    if batch:
        n += r.unlink(*batch)
    r.close()
    return n


def load() -> list[float]:
    """The 1-, 5- and 15-minute load averages now (other work on the machine slows every
    step: docs/scale.md).

    Returns
    -------
    list of float
        ``os.getloadavg()``, rounded.
    """
    return [round(x, 1) for x in os.getloadavg()]


def serve_and_measure(
    args, env: dict, log_dir: str, database_url: str | None = None, prefix: str = ""
) -> list[dict]:
    """Start ``recsys serve``, wait for /readyz, then measure; the server is stopped after.
    ``database_url``: the store served (default ``args.database_url``); ``prefix``: put before
    every step's name (another store in the same run)."""
    database_url = database_url or args.database_url
    port = free_port()
    log = open(os.path.join(log_dir, "serve.log"), "w", encoding="utf-8")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [RECSYS, "serve", "--bind", f"127.0.0.1:{port}", "--log-level", "warning"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    rss = PeakRss(proc.pid)
    rows: list[dict] = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        ready = None
        while time.monotonic() - t0 < args.step_timeout and proc.poll() is None:
            try:
                status, _, _ = get(conn, "/readyz")
                if status == 200:
                    ready = time.monotonic() - t0
                    break
            except OSError:
                conn.close()
            time.sleep(0.2)
        if ready is None:
            why = (
                f"exited with {proc.returncode}"
                if proc.poll() is not None
                else f"did not finish in {args.step_timeout:g} s"
            )
            return [{"step": "serve: ready", "seconds": time.monotonic() - t0, "status": why}]
        rows.append(
            {
                "step": "serve: ready",
                "seconds": ready,
                "peak_rss": tree_rss(proc.pid),
                "status": "ok",
                "load": load(),
            }
        )
        users, items = warm_users_and_items(database_url, args.requests, 200)
        # That query takes seconds at L: past gunicorn's keep-alive (5 s) the server has closed
        # the idle connection. A new one (localhost: well under a millisecond to open).
        conn.close()
        status, body, first = get(conn, f"/v1/items/{items[0]}/similar?n=10")
        rows.append(
            {
                "step": "first similar-items call",
                "seconds": first,
                "status": "ok" if status == 200 else f"HTTP {status}: {body[:200]!r}",
                "load": load(),
            }
        )
        lat = {"uncached": [], "cached": [], "similar": []}
        bad = 0
        for k, u in enumerate(users):  # uncached: a unique exclude, so a new cache key
            status, _, s = get(conn, f"/v1/users/{u}/recommendations?n=10&exclude=scale{k}")
            lat["uncached"].append(s)
            bad += status != 200
        cached = users[:50]
        for u in cached:  # fill the cache
            get(conn, f"/v1/users/{u}/recommendations?n=10")
        for _ in range(max(1, args.requests // len(cached))):
            for u in cached:
                status, _, s = get(conn, f"/v1/users/{u}/recommendations?n=10")
                lat["cached"].append(s)
                bad += status != 200
        for i in items[1:]:
            status, _, s = get(conn, f"/v1/items/{i}/similar?n=10")
            lat["similar"].append(s)
            bad += status != 200
        for name, values in lat.items():
            label = {"similar": "similar items"}.get(name, f"recommendations, {name}")
            rows.append(
                {
                    "step": label,
                    "latency": percentiles(values),
                    "status": "ok" if not bad else f"{bad} non-200 answers",
                    "load": load(),
                }
            )
        rows[0]["serve_peak_rss"] = tree_rss(proc.pid)
    finally:
        conn.close()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        peak = rss.stop()
        drop_redis_keys(args.redis_url, args.redis_prefix)
    rows[0]["peak_rss"] = peak  # the server's tree over the whole measurement
    for row in rows:
        row["step"] = prefix + row["step"]
    return rows


def retail_store(args, env: dict, work: str, strategies: list[str], step) -> tuple[dict, str]:
    """The bundled Online Retail data in a SQLite store of its own (``work``/retail), with
    ``strategies`` trained: the store issue 29 compares serving at scale against, measured
    in the same run (``--retail``).

    Returns
    -------
    tuple of (dict, str)
        Its environment and its database URL.
    """
    home = os.path.join(work, "retail")
    os.makedirs(home, exist_ok=True)
    url = f"sqlite:///{os.path.join(home, 'recsys.db')}"
    renv = dict(
        env,
        RECSYS_DATABASE_URL=url,
        RECSYS_MODEL_DIR=os.path.join(home, "models"),
        RECSYS_INSTANCE_PATH=os.path.join(home, "instance"),
        RECSYS_REDIS_PREFIX=args.redis_prefix + "-retail",
    )
    if not os.path.exists(os.path.join(home, "recsys.db")):
        step("Online Retail: db upgrade", ["db", "upgrade"], env=renv)
        step("Online Retail: import", ["import", "online-retail"], env=renv)
    for name in strategies:
        if not os.path.isdir(os.path.join(home, "models", name)):
            step(f"Online Retail: train {name}", ["train", name, "--quiet"], env=renv)
    return renv, url


# -- the run ---------------------------------------------------------------------------------
def default_strategies() -> list[str]:
    """What a bare ``recsys train`` trains: every available strategy but the opt-in ones.

    Returns
    -------
    list of str
        Strategy names.
    """
    from strategies import available_strategies, opt_in

    return [s for s in available_strategies() if not opt_in(s)]


def machine() -> str:
    """One line: CPUs, memory, load average.

    Returns
    -------
    str
        The description.
    """
    with open("/proc/meminfo", encoding="ascii") as f:
        mem = int(f.readline().split()[1]) / 2**20
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{platform.node()}: {os.cpu_count()} CPUs, {mem:.0f} GiB, load average {load}"


def run(args) -> dict:
    """Every step at ``args.size``; returns the run's record (also appended to --results)."""
    from sqlalchemy.engine import make_url

    from recsys.offline.synth import sizes

    n_items, n_users, n_events = sizes(args.size, args.items, args.users, args.events)
    work = args.workdir or tempfile.mkdtemp(prefix=f"scale-{args.size}-")
    os.makedirs(work, exist_ok=True)
    synth_dir = os.path.join(work, "synth")
    model_dir = os.path.join(work, "models")
    args.redis_prefix = f"scale-{os.getpid()}"
    args.database_url = args.database_url or f"sqlite:///{os.path.join(work, 'recsys.db')}"
    ensure_database(args.database_url, args.fresh)
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""),
        RECSYS_DATABASE_URL=args.database_url,
        RECSYS_REDIS_URL=args.redis_url,
        RECSYS_REDIS_PREFIX=args.redis_prefix,
        RECSYS_MODEL_DIR=model_dir,
        RECSYS_INSTANCE_PATH=os.path.join(work, "instance"),
        RECSYS_WORKERS="2",
        RECSYS_PRELOAD_MODELS="true",
    )
    custom = any(v is not None for v in (args.items, args.users, args.events))
    record = {
        "size": "custom" if custom else args.size,
        "items": n_items,
        "users": n_users,
        "events": n_events,
        "database": make_url(args.database_url).get_backend_name(),
        "machine": machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "step_timeout_s": args.step_timeout,
        "steps": [],
    }
    steps = record["steps"]

    def step(name: str, argv: list[str], disk: str | None = None, env: dict = env) -> dict:
        row = run_step(name, [RECSYS, *argv], env, args.step_timeout, work)
        if disk == "db":
            row["disk"] = database_bytes(args.database_url)
        elif disk:
            row["disk"] = du(disk)
        output = row.pop("output")
        if "--json" in argv and row["status"] == "ok":
            try:  # the import report: what was written
                row["events_new"] = json.loads(output[output.index("{") :])["written"]["events_new"]
            except (ValueError, KeyError):
                row["status"] = "no JSON report"
        steps.append(row)
        return row

    counts = ["--items", str(n_items), "--users", str(n_users), "--events", str(n_events)]
    if not args.existing:
        step("synth", ["synth", *counts, "--seed", str(args.seed), "--out", synth_dir], synth_dir)
    if args.fresh and not args.database_url.startswith("sqlite"):
        step("db downgrade", ["db", "downgrade", "base"])
    step("db upgrade", ["db", "upgrade"])
    import_steps(args, step, synth_dir, n_events)
    names = args.strategies if args.strategies is not None else default_strategies()
    for name in names:
        step(f"train {name}", ["train", name, "--quiet"], os.path.join(model_dir, name))
    trained = [
        s for s in steps if s["step"].startswith("train ") and not s["status"].startswith("left")
    ]
    if trained:
        steps.append(
            {
                "step": "train, all",
                "seconds": sum(s["seconds"] for s in trained),
                "peak_rss": max((s["peak_rss"] for s in trained), default=0),
                "disk": du(model_dir),
                "status": "ok" if all(s["status"] == "ok" for s in trained) else "incomplete",
            }
        )
    if args.tune_budget:
        step("tune", ["tune", "--budget", args.tune_budget, "--quiet"])
    if not args.no_serve:
        steps.extend(serve_and_measure(args, env, work))
        if args.retail:
            from strategies import STRATEGY_NAMES

            served = sorted(os.listdir(model_dir)) if os.path.isdir(model_dir) else []
            served = [s for s in served if s in STRATEGY_NAMES]
            renv, rurl = retail_store(args, env, work, served, step)
            steps.extend(
                serve_and_measure(args, renv, os.path.join(work, "retail"), rurl, "Online Retail: ")
            )
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return record


def import_steps(args, step, synth_dir: str, n_events: int) -> None:
    """``recsys import csv`` of the synthetic files, and again (must add nothing); nothing
    with ``--existing`` (the store already holds them)."""
    if args.existing:
        return
    files = [
        "--interactions",
        os.path.join(synth_dir, "interactions.csv"),
        "--items",
        os.path.join(synth_dir, "items.csv"),
    ]
    first = step("import csv", ["import", "csv", *files, "--json"], "db")
    if not args.no_reimport:
        again = step("import csv again (idempotent)", ["import", "csv", *files, "--json"], "db")
        if again["status"] == "ok" and again.get("events_new") != 0:
            again["status"] = f"added {again.get('events_new')} events (expected 0)"
    if first["status"] == "ok" and first.get("events_new") != n_events:
        first["status"] = f"imported {first.get('events_new')} events of {n_events}"


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring).

    Parameters
    ----------
    argv : list of str or None
        Arguments (None: ``sys.argv``).

    Returns
    -------
    int
        Exit status: 0, or 1 when a step did not succeed.
    """
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="S", choices=["S", "M", "L", "XL"])
    ap.add_argument("--items", type=int, help="override the size's items")
    ap.add_argument("--users", type=int, help="override the size's shoppers")
    ap.add_argument("--events", type=int, help="override the size's events")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--database-url", help="default: a SQLite file in the work folder")
    ap.add_argument("--fresh", action="store_true", help="empty the given database first")
    ap.add_argument(
        "--redis-url", default=os.environ.get("RECSYS_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    ap.add_argument("--workdir", help="keep everything here (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    ap.add_argument(
        "--strategies",
        nargs="*",
        help="default: what a bare `recsys train` trains; none given (`--strategies`): train "
        "nothing and serve the models already in --workdir",
    )
    ap.add_argument(
        "--existing",
        action="store_true",
        help="the database already holds the size's data: no synth, no import",
    )
    ap.add_argument(
        "--retail",
        action="store_true",
        help="also serve the bundled Online Retail data (its own SQLite store in the work "
        "folder, the same strategies) and measure it the same way, in the same run",
    )
    ap.add_argument("--step-timeout", type=float, default=1800.0, help="seconds per step")
    ap.add_argument(
        "--tune-budget", default="5m", help="`recsys tune --budget` after training; '' skips it"
    )
    ap.add_argument("--requests", type=int, default=300, help="measured requests per scenario")
    ap.add_argument("--no-reimport", action="store_true")
    ap.add_argument("--no-serve", action="store_true")
    ap.add_argument("--results", default=RESULTS, help="JSON lines, one per run (appended)")
    ap.add_argument(
        "--plot",
        metavar="PNG",
        help="only print the table across sizes and draw cost against size from --results",
    )
    args = ap.parse_args(argv)
    if args.plot:
        plot(args.results, args.plot)
        return 0
    record = run(args)
    print()
    print(table(record))
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    with open(args.results, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    print(f"\nappended to {args.results}")
    ok = ("ok", "left out")
    return 0 if all(s["status"].startswith(ok) for s in record["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
