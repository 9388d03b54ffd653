"""What every importer shares: the batch shape, line accounting, parsing helpers, bulk writes.

An importer turns a source into an :class:`ImportBatch` while recording, per input file, how
many lines it read and why each skipped line was skipped (:class:`LineCount`). The batch is
then written by :func:`write_batch` inside the caller's transaction, so a failure anywhere
rolls the whole import back: a batch is never half-imported.

Idempotency: users and items are upserted by external id; every event carries an idempotency
key (``Event.idem_key``) and is inserted with ``ON CONFLICT (idem_key) DO NOTHING``, so
importing the same source again adds no rows.

Over 500 lines because of its numpy-style docstrings (the code itself is under 500): the
batch, the report and the helpers are one contract every importer reads, kept in one place.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from sqlalchemy import Connection, Engine
from tqdm import tqdm

from recsys.store.models import EVENT_TYPES, Event, utcnow

log = logging.getLogger(__name__)

# Limits of the SQL schema (recsys/store/models.py); longer ids are rejected per row instead
# of failing the whole transaction on PostgreSQL (and being silently kept on SQLite).
MAX_ID_LEN = 128
MAX_TITLE_LEN = 512
SAMPLES_PER_REASON = 3
# Bulk imports of at least this many events refresh PostgreSQL's planner statistics.
ANALYZE_AFTER_ROWS = 10_000
CHUNK = 20_000


class SourceError(Exception):
    """The source as a whole cannot be imported (missing file, unreadable gzip, wrong layout)."""


# ---------------------------------------------------------------------------------------------
# Batch and report


@dataclass
class ItemRow:
    """The catalogue data of one imported item (columns of ``Item``).

    Attributes
    ----------
    title : str
        Display title (cut to ``MAX_TITLE_LEN`` characters when written).
    description : str
        Free text.
    categories : list[str]
        Category names.
    price : float or None
        Unit price; None when unknown.
    available : bool
        Whether it may be recommended.
    attributes : dict[str, Any]
        Free-form JSON attributes.
    """

    title: str = ""
    description: str = ""
    categories: list[str] = field(default_factory=list)
    price: float | None = None
    available: bool = True
    attributes: dict[str, Any] = field(default_factory=dict)


# (user external id, item external id, type, value, ts, idempotency key)
EventRow = tuple[str, str, str, float, datetime, str]


@dataclass
class ImportBatch:
    """Everything one import writes, keyed by external ids.

    ``users``/``items`` map an external id to its data, or to ``None`` for ids that are only
    referenced by events: those are created if missing and never overwritten.
    """

    users: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    items: dict[str, ItemRow | None] = field(default_factory=dict)
    events: list[EventRow] = field(default_factory=list)


@dataclass
class LineCount:
    """Accounting for one input file: ``read == accepted + sum(skipped.values())``."""

    name: str
    read: int = 0
    skipped: Counter = field(default_factory=Counter)
    samples: list[tuple[int, str]] = field(default_factory=list)

    def skip(self, line: int, reason: str, detail: str = "") -> None:
        """Count one skipped line (and keep it as a sample while its reason has few).

        Parameters
        ----------
        line : int
            1-based line number in the file.
        reason : str
            Why it was skipped (the counter's key).
        detail : str
            What exactly, for the sample; "" for none.
        """
        self.skipped[reason] += 1
        if self.skipped[reason] <= SAMPLES_PER_REASON:
            self.samples.append((line, f"{reason}: {detail}" if detail else reason))

    @property
    def accepted(self) -> int:
        return self.read - sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        """Returns
        -------
        dict[str, Any]
            ``read``, ``accepted``, ``skipped`` (reason -> count) and ``samples``
            (``[{"line", "reason"}]``).
        """
        return {
            "read": self.read,
            "accepted": self.accepted,
            "skipped": dict(self.skipped),
            "samples": [{"line": n, "reason": r} for n, r in self.samples],
        }


@dataclass
class WriteCounts:
    """Rows one import wrote: new and updated users and items, new events and events already
    stored (same idempotency key, not re-added).
    """

    users_new: int = 0
    users_updated: int = 0
    items_new: int = 0
    items_updated: int = 0
    events_new: int = 0
    events_existing: int = 0


@dataclass
class ImportReport:
    """What one import read, skipped and wrote.

    Attributes
    ----------
    source : str
        The source's description (path or folder).
    files : list[LineCount]
        Per input file accounting, in reading order.
    written : WriteCounts
        Rows written (filled in by ``run_import``).
    notes : list[str]
        Remarks for the operator.
    seconds : float
        Wall time of the import, in seconds.
    """

    source: str
    files: list[LineCount] = field(default_factory=list)
    written: WriteCounts = field(default_factory=WriteCounts)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def file(self, name: str) -> LineCount:
        """Start the accounting of one more input file.

        Parameters
        ----------
        name : str
            The file's name in the report.

        Returns
        -------
        LineCount
            Its (empty) line count, appended to ``files``.
        """
        lc = LineCount(name)
        self.files.append(lc)
        return lc

    def to_dict(self) -> dict[str, Any]:
        """Returns
        -------
        dict[str, Any]
            ``source``, ``files`` (name -> ``LineCount.to_dict()``), ``written``, ``notes`` and
            ``seconds`` (rounded to milliseconds).
        """
        return {
            "source": self.source,
            "files": {f.name: f.to_dict() for f in self.files},
            "written": self.written.__dict__.copy(),
            "notes": list(self.notes),
            "seconds": round(self.seconds, 3),
        }

    def summary(self) -> list[str]:
        """Human-readable lines for the CLI.

        Returns
        -------
        list[str]
            One line per file, skip reason, sample and written count, then the notes and time.
        """
        out = [f"import from {self.source}"]
        for f in self.files:
            skipped = sum(f.skipped.values())
            out.append(
                f"  {f.name}: {f.read:,} rows read = {f.accepted:,} accepted + {skipped:,} skipped"
            )
            for reason, n in sorted(f.skipped.items(), key=lambda kv: -kv[1]):
                out.append(f"      {n:>10,}  {reason}")
            for line, reason in f.samples[:10]:
                out.append(f"      e.g. line {line}: {reason}")
        w = self.written
        out.append(
            f"  events: {w.events_new:,} new, {w.events_existing:,} already present (not re-added)"
        )
        out.append(f"  users: {w.users_new:,} new, {w.users_updated:,} updated")
        out.append(f"  items: {w.items_new:,} new, {w.items_updated:,} updated")
        out.extend(f"  note: {n}" for n in self.notes)
        out.append(f"  took {self.seconds:.1f} s")
        return out


# ---------------------------------------------------------------------------------------------
# Reading and parsing helpers


@contextmanager
def open_text(path: str, encoding: str = "utf-8") -> Iterator[IO[str]]:
    """Open a plain or gzip (by magic bytes) text file; problems become :class:`SourceError`.

    Parameters
    ----------
    path : str
        The file.
    encoding : str
        Text encoding.

    Returns
    -------
    Iterator[IO[str]]
        (A context manager yielding) the text stream, universal newlines off (for ``csv``).

    Raises
    ------
    SourceError
        The file is missing, cannot be opened, is a broken gzip, or is not ``encoding`` text.
    """
    if not os.path.isfile(path):
        raise SourceError(f"no such file: {path}")
    try:
        with open(path, "rb") as probe:
            gz = probe.read(2) == b"\x1f\x8b"
        raw: IO[bytes] = gzip.open(path, "rb") if gz else open(path, "rb")  # noqa: SIM115
    except OSError as e:
        raise SourceError(f"cannot open {path}: {e}") from e
    text = io.TextIOWrapper(raw, encoding=encoding, newline="")
    try:
        yield text
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise SourceError(f"cannot read {path}: {e}") from e
    except UnicodeDecodeError as e:
        raise SourceError(f"{path} is not valid {encoding} text: {e}") from e
    finally:
        text.close()


_NUMBER = re.compile(r"^[+-]?\d+(\.\d*)?$")


def parse_timestamp(s: str) -> datetime:
    """ISO-8601 (``2011-12-09T12:50:00Z``, ``2011-12-09 12:50``) or unix seconds -> naive UTC.

    Parameters
    ----------
    s : str
        The text; an aware time is converted to UTC, a naive one is taken as UTC.

    Returns
    -------
    datetime
        Naive UTC.

    Raises
    ------
    ValueError
        Empty, out of range, or not ISO-8601.
    """
    s = s.strip()
    if not s:
        raise ValueError("empty timestamp")
    if _NUMBER.match(s):
        try:
            return datetime.fromtimestamp(float(s), UTC).replace(tzinfo=None)
        except (OverflowError, OSError, ValueError) as e:
            raise ValueError(f"unix time out of range: {s!r}") from e
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return dt


def parse_float(s: str) -> float:
    """A finite float from text.

    Parameters
    ----------
    s : str
        The text.

    Returns
    -------
    float
        The value.

    Raises
    ------
    ValueError
        Not a number, or not finite (nan, inf).
    """
    v = float(s)
    if not math.isfinite(v):
        raise ValueError(f"not a finite number: {s!r}")
    return v


def parse_event_type(s: str) -> str:
    """An event type from text (case-insensitive).

    Parameters
    ----------
    s : str
        The text.

    Returns
    -------
    str
        One of ``EVENT_TYPES``, lower case.

    Raises
    ------
    ValueError
        Not a known event type.
    """
    t = s.strip().lower()
    if t not in EVENT_TYPES:
        raise ValueError(f"unknown event type {s!r} (one of {', '.join(EVENT_TYPES)})")
    return t


def check_id(s: str) -> str | None:
    """The id stripped, or None when empty or too long for the schema.

    Parameters
    ----------
    s : str
        The raw id.

    Returns
    -------
    str or None
        The id, stripped; None when empty or longer than ``MAX_ID_LEN``.
    """
    s = s.strip()
    if not s or len(s) > MAX_ID_LEN:
        return None
    return s


def progress(iterable: Iterable[Any] | None = None, **kw: Any) -> tqdm:
    """A tqdm bar on stderr that hides itself when stderr is not a terminal (tests, CI, logs).

    Parameters
    ----------
    iterable : Iterable[Any] or None
        What to iterate; None for a bar updated by hand.
    **kw : Any
        Further ``tqdm`` arguments (override the defaults set here).

    Returns
    -------
    tqdm
        The progress bar.
    """
    kw.setdefault("disable", None)
    kw.setdefault("leave", False)
    kw.setdefault("mininterval", 0.5)
    kw.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kw)


def _json(obj: Any) -> str:
    # sort_keys: the same attributes always give the same text, so a re-import compares equal.
    return json.dumps(obj, sort_keys=True, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# Writing


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
    """COPY into temporary staging tables, then set-based INSERT ... SELECT ... ON CONFLICT."""
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

        cur.execute(
            "CREATE TEMP TABLE _imp_events (user_ext text, item_ext text, type text,"
            " value float8, ts timestamp, idem_key text) ON COMMIT DROP"
        )
        t0 = time.perf_counter()
        bar = progress(total=len(batch.events), desc="copy events", unit=" rows")
        with cur.copy(
            "COPY _imp_events (user_ext, item_ext, type, value, ts, idem_key) FROM STDIN"
        ) as cp:
            for i, ev in enumerate(batch.events, 1):
                cp.write_row(ev)
                if i % CHUNK == 0:
                    bar.update(CHUNK)
        bar.close()
        # Without statistics the planner guesses a tiny temp table and picks nested loops.
        cur.execute("ANALYZE _imp_events")
        t1 = time.perf_counter()
        cur.execute(
            "INSERT INTO events (user_id, item_id, type, value, ts, idem_key)"
            " SELECT u.id, i.id, s.type, s.value, s.ts, s.idem_key FROM _imp_events s"
            " JOIN users u ON u.external_id = s.user_ext"
            " JOIN items i ON i.external_id = s.item_ext"
            " ON CONFLICT (idem_key) DO NOTHING"
        )
        counts.events_new = cur.rowcount
        if counts.events_new >= ANALYZE_AFTER_ROWS:
            # Fresh planner statistics now rather than whenever autovacuum gets to it: with the
            # pre-import estimates (an empty items table, say) the history query picked a hash
            # join over the whole catalogue.
            cur.execute("ANALYZE users, items, events")
        log.info(
            "events: COPY of %d rows %.1f s, INSERT ... SELECT %.1f s",
            len(batch.events),
            t1 - t0,
            time.perf_counter() - t1,
        )
    return counts


# SQLite's page cache during an import (KiB): the unique ``idem_key`` index is written in random
# order; 2M rows took 492 s with the default 2 MiB, 293 s with 256 MiB (docs/scale.md).
SQLITE_IMPORT_CACHE_KIB = 262_144


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

    user_ids = dict(conn.exec_driver_sql("SELECT external_id, id FROM users").all())
    item_ids = dict(conn.exec_driver_sql("SELECT external_id, id FROM items").all())
    sql = (
        "INSERT INTO events (user_id, item_id, type, value, ts, idem_key)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (idem_key) DO NOTHING"
    )
    bar = progress(total=len(batch.events), desc="insert events", unit=" rows")
    ts_cache: dict[datetime, Any] = {}
    for start in range(0, len(batch.events), CHUNK):
        rows = []
        for u, i, typ, value, ts, key in batch.events[start : start + CHUNK]:
            tsb = ts_cache.get(ts)
            if tsb is None:
                tsb = ts_cache[ts] = ts_bind(ts) if ts_bind else ts
            rows.append((user_ids[u], item_ids[i], typ, value, tsb, key))
        counts.events_new += many(sql, rows)
        bar.update(len(rows))
    bar.close()
    return counts
