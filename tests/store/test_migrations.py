"""The Alembic chain builds exactly the models' schema, on PostgreSQL and SQLite, and unwinds."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from recsys.store import Base, migrate


def _fresh_pg(pg_url: str):
    engine = create_engine(pg_url, connect_args={"options": "-csearch_path=migtest"})
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS migtest CASCADE"))
        conn.execute(text("CREATE SCHEMA migtest"))
    return engine


def _drift(engine) -> list:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(ctx, Base.metadata)


@pytest.mark.postgres
def test_postgres_upgrade_matches_models_and_downgrades(pg_url):
    engine = _fresh_pg(pg_url)
    try:
        assert inspect(engine).get_table_names() == []
        migrate.upgrade(engine)
        tables = set(inspect(engine).get_table_names())
        assert {t.name for t in Base.metadata.sorted_tables} <= tables
        assert _drift(engine) == []
        migrate.downgrade(engine, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS migtest CASCADE"))
        engine.dispose()


def test_sqlite_upgrade_matches_models_and_downgrades(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate.upgrade(engine)
    assert _drift(engine) == []
    migrate.downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}


def test_events_history_index_exists(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate.upgrade(engine)
    idx = {i["name"]: i["column_names"] for i in inspect(engine).get_indexes("events")}
    assert idx["ix_events_user_ts_id"] == ["user_id", "ts", "id"]
    assert "ix_events_user_ts" not in idx
