"""Import speed: a source into a fresh PostgreSQL database and a fresh SQLite file, twice each
(the second run shows idempotency: 0 new rows).

    .venv/bin/python bench/import_bench.py [--pg-admin-url URL] [--db bench_import] [--file F]
    .venv/bin/python bench/import_bench.py --synth DIR [--db bench_import]  # `recsys synth` output

Default source: the full Online Retail file; ``--synth DIR``: the ``interactions.csv`` and
``items.csv`` of ``recsys synth --out DIR`` through ``recsys import csv``'s parser. The
PostgreSQL database named by --db is dropped and re-created on the server of --pg-admin-url
(default: the local test server). Prints per run: wall seconds (parse, write), rows/s, the CPU
seconds of this process and of its PostgreSQL server process (user + sys, from /proc: what a
quiet machine would need, as other work shares the CPU), peak RSS so far and the load average.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import resource
import sys
import tempfile
import time

from sqlalchemy import create_engine, text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from recsys.offline.importers import csv_import, online_retail  # noqa: E402
from recsys.offline.importers.writing import run_import  # noqa: E402
from recsys.store import migrate  # noqa: E402
from recsys.store.db import make_engine  # noqa: E402


def fresh_postgres(admin_url: str, name: str) -> str:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return admin_url.rsplit("/", 1)[0] + "/" + name


def _proc_cpu(pid: int) -> float:
    """user + sys CPU seconds of a local process (0.0 when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def run(label: str, url: str, parse) -> None:
    engine = make_engine(url)
    migrate.upgrade(engine)
    for attempt in (1, 2):
        backend = None
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:  # the pooled connection run_import will use
                backend = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        pg0 = _proc_cpu(backend) if backend else 0.0
        t0, c0 = time.perf_counter(), _self_cpu()
        report, batch = parse()
        t_parse, c_parse = time.perf_counter() - t0, _self_cpu() - c0
        report.seconds = 0.0
        run_import(engine, report, batch)
        total, cpu = time.perf_counter() - t0, _self_cpu() - c0
        pg_cpu = _proc_cpu(backend) - pg0 if backend else 0.0
        lines = report.files[-1]
        w = report.written
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"{label:<10} run {attempt}: {total:6.1f} s total (parse {t_parse:.1f} s, write "
            f"{report.seconds:.1f} s), {lines.read / total:,.0f} lines/s; CPU: importer "
            f"{cpu:.1f} s (parse {c_parse:.1f} s), PostgreSQL backend {pg_cpu:.1f} s; "
            f"peak RSS {rss:,.0f} MiB; load {os.getloadavg()[0]:.1f}; "
            f"{lines.read:,} lines, {lines.accepted:,} events accepted, {w.events_new:,} new, "
            f"{w.users_new:,} users new, {w.items_new:,} items new",
            flush=True,
        )
        del batch
    engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--pg-admin-url",
        default=os.environ.get(
            "RECSYS_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
        help="any database on the server; the bench database is created beside it",
    )
    ap.add_argument("--db", default="bench_import")
    ap.add_argument("--file", default=online_retail.default_path(), help="Online Retail file")
    ap.add_argument("--synth", metavar="DIR", help="a `recsys synth` folder instead of --file")
    ap.add_argument("--skip-postgres", action="store_true")
    ap.add_argument("--skip-sqlite", action="store_true")
    ap.add_argument("--sqlite-dir", help="folder of the SQLite file (default: a temporary one)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="  %(name)s: %(message)s")
    if args.synth:
        inter, items = (os.path.join(args.synth, f) for f in ("interactions.csv", "items.csv"))
        source = f"{inter} + {items}"

        def parse():
            return csv_import.parse(inter, items)
    else:
        source = args.file

        def parse():
            return online_retail.parse(args.file)

    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs "
        f"(shared with other work: indicative), Python {platform.python_version()}"
    )
    print(f"source: {source}")
    if not args.skip_postgres:
        run("postgresql", fresh_postgres(args.pg_admin_url, args.db), parse)
    if not args.skip_sqlite:
        with tempfile.TemporaryDirectory(dir=args.sqlite_dir) as tmp:
            run("sqlite", f"sqlite:///{os.path.join(tmp, 'bench.db')}", parse)


if __name__ == "__main__":
    main()
