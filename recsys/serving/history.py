"""History lookup: a user's newest events from the SQL store (the first stage of every request).

One statement: the user's row id by ``external_id`` (unique index), then the newest
``HISTORY_MAX_EVENTS`` events by a backward scan of ``ix_events_user_ts_id`` (user_id, ts, id),
which reads them already in ``ts DESC, id DESC`` order and stops at the limit (migration 0003
has the figures). So a heavy user costs the limit, not their whole history.

The statement reads only ``events``: item row ids, not their external ids, and times as Unix
seconds computed by the database. The item ids are turned into external ids by ``ItemIds``, a
per-process map filled from ``items`` on first sight of an id (ids are never reused: items are
never deleted, only marked unavailable). Joining ``items`` for every request cost PostgreSQL
more than the rest of the statement; converting each row's ``datetime`` in Python cost the
worker more than reading it.

It runs on the DB-API connection of its own pool (``recsys.store.db.get_hot_engine``: autocommit,
no pre-ping) rather than through a SQLAlchemy ``Connection``, whose per-execute machinery cost
about as much CPU as the read itself. A pooled connection found dead (the database restarted)
is dropped with the rest of that pool and the read is retried once on a new connection; any
other failure, or a second one, is raised as SQLAlchemy's exception for it (``OperationalError``
and the like: ``recsys.errors.DB_UNAVAILABLE``), as a ``Connection`` would raise it.

The read is bounded (``recsys.store.guard``): by ``timeout_s`` (the request's deadline) or the
statement timeout, whichever is shorter. A database that does not answer within it has the
socket cut and the read raises ``DatabaseUnavailable`` (no retry: it would wait again) and
opens the circuit breaker; while the breaker is open no read is attempted.
"""

from __future__ import annotations

import threading

from sqlalchemy import BigInteger, Engine, Integer, bindparam, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from recsys.config import Settings
from recsys.core.types import UserHistory
from recsys.errors import DatabaseUnavailable
from recsys.store.guard import DbGuard, socket_fd
from recsys.store.models import Event, User

DEFAULT_MAX_EVENTS = Settings.default("HISTORY_MAX_EVENTS")
# Entries of the per-process item id -> external id map; past it the map starts over.
ITEM_IDS_MAX = 2_000_000


class unix_seconds(FunctionElement):
    """A naive UTC ``DateTime`` column (as stored) as whole Unix seconds, truncated."""

    type = BigInteger()
    inherit_cache = True


@compiles(unix_seconds)
def _unix_seconds_default(element, compiler, **kw):  # SQLite, the embedded default
    return f"CAST(STRFTIME('%s', {compiler.process(element.clauses, **kw)}) AS INTEGER)"


@compiles(unix_seconds, "postgresql")
def _unix_seconds_pg(element, compiler, **kw):
    return f"CAST(TRUNC(EXTRACT(EPOCH FROM {compiler.process(element.clauses, **kw)})) AS BIGINT)"


class unix_micros(FunctionElement):
    """A naive UTC ``DateTime`` column as whole Unix microseconds (SQLite: milliseconds x 1000)."""

    type = BigInteger()
    inherit_cache = True


@compiles(unix_micros)
def _unix_micros_default(element, compiler, **kw):
    col = compiler.process(element.clauses, **kw)
    return (
        f"(CAST(STRFTIME('%s', {col}) AS INTEGER) * 1000000"
        f" + CAST(SUBSTR(STRFTIME('%f', {col}), 4) AS INTEGER) * 1000)"
    )


@compiles(unix_micros, "postgresql")
def _unix_micros_pg(element, compiler, **kw):
    return (
        f"CAST(EXTRACT(EPOCH FROM {compiler.process(element.clauses, **kw)}) * 1000000 AS BIGINT)"
    )


def _history_stmt():
    uid = select(User.id).where(User.external_id == bindparam("user_id")).scalar_subquery()
    return (
        select(
            Event.item_id, Event.type, Event.value, unix_seconds(Event.ts), unix_micros(Event.ts)
        )
        .where(Event.user_id == uid)
        .order_by(Event.ts.desc(), Event.id.desc())
        .limit(bindparam("limit", type_=Integer))
    )


# Built once: constructing this statement costs more Python time than running it
# (docs/design-notes.md).
HISTORY_STMT = _history_stmt()


class _Compiled:
    """A statement as DB-API SQL text for one dialect, and how to pass its parameters."""

    def __init__(self, stmt, engine: Engine):
        compiled = stmt.compile(dialect=engine.dialect)
        self.sql = str(compiled)
        self.positional = compiled.positional
        self.names = list(compiled.positiontup or ()) if compiled.positional else []
        # Parameters the dialect added with their own values (SQLite's LIMIT ? OFFSET ?).
        self.defaults = {k: v for k, v in compiled.params.items() if v is not None}

    def params(self, values: dict):
        if self.defaults:
            values = {**self.defaults, **values}
        return tuple(values[n] for n in self.names) if self.positional else values


