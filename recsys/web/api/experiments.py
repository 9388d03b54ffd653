"""Experiments over HTTP: admin create/list/stop/report, and a user's assignments.

Admin endpoints sit under ``/v1/admin/experiments`` behind the same bearer token as the rest of
admin (recsys.web.auth) and are recorded in the audit log. See recsys.serving.experiments for
assignment, exposure and attribution rules.
"""

from __future__ import annotations

import math

from apiflask import APIBlueprint
from flask import current_app, g, request

from recsys.ops import audit
from recsys.serving import experiments, experiments_report
from recsys.store import session_scope
from recsys.web.auth import check_admin, require_scope
from recsys.web.errors import NotFound, RecsysError
from recsys.web.schemas import ReportQuery, check_text

bp = APIBlueprint("experiments", __name__, url_prefix="/v1", tag="Experiments")

MAX_ID = 128


def _actor() -> str:
    return g.get("admin_actor", "admin")


def _json_numbers(value):
    """NaN/inf (e.g. an interval with no exposures yet) as null: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_numbers(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_numbers(v) for v in value]
    return value


def _check_name(name: str) -> None:
    if why := check_text(name):  # %00 in the URL would reach SQL
        raise RecsysError(f"experiment name {why}")


def _body() -> dict:
    body = request.get_json(silent=True)
    if body is None:
        raise RecsysError("request body must be JSON")
    return body


@bp.post("/admin/experiments")
@bp.doc(
    summary="Create an experiment",
    description='Body: `{"name", "variants": [{"name", "weight", "config"}], "start_at"?, '
    '"stop_at"?}`. `config` is a serving-configuration override (same shape as '
    "`/v1/admin/strategies` and `/v1/admin/routing` settings: "
    '`{"strategies": {...}, "routing": {...}}`). Weights are traffic shares summing to at '
    "most 1 (the rest is not enrolled). Users are assigned by sha256(name, user id).",
)
def create_experiment():
    """Create an experiment."""
    check_admin()
    body = _body()
    try:
        view = create_audited(body, _actor())
    except experiments.ExperimentError as e:
        raise RecsysError(str(e), code=422) from e
    return view.to_dict(), 201


def create_audited(body, actor: str):
    """Create an experiment, audit it and make every worker see it (the API and the console).

    Parameters
    ----------
    body : dict
        The experiment, as ``experiments.create`` reads it: ``name``, ``variants`` and optional
        ``start_at`` / ``stop_at``.
    actor : str
        Who asked, recorded in the audit log.

    Returns
    -------
    ExperimentView
        The experiment created.

    Raises
    ------
    ExperimentError
        ``body`` is not a valid experiment.
    Conflict
        An experiment with that name exists.
    """
    with session_scope() as s:
        view = experiments.create(s, body)
        audit.record(s, actor, "experiment.create", view.name, None, view.to_dict())
    experiments.get_experiments(current_app._get_current_object()).invalidate()
    return view


def stop_audited(name: str, actor: str):
    """Stop an experiment, audit it (before/after) and make every worker see it.

    Parameters
    ----------
    name : str
        Name of the experiment.
    actor : str
        Who asked, recorded in the audit log.

    Returns
    -------
    ExperimentView
        The experiment, stopped.

    Raises
    ------
    NotFound
        No experiment is named ``name``.
    """
    with session_scope() as s:
        before = experiments.get(s, name)
        view = experiments.stop(s, name)
        audit.record(
            s, actor, "experiment.stop", name, before.to_dict() if before else None, view.to_dict()
        )
    experiments.get_experiments(current_app._get_current_object()).invalidate()
    return view


@bp.get("/admin/experiments")
@bp.doc(summary="List experiments (newest last)")
def list_experiments():
    """List experiments (newest last).

    Answers ``{"experiments": [experiment, ...]}``; admin only.
    """
    check_admin()
    with session_scope() as s:
        return {"experiments": [e.to_dict() for e in experiments.list_all(s)]}


@bp.get("/admin/experiments/<name>")
@bp.doc(summary="One experiment")
def get_experiment(name: str):
    """One experiment.

    Answers the experiment (name, variants, status, start, stop); 404 when none has that name.
    """
    check_admin()
    _check_name(name)
    with session_scope() as s:
        view = experiments.get(s, name)
    if view is None:
        raise NotFound(f"no experiment named {name!r}")
    return view.to_dict()


@bp.post("/admin/experiments/<name>/stop")
@bp.doc(summary="Stop an experiment: its users go back to the normal configuration")
def stop_experiment(name: str):
    """Stop an experiment: its users go back to the normal configuration.

    Answers the experiment, stopped; admin only.
    """
    check_admin()
    _check_name(name)
    return stop_audited(name, _actor()).to_dict()


@bp.get("/admin/experiments/<name>/report")
@bp.input(ReportQuery, location="query", arg_name="_q", validation=False)
@bp.doc(summary="Per-variant exposures, click-through and conversion with 95% intervals")
def experiment_report(name: str, _q=None):
    """Per-variant exposures, click-through and conversion with 95% intervals.

    Answers the report of the experiment over the last ``window_hours`` (query parameter, in
    hours, at most 87600; default: the experiments' default window); 422 for a bad window.
    """
    check_admin()
    _check_name(name)
    hours = request.args.get("window_hours", type=float)
    # Bounded (10 years): timedelta overflows on huge or infinite windows.
    if hours is not None and not 0 < hours <= 87_600:
        raise RecsysError("window_hours must be a number in (0, 87600]", code=422)
    window = hours * 3600 if hours else experiments.DEFAULT_WINDOW_S
    with session_scope() as s:
        return _json_numbers(experiments_report.report(s, name, window_s=window))


@bp.get("/users/<user_id>/experiments")
@bp.doc(
    summary="A user's experiment assignments",
    description="Every running experiment with the user's variant (null: not enrolled), and "
    "`serving`: the one assignment that shapes the user's recommendations. Needs an API key "
    "with the `read` scope when `RECSYS_API_KEYS_FOR_READS` is on, like the other reads.",
)
@require_scope("read")
def user_experiments(user_id: str):
    """A user's experiment assignments."""
    if not user_id.strip() or len(user_id) > MAX_ID:
        raise RecsysError(f"user_id must be 1..{MAX_ID} characters")
    cache = experiments.get_experiments(current_app._get_current_object())
    serving = cache.resolve(user_id)
    return {
        "user_id": user_id,
        "assignments": cache.assignments(user_id),
        "serving": (
            {"name": serving["experiment"], "variant": serving["variant"]} if serving else None
        ),
    }
