"""PostgreSQL restarted (``pg_ctl restart -m fast``) under parallel writers: print the
accounting for the README's reliability table (writes sent, 2xx, 503, 500, events
acknowledged, stored, duplicates, lost).

A private server (a temporary ``initdb`` cluster on a free port, tests/pgcluster.py) is
created, migrated, restarted and removed; the shared PostgreSQL is not touched. Redis is the
one of ``--redis`` (default ``redis://127.0.0.1:6379/15``, a key prefix of its own). The app
runs in this process (Flask test clients in threads, as tests/store/test_pg_restart.py) or,
with ``--gunicorn``, under ``gunicorn -c gunicorn.conf.py wsgi:app`` (2 workers x 4 threads)
with the writers as HTTP clients.

Usage: ``PYTHONPATH=. python scripts/pg_restart_check.py [--writers 12] [--runs 3] [--gunicorn]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter

import requests

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sqlalchemy import create_engine, select  # noqa: E402

from recsys.app import create_app  # noqa: E402
from recsys.store import migrate  # noqa: E402
from recsys.store.db import dispose_engines  # noqa: E402
from recsys.store.models import Event  # noqa: E402
from tests.pgcluster import PrivatePostgres, RestartLoad, pg_bindir  # noqa: E402
from tests.procs import free_port, stop_process  # noqa: E402
from tests.servicekit import ADMIN_TOKEN, seed_store  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class HttpClient:
    """What ``RestartLoad`` needs of a client, over HTTP (one keep-alive session)."""

    def __init__(self, base: str):
        self.base = base
        self.session = requests.Session()

    def open(self, path: str, method: str, json: dict, headers: dict) -> requests.Response:
        """Send one request (connection errors are status 0: never acknowledged).

        Parameters
        ----------
        path : str
            The request's path.
        method : str
            The HTTP method.
        json : dict
            The JSON body.
        headers : dict
            Extra headers.

        Returns
        -------
        requests.Response
            The answer.
        """
        try:
            return self.session.request(
                method, self.base + path, json=json, headers=headers, timeout=60
            )
        except requests.RequestException:
            r = requests.Response()
            r.status_code = 0
            return r


@contextlib.contextmanager
def gunicorn(env: dict, models: str):
    """``gunicorn -c gunicorn.conf.py wsgi:app`` on a free port until ``/healthz`` answers.

    Parameters
    ----------
    env : dict
        ``RECSYS_*`` settings added to this environment.
    models : str
        A scratch directory (models, the server's log).

    Returns
    -------
    Iterator[str]
        The server's base URL; stopped (SIGTERM) on exit.
    """
    port = free_port()
    log = open(os.path.join(models, "gunicorn.log"), "w")  # noqa: SIM115 - closed by stop_process
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env={**os.environ, **env, "RECSYS_BIND": f"127.0.0.1:{port}"},
        stdout=log,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # a hang guard: up to about a minute to start
            if proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited; see {log.name}")
            try:
                if requests.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError("gunicorn did not answer /healthz")
        yield base
    finally:
        stop_process(proc, log)


def one_run(bindir: str, writers: int, redis_url: str, http: bool = False) -> dict:
    """One private server, seeded, restarted under ``writers`` writers.

    Parameters
    ----------
    bindir : str
        PostgreSQL's server binaries.
    writers : int
        Parallel writers.
    redis_url : str
        The Redis to use (a fresh key prefix).
    http : bool, optional
        Serve with gunicorn and write over HTTP (else Flask test clients in this process).

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
            settings = {
                "DATABASE_URL": pg.url,
                "REDIS_URL": redis_url,
                "REDIS_PREFIX": f"pgcheck-{uuid.uuid4().hex[:8]}",
                "ADMIN_TOKEN": ADMIN_TOKEN,
                "MODEL_DIR": models,
                "PRELOAD_MODELS": False,
            }
            app = create_app(settings)
            seed_store(app.test_client())
            load = RestartLoad(app, writers=writers, admin_token=ADMIN_TOKEN)
            if http:
                env = {
                    f"RECSYS_{k}": str(v).lower() if isinstance(v, bool) else str(v)
                    for k, v in settings.items()
                }
                with gunicorn(env, models) as base:
                    load.client_factory = lambda: HttpClient(base)
                    load.run(pg.restart)
            else:
                load.run(pg.restart)
            dispose_engines(app)
            # A fresh engine for the accounting (nothing of the app's pools from before).
            engine = create_engine(pg.url)
            with engine.connect() as conn:
                keys = Counter(
                    k
                    for (k,) in conn.execute(
                        select(Event.idem_key).where(Event.idem_key.like("api:r-%"))
                    )
                )
            engine.dispose()
    finally:
        pg.destroy()
    statuses = Counter(a.status for a in load.answers)
    return {
        "sent": len(load.answers),
        "2xx": sum(n for s, n in statuses.items() if 200 <= s < 300),
        "503": statuses[503],
        "500": sum(n for s, n in statuses.items() if s >= 500 and s != 503),
        "no_answer": statuses[0],
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
    ap.add_argument("--gunicorn", action="store_true", help="serve with gunicorn, write over HTTP")
    args = ap.parse_args()
    bindir = pg_bindir()
    if bindir is None:
        print("PostgreSQL server binaries (initdb, pg_ctl) not found", file=sys.stderr)
        return 2
    total: Counter = Counter()
    for k in range(args.runs):
        row = one_run(bindir, args.writers, args.redis, http=args.gunicorn)
        total.update(row)
        print(f"run {k + 1}: " + ", ".join(f"{key} {v}" for key, v in row.items()), flush=True)
    print("total: " + ", ".join(f"{key} {v}" for key, v in total.items()))
    bad = (
        total["500"]
        or total["no_answer"]
        or total["lost"]
        or total["duplicates"]
        or total["503_without_retry_after"]
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
