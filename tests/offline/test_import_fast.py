"""The fast import paths (issue 29, docs/scale.md "Import at L") against the plain ones, at small
sizes: the one-loop CSV parser against a per-column reference built from ``common``'s helpers,
and the bulk load into an empty ``events`` table (indexes dropped and re-created) against the
row-wise path, on PostgreSQL (``app``) and SQLite (``sqlite_app``)."""

from __future__ import annotations

import csv
import hashlib
import os

import pytest
from sqlalchemy import text

from recsys.cli.main import main
from recsys.offline.importers import csv_import, writing
from recsys.offline.importers.common import (
    ImportBatch,
    check_id,
    parse_event_type,
    parse_float,
    parse_timestamp,
)
from recsys.store import get_engine
from tests.offline.test_importers import (
    FAIL_VALUE,
    _drop_failing_trigger,
    _install_failing_trigger,
    invoke_json,
    rows,
    stats,
)

CSV_DIR = os.path.join(os.path.dirname(__file__), "..", "fixtures", "csv")

# Rows that exercise every check of the interactions loop, on top of tests/fixtures/csv.
TRICKY = [
    "user_id,item_id,event,value,timestamp",
    "u1,A1,purchase,2,2024-05-01T12:00:00Z",
    "  u1 , A1 , PURCHASE , 2.0 ,1714564800",  # the same event as line 2 once parsed
    "u1,A1,purchase,2,2024-05-01 12:00:00+00:00",
    "",
    "u2,A2,view,,0001714564800",
    "u2,A2,view,,1714564800.5",
    "u2,A2,view,,-5",
    "u2,A2,view,,99999999999999999999",
    "u2,A2,view,,\u0661\u0667\u0661\u0664",  # Arabic-Indic digits: a unix time for both
    "u2,A2,view,,\u00b2",  # superscript two: not a digit for int()
    "u3,A3, ,1,2024-05-01",
    "u3,A3,click,nan,2024-05-01",
    "u3,A3,click,inf,2024-05-01",
    "u3,A3,click,1e3,2024-05-01",
    "u3,A3,click,1,",
    "u3,A3,click,1,",
    "u4," + "x" * 129 + ",view,1,2024-05-01",
    "u4,A4,view,1",
    "u4,A4,view,1,2024-05-01,extra",
    " ,A4,view,1,2024-05-01",
    "u5,A5,rating,4.5,2024-05-03T10:00:00+05:30",
]


def reference_interactions(path: str) -> tuple[dict, list, dict, dict]:
    """The interactions parse as it was before the one-loop version (a dict per row, the
    ``common`` helpers per column): report dict, events, users, items."""
    from recsys.offline.importers.common import ImportReport

    report = ImportReport(source="ref")
    lc = report.file("interactions")
    batch = ImportBatch()
    first_line: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        names = [h.strip().lower() for h in next(reader)]
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            lc.read += 1
            n = reader.line_num
            if len(row) != len(names):
                lc.skip(n, "wrong number of fields", f"{len(row)}, expected {len(names)}")
                continue
            r = dict(zip(names, row, strict=True))
            user, item = check_id(r["user_id"]), check_id(r["item_id"])
            if user is None:
                lc.skip(n, "missing or too long user_id")
                continue
            if item is None:
                lc.skip(n, "missing or too long item_id")
                continue
            try:
                event = parse_event_type(r.get("event", "") or "purchase")
            except ValueError:
                lc.skip(n, "unknown event type", repr(r["event"]))
                continue
            raw_value = r.get("value", "").strip()
            try:
                value = parse_float(raw_value) if raw_value else 1.0
            except ValueError:
                lc.skip(n, "bad value", repr(r["value"]))
                continue
            raw_ts = r.get("timestamp", "").strip()
            try:
                ts = parse_timestamp(raw_ts) if raw_ts else None
            except ValueError:
                lc.skip(n, "bad timestamp", repr(r["timestamp"]))
                continue
            content = "\x1f".join((user, item, event, repr(value), ts.isoformat() if ts else ""))
            key = "csv:" + hashlib.sha256(content.encode()).hexdigest()[:40]
            if key in first_line:
                lc.skip(n, "duplicate row", f"same as line {first_line[key]}")
                continue
            first_line[key] = n
            batch.events.append((user, item, event, value, ts, key))
            batch.users.setdefault(user, None)
            batch.items.setdefault(item, None)
    return lc.to_dict(), batch.events, batch.users, batch.items


@pytest.mark.parametrize("which", ["fixture", "tricky"])
def test_fast_parser_matches_the_per_column_reference(tmp_path, which):
    if which == "fixture":
        path = os.path.join(CSV_DIR, "interactions.csv")
    else:
        path = str(tmp_path / "tricky.csv")
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write("\n".join(TRICKY) + "\n")
    report, batch = csv_import.parse(path)
    lc, events, users, items = reference_interactions(path)
    assert report.files[0].to_dict() == lc
    assert batch.distinct_keys
    assert batch.users == users and batch.items == items
    # rows without a timestamp get the import's time (not part of the key): compare the rest
    assert len(batch.events) == len(events)
    for got, want in zip(batch.events, events, strict=True):
        assert got[:4] == want[:4] and got[5] == want[5]
        assert want[4] is None or got[4] == want[4]
    if which == "tricky":
        skipped = lc["skipped"]
        assert skipped["duplicate row"] == 3  # lines 3, 4 (as line 2) and 17 (as line 16)
        assert skipped["bad timestamp"] == 2  # 10^20 s and "\u00b2"; -5 s is 1969, "" is now
        assert {"bad value": 2, "unknown event type": 1}.items() <= skipped.items()


