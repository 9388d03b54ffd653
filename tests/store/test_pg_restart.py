"""PostgreSQL restarted (``pg_ctl restart -m fast``) under 12 parallel writers, on a private
server (tests/pgcluster.py): no write path answers 500, refusals are 503 with ``Retry-After``,
and every acknowledged event is stored exactly once."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import create_engine, func, select

from recsys.store import migrate, session_scope
from recsys.store.models import Event
from tests.pgcluster import PrivatePostgres, RestartLoad, pg_bindir
from tests.servicekit import ADMIN_TOKEN, seed_store


@pytest.fixture
def private_pg():
    bindir = pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed")
    pg = PrivatePostgres(bindir)
    try:
        engine = create_engine(pg.url)
        migrate.upgrade(engine)
        engine.dispose()
        yield pg
    finally:
        pg.destroy()


@pytest.mark.fault
@pytest.mark.postgres
def test_postgres_restart_under_parallel_writes(make_app, private_pg, redis_url, redis_prefix):
    app = make_app(
        DATABASE_URL=private_pg.url,
        REDIS_URL=redis_url,
        REDIS_PREFIX=redis_prefix,
        ADMIN_TOKEN=ADMIN_TOKEN,
        DB_BREAKER_RESET_S=0.2,
    )
    seed_store(app.test_client())
    load = RestartLoad(app, writers=12, admin_token=ADMIN_TOKEN)
    load.run(private_pg.restart)

    assert load.capped == 0, "a writer never recovered after the restart"
    every = load.statuses()
    assert not [k for k in every if k[1] >= 500 and k[1] != 503], every
    assert not [k for k in every if 400 <= k[1] < 500], every  # the load's writes are valid
    # Before the restart every write path worked (so the load exercised each of them).
    before = load.statuses("before")
    for path in ("events", "items", "users", "admin"):  # admin: routing and experiments
        assert any(p == path and 200 <= s < 300 for p, s in before), (path, before)
    # The restart was felt (refusals or stale connections replaced), and refusals say when.
    refused = [a for a in load.answers if a.status == 503]
    assert refused, "no write was refused: the restart was not under load"
    assert all(a.retry_after and int(a.retry_after) >= 1 for a in refused)
    # Every acknowledged event is stored, once.
    with session_scope(app) as s:
        keys = Counter(
            k for (k,) in s.execute(select(Event.idem_key).where(Event.idem_key.like("api:r-%")))
        )
        assert s.scalar(select(func.count()).select_from(Event)) >= len(load.acked)
    assert load.acked <= set(keys), sorted(load.acked - set(keys))[:5]
    assert not [k for k, n in keys.items() if n > 1]