class ItemIds:
    """Item row id -> external id, per process, filled from ``items`` as ids are first seen."""

    def __init__(self, limit: int = ITEM_IDS_MAX):
        self.limit = limit
        self._ext: dict[int, str] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._ext)

    def external(self, ids: list[int], cursor) -> list[str]:
        """The external ids of ``ids`` (row ids from ``events``), reading unknown ones with
        ``cursor`` (one statement for all of them).

        Parameters
        ----------
        ids : list of int
            Item row ids.
        cursor : DB-API cursor
            Used only when some id is not known yet.

        Returns
        -------
        list of str
            The external ids, in the order of ``ids``.
        """
        ext = self._ext
        try:
            return [ext[i] for i in ids]
        except KeyError:
            pass
        missing = sorted({int(i) for i in ids if i not in ext})
        # Integers straight from the database, re-checked as int: safe to inline, and one
        # statement text per count instead of an expanding parameter.
        cursor.execute(
            f"SELECT id, external_id FROM items WHERE id IN ({','.join(map(str, missing))})"
        )
        found = {int(i): str(e) for i, e in cursor.fetchall()}
        with self._lock:
            if len(ext) + len(found) > self.limit:
                ext.clear()
            ext.update(found)
        # An event's item always exists (foreign key, items never deleted).
        return [ext.get(i) or found[i] for i in ids]


class HistoryReader:
    """Reads histories over ``engine``'s pool (the hot engine; see the module docstring)."""

    def __init__(
        self, engine: Engine, item_ids: ItemIds | None = None, guard: DbGuard | None = None
    ):
        self.engine = engine
        self.stmt = _Compiled(HISTORY_STMT, engine)
        self.item_ids = item_ids or ItemIds()
        self.guard = guard

    def load(
        self, user_id: str, limit: int = DEFAULT_MAX_EVENTS, timeout_s: float | None = None
    ) -> UserHistory:
        """The user's last ``limit`` events, newest first. Unknown users get an empty history.

        A dead pooled connection is retried once on a fresh pool.

        Parameters
        ----------
        user_id : str
            The external user id.
        limit : int, optional
            Events at most.
        timeout_s : float or None, optional
            Give up after this many seconds (see the module); capped by the guard's statement
            timeout; None: that timeout only.

        Returns
        -------
        UserHistory
            The events, newest first.

        Raises
        ------
        DatabaseUnavailable
            The read timed out or the store's circuit is open.
        """
        user_id = str(user_id)
        params = self.stmt.params({"user_id": user_id, "limit": int(limit)})
        if self.guard is not None and self.guard.statement_timeout_s > 0:
            limit_s = self.guard.statement_timeout_s
            timeout_s = limit_s if timeout_s is None else min(timeout_s, limit_s)
        try:
            return self._load(user_id, params, timeout_s)
        except sa_exc.DBAPIError as e:
            if not e.connection_invalidated:
                raise
        # The pooled connection was dead (the database restarted or cut it): every other idle
        # one of this pool is from before as well. Start the pool over and try once more.
        self.engine.dispose()
        return self._load(user_id, params, timeout_s)

    def _load(self, user_id: str, params, timeout_s: float | None) -> UserHistory:
        engine = self.engine
        dbapi = engine.dialect.loaded_dbapi
        try:
            conn = engine.raw_connection()
        except dbapi.Error as e:  # cannot connect: raised as a Connection would raise it
            raise sa_exc.DBAPIError.instance(None, None, e, dbapi.Error) from e
        guard = self.guard
        watch = None
        if guard is not None and timeout_s is not None:
            fd = socket_fd(conn.dbapi_connection)
            if fd is not None:
                watch = guard.watchdog.watch(fd, timeout_s)
        try:
            cursor = conn.cursor()
            try:
                cursor.execute(self.stmt.sql, params)
                rows = cursor.fetchall()
                items = self.item_ids.external([r[0] for r in rows], cursor) if rows else []
            finally:
                cursor.close()
        except dbapi.Error as e:
            if watch is not None and guard.watchdog.release(watch):
                watch = None
                conn.invalidate(e)
                guard.breaker.failure("history read timed out")
                raise DatabaseUnavailable(
                    f"no answer within {timeout_s * 1000:.0f} ms",
                    retry_after=guard.breaker.retry_after(),
                ) from e
            dead = engine.dialect.is_disconnect(e, conn.dbapi_connection, None)
            if dead:
                conn.invalidate(e)
            raise sa_exc.DBAPIError.instance(
                self.stmt.sql, params, e, dbapi.Error, connection_invalidated=dead
            ) from e
        finally:
            if watch is not None and guard.watchdog.release(watch):
                conn.invalidate()  # answered as it was cut: never reuse the socket
            conn.close()  # back to the pool (or, invalidated, discarded)
        if guard is not None:
            guard.breaker.success()
        return _history(user_id, rows, items)


