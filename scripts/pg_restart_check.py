"""PostgreSQL restarted (``pg_ctl restart -m fast``) under parallel writers: print the
accounting for the README's reliability table (writes sent, 2xx, 503, 500, events
acknowledged, stored, duplicates, lost).

A private server (a temporary ``initdb`` cluster on a free port, tests/pgcluster.py) is
created, migrated, restarted and removed; the shared PostgreSQL is not touched. Redis is the
one of ``--redis`` (default ``redis://127.0.0.1:6379/15``, a key prefix of its own). The app
runs in this process (Flask test clients in threads, as tests/store/test_pg_restart.py).

Usage: ``PYTHONPATH=. python scripts/pg_restart_check.py [--writers 12] [--runs 3]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sqlalchemy import create_engine, select  # noqa: E402

from recsys.app import create_app  # noqa: E402
from recsys.store import migrate, session_scope  # noqa: E402
from recsys.store.db import dispose_engines  # noqa: E402
from recsys.store.models import Event  # noqa: E402
from tests.pgcluster import PrivatePostgres, RestartLoad, pg_bindir  # noqa: E402
from tests.servicekit import ADMIN_TOKEN, seed_store  # noqa: E402


def one_run(bindir: str, writers: int, redis_url: str) -> dict:
    """One private server, seeded, restarted under ``writers`` writers.

    Parameters
    ----------
    bindir : str
        PostgreSQL's server binaries.
    writers : int
        Parallel writers.
    redis_url : str
        The Redis to use (a fresh key prefix).

    Returns
    -------
    dict
        The accounting: ``sent``, ``2xx``, ``503``, ``500`` (any 5xx but 503), ``4xx``,
        ``503_without_retry_after``, ``acked``, ``stored`` (acknowledged ids found),
        ``duplicates``, ``lost`` (acknowledged, not stored), ``stored_unacked``.
    """
    pg = PrivatePostgres(bindir)
    try:
        engine = create_engine(pg.url)
        migrate.upgrade(engine)
        engine.dispose()
        with tempfile.TemporaryDirectory() as models:
            app = create_app(
                {
                    "DATABASE_URL": pg.url,
                    "REDIS_URL": redis_url,
                    "REDIS_PREFIX": f"pgcheck-{uuid.uuid4().hex[:8]}",
                    "ADMIN_TOKEN": ADMIN_TOKEN,
                    "MODEL_DIR": models,
                    "PRELOAD_MODELS": False,
                }
            )
            seed_store(app.test_client())
            load = RestartLoad(app, writers=writers, admin_token=ADMIN_TOKEN)
            load.run(pg.restart)
            with session_scope(app) as s:
                keys = Counter(
                    k
                    for (k,) in s.execute(
                        select(Event.idem_key).where(Event.idem_key.like("api:r-%"))
                    )
                )
            dispose_engines(app)
    finally:
        pg.destroy()
    statuses = Counter(a.status for a in load.answers)
    return {
        "sent": len(load.answers),
        "2xx": sum(n for s, n in statuses.items() if 200 <= s < 300),
        "503": statuses[503],
        "500": sum(n for s, n in statuses.items() if s >= 500 and s != 503),
        "4xx": sum(n for s, n in statuses.items() if 400 <= s < 500),
        "503_without_retry_after": sum(
            1 for a in load.answers if a.status == 503 and not a.retry_after
        ),
        "acked": len(load.acked),
        "stored": len(load.acked & set(keys)),
        "duplicates": sum(1 for n in keys.values() if n > 1),
        "lost": len(load.acked - set(keys)),
        "stored_unacked": len(set(keys) - load.acked),
        "writers_capped": load.capped,
    }


def main() -> int:
    """Parse the arguments, run, print one line per run and the totals.

    Returns
    -------
    int
        0 when no run had a 500, a lost or a duplicated event; 1 otherwise.
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writers", type=int, default=12)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    args = ap.parse_args()
    bindir = pg_bindir()
    if bindir is None:
        print("PostgreSQL server binaries (initdb, pg_ctl) not found", file=sys.stderr)
        return 2
    total: Counter = Counter()
    for k in range(args.runs):
        row = one_run(bindir, args.writers, args.redis)
        total.update(row)
        print(f"run {k + 1}: " + ", ".join(f"{key} {v}" for key, v in row.items()), flush=True)
    print("total: " + ", ".join(f"{key} {v}" for key, v in total.items()))
    bad = total["500"] or total["lost"] or total["duplicates"] or total["503_without_retry_after"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
