"""Generic CSV import: any shop's own export.

All files are UTF-8 (or gzip of it) CSV with a header row; columns are matched by name (case and
surrounding spaces ignored, order free); unknown columns of the interactions file are ignored.

interactions (required)  ``user_id,item_id[,event][,value][,timestamp]``
    event: view | click | cart | purchase | rating | dislike (default purchase);
    value: a number (default 1); timestamp: ISO-8601 (``2024-05-01T12:00:00Z``; an offset is
    converted to UTC, no offset means UTC) or unix seconds (default: the time of the import).
items (optional)
    ``item_id[,title][,description][,categories][,price][,available][,attributes]``:
    categories ``|``-separated; price a number or empty; available true/false/1/0/yes/no
    (default true); attributes a JSON object; any other column becomes a string attribute.
users (optional)         ``user_id[,attributes]``: attributes a JSON object; any other column
    becomes a string attribute.

Items and users referenced by interactions but absent from the store and from the files are
created (empty title / no attributes). Rows in the items and users files update existing
entries (re-importing an unchanged file changes nothing).

Idempotency: an interaction's key is a hash of its parsed content (user, item, event, value,
timestamp), so importing a file twice adds nothing, and two identical rows of one file count
once (the second is skipped as a duplicate).
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from datetime import datetime, timedelta
from typing import Any

from recsys.offline.importers.common import (
    MAX_ID_LEN,
    ImportBatch,
    ImportReport,
    ItemRow,
    LineCount,
    SourceError,
    check_id,
    open_text,
    parse_event_type,
    parse_float,
    parse_timestamp,
    progress,
)
from recsys.store.models import utcnow

SOURCE = "csv"
INTERACTION_COLUMNS = ("user_id", "item_id", "event", "value", "timestamp")
ITEM_COLUMNS = ("item_id", "title", "description", "categories", "price", "available")
TRUE = {"1", "true", "t", "yes", "y"}
FALSE = {"0", "false", "f", "no", "n"}
BOOLS = TRUE | FALSE


def _reader(f: Any, path: str, required: str) -> tuple[Any, list[str]]:
    reader = csv.reader(f)
    header = next(reader, None)
    if not header:
        raise SourceError(f"{path} is empty (a header row is required)")
    names = [h.strip().lstrip("\ufeff").lower() for h in header]
    if required not in names:
        raise SourceError(f"{path}: the header has no {required!r} column (got {header})")
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise SourceError(f"{path}: duplicate column(s) {', '.join(sorted(dupes))}")
    return reader, names


def _rows(reader, names: list[str], lc: LineCount, desc: str):
    """(line number, {column: value}) for rows with the header's width; others are skipped."""
    for row in progress(reader, desc=desc, unit=" lines"):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        lc.read += 1
        n = reader.line_num
        if len(row) != len(names):
            lc.skip(n, "wrong number of fields", f"{len(row)}, expected {len(names)}")
            continue
        yield n, dict(zip(names, row, strict=True))


def _json_object(s: str) -> dict[str, Any]:
    obj = json.loads(s)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


def _new_id(
    row: dict[str, str], column: str, first_line: dict[str, int], lc: LineCount, n: int
) -> str | None:
    """The row's id in ``column``, or None (line skipped) when bad or already seen."""
    ident = check_id(row[column])
    if ident is None:
        lc.skip(n, f"missing or too long {column}")
        return None
    if ident in first_line:
        lc.skip(n, f"duplicate {column}", f"first on line {first_line[ident]}")
        return None
    return ident


def _attributes(
    row: dict[str, str], extra: list[str], lc: LineCount, n: int
) -> dict[str, Any] | None:
    """The ``attributes`` JSON plus the extra columns, or None (line skipped) for bad JSON."""
    attrs: dict[str, Any] = {}
    if row.get("attributes", "").strip():
        try:
            attrs = _json_object(row["attributes"])
        except ValueError:
            lc.skip(n, "bad attributes JSON", repr(row["attributes"][:60]))
            return None
    attrs.update({k: row[k] for k in extra if row[k] != ""})
    return attrs


def parse(
    interactions: str, items: str | None = None, users: str | None = None
) -> tuple[ImportReport, ImportBatch]:
    """Read the CSV files into a batch, accounting for every line (see the module docstring for
    the columns).

    Parameters
    ----------
    interactions : str
        Path of the interactions file (plain or gzip).
    items : str or None
        Path of the items file; None: no item data.
    users : str or None
        Path of the users file; None: no user data.

    Returns
    -------
    tuple[ImportReport, ImportBatch]
        The report (``written`` still empty) and the batch to write.

    Raises
    ------
    SourceError
        A file is missing, unreadable, or lacks its required column.
    """
    t0 = time.perf_counter()
    parts = [f"interactions={interactions}"]
    parts += [f"items={items}"] if items else []
    parts += [f"users={users}"] if users else []
    report = ImportReport(source=f"{SOURCE} " + " ".join(parts))
    batch = ImportBatch()
    if items:
        _items(items, report.file("items"), batch)
    if users:
        _users(users, report.file("users"), batch)
    _interactions(interactions, report.file("interactions"), batch)
    report.seconds = time.perf_counter() - t0
    return report, batch


