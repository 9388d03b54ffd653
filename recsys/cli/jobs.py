"""Recording CLI runs in the ``jobs`` table (``recsys.ops.jobs``): ``recsys train``, ``tune`` and
``import ...`` are each one job, whoever runs them (a person, a cron job or systemd timer, the
operator console), with their progress, outcome and result.

``--started-by NAME`` says who started it (a timer: ``--started-by timer:nightly-retrain``);
default ``cli:<os user>``. The console starts the CLI as a child process with a hidden
``--job-id`` naming the row it queued, which the child then fills in.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click
from flask.cli import with_appcontext


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def recorded(kind: str) -> Callable:
    """Decorate a click command (under ``@click.command``) so each run is one recorded job.

    Parameters
    ----------
    kind : str
        The job's kind (``train``, ``tune``, ``import``).

    Returns
    -------
    Callable
        The decorator; it adds the ``--started-by`` and (hidden) ``--job-id`` options.
    """

    def decorate(fn: Callable) -> Callable:
        @click.option(
            "--started-by",
            "started_by",
            default=None,
            metavar="NAME",
            help="Who started this run, recorded in the jobs table "
            "(default cli:<os user>; e.g. timer:nightly-retrain).",
        )
        @click.option("--job-id", "job_id", type=int, default=None, hidden=True)
        @with_appcontext
        @functools.wraps(fn)
        def run(*a: Any, started_by: str | None, job_id: int | None, **kw: Any) -> Any:
            from recsys.ops import jobs
            from recsys.store import get_engine

            ctx = click.get_current_context()
            args = {"command": ctx.command_path, **{k: _jsonable(v) for k, v in kw.items()}}
            engine = get_engine()
            who = started_by or jobs.default_started_by()
            try:
                job = jobs.start_or_adopt(engine, kind, args, who, job_id)
            except ValueError as e:
                raise click.UsageError(str(e)) from None
            with jobs.recording(engine, job):
                return fn(*a, **kw)

        return run

    return decorate


def set_result(result: dict[str, Any]) -> None:
    """Record what the run made (versions, profile, counts) on its job, if it is recorded.

    Parameters
    ----------
    result : dict[str, Any]
        JSON-ready summary.
    """
    from recsys.ops import jobs

    rec = jobs.current()
    if rec is not None:
        rec.result = result
