"""Writing an :class:`~recsys.offline.importers.common.ImportBatch` to the store.

Users and items are upserted by external id; events are inserted with ``ON CONFLICT (idem_key)
DO NOTHING``, so importing the same source again adds no rows. Everything happens in the
caller's transaction (:func:`run_import`: one transaction), so a failure anywhere rolls the
whole import back.

PostgreSQL: COPY into temporary staging tables, then set-based ``INSERT ... SELECT ... ON
CONFLICT``. SQLite: ``executemany`` with the events sorted by idempotency key (the unique index
is then written in order instead of at random: docs/scale.md, "Import at L").

**Bulk load** (``BULK_MIN_EVENTS`` or more events with distinct keys into an *empty* ``events``
table, the first import of a shop): the table's secondary indexes (PostgreSQL: also its unique
and foreign-key constraints) are dropped inside the import's transaction, the rows written
without per-row index maintenance (PostgreSQL: COPY straight into ``events``), and every index
and constraint re-created before the commit (one sort per index, one set-based check per
constraint: a row that breaks one fails the import as a per-row insert would). DDL is
transactional on both stores, so a failure or a kill leaves the empty table with its indexes.
The price: on PostgreSQL the import holds ``events`` exclusively until it commits (readers of
events wait; for an empty store), on SQLite the write lock it always holds.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from operator import methodcaller
from typing import Any

from sqlalchemy import Connection, Engine

from recsys.offline.importers.common import (
    MAX_TITLE_LEN,
    ImportBatch,
    ImportReport,
    ItemRow,
    WriteCounts,
    progress,
)
from recsys.store.models import Event, utcnow

log = logging.getLogger(__name__)

# Bulk imports of at least this many events refresh PostgreSQL's planner statistics.
ANALYZE_AFTER_ROWS = 10_000
# Progress bar steps (rows).
CHUNK = 20_000
# An import of at least this many events into an empty events table drops and re-creates the
# table's indexes (module docstring); below it, rebuilding would cost more than it saves.
BULK_MIN_EVENTS = 100_000
# Staged path (a non-empty events table: re-imports, increments): insert in idem_key order, with
# this much sort memory (SET LOCAL).
PG_STAGED_KEY_ORDER = True
PG_STAGED_SORT_MEM = "256MB"
# PostgreSQL's sort memory for re-creating the indexes of a bulk load (SET LOCAL).
PG_INDEX_BUILD_MEM = "512MB"
# SQLite's page cache during an import (KiB): the unique ``idem_key`` index; 2M rows took 492 s
# with the default 2 MiB, 293 s with 256 MiB in random key order (docs/scale.md).
SQLITE_IMPORT_CACHE_KIB = 262_144


def write_batch(conn: Connection, batch: ImportBatch) -> WriteCounts:
    """Upsert users and items, insert new events; all inside ``conn``'s open transaction.

    Parameters
    ----------
    conn : Connection
        A connection inside an open transaction (PostgreSQL: COPY and set-based upserts;
        other dialects: row-wise statements).
    batch : ImportBatch
        What to write.

    Returns
    -------
    WriteCounts
        Rows written.
    """
    now = utcnow()
    if conn.dialect.name == "postgresql":
        counts = _write_postgresql(conn, batch, now)
    else:
        counts = _write_generic(conn, batch, now)
    counts.events_existing = len(batch.events) - counts.events_new
    return counts


def run_import(engine: Engine, report: ImportReport, batch: ImportBatch) -> ImportReport:
    """Write ``batch`` in one transaction and fill in ``report`` (committed or nothing).

    Parameters
    ----------
    engine : Engine
        The store's engine.
    report : ImportReport
        Filled in: ``written`` and ``seconds``.
    batch : ImportBatch
        What to write.

    Returns
    -------
    ImportReport
        ``report``.
    """
    t0 = time.perf_counter()
    with engine.begin() as conn:
        report.written = write_batch(conn, batch)
    report.seconds += time.perf_counter() - t0
    return report


def _distinct_keys(batch: ImportBatch) -> bool:
    if batch.distinct_keys:
        return True
    keys = {ev[5] for ev in batch.events}
    return None not in keys and len(keys) == len(batch.events)


def _bulk_candidate(batch: ImportBatch) -> bool:
    """Big enough for a bulk load and no two events with one key (the table's emptiness is
    checked by the caller under its lock)."""
    return len(batch.events) >= BULK_MIN_EVENTS and _distinct_keys(batch)


def _json(obj: Any) -> str:
    # sort_keys: the same attributes always give the same text, so a re-import compares equal.
    return json.dumps(obj, sort_keys=True, ensure_ascii=False)


def _split_users(batch: ImportBatch) -> tuple[list[tuple[str, str]], list[str]]:
    full = [(ext, _json(a)) for ext, a in batch.users.items() if a is not None]
    refs = [ext for ext, a in batch.users.items() if a is None]
    return full, refs


def _item_tuple(ext: str, it: ItemRow) -> tuple[Any, ...]:
    return (
        ext,
        it.title[:MAX_TITLE_LEN],
        it.description,
        _json(list(it.categories)),
        it.price,
        bool(it.available),
        _json(it.attributes),
    )


def _split_items(batch: ImportBatch) -> tuple[list[tuple[Any, ...]], list[str]]:
    full = [_item_tuple(ext, it) for ext, it in batch.items.items() if it is not None]
    refs = [ext for ext, it in batch.items.items() if it is None]
    return full, refs


_ITEM_COLS = "external_id, title, description, categories, price, available, attributes"


def _write_postgresql(conn: Connection, batch: ImportBatch, now: datetime) -> WriteCounts:
    """COPY into temporary staging tables, then set-based INSERT ... SELECT ... ON CONFLICT (or
    the bulk load: module docstring)."""
    counts = WriteCounts()
    raw = conn.connection.dbapi_connection  # psycopg 3, inside SQLAlchemy's transaction
    users, user_refs = _split_users(batch)
    items, item_refs = _split_items(batch)
    with raw.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE _imp_users (external_id text, attributes jsonb, ref boolean)"
            " ON COMMIT DROP"
        )
        with cur.copy("COPY _imp_users (external_id, attributes, ref) FROM STDIN") as cp:
            for ext, attrs in users:
                cp.write_row((ext, attrs, False))
            for ext in user_refs:
                cp.write_row((ext, "{}", True))
        cur.execute("SELECT count(*) FROM users")
        before = cur.fetchone()[0]
        cur.execute(
            "INSERT INTO users (external_id, attributes, created_at, updated_at)"
            " SELECT external_id, attributes::json, %(now)s, %(now)s FROM _imp_users WHERE NOT ref"
            " ON CONFLICT (external_id) DO UPDATE"
            " SET attributes = excluded.attributes, updated_at = excluded.updated_at"
            " WHERE users.attributes::jsonb IS DISTINCT FROM excluded.attributes::jsonb",
            {"now": now},
        )
        changed = cur.rowcount
        cur.execute(
            "INSERT INTO users (external_id, attributes, created_at, updated_at)"
            " SELECT external_id, '{}'::json, %(now)s, %(now)s FROM _imp_users WHERE ref"
            " ON CONFLICT (external_id) DO NOTHING",
            {"now": now},
        )
        changed += cur.rowcount
        cur.execute("SELECT count(*) FROM users")
        counts.users_new = cur.fetchone()[0] - before
        counts.users_updated = changed - counts.users_new

        cur.execute(
            "CREATE TEMP TABLE _imp_items (external_id text, title text, description text,"
            " categories jsonb, price float8, available boolean, attributes jsonb, ref boolean)"
            " ON COMMIT DROP"
        )
        with cur.copy(f"COPY _imp_items ({_ITEM_COLS}, ref) FROM STDIN") as cp:
            for row in items:
                cp.write_row((*row, False))
            for ext in item_refs:
                cp.write_row((ext, "", "", "[]", None, True, "{}", True))
        cur.execute("SELECT count(*) FROM items")
        before = cur.fetchone()[0]
        cur.execute(
            f"INSERT INTO items ({_ITEM_COLS}, created_at, updated_at)"
            " SELECT external_id, title, description, categories::json, price, available,"
            " attributes::json, %(now)s, %(now)s FROM _imp_items WHERE NOT ref"
            " ON CONFLICT (external_id) DO UPDATE SET title = excluded.title,"
            " description = excluded.description, categories = excluded.categories,"
            " price = excluded.price, available = excluded.available,"
            " attributes = excluded.attributes, updated_at = excluded.updated_at"
            " WHERE (items.title, items.description, items.categories::jsonb, items.price,"
            "        items.available, items.attributes::jsonb)"
            " IS DISTINCT FROM (excluded.title, excluded.description, excluded.categories::jsonb,"
            "        excluded.price, excluded.available, excluded.attributes::jsonb)",
            {"now": now},
        )
        changed = cur.rowcount
        cur.execute(
            f"INSERT INTO items ({_ITEM_COLS}, created_at, updated_at)"
            " SELECT external_id, '', '', '[]'::json, NULL, true, '{}'::json, %(now)s, %(now)s"
            " FROM _imp_items WHERE ref ON CONFLICT (external_id) DO NOTHING",
            {"now": now},
        )
        changed += cur.rowcount
        cur.execute("SELECT count(*) FROM items")
        counts.items_new = cur.fetchone()[0] - before
        counts.items_updated = changed - counts.items_new

        t0 = time.perf_counter()
        if _bulk_candidate(batch) and _pg_lock_empty_events(cur):
            counts.events_new = _pg_bulk_events(cur, batch)
            how = "bulk load (COPY into events, indexes re-created)"
        else:
            counts.events_new = _pg_staged_events(cur, batch)
            how = "COPY to staging + INSERT ... ON CONFLICT"
        if counts.events_new >= ANALYZE_AFTER_ROWS:
            # Fresh planner statistics now rather than whenever autovacuum gets to it: with the
            # pre-import estimates (an empty items table, say) the history query picked a hash
            # join over the whole catalogue.
            cur.execute("ANALYZE users, items, events")
        log.info("events: %s of %d rows, %.1f s", how, len(batch.events), time.perf_counter() - t0)
    return counts


def _pg_lock_empty_events(cur: Any) -> bool:
    """Lock ``events`` for a bulk load if it is empty and nothing references it (True)."""
    cur.execute("SELECT count(*) FROM pg_constraint WHERE confrelid = 'events'::regclass")
    if cur.fetchone()[0]:
        return False  # another table's foreign key needs the constraints we would drop
    cur.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
    cur.execute("SELECT EXISTS (SELECT 1 FROM events)")
    return not cur.fetchone()[0]


def _pg_bulk_events(cur: Any, batch: ImportBatch) -> int:
    """Drop events' secondary indexes and unique/foreign-key constraints, COPY the events
    straight in (ids resolved here), re-create them all (module docstring)."""
    cur.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = 'events'::regclass AND contype IN ('u', 'f') ORDER BY contype DESC"
    )
    constraints = cur.fetchall()
    cur.execute(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i"
        " JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 'events'::regclass"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid"
        "                 AND k.conrelid = 'events'::regclass)"
    )
    indexes = cur.fetchall()
    for name, _ in constraints:
        cur.execute(f'ALTER TABLE events DROP CONSTRAINT "{name}"')
    for name, _ in indexes:
        cur.execute(f'DROP INDEX "{name}"')
    cur.execute("SELECT s.external_id, u.id FROM _imp_users s JOIN users u USING (external_id)")
    user_ids = dict(cur.fetchall())
    cur.execute("SELECT s.external_id, i.id FROM _imp_items s JOIN items i USING (external_id)")
    item_ids = dict(cur.fetchall())
    t0 = time.perf_counter()
    bar = progress(total=len(batch.events), desc="copy events", unit=" rows")
    with cur.copy("COPY events (user_id, item_id, type, value, ts, idem_key) FROM STDIN") as cp:
        write = cp.write_row
        for n, (u, i, typ, value, ts, key) in enumerate(batch.events, 1):
            write((user_ids[u], item_ids[i], typ, value, ts, key))
            if not n % CHUNK:
                bar.update(CHUNK)
    bar.close()
    t1 = time.perf_counter()
    cur.execute(f"SET LOCAL maintenance_work_mem = '{PG_INDEX_BUILD_MEM}'")
    for _, ddl in indexes:
        cur.execute(ddl)
    for name, ddl in reversed(constraints):  # unique first, then the foreign keys
        cur.execute(f'ALTER TABLE events ADD CONSTRAINT "{name}" {ddl}')
    log.info(
        "events bulk load: COPY %.1f s, %d indexes and %d constraints re-created in %.1f s",
        t1 - t0,
        len(indexes),
        len(constraints),
        time.perf_counter() - t1,
    )
    return len(batch.events)


def _pg_staged_events(cur: Any, batch: ImportBatch) -> int:
    """COPY the events to a staging table, then one INSERT ... SELECT ... ON CONFLICT."""
    cur.execute(
        "CREATE TEMP TABLE _imp_events (user_ext text, item_ext text, type text,"
        " value float8, ts timestamp, idem_key text) ON COMMIT DROP"
    )
    t0 = time.perf_counter()
    bar = progress(total=len(batch.events), desc="copy events", unit=" rows")
    with cur.copy(
        "COPY _imp_events (user_ext, item_ext, type, value, ts, idem_key) FROM STDIN"
    ) as cp:
        write = cp.write_row
        for n, ev in enumerate(batch.events, 1):
            write(ev)
            if not n % CHUNK:
                bar.update(CHUNK)
    bar.close()
    # Without statistics the planner guesses a tiny temp table and picks nested loops.
    cur.execute("ANALYZE _imp_events")
    t1 = time.perf_counter()
    # In key order, the unique index is probed (and written) page after page: at L, with the
    # index far larger than shared_buffers, random probes waited on reads (docs/scale.md).
    order = " ORDER BY s.idem_key" if PG_STAGED_KEY_ORDER else ""
    if PG_STAGED_KEY_ORDER:
        cur.execute(f"SET LOCAL work_mem = '{PG_STAGED_SORT_MEM}'")
    cur.execute(
        "INSERT INTO events (user_id, item_id, type, value, ts, idem_key)"
        " SELECT u.id, i.id, s.type, s.value, s.ts, s.idem_key FROM _imp_events s"
        " JOIN users u ON u.external_id = s.user_ext"
        f" JOIN items i ON i.external_id = s.item_ext{order}"
        " ON CONFLICT (idem_key) DO NOTHING"
    )
    log.info(
        "events: COPY of %d rows %.1f s, INSERT ... SELECT %.1f s",
        len(batch.events),
        t1 - t0,
        time.perf_counter() - t1,
    )
    return cur.rowcount


def _write_generic(conn: Connection, batch: ImportBatch, now: datetime) -> WriteCounts:
    """SQLite (and other dialects with ON CONFLICT): executemany in the open transaction; SQLite
    with a ``SQLITE_IMPORT_CACHE_KIB`` page cache (the connection's own restored after)."""
    if conn.dialect.name != "sqlite":
        return _write_rows(conn, batch, now)
    before = conn.exec_driver_sql("PRAGMA cache_size").scalar_one()
    conn.exec_driver_sql(f"PRAGMA cache_size = -{SQLITE_IMPORT_CACHE_KIB}")
    try:
        return _write_rows(conn, batch, now)
    finally:
        conn.exec_driver_sql(f"PRAGMA cache_size = {int(before)}")


def _write_rows(conn: Connection, batch: ImportBatch, now: datetime) -> WriteCounts:
    """``_write_generic``'s statements."""
    counts = WriteCounts()
    dialect = conn.dialect
    ts_bind = Event.__table__.c.ts.type.dialect_impl(dialect).bind_processor(dialect)
    now_b = ts_bind(now) if ts_bind else now
    users, user_refs = _split_users(batch)
    items, item_refs = _split_items(batch)

    def count(table: str) -> int:
        return conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()

    def many(sql: str, rows: list[tuple[Any, ...]]) -> int:
        return conn.exec_driver_sql(sql, rows).rowcount if rows else 0

    before = count("users")
    changed = many(
        "INSERT INTO users (external_id, attributes, created_at, updated_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (external_id) DO UPDATE"
        " SET attributes = excluded.attributes, updated_at = excluded.updated_at"
        " WHERE users.attributes IS NOT excluded.attributes",
        [(ext, attrs, now_b, now_b) for ext, attrs in users],
    )
    changed += many(
        "INSERT INTO users (external_id, attributes, created_at, updated_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (external_id) DO NOTHING",
        [(ext, "{}", now_b, now_b) for ext in user_refs],
    )
    counts.users_new = count("users") - before
    counts.users_updated = changed - counts.users_new

    before = count("items")
    changed = many(
        f"INSERT INTO items ({_ITEM_COLS}, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (external_id) DO UPDATE SET title = excluded.title,"
        " description = excluded.description, categories = excluded.categories,"
        " price = excluded.price, available = excluded.available,"
        " attributes = excluded.attributes, updated_at = excluded.updated_at"
        " WHERE items.title IS NOT excluded.title OR items.description IS NOT excluded.description"
        " OR items.categories IS NOT excluded.categories OR items.price IS NOT excluded.price"
        " OR items.available IS NOT excluded.available"
        " OR items.attributes IS NOT excluded.attributes",
        [(*row, now_b, now_b) for row in items],
    )
    changed += many(
        f"INSERT INTO items ({_ITEM_COLS}, created_at, updated_at)"
        " VALUES (?, '', '', '[]', NULL, 1, '{}', ?, ?) ON CONFLICT (external_id) DO NOTHING",
        [(ext, now_b, now_b) for ext in item_refs],
    )
    counts.items_new = count("items") - before
    counts.items_updated = changed - counts.items_new

    bulk = (
        conn.dialect.name == "sqlite"
        and _bulk_candidate(batch)
        and conn.exec_driver_sql("SELECT 1 FROM events LIMIT 1").first() is None
    )
    indexes: list[tuple[str, str]] = []
    if bulk:  # the unique idem_key index cannot be dropped (a table constraint): sorted below
        indexes = conn.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index'"
            " AND tbl_name = 'events' AND sql IS NOT NULL"
        ).all()
        for name, _ in indexes:
            conn.exec_driver_sql(f'DROP INDEX "{name}"')
    counts.events_new = _insert_sorted_events(conn, batch, ts_bind, bulk)
    t0, c0 = time.perf_counter(), time.process_time()
    for _, ddl in indexes:
        conn.exec_driver_sql(ddl)
    if indexes:
        log.info(
            "events bulk load: %d indexes re-created in %.1f s (CPU %.1f s)",
            len(indexes),
            time.perf_counter() - t0,
            time.process_time() - c0,
        )
    return counts


