"""Import speed: the full Online Retail file into a fresh PostgreSQL database and a fresh SQLite
file, twice each (the second run shows idempotency: 0 new rows).

    .venv/bin/python bench/import_bench.py [--pg-admin-url URL] [--db bench_import] [--file F]

The PostgreSQL database named by --db is dropped and re-created on the server of
--pg-admin-url (default: the local test server). Prints seconds and rows/s per run.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time

from sqlalchemy import create_engine, text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from recsys.offline.importers import online_retail  # noqa: E402
from recsys.offline.importers.common import run_import  # noqa: E402
from recsys.store import migrate  # noqa: E402
from recsys.store.db import make_engine  # noqa: E402


def fresh_postgres(admin_url: str, name: str) -> str:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return admin_url.rsplit("/", 1)[0] + "/" + name


def run(label: str, url: str, path: str) -> None:
    engine = make_engine(url)
    migrate.upgrade(engine)
    for attempt in (1, 2):
        t0 = time.perf_counter()
        report, batch = online_retail.parse(path)
        t_parse = time.perf_counter() - t0
        report.seconds = 0.0
        run_import(engine, report, batch)
        total = time.perf_counter() - t0
        lines = report.files[0]
        w = report.written
        print(
            f"{label:<10} run {attempt}: {total:6.1f} s total (parse {t_parse:.1f} s, write "
            f"{report.seconds:.1f} s), {lines.read / total:,.0f} lines/s; "
            f"{lines.read:,} lines, {lines.accepted:,} events accepted, {w.events_new:,} new, "
            f"{w.users_new:,} users new, {w.items_new:,} items new",
            flush=True,
        )
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
    ap.add_argument("--file", default=online_retail.default_path())
    ap.add_argument("--skip-postgres", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="  %(name)s: %(message)s")
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs "
        f"(shared with other work: indicative), Python {platform.python_version()}"
    )
    print(f"file: {args.file}")
    if not args.skip_postgres:
        run("postgresql", fresh_postgres(args.pg_admin_url, args.db), args.file)
    with tempfile.TemporaryDirectory() as tmp:
        run("sqlite", f"sqlite:///{os.path.join(tmp, 'bench.db')}", args.file)


if __name__ == "__main__":
    main()
