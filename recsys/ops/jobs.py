"""Offline runs (training, tuning, imports) recorded in the ``jobs`` table, with live progress.

The process doing the work records it: ``recording(engine, kind, args, started_by)`` creates the
row (or adopts one made for it, ``job_id``: the console creates the row, then starts the CLI as
a child process that fills it in), marks it running with this host and pid, and on leaving marks
it succeeded, or failed with the error's first lines. Inside, the work reports its progress with
``report(fraction, message)``: a no-op outside a recorded run, so library code (training,
tuning) calls it unconditionally, like a progress bar. ``span(lo, hi)`` maps a part's 0..1 onto
a share of the whole (``recsys train --tune``: training, then tuning). Progress writes are
throttled (``Recorder.min_interval_s``, a clock that tests move by hand) and never fail the run:
the store being briefly unreachable costs a progress update, not the training.

A row left ``running`` by a process that died (killed, out of memory) is found by ``reap_lost``
(same host, pid gone) and marked failed, so the console never shows a ghost run forever.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from recsys.store.models import Job, utcnow

log = logging.getLogger(__name__)

KINDS = ("train", "tune", "import")
OUTCOMES = ("queued", "running", "succeeded", "failed")
#: Outcomes of a run not yet over.
ACTIVE = ("queued", "running")
_ERROR_CHARS = 4000


def default_started_by() -> str:
    """Who a CLI run is recorded as started by when nobody says: ``cli:<os user>``.

    Returns
    -------
    str
        ``cli:`` and the login name (``cli:unknown`` where there is none, e.g. in a container).
    """
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid
        user = "unknown"
    return f"cli:{user}"


def to_dict(job: Job) -> dict[str, Any]:
    """A job row as JSON-ready values (times ISO 8601 UTC with ``Z``; ``seconds``: its duration
    so far, or in all once finished).

    Parameters
    ----------
    job : Job
        The row.

    Returns
    -------
    dict[str, Any]
        ``id``, ``kind``, ``args``, ``started_by``, ``started_at``, ``finished_at``,
        ``updated_at``, ``seconds``, ``progress``, ``message``, ``outcome``, ``error``,
        ``result``, ``host``, ``pid``.
    """

    def iso(t):
        return None if t is None else t.isoformat(timespec="seconds") + "Z"

    end = job.finished_at or utcnow()
    return {
        "id": job.id,
        "kind": job.kind,
        "args": job.args or {},
        "started_by": job.started_by,
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "updated_at": iso(job.updated_at),
        "seconds": round(max((end - job.started_at).total_seconds(), 0.0), 1),
        "progress": round(float(job.progress or 0.0), 4),
        "message": job.message or "",
        "outcome": job.outcome,
        "error": job.error,
        "result": job.result,
        "host": job.host,
        "pid": job.pid,
    }


def create(
    s: Session, kind: str, args: dict[str, Any], started_by: str, outcome: str = "queued"
) -> Job:
    """Add a job row to ``s`` (the caller commits).

    Parameters
    ----------
    s : Session
        The session.
    kind : str
        One of ``KINDS``.
    args : dict[str, Any]
        What it was asked to do (JSON).
    started_by : str
        Who started it (truncated to 128 characters).
    outcome : str
        ``queued`` (a process will adopt it) or ``running`` (this process runs it).

    Returns
    -------
    Job
        The new row, flushed (its ``id`` is set).

    Raises
    ------
    ValueError
        An unknown kind or outcome.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r}; expected one of {list(KINDS)}")
    if outcome not in ACTIVE:
        raise ValueError(f"a new job is queued or running, not {outcome!r}")
    now = utcnow()
    job = Job(
        kind=kind,
        args=args,
        started_by=(started_by or default_started_by())[:128],
        started_at=now,
        updated_at=now,
        progress=0.0,
        message="queued" if outcome == "queued" else "started",
        outcome=outcome,
        host=socket.gethostname()[:128],
        pid=os.getpid() if outcome == "running" else None,
    )
    s.add(job)
    s.flush()
    return job


def list_jobs(
    s: Session, limit: int = 50, kind: str | None = None, before_id: int | None = None
) -> list[dict[str, Any]]:
    """Newest first.

    Parameters
    ----------
    s : Session
        The session.
    limit : int
        At most this many.
    kind : str or None
        Only this kind; None: all.
    before_id : int or None
        Only jobs older than this id (paging); None: from the newest.

    Returns
    -------
    list[dict[str, Any]]
        ``to_dict`` of each.
    """
    q = select(Job)
    if kind:
        q = q.where(Job.kind == kind)
    if before_id is not None:
        q = q.where(Job.id < before_id)
    return [to_dict(j) for j in s.scalars(q.order_by(Job.id.desc()).limit(limit))]


