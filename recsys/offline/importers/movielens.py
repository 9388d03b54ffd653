"""MovieLens, both layouts, detected from the folder's files.

- classic (ml-100k): ``u.data`` (tab-separated ``user item rating unixtime``), ``u.item``
  (pipe-separated, latin-1: ``id|title|release date|video release date|IMDb URL|`` + 19 genre
  flags), ``u.genre`` (``name|index``, names the flags), optional ``u.user``
  (``id|age|gender|occupation|zip``).
- modern CSV (ml-latest, ml-25m, ...): ``ratings.csv`` (``userId,movieId,rating,timestamp``),
  ``movies.csv`` (``movieId,title,genres`` with ``|``-separated genres).

Ratings become ``rating`` events with value = the rating; genres become item categories.
Idempotency key: ``movielens:<user>:<movie>:<timestamp>`` (a user rates a movie once per
timestamp), so re-importing adds nothing.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Iterable, Iterator

from recsys.offline.importers.common import (
    ImportBatch,
    ImportReport,
    ItemRow,
    LineCount,
    SourceError,
    check_id,
    open_text,
    parse_float,
    parse_timestamp,
    progress,
)

SOURCE = "movielens"
CLASSIC = "classic"
MODERN = "modern"
NO_GENRE = "(no genres listed)"


def detect_layout(folder: str) -> str:
    """Which MovieLens layout ``folder`` holds.

    Parameters
    ----------
    folder : str
        The dataset folder.

    Returns
    -------
    str
        ``CLASSIC`` (``u.data`` + ``u.item``) or ``MODERN`` (``ratings.csv`` + ``movies.csv``).

    Raises
    ------
    SourceError
        No such folder, or neither layout's files are in it.
    """
    if not os.path.isdir(folder):
        raise SourceError(f"no such folder: {folder}")
    has = set(os.listdir(folder))
    if {"u.data", "u.item"} <= has:
        return CLASSIC
    if {"ratings.csv", "movies.csv"} <= has:
        return MODERN
    raise SourceError(
        f"{folder} is not a MovieLens folder: expected u.data + u.item (classic layout) "
        "or ratings.csv + movies.csv (modern layout)"
    )


def parse(folder: str) -> tuple[ImportReport, ImportBatch]:
    """Read a MovieLens folder into a batch, accounting for every line.

    Parameters
    ----------
    folder : str
        The dataset folder (either layout).

    Returns
    -------
    tuple[ImportReport, ImportBatch]
        The report (``written`` still empty) and the batch; rated movies missing from the item
        file become untitled items.

    Raises
    ------
    SourceError
        Not a MovieLens folder, or a file cannot be read.
    """
    t0 = time.perf_counter()
    layout = detect_layout(folder)
    report = ImportReport(source=f"{SOURCE} ({layout} layout) {folder}")
    batch = ImportBatch()
    if layout == CLASSIC:
        _classic(folder, report, batch)
    else:
        _modern(folder, report, batch)
    # Rated movies missing from the item file still become (untitled) items.
    for _, item, *_rest in batch.events:
        if item not in batch.items:
            batch.items[item] = None
    report.seconds = time.perf_counter() - t0
    return report, batch


def _add_rating(batch: ImportBatch, lc, n: int, user: str, item: str, rating: str, ts: str) -> None:
    u, i = check_id(user), check_id(item)
    if u is None or i is None:
        lc.skip(n, "missing or bad id", f"user {user!r} item {item!r}")
        return
    try:
        value = parse_float(rating)
    except ValueError:
        lc.skip(n, "bad rating", repr(rating))
        return
    try:
        when = parse_timestamp(ts)
    except ValueError:
        lc.skip(n, "bad timestamp", repr(ts))
        return
    batch.events.append((u, i, "rating", value, when, f"{SOURCE}:{u}:{i}:{ts.strip()}"))
    if u not in batch.users:
        batch.users[u] = None


def _split_lines(lines: Iterable[str], lc: LineCount, sep: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank line, counted as read."""
    for n, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        if not line:
            continue
        lc.read += 1
        yield n, line.split(sep)


def _classic(folder: str, report: ImportReport, batch: ImportBatch) -> None:
    genres: dict[int, str] = {}
    genre_path = os.path.join(folder, "u.genre")
    if os.path.exists(genre_path):
        with open_text(genre_path, "latin-1") as f:
            for line in f:
                name, _, idx = line.strip().rpartition("|")
                if name and idx.isdigit():
                    genres[int(idx)] = name

    lc = report.file("u.item")
    with open_text(os.path.join(folder, "u.item"), "latin-1") as f:
        for n, parts in _split_lines(f, lc, "|"):
            item = check_id(parts[0])
            if item is None or len(parts) < 5:
                lc.skip(n, "malformed row", f"{len(parts)} fields")
                continue
            flags = parts[5:]
            cats = [genres.get(k, f"genre{k}") for k, flag in enumerate(flags) if flag == "1"]
            attrs = {k: v for k, v in (("release_date", parts[2]), ("imdb_url", parts[4])) if v}
            batch.items[item] = ItemRow(title=parts[1], categories=cats, attributes=attrs)

    user_path = os.path.join(folder, "u.user")
    if os.path.exists(user_path):
        lc = report.file("u.user")
        with open_text(user_path, "latin-1") as f:
            for n, parts in _split_lines(f, lc, "|"):
                user = check_id(parts[0])
                if user is None or len(parts) != 5:
                    lc.skip(n, "malformed row", f"{len(parts)} fields")
                    continue
                age, gender, occupation, zipcode = parts[1:]
                attrs: dict[str, object] = {
                    "gender": gender,
                    "occupation": occupation,
                    "zip": zipcode,
                }
                if age.isdigit():
                    attrs["age"] = int(age)
                batch.users[user] = attrs

    lc = report.file("u.data")
    with open_text(os.path.join(folder, "u.data")) as f:
        for n, parts in _split_lines(progress(f, desc="read u.data", unit=" lines"), lc, "\t"):
            if len(parts) != 4:
                lc.skip(n, "malformed row", f"{len(parts)} fields, expected 4")
                continue
            _add_rating(batch, lc, n, *parts)


def _modern(folder: str, report: ImportReport, batch: ImportBatch) -> None:
    lc = report.file("movies.csv")
    with open_text(os.path.join(folder, "movies.csv")) as f:
        reader = csv.reader(f)
        header = [h.strip().lstrip("\ufeff") for h in next(reader, [])]
        if header[:3] != ["movieId", "title", "genres"]:
            raise SourceError("movies.csv: expected the header movieId,title,genres")
        for row in reader:
            lc.read += 1
            n = reader.line_num
            item = check_id(row[0]) if row else None
            if item is None or len(row) != len(header):
                lc.skip(n, "malformed row", f"{len(row)} fields")
                continue
            cats = [g for g in row[2].split("|") if g and g != NO_GENRE]
            batch.items[item] = ItemRow(title=row[1], categories=cats)

    lc = report.file("ratings.csv")
    with open_text(os.path.join(folder, "ratings.csv")) as f:
        reader = csv.reader(f)
        header = [h.strip().lstrip("\ufeff") for h in next(reader, [])]
        if header[:4] != ["userId", "movieId", "rating", "timestamp"]:
            raise SourceError("ratings.csv: expected the header userId,movieId,rating,timestamp")
        for row in progress(reader, desc="read ratings.csv", unit=" lines"):
            lc.read += 1
            n = reader.line_num
            if len(row) != len(header):
                lc.skip(n, "malformed row", f"{len(row)} fields, expected {len(header)}")
                continue
            _add_rating(batch, lc, n, *row[:4])
