"""Shared fixtures.

Integration tests talk to real servers named by ``RECSYS_TEST_DATABASE_URL`` (PostgreSQL) and
``RECSYS_TEST_REDIS_URL``. Locally a missing server skips those tests; with ``CI=true`` it fails
them, so CI can never pass by skipping.
"""

from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy import create_engine, text

from recsys import create_app
from recsys.store import Base, migrate

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def _unavailable(what: str, why: str):
    msg = f"{what} unavailable: {why}"
    if IN_CI:
        pytest.fail(msg + " (CI=true: integration tests must run, not skip)", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def pg_url() -> str:
    url = os.environ.get("RECSYS_TEST_DATABASE_URL")
    if not url:
        _unavailable("PostgreSQL", "RECSYS_TEST_DATABASE_URL is not set")
    try:
        engine = create_engine(url)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as e:  # noqa: BLE001
        _unavailable("PostgreSQL", str(e).splitlines()[0])
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("RECSYS_TEST_REDIS_URL")
    if not url:
        _unavailable("Redis", "RECSYS_TEST_REDIS_URL is not set")
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as e:  # noqa: BLE001
        _unavailable("Redis", str(e).splitlines()[0])
    return url


@pytest.fixture(scope="session")
def pg_schema_url(pg_url) -> str:
    """The test PostgreSQL database, migrated to head once per session."""
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        Base.metadata.drop_all(conn)
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    migrate.upgrade(engine)
    engine.dispose()
    return pg_url


def _truncate(app) -> None:
    from recsys.store import get_engine

    engine = get_engine(app)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            names = ", ".join(t.name for t in Base.metadata.sorted_tables)
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        else:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(table.delete())


@pytest.fixture
def redis_prefix(redis_url):
    """A private key namespace in the real Redis, removed after the test."""
    import redis

    prefix = f"recsys-test-{uuid.uuid4().hex[:8]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def make_app(pg_schema_url, tmp_path):
    """Factory for apps on the real PostgreSQL test database (tables emptied first)."""
    created = []

    def _make(**config):
        cfg = {
            "TESTING": True,
            "DATABASE_URL": pg_schema_url,
            "MODEL_DIR": str(tmp_path / "models"),
            "PRELOAD_MODELS": False,
            # Off unless a test turns it on (tests/serving/test_freshness.py): a background
            # refresh would make "the next read is a miss" assertions depend on timing.
            "REFRESH_AHEAD": False,
            # No Live-history thread from tests that run the after-fork hooks (it would outlive
            # the test and write samples beside other tests'); tests/web/test_console_ops.py
            # turns it on.
            "CONSOLE_HISTORY_SAMPLER": False,
        }
        cfg.update(config)
        app = create_app(cfg)
        if not created:
            _truncate(app)
        created.append(app)
        return app

    yield _make
    from recsys.store.db import dispose_engines

    for app in created:
        dispose_engines(app)


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def sqlite_app(tmp_path):
    """An app on a fresh SQLite file (the embedded default), migrated to head."""
    app = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'recsys.db'}",
            "MODEL_DIR": str(tmp_path / "models"),
            "PRELOAD_MODELS": False,
        }
    )
    from recsys.store import get_engine

    migrate.upgrade(get_engine(app))
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def served_app(make_app, redis_url, redis_prefix):
    """A fully wired app on real PostgreSQL + Redis with a seeded catalogue, purchases and real
    popular + EASE models registered and activated (H5's request-path/API tests)."""
    from tests.servicekit import ADMIN_TOKEN, seed_store, train_and_register

    app = make_app(
        REDIS_URL=redis_url,
        REDIS_PREFIX=redis_prefix,
        ADMIN_TOKEN=ADMIN_TOKEN,
        CONFIG_POLL_SECONDS=0.05,
        DEADLINE_MS=5000,
    )
    seed_store(app.test_client())
    app.extensions["recsys.model_versions"] = versions = train_and_register(app)
    from recsys.models.runtime import get_runtime

    for name in versions:  # preload, as a production worker would before serving
        assert get_runtime(app).get(name) is not None
    return app


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A real three-node Redis Cluster on loopback for the whole session (tests that kill a
    node start their own, see tests/rediscluster.py)."""
    from tests.rediscluster import LocalCluster

    cluster = LocalCluster(str(tmp_path_factory.mktemp("redis-cluster")))
    try:
        yield cluster.start()
    finally:
        cluster.stop()
