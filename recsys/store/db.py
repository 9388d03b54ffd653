"""Engine and session helpers.

One engine per process, kept in ``app.extensions``. After a fork (gunicorn ``post_fork``) the
pool is re-created with ``dispose(close=False)`` so children never share the parent's sockets.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask, current_app
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def init_db(app: Flask) -> None:
    engine = make_engine(app.config["DATABASE_URL"])
    app.extensions["recsys.engine"] = engine
    # Same pool; connections checked out through it run in autocommit (read_connection).
    app.extensions["recsys.read_engine"] = engine.execution_options(isolation_level="AUTOCOMMIT")
    app.extensions["recsys.sessionmaker"] = sessionmaker(engine, expire_on_commit=False)


def get_engine(app: Flask | None = None) -> Engine:
    return (app or current_app).extensions["recsys.engine"]


@contextmanager
def session_scope(app: Flask | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    maker = (app or current_app).extensions["recsys.sessionmaker"]
    with maker() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def dispose_after_fork(app: Flask) -> None:
    get_engine(app).dispose(close=False)


@contextmanager
def read_connection(app: Flask | None = None) -> Iterator[Connection]:
    """A pooled connection in autocommit mode for single-statement reads on the hot path.

    A Session would wrap the one SELECT in BEGIN ... COMMIT: two more round trips to the
    database than the read itself (plus the pool's pre-ping), which on the request path cost
    more than the query.
    """
    engine = (app or current_app).extensions["recsys.read_engine"]
    with engine.connect() as conn:
        yield conn


def dialect_insert(s: Session, model):
    """``INSERT`` for ``model`` in the session's dialect (PostgreSQL or SQLite), so callers can
    add ``on_conflict_do_nothing`` / ``returning``, which the generic insert lacks."""
    if s.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(model)