def get(s: Session, job_id: int) -> dict[str, Any] | None:
    """One job, or None.

    Parameters
    ----------
    s : Session
        The session.
    job_id : int
        Its id.

    Returns
    -------
    dict[str, Any] or None
        ``to_dict`` of it; None when there is no such job.
    """
    job = s.get(Job, job_id)
    return None if job is None else to_dict(job)


def latest(s: Session, kinds: tuple[str, ...] = KINDS) -> dict[str, dict[str, Any]]:
    """The newest job of each kind (one indexed query per kind).

    Parameters
    ----------
    s : Session
        The session.
    kinds : tuple of str
        The kinds.

    Returns
    -------
    dict[str, dict[str, Any]]
        Kind -> ``to_dict`` of its newest job; kinds never run are absent.
    """
    out = {}
    for kind in kinds:
        job = s.scalars(
            select(Job).where(Job.kind == kind).order_by(Job.started_at.desc(), Job.id.desc())
        ).first()
        if job is not None:
            out[kind] = to_dict(job)
    return out


def active(s: Session, kinds: tuple[str, ...] = KINDS) -> list[dict[str, Any]]:
    """Jobs queued or running, oldest first.

    Parameters
    ----------
    s : Session
        The session.
    kinds : tuple of str
        Only these kinds.

    Returns
    -------
    list[dict[str, Any]]
        ``to_dict`` of each.
    """
    q = select(Job).where(Job.outcome.in_(ACTIVE), Job.kind.in_(kinds)).order_by(Job.id)
    return [to_dict(j) for j in s.scalars(q)]


def _alive(pid: int) -> bool:
    # The process table of this host (Linux's /proc; elsewhere signal 0, which only checks).
    if os.path.isdir("/proc"):
        return os.path.exists(f"/proc/{pid}")
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def reap_lost(s: Session, alive: Callable[[int], bool] = _alive) -> list[int]:
    """Mark failed the running jobs of this host whose process is gone (killed, out of
    memory): they would otherwise show as running forever. The caller commits.

    Parameters
    ----------
    s : Session
        The session.
    alive : Callable[[int], bool]
        Whether a pid of this host is alive (tests pass their own).

    Returns
    -------
    list[int]
        The ids marked failed.
    """
    host = socket.gethostname()[:128]
    lost = []
    rows = s.scalars(select(Job).where(Job.outcome == "running", Job.host == host)).all()
    for job in rows:
        if job.pid is not None and not alive(job.pid):
            job.outcome, job.finished_at = "failed", utcnow()
            job.error = job.error or f"the process (pid {job.pid}) ended without an outcome"
            lost.append(job.id)
    return lost


def finish_row(
    s: Session,
    job_id: int,
    outcome: str,
    error: str | None = None,
    result: dict[str, Any] | None = None,
) -> bool:
    """Mark a job over, unless it already is (the caller commits).

    Parameters
    ----------
    s : Session
        The session.
    job_id : int
        The job.
    outcome : str
        ``succeeded`` or ``failed``.
    error : str or None
        Why it failed (its last ``_ERROR_CHARS`` characters are kept).
    result : dict[str, Any] or None
        What it made; None keeps what was recorded.

    Returns
    -------
    bool
        True when this call ended it; False when it was already over (or does not exist).
    """
    job = s.get(Job, job_id, with_for_update=True)
    if job is None or job.outcome not in ACTIVE:
        return False
    now = utcnow()
    job.outcome, job.finished_at, job.updated_at = outcome, now, now
    if outcome == "succeeded":
        job.progress, job.message = 1.0, "done"
    if error:
        job.error = error[-_ERROR_CHARS:]
    if result is not None:
        job.result = result
    return True


@dataclass
class Recorder:
    """The recording of one run, in the process doing it.

    Parameters
    ----------
    engine : Engine
        The store.
    job_id : int
        The job row.
    clock : Callable[[], float]
        Monotonic seconds (tests pass a manual clock).
    min_interval_s : float
        Progress is written at most this often (and always at the end of a part).
    """

    engine: Engine
    job_id: int
    clock: Callable[[], float] = time.monotonic
    min_interval_s: float = 0.5
    result: dict[str, Any] = field(default_factory=dict)
    _written_at: float | None = None
    _message: str = ""

    def progress(self, fraction: float, message: str = "", force: bool = False) -> bool:
        """Record ``fraction`` (0..1) done and what is being done now, throttled.

        Parameters
        ----------
        fraction : float
            Share of the whole run done, clipped to [0, 1].
        message : str
            What it is doing (first 256 characters).
        force : bool
            Write even within ``min_interval_s`` of the last write.

        Returns
        -------
        bool
            Whether it was written.
        """
        now = self.clock()
        changed = message != self._message
        if (
            not force
            and not changed
            and self._written_at is not None
            and now - self._written_at < self.min_interval_s
        ):
            return False
        self._written_at, self._message = now, message
        try:
            with Session(self.engine) as s, s.begin():
                job = s.get(Job, self.job_id)
                if job is None or job.outcome not in ACTIVE:
                    return False
                job.progress = min(max(float(fraction), 0.0), 1.0)
                job.message = message[:256]
                job.updated_at = utcnow()
        except Exception as e:  # noqa: BLE001 - a progress update never fails the run
            log.warning("job %s: progress not recorded: %s", self.job_id, e)
            return False
        return True

    def finish(self, outcome: str, error: str | None = None) -> bool:
        """Record the outcome and ``result`` (see ``finish_row``).

        Parameters
        ----------
        outcome : str
            ``succeeded`` or ``failed``.
        error : str or None
            Why it failed.

        Returns
        -------
        bool
            Whether this call ended the job.
        """
        with Session(self.engine) as s, s.begin():
            return finish_row(s, self.job_id, outcome, error, self.result or None)