def _insert_sorted_events(conn: Connection, batch: ImportBatch, ts_bind: Any, bulk: bool) -> int:
    """executemany in chunks, in idempotency-key order: the unique index is then written (or,
    on a re-import, probed) page after page instead of at random."""
    c0 = time.process_time()
    user_ids = dict(conn.exec_driver_sql("SELECT external_id, id FROM users").all())
    item_ids = dict(conn.exec_driver_sql("SELECT external_id, id FROM items").all())
    # bulk: an empty table and distinct keys, so no conflict is possible
    sql = (
        "INSERT INTO events (user_id, item_id, type, value, ts, idem_key) VALUES (?, ?, ?, ?, ?, ?)"
    )
    sql += "" if bulk else " ON CONFLICT (idem_key) DO NOTHING"
    events = sorted(batch.events, key=_by_key)
    c1 = time.process_time()
    fmt = _sqlite_ts_format(ts_bind)
    bar = progress(total=len(events), desc="insert events", unit=" rows")
    new, c_rows = 0, 0.0
    for start in range(0, len(events), CHUNK):
        c = time.process_time()
        rows = [
            (user_ids[u], item_ids[i], typ, value, fmt(ts), key)
            for u, i, typ, value, ts, key in events[start : start + CHUNK]
        ]
        c_rows += time.process_time() - c
        new += conn.exec_driver_sql(sql, rows).rowcount
        bar.update(len(rows))
    bar.close()
    log.info(
        "events: %d rows, CPU: ids and sort %.1f s, rows %.1f s, executemany %.1f s",
        len(events),
        c1 - c0,
        c_rows,
        time.process_time() - c1 - c_rows,
    )
    return new


def _sqlite_ts_format(ts_bind: Any) -> Any:
    """The dialect's DateTime bind processor, or ``datetime.isoformat(" ")`` with microseconds
    when that gives the same text (SQLAlchemy's SQLite format; a C call instead of Python's
    %-formatting, 10M times at L)."""
    sample = datetime(2024, 5, 1, 12, 0, 7, 5)
    if ts_bind is None:
        return lambda ts: ts
    if ts_bind(sample) == sample.isoformat(" ", "microseconds"):
        return methodcaller("isoformat", " ", "microseconds")
    return ts_bind


def _by_key(ev: tuple[Any, ...]) -> str:
    return ev[5] or ""