def _items(path: str, lc: LineCount, batch: ImportBatch) -> None:
    with open_text(path) as f:
        reader, names = _reader(f, path, "item_id")
        extra = [n for n in names if n not in ITEM_COLUMNS and n != "attributes"]
        first_line: dict[str, int] = {}
        for n, row in _rows(reader, names, lc, "read items"):
            item = _new_id(row, "item_id", first_line, lc, n)
            if item is None:
                continue
            price: float | None = None
            if row.get("price", "").strip():
                try:
                    price = parse_float(row["price"])
                except ValueError:
                    lc.skip(n, "bad price", repr(row["price"]))
                    continue
            available = True
            raw_avail = row.get("available", "").strip().lower()
            if raw_avail:
                if raw_avail not in BOOLS:
                    lc.skip(n, "bad available flag", repr(row["available"]))
                    continue
                available = raw_avail in TRUE
            attrs = _attributes(row, extra, lc, n)
            if attrs is None:
                continue
            cats = [c.strip() for c in row.get("categories", "").split("|") if c.strip()]
            first_line[item] = n
            batch.items[item] = ItemRow(
                title=row.get("title", "").strip(),
                description=row.get("description", "").strip(),
                categories=cats,
                price=price,
                available=available,
                attributes=attrs,
            )


def _users(path: str, lc: LineCount, batch: ImportBatch) -> None:
    with open_text(path) as f:
        reader, names = _reader(f, path, "user_id")
        extra = [n for n in names if n not in ("user_id", "attributes")]
        first_line: dict[str, int] = {}
        for n, row in _rows(reader, names, lc, "read users"):
            user = _new_id(row, "user_id", first_line, lc, n)
            if user is None:
                continue
            attrs = _attributes(row, extra, lc, n)
            if attrs is None:
                continue
            first_line[user] = n
            batch.users[user] = attrs


def _interactions(path: str, lc: LineCount, batch: ImportBatch) -> None:
    """The interactions file, one tight loop (10M lines at L: no per-row dict, no per-row
    progress call, cached event types/values); the same checks, skip reasons and keys as the
    per-column helpers of ``common`` (tests/offline/test_import_fast.py compares them)."""
    now = utcnow().replace(microsecond=0)
    with open_text(path) as f:
        reader, names = _reader(f, path, "user_id")
        if "item_id" not in names:
            raise SourceError(f"{path}: the header has no 'item_id' column")
        width = len(names)
        cols = [names.index(c) if c in names else None for c in INTERACTION_COLUMNS]
        iu, ii, ie, iv, it = cols
        first_line: dict[str, int] = {}
        events = batch.events
        users, items = batch.users, batch.items
        canon: dict[str, str] = {}
        canon_items: dict[str, str] = {}
        types = _Cache(lambda raw: parse_event_type(raw or "purchase"))
        values = _Cache(lambda raw: parse_float(raw) if raw else 1.0)
        sha256 = hashlib.sha256
        bar = progress(desc="read interactions", unit=" lines")
        for row in reader:
            if len(row) != width:  # (the header has at least user_id and item_id: width >= 2)
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                lc.read += 1
                lc.skip(reader.line_num, "wrong number of fields", f"{len(row)}, expected {width}")
                continue
            lc.read += 1
            if not lc.read & 0xFFFF:
                bar.update(0x10000)
            user, item = row[iu].strip(), row[ii].strip()
            if not user or len(user) > MAX_ID_LEN:
                lc.skip(reader.line_num, "missing or too long user_id")
                continue
            if not item or len(item) > MAX_ID_LEN:
                lc.skip(reader.line_num, "missing or too long item_id")
                continue
            raw = row[ie] if ie is not None else ""
            event = types.get(raw)
            if event is None:
                lc.skip(reader.line_num, "unknown event type", repr(raw))
                continue
            raw = row[iv] if iv is not None else ""
            value = values.get(raw.strip())
            if value is None:
                lc.skip(reader.line_num, "bad value", repr(raw))
                continue
            raw = row[it].strip() if it is not None else ""
            if raw:
                try:
                    ts = _unix(raw) if raw.isdigit() else parse_timestamp(raw)
                except ValueError:
                    lc.skip(reader.line_num, "bad timestamp", repr(row[it]))
                    continue
                stamp = ts.isoformat()
            else:
                ts, stamp = now, ""
            # The key hashes the parsed row, so "purchase"/"", "1"/"1.0" and equivalent
            # timestamps give the same key; a row without timestamp keys on "" (not on now).
            content = f"{user}\x1f{item}\x1f{event}\x1f{value!r}\x1f{stamp}"
            key = "csv:" + sha256(content.encode()).hexdigest()[:40]
            seen = first_line.setdefault(key, reader.line_num)
            if seen != reader.line_num:
                lc.skip(reader.line_num, "duplicate row", f"same as line {seen}")
                continue
            # one str object per distinct id: 10M events share 1M user and 100k item strings
            same = canon.get(user)
            if same is None:
                canon[user] = same = user
                users.setdefault(user, None)
            same_user = same
            same = canon_items.get(item)
            if same is None:
                canon_items[item] = same = item
                items.setdefault(item, None)
            events.append((same_user, same, event, value, ts, key))
        bar.close()
        batch.distinct_keys = True  # duplicates were skipped above


_EPOCH = datetime(1970, 1, 1)


def _unix(digits: str) -> datetime:
    """Unix seconds (digits only) -> naive UTC, as ``parse_timestamp`` gives it."""
    try:
        return _EPOCH + timedelta(seconds=int(digits))
    except OverflowError as e:
        raise ValueError(f"unix time out of range: {digits!r}") from e


class _Cache:
    """Parsed values of the few distinct raw texts of a column (event types, values): the
    parse runs once per distinct text; None for a text the parser refuses."""

    LIMIT = 10_000

    def __init__(self, parse: Any) -> None:
        self.parse = parse
        self.seen: dict[str, Any] = {}

    def get(self, raw: str) -> Any:
        try:
            return self.seen[raw]
        except KeyError:
            pass
        try:
            parsed = self.parse(raw)
        except ValueError:
            parsed = None
        if len(self.seen) < self.LIMIT:
            self.seen[raw] = parsed
        return parsed