_current: ContextVar[Recorder | None] = ContextVar("recsys_job", default=None)
_span: ContextVar[tuple[float, float]] = ContextVar("recsys_job_span", default=(0.0, 1.0))


def current() -> Recorder | None:
    """The run this code is recorded under, or None.

    Returns
    -------
    Recorder or None
        The recorder set by ``recording``.
    """
    return _current.get()


def report(fraction: float, message: str = "", force: bool = False) -> None:
    """Report progress of the recorded run, if any (else nothing): ``fraction`` of the current
    part (``span``), and what it is doing.

    Parameters
    ----------
    fraction : float
        Share of the current part done, 0..1.
    message : str
        What it is doing now.
    force : bool
        Write even if the last write was moments ago.
    """
    rec = _current.get()
    if rec is None:
        return
    lo, hi = _span.get()
    rec.progress(lo + (hi - lo) * min(max(fraction, 0.0), 1.0), message, force)


@contextlib.contextmanager
def span(lo: float, hi: float) -> Iterator[None]:
    """Within the block, ``report``'s 0..1 covers ``lo``..``hi`` of the current part.

    Parameters
    ----------
    lo, hi : float
        The part's share of the current part, 0 <= lo <= hi <= 1.

    Returns
    -------
    Iterator[None]
        A context manager.
    """
    outer_lo, outer_hi = _span.get()
    width = outer_hi - outer_lo
    token = _span.set((outer_lo + width * lo, outer_lo + width * hi))
    try:
        yield
    finally:
        _span.reset(token)


def start_or_adopt(
    engine: Engine, kind: str, args: dict[str, Any], started_by: str, job_id: int | None
) -> int:
    """The job row of a run starting in this process: a new one, or the queued ``job_id``
    (made by whoever started this process), marked running with this host and pid.

    Parameters
    ----------
    engine : Engine
        The store.
    kind : str
        One of ``KINDS``.
    args : dict[str, Any]
        What it was asked to do.
    started_by : str
        Who started it (for a new row).
    job_id : int or None
        A queued row to adopt; None: a new row.

    Returns
    -------
    int
        The job's id.

    Raises
    ------
    ValueError
        ``job_id`` does not exist, is of another kind, or is not queued.
    """
    with Session(engine) as s, s.begin():
        if job_id is None:
            return create(s, kind, args, started_by, outcome="running").id
        job = s.get(Job, job_id, with_for_update=True)
        if job is None or job.kind != kind or job.outcome != "queued":
            raise ValueError(f"job {job_id} is not a queued {kind} job")
        job.outcome, job.pid, job.host = "running", os.getpid(), socket.gethostname()[:128]
        job.message, job.updated_at = "started", utcnow()
        return job.id


@contextlib.contextmanager
def recording(
    engine: Engine, job_id: int, clock: Callable[[], float] = time.monotonic
) -> Iterator[Recorder]:
    """Record the block as the run of job ``job_id`` (``start_or_adopt`` made it running):
    succeeded when the block ends, failed with the error's text when it raises (re-raised).
    ``SystemExit(0)`` counts as success.

    Parameters
    ----------
    engine : Engine
        The store.
    job_id : int
        The running job (``start_or_adopt``).
    clock : Callable[[], float]
        The progress throttle's clock.

    Returns
    -------
    Iterator[Recorder]
        A context manager yielding the recorder (set ``.result`` to record what it made).
    """
    rec = Recorder(engine, job_id, clock)
    token = _current.set(rec)
    try:
        yield rec
    except SystemExit as e:
        ok = e.code in (None, 0)
        rec.finish("succeeded" if ok else "failed", None if ok else f"exit status {e.code}")
        raise
    except BaseException as e:
        if getattr(e, "exit_code", None) == 0:  # click's Exit(0): a clean early end
            rec.finish("succeeded")
            raise
        text = getattr(e, "description", None) or getattr(e, "message", None) or str(e)
        rec.finish("failed", str(text) or type(e).__name__)
        raise
    else:
        rec.finish("succeeded")
    finally:
        _current.reset(token)
