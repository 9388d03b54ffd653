"""Engine and session helpers.

Two engines per process, kept in ``app.extensions``: the main one (sessions, writes, admin;
pre-pinged pool) and the request path's history read (``get_hot_engine``: autocommit, no
pre-ping). After a fork (gunicorn ``post_fork``) both pools are re-created with
``dispose(close=False)`` so children never share the parent's sockets.

Both are bounded (``recsys.store.guard``): connect, statement and lock timeouts, a pool
checkout timeout, a watchdog that cuts a socket the database leaves silent, and one circuit
breaker per process shared by both engines.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask, current_app
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from recsys.config import get_config
from recsys.store.guard import Breaker, DbGuard, SocketWatchdog


def make_engine(url: str, pre_ping: bool = True, guard: DbGuard | None = None, **kw) -> Engine:
    """A SQLAlchemy engine for ``url``.

    SQLite: WAL journal, foreign keys on, the file's folder created. PostgreSQL without a
    guard: a plain pre-pinged pool; with a guard: its timeouts, watchdog and breaker.

    Parameters
    ----------
    url : str
        The database URL (``postgresql+psycopg://...`` or ``sqlite:///path``).
    pre_ping : bool, optional
        Check a pooled connection before handing it out (ignored by SQLite).
    guard : DbGuard or None, optional
        The bounds to apply (``recsys.store.guard``); None: unguarded.
    **kw
        Passed on to ``sqlalchemy.create_engine``.

    Returns
    -------
    Engine
        The new engine.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kw)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    if guard is None:
        return create_engine(url, pool_pre_ping=pre_ping, pool_size=5, max_overflow=10, **kw)
    # Guarded (recsys.store.guard): its own pre-ping, which the watchdog can bound.
    engine = create_engine(
        url,
        pool_pre_ping=False,
        pool_size=5,
        max_overflow=10,
        pool_timeout=guard.pool_timeout_s,
        connect_args=guard.postgres_connect_args() if url.startswith("postgresql") else {},
        **kw,
    )
    guard.apply(engine, pre_ping)
    return engine


def init_db(app: Flask) -> None:
    """The app's SQL engines and sessions, bounded by its ``DB_*`` settings.

    Parameters
    ----------
    app : Flask
        The app (its settings: ``recsys.config.get_config``).

    Returns
    -------
    None
    """
    config = get_config(app)
    url = config.database_url
    app.extensions["recsys.db_guard"] = guard = DbGuard.from_config(config)
    engine = make_engine(url, guard=guard)
    app.extensions["recsys.engine"] = engine
    # The request path's history read (recsys.serving.history) has a pool of its own: autocommit
    # from the start (a Session would wrap the one SELECT in BEGIN ... COMMIT, two more round
    # trips), no pre-ping (one more round trip on every checkout, for a read that is retried
    # on a fresh connection when the pooled one turns out dead), nothing to reset on return.
    app.extensions["recsys.hot_engine"] = make_engine(
        url,
        pre_ping=False,
        guard=guard,
        isolation_level="AUTOCOMMIT",
        pool_reset_on_return=None,
    )
    app.extensions["recsys.sessionmaker"] = sessionmaker(engine, expire_on_commit=False)


def get_engine(app: Flask | None = None) -> Engine:
    """The app's main engine (sessions, writes, admin).

    Parameters
    ----------
    app : Flask or None, optional
        The app; None: ``current_app``.

    Returns
    -------
    Engine
        The engine ``init_db`` made.
    """
    return (app or current_app).extensions["recsys.engine"]


@contextmanager
def session_scope(app: Flask | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error.

    Parameters
    ----------
    app : Flask or None, optional
        The app; None: ``current_app``.

    Returns
    -------
    Iterator[Session]
        A context manager yielding the session; an exception is re-raised after the rollback.
    """
    maker = (app or current_app).extensions["recsys.sessionmaker"]
    with maker() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def get_hot_engine(app: Flask | None = None) -> Engine:
    """The engine of the request path's history read (see ``init_db``).

    Parameters
    ----------
    app : Flask or None, optional
        The app; None: ``current_app``.

    Returns
    -------
    Engine
        The autocommit engine without pre-ping.
    """
    return (app or current_app).extensions["recsys.hot_engine"]


def dispose_engines(app: Flask, close: bool = True) -> None:
    """Drop both pools' connections.

    Parameters
    ----------
    app : Flask
        The app whose engines are disposed.
    close : bool, optional
        Close the connections; False: forget them without closing (a forked child must not
        touch its parent's sockets).

    Returns
    -------
    None
    """
    get_engine(app).dispose(close=close)
    get_hot_engine(app).dispose(close=close)


def dispose_after_fork(app: Flask) -> None:
    """In a forked worker: forget the parent's connections (without closing) and reset the breaker.

    Parameters
    ----------
    app : Flask
        The app whose engines and breaker are reset.

    Returns
    -------
    None
    """
    dispose_engines(app, close=False)
    get_breaker(app).reset()


def get_guard(app: Flask | None = None) -> DbGuard:
    """This process's bounds on the SQL store (``recsys.store.guard``).

    Parameters
    ----------
    app : Flask or None, optional
        The app; None: ``current_app``.

    Returns
    -------
    DbGuard
        The guard ``init_db`` made.
    """
    return (app or current_app).extensions["recsys.db_guard"]


def get_breaker(app: Flask | None = None) -> Breaker:
    """This process's SQL circuit breaker (shared by both engines).

    Parameters
    ----------
    app : Flask or None, optional
        The app; None: ``current_app``.

    Returns
    -------
    Breaker
        The guard's breaker.
    """
    return get_guard(app).breaker


def get_watchdog(app: Flask | None = None) -> SocketWatchdog:
    """This process's SQL socket watchdog.

    Parameters
    ----------
    app : Flask or None, optional
        The app; None: ``current_app``.

    Returns
    -------
    SocketWatchdog
        The guard's watchdog.
    """
    return get_guard(app).watchdog


def dialect_insert(s: Session, model):
    """``INSERT`` for ``model`` in the session's dialect (PostgreSQL or SQLite), so callers can
    add ``on_conflict_do_nothing`` / ``returning``, which the generic insert lacks.

    Parameters
    ----------
    s : Session
        The session whose bind's dialect is used.
    model : type
        The mapped class (or table) inserted into.

    Returns
    -------
    Insert
        The dialect's insert statement, without values.
    """
    if s.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(model)