def _synthetic(tmp_path, n_users: int = 30, n_items: int = 12, per_user: int = 9) -> str:
    """A small interactions file (and one duplicate line and one bad line)."""
    path = tmp_path / "inter.csv"
    lines = ["user_id,item_id,event,value,timestamp"]
    for u in range(n_users):
        for k in range(per_user):
            ev = ("view", "click", "cart", "purchase")[(u + k) % 4]
            lines.append(f"s{u},p{(u * 7 + k * 5) % n_items},{ev},1,{1714564800 + u * 100 + k}")
    lines.append(lines[1])  # a duplicate
    lines.append("s1,p1,like,1,1714564800")  # a bad row
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _events(app) -> list[tuple]:
    return [
        tuple(r)
        for r in rows(
            app,
            "SELECT u.external_id, i.external_id, e.type, e.value, e.ts, e.idem_key FROM events e"
            " JOIN users u ON u.id = e.user_id JOIN items i ON i.id = e.item_id"
            " ORDER BY e.idem_key",
        )
    ]


def _schema(app) -> list[tuple]:
    engine = get_engine(app)
    if engine.dialect.name == "postgresql":
        sql = (
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'events'"
            " UNION ALL SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = 'events'::regclass ORDER BY 1, 2"
        )
    else:
        sql = "SELECT name, sql FROM sqlite_master WHERE tbl_name = 'events' ORDER BY name"
    return [tuple(r) for r in rows(app, sql)]


def check_bulk_equals_rowwise(app, monkeypatch, tmp_path) -> None:
    path = _synthetic(tmp_path)
    runner = app.test_cli_runner()
    schema = _schema(app)
    monkeypatch.setattr(writing, "BULK_MIN_EVENTS", 10**9)  # the row-wise path
    plain = invoke_json(runner, "import", "csv", "--interactions", path)
    plain_rows, plain_stats = _events(app), stats(runner)
    engine = get_engine(app)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM events"))
        conn.execute(text("DELETE FROM users"))
        conn.execute(text("DELETE FROM items"))
    monkeypatch.setattr(writing, "BULK_MIN_EVENTS", 1)  # the bulk load
    bulk = invoke_json(runner, "import", "csv", "--interactions", path)
    assert bulk["files"] == plain["files"]
    assert bulk["files"]["interactions"]["skipped"] == {"duplicate row": 1, "unknown event type": 1}
    assert bulk["written"] == plain["written"]
    assert bulk["written"]["events_new"] == 270
    assert _events(app) == plain_rows
    assert stats(runner) == plain_stats
    assert _schema(app) == schema  # every index and constraint is back, as it was
    again = invoke_json(runner, "import", "csv", "--interactions", path)  # not empty: row-wise
    assert (again["written"]["events_new"], again["written"]["events_existing"]) == (0, 270)
    assert _events(app) == plain_rows


def test_bulk_load_equals_rowwise_postgres(app, monkeypatch, tmp_path):
    check_bulk_equals_rowwise(app, monkeypatch, tmp_path)


def test_bulk_load_equals_rowwise_sqlite(sqlite_app, monkeypatch, tmp_path):
    check_bulk_equals_rowwise(sqlite_app, monkeypatch, tmp_path)


def check_bulk_failure_rolls_back(app, monkeypatch, tmp_path) -> None:
    """A row the database refuses during a bulk load: nothing imported, indexes intact."""
    runner = app.test_cli_runner()
    schema = _schema(app)
    path = tmp_path / "inter.csv"
    path.write_text(f"user_id,item_id,event,value\na,x,view,1\nb,y,view,{FAIL_VALUE}\nc,z,view,1\n")
    monkeypatch.setattr(writing, "BULK_MIN_EVENTS", 1)
    _install_failing_trigger(app)
    try:
        result = runner.invoke(main, args=["import", "csv", "--interactions", str(path)])
    finally:
        _drop_failing_trigger(app)
    assert result.exit_code == 1, result.output
    assert "rolled back, nothing was imported" in result.output
    s = stats(runner)
    assert (s["users"], s["items"], s["events"]) == (0, 0, 0)
    assert _schema(app) == schema


def test_bulk_failure_rolls_back_postgres(app, monkeypatch, tmp_path):
    check_bulk_failure_rolls_back(app, monkeypatch, tmp_path)


def test_bulk_failure_rolls_back_sqlite(sqlite_app, monkeypatch, tmp_path):
    check_bulk_failure_rolls_back(sqlite_app, monkeypatch, tmp_path)


def test_repeated_keys_are_never_bulk_loaded(monkeypatch):
    monkeypatch.setattr(writing, "BULK_MIN_EVENTS", 1)
    ev = ("u", "i", "view", 1.0, None, "k1")
    assert writing._bulk_candidate(ImportBatch(events=[ev, (*ev[:5], "k2")]))
    assert not writing._bulk_candidate(ImportBatch(events=[ev, ev]))
    assert not writing._bulk_candidate(ImportBatch(events=[(*ev[:5], None)]))
    assert writing._bulk_candidate(ImportBatch(events=[ev, ev], distinct_keys=True))  # trusted
    monkeypatch.setattr(writing, "BULK_MIN_EVENTS", 3)
    assert not writing._bulk_candidate(ImportBatch(events=[ev], distinct_keys=True))
