"""Admin: training, tuning and import runs (``/v1/admin/jobs``), and starting a retrain or re-tune.

Every run of ``recsys train``, ``tune`` and ``import`` is a row of the ``jobs`` table
(``recsys.ops.jobs``), whoever started it. An operator starts a retrain or a re-tune here (or from
the console, which calls ``start_job``): the row is queued and audited (``job.start``) in one
transaction, then the ``recsys`` CLI runs it as a separate process (never in a request thread)
with the row's id, and fills the row in as it goes (progress, outcome, versions made). One at a
time: while a train or tune job is queued or running, another is refused (409).

The child gets this app's configuration as ``RECSYS_*`` variables (so it trains into the same
store and model directory), its output goes to a log file whose end is kept as the job's error
when it exits without recording an outcome, and a waiter thread (not the request's) reaps it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
from typing import Any

from apiflask import APIBlueprint, Schema
from apiflask.fields import Integer, List, String
from apiflask.validators import Length, OneOf, Range
from flask import Flask, current_app, g
from sqlalchemy import text

from recsys.config import get_config
from recsys.ops import audit, jobs
from recsys.store import session_scope
from recsys.web.auth import check_admin
from recsys.web.errors import RecsysError
from strategies import STRATEGY_NAMES

log = logging.getLogger(__name__)

bp = APIBlueprint("admin_jobs", __name__, url_prefix="/v1/admin", tag="Admin")

#: What an operator may start from the console or this API.
STARTABLE = ("train", "tune")
_BUDGET = re.compile(r"^\d{1,5}(\.\d+)?[smh]?$")
#: Longest re-tune an operator may start (seconds): a day.
MAX_BUDGET_S = 86_400
#: Advisory lock key taken while checking "one at a time" on PostgreSQL.
_LOCK_KEY = 0x7265635F6A6F62  # "rec_job"
_TAIL_CHARS = 2000


class JobStart(Schema):
    """Body of ``POST /v1/admin/jobs``: what to run."""

    kind = String(required=True, validate=OneOf(STARTABLE))
    strategies = List(
        String(validate=OneOf(STRATEGY_NAMES)),
        load_default=list,
        validate=Length(0, len(STRATEGY_NAMES)),
        metadata={"description": "train: strategies to train (default: as `recsys train`)"},
    )
    budget = String(
        load_default="5m",
        validate=Length(1, 12),
        metadata={"description": "tune: search time, e.g. 90s, 5m, 1h"},
    )


class JobsQuery(Schema):
    """Query of ``GET /v1/admin/jobs``."""

    kind = String(load_default=None, validate=OneOf(jobs.KINDS))
    limit = Integer(load_default=50, validate=Range(1, 500))


@bp.before_request
def _admin_only():
    check_admin()


def _budget_seconds(raw: str) -> float:
    raw = raw.strip()
    if not _BUDGET.match(raw):
        raise RecsysError(f"budget must look like 90s, 5m or 1h (got {raw!r})", 422)
    unit = {"s": 1, "m": 60, "h": 3600}.get(raw[-1], 1)
    seconds = float(raw.rstrip("smh")) * unit
    if not 1 <= seconds <= MAX_BUDGET_S:
        raise RecsysError(f"budget must be between 1s and {MAX_BUDGET_S // 3600}h", 422)
    return seconds


def child_env(app: Flask) -> dict[str, str]:
    """The environment of a CLI child: this process's (less the Prometheus multiprocess folder),
    plus every set value of the app's settings as ``RECSYS_*`` (strings as they are, other
    values as JSON), so the child works on the same store and model directory whether they came
    from the environment or from ``create_app``'s mapping.

    Parameters
    ----------
    app : Flask
        The app.

    Returns
    -------
    dict[str, str]
        The environment.
    """
    env = dict(os.environ)
    # Not one of the server's workers: its metrics must not join the server's /metrics. The
    # server's BLAS thread limits are kept, so a retrain does not take every core from serving.
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.pop("prometheus_multiproc_dir", None)
    for key, value in get_config(app).model_dump().items():
        if value is None:
            continue
        env[f"RECSYS_{key.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


def _argv(kind: str, args: dict[str, Any], job_id: int) -> list[str]:
    cli = [sys.executable, "-c", "from recsys.cli.main import main; main()"]
    if kind == "train":
        rest = ["train", *args["strategies"]]
    else:
        rest = ["tune", "--budget", args["budget"]]
    return [*cli, *rest, "--quiet", "--job-id", str(job_id)]


def _log_path(job_id: int) -> str:
    folder = os.path.join(tempfile.gettempdir(), "recsys-jobs")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"job-{job_id}.log")


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - _TAIL_CHARS, 0))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


def _wait(app: Flask, proc: subprocess.Popen, job_id: int, log_path: str) -> None:
    """Reap the child; if it ended without recording an outcome, record its failure."""
    code = proc.wait()
    try:
        with app.app_context(), session_scope() as s:
            tail = _tail(log_path)
            if jobs.finish_row(s, job_id, "failed", f"exit status {code}\n{tail}".strip()):
                log.error("job %s: the child exited %s without an outcome", job_id, code)
    except Exception:  # noqa: BLE001 - a waiter thread must not die loudly
        log.exception("job %s: recording the child's end failed", job_id)


def _queue(kind: str, args: dict[str, Any], actor: str) -> dict[str, Any]:
    """Check nothing runs, queue the row and audit it, in one transaction."""
    with session_scope() as s:
        if s.get_bind().dialect.name == "postgresql":
            s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
        jobs.reap_lost(s)
        busy = jobs.active(s, kinds=STARTABLE)
        if busy:
            b = busy[0]
            raise RecsysError(
                f"a {b['kind']} job (#{b['id']}, started by {b['started_by']}) is "
                f"{b['outcome']}: one at a time",
                409,
            )
        job = jobs.create(s, kind, args, actor, outcome="queued")
        audit.record(s, actor, "job.start", f"{kind}:{job.id}", None, {"kind": kind, **args})
        return jobs.to_dict(job)


def start_job(kind: str, args: dict[str, Any], actor: str) -> dict[str, Any]:
    """Queue a retrain or re-tune (audited) and start the CLI child that runs it.

    Parameters
    ----------
    kind : str
        ``train`` or ``tune``.
    args : dict[str, Any]
        ``strategies`` (train; empty: the CLI's default set) and ``budget`` (tune).
    actor : str
        Who starts it (the job's ``started_by`` and the audit's actor).

    Returns
    -------
    dict[str, Any]
        The job (``recsys.ops.jobs.to_dict``), queued.

    Raises
    ------
    RecsysError
        422 for a bad kind, strategy or budget; 409 while another train or tune job runs;
        500 when the child cannot be started (the job is then failed).
    """
    if kind not in STARTABLE:
        raise RecsysError(f"kind must be one of {list(STARTABLE)}", 422)
    if kind == "train":
        names = list(dict.fromkeys(args.get("strategies") or []))
        if bad := [n for n in names if n not in STRATEGY_NAMES]:
            raise RecsysError(f"unknown strategies {bad}; known: {list(STRATEGY_NAMES)}", 422)
        args = {"strategies": names}
    else:
        budget = str(args.get("budget") or "5m").strip()
        _budget_seconds(budget)
        args = {"budget": budget}
    job = _queue(kind, args, actor)
    app = current_app._get_current_object()
    path = _log_path(job["id"])
    try:
        with open(path, "wb") as out:
            proc = subprocess.Popen(  # noqa: S603 - our own CLI, arguments validated above
                _argv(kind, args, job["id"]),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env(app),
                start_new_session=True,  # a signal to the server's group does not reach it
            )
    except OSError as e:
        with session_scope() as s:
            jobs.finish_row(s, job["id"], "failed", f"could not start the CLI: {e}")
        raise RecsysError(f"could not start the job: {e}", 500) from e
    threading.Thread(
        target=_wait, args=(app, proc, job["id"], path), name=f"job-{job['id']}", daemon=True
    ).start()
    log.info("job %s (%s %s) started by %s: pid %s", job["id"], kind, args, actor, proc.pid)
    return job


def list_recent(limit: int = 50, kind: str | None = None) -> list[dict[str, Any]]:
    """Recent jobs, newest first, after marking failed those whose process died.

    Parameters
    ----------
    limit : int
        At most this many.
    kind : str or None
        Only this kind.

    Returns
    -------
    list[dict[str, Any]]
        The jobs.
    """
    with session_scope() as s:
        jobs.reap_lost(s)
    with session_scope() as s:
        return jobs.list_jobs(s, limit=limit, kind=kind)


@bp.get("/jobs")
@bp.input(JobsQuery, location="query", arg_name="q")
@bp.doc(summary="Training, tuning and import runs, newest first, with progress and outcome")
def get_jobs(q: dict):
    """Training, tuning and import runs, newest first.

    Answers ``{"jobs": [...], "running": bool}``: each with ``kind``, ``args``, ``started_by``,
    ``started_at``, ``finished_at``, ``progress`` (0..1), ``message``, ``outcome`` (queued,
    running, succeeded, failed), ``error`` and ``result`` (the versions made).
    """
    rows = list_recent(q["limit"], q["kind"])
    return {"jobs": rows, "running": any(r["outcome"] in jobs.ACTIVE for r in rows)}


@bp.get("/jobs/<int:job_id>")
@bp.doc(summary="One run: its progress, outcome, error and result")
def get_job(job_id: int):
    """One run (as in the list); 404 when there is no such job."""
    with session_scope() as s:
        job = jobs.get(s, job_id)
    if job is None:
        raise RecsysError(f"no job {job_id}", 404)
    return job


@bp.post("/jobs")
@bp.input(JobStart, arg_name="body")
@bp.doc(
    summary='Start a retrain or re-tune: {"kind": "train", "strategies": ["ease"]}',
    description="Audited (job.start); runs the recsys CLI as a separate process; 409 while "
    "another train or tune job is queued or running. Answers 202 with the queued job; follow "
    "it with GET /v1/admin/jobs/{id}.",
)
def post_job(body: dict):
    """Start a retrain (``kind`` train, ``strategies``) or re-tune (``kind`` tune, ``budget``)."""
    return start_job(body["kind"], body, g.get("admin_actor", "admin")), 202
