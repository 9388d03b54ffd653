"""What every importer shares: the batch shape, line accounting, parsing helpers, bulk writes.

An importer turns a source into an :class:`ImportBatch` while recording, per input file, how
many lines it read and why each skipped line was skipped (:class:`LineCount`). The batch is
then written by :func:`recsys.offline.importers.writing.write_batch` inside the caller's
transaction, so a failure anywhere
rolls the whole import back: a batch is never half-imported.

Idempotency: users and items are upserted by external id; every event carries an idempotency
key (``Event.idem_key``) and is inserted with ``ON CONFLICT (idem_key) DO NOTHING``, so
importing the same source again adds no rows.

The batch, the report and the parsing helpers are one contract every importer reads, kept in
one place; writing a batch to the store is ``recsys.offline.importers.writing``.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from tqdm import tqdm

from recsys.store.models import EVENT_TYPES

# Limits of the SQL schema (recsys/store/models.py); longer ids are rejected per row instead
# of failing the whole transaction on PostgreSQL (and being silently kept on SQLite).
MAX_ID_LEN = 128
MAX_TITLE_LEN = 512
SAMPLES_PER_REASON = 3


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
    # True when the parser guarantees that no two events share an idempotency key (it skipped
    # duplicates); the writer checks it itself otherwise.
    distinct_keys: bool = False


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