# Many users' histories in one statement (PostgreSQL): each user's newest events by the same
# backward index scan as HISTORY_STMT, in the order the ids were given.
MANY_SQL = """
SELECT q.ext, e.item_id, e.type, e.value, CAST(TRUNC(EXTRACT(EPOCH FROM e.ts)) AS BIGINT)
FROM unnest(%(ids)s::text[]) WITH ORDINALITY AS q(ext, ord)
JOIN users u ON u.external_id = q.ext
CROSS JOIN LATERAL (
    SELECT item_id, type, value, ts, id FROM events
    WHERE events.user_id = u.id ORDER BY ts DESC, id DESC LIMIT %(limit)s
) e
ORDER BY q.ord, e.ts DESC, e.id DESC
"""


def load_many(
    reader: HistoryReader, user_ids: list[str], limit: int = DEFAULT_MAX_EVENTS
) -> dict[str, UserHistory]:
    """Several users' last ``limit`` events in one round trip (refresh-ahead's batch): one
    statement on PostgreSQL, ``HistoryReader.load`` for each user elsewhere. Unknown users get
    an empty history. Not bounded by a request deadline (background work): the statement
    timeout applies.

    Parameters
    ----------
    reader : HistoryReader
        The app's reader (its engine and item id map).
    user_ids : list of str
        External user ids.
    limit : int, optional
        Events at most per user.

    Returns
    -------
    dict of str to UserHistory
        Each user's events, newest first.

    Raises
    ------
    sqlalchemy.exc.DBAPIError
        The read failed (``recsys.errors.DB_UNAVAILABLE`` covers it).
    """
    engine = reader.engine
    if engine.dialect.name != "postgresql" or len(user_ids) < 2:
        return {u: reader.load(u, limit) for u in user_ids}
    dbapi = engine.dialect.loaded_dbapi
    params = {"ids": [str(u) for u in user_ids], "limit": int(limit)}
    try:
        conn = engine.raw_connection()
        try:
            cursor = conn.cursor()
            try:
                cursor.execute(MANY_SQL, params)
                rows = cursor.fetchall()
                items = reader.item_ids.external([r[1] for r in rows], cursor) if rows else []
            finally:
                cursor.close()
        finally:
            conn.close()
    except dbapi.Error as e:
        raise sa_exc.DBAPIError.instance(MANY_SQL, params, e, dbapi.Error) from e
    by_user: dict[str, tuple[list, list]] = {u: ([], []) for u in params["ids"]}
    for row, item in zip(rows, items, strict=True):
        got = by_user[row[0]]
        got[0].append(row[1:])
        got[1].append(item)
    return {u: _history(u, r, i) for u, (r, i) in by_user.items()}


def _history(user_id: str, rows: list, items: list[str]) -> UserHistory:
    n = len(rows)
    if not n:
        return UserHistory(user_id)
    cols = list(zip(*rows, strict=True))
    types, values, stamps = cols[1], cols[2], cols[3]
    # Loops in C when the driver's types are already the wanted ones (PostgreSQL: always).
    if set(map(type, values)) == {float}:
        values = list(values)
    else:
        values = [1.0 if v is None else float(v) for v in values]
    if set(map(type, stamps)) == {int}:
        stamps = list(stamps)
    else:
        stamps = [0 if t is None else int(t) for t in stamps]
    # The newest event's time in microseconds (HISTORY_STMT's fifth column; newest first).
    newest = rows[0][4] if len(rows[0]) > 4 else None
    return UserHistory(user_id, items, list(types), values, stamps, newest_us=newest)


def get_history_reader(app) -> HistoryReader:
    """The app's history reader, made on first use over the hot engine and the SQL guard.

    Parameters
    ----------
    app : Flask
        The app (``recsys.store.db.init_db`` ran on it).

    Returns
    -------
    HistoryReader
        The reader kept in ``app.extensions``.
    """
    reader = app.extensions.get("recsys.history_reader")
    if reader is None:
        from recsys.store.db import get_guard, get_hot_engine

        reader = app.extensions.setdefault(
            "recsys.history_reader", HistoryReader(get_hot_engine(app), guard=get_guard(app))
        )
    return reader


def load_history(
    app, user_id: str, limit: int = DEFAULT_MAX_EVENTS, timeout_s: float | None = None
) -> UserHistory:
    """The user's last ``limit`` events, newest first (``HistoryReader.load`` of ``app``).

    Parameters
    ----------
    app : Flask
        The app whose history reader is used.
    user_id : str
        The external user id.
    limit : int, optional
        Events at most.
    timeout_s : float or None, optional
        Give up after this many seconds; None: the guard's statement timeout only.

    Returns
    -------
    UserHistory
        The events, newest first (empty for an unknown user).
    """
    return get_history_reader(app).load(user_id, limit, timeout_s)
