"""Admin: model versions held by the runtime (``/v1/admin/models``).

Every endpoint needs the admin bearer token. Activation and rollback load and warm the new version
beside the serving one and swap only if that worked; a corrupt or unknown version is answered
with a 4xx JSON error (``409 Model Error`` / ``404``) and nothing changes. Other workers and
servers pick the change up from SQL within ``CONFIG_POLL_SECONDS`` (plus their load time).
"""

from __future__ import annotations

from apiflask import APIBlueprint, Schema
from apiflask.fields import String
from apiflask.validators import Length, Regexp

from recsys.models.profile import activate_profile, rollback_profile
from recsys.models.repository import PROFILE_KIND, get_repository
from recsys.models.runtime import get_runtime
from recsys.ops import audit, modelstats
from recsys.store.db import session_scope
from recsys.web.auth import check_admin
from recsys.web.errors import ModelError, RecsysError

bp = APIBlueprint("admin_models", __name__, url_prefix="/v1/admin/models", tag="Admin")

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class VersionIn(Schema):
    """Request body naming a version: ``{"version": str}`` (required, 1 to 64 characters of
    letters, digits, ``_``, ``.``, ``-``).
    """

    version = String(required=True, validate=[Length(1, 64), Regexp(_NAME)])


class OptionalVersionIn(Schema):
    """Request body optionally naming a version: ``{"version": str}``; missing means None (the
    active version).
    """

    version = String(load_default=None, validate=[Length(1, 64), Regexp(_NAME)])


@bp.before_request
def _admin_only():
    # Before input validation, so an unauthenticated caller learns nothing about the payload.
    check_admin()


def _check_strategy(strategy: str) -> None:
    import re

    if not re.match(_NAME, strategy):
        raise RecsysError(f"invalid strategy name {strategy!r}")


def _require_known(strategy: str) -> None:
    """404 for a strategy with no stored version, before the runtime sees the name (it would
    otherwise keep an error entry and a metric label for it)."""
    _check_strategy(strategy)
    if strategy not in get_repository().strategies():
        raise ModelError(f"unknown strategy {strategy!r}: it has no stored versions", 404)


def _audit(action: str, target: str, before: dict | None, after: dict | None) -> None:
    from flask import g

    with session_scope() as s:
        audit.record(s, g.get("admin_actor", "admin"), action, target, before, after)


# The operations, shared by the views below and the operator console (recsys.web.console).
def activate_version(strategy: str, version: str, actor: str) -> dict:
    """Activate ``version`` (a model, or a serving profile when ``strategy`` is "profile").

    Parameters
    ----------
    strategy : str
        Strategy name (must have stored versions), or ``"profile"`` for a serving profile.
    version : str
        Version to activate; it must be stored for ``strategy``.
    actor : str
        Who asked, recorded in the audit log.

    Returns
    -------
    dict
        The runtime's activation answer plus ``"models"``: the runtime status rows; for a
        profile, ``{"strategy", "version", "previous_version", "models"}``.

    Raises
    ------
    RecsysError
        ``strategy`` is not a valid name.
    ModelError
        404 when ``strategy`` has no stored version (or ``version`` is unknown).
    """
    _require_known(strategy)
    if strategy == PROFILE_KIND:
        # A serving profile: its models first, then the profile and config_version together.
        previous = activate_profile(get_repository(), version, actor=actor)
        return _profile_switched(version, previous)
    get_repository().get_version(strategy, version)  # 404 for an unknown version, first
    out = get_runtime().activate(strategy, version, actor=actor)
    return {**out, "models": get_runtime().status()}


def rollback_version(strategy: str, actor: str) -> dict:
    """Re-activate the version that was active before the current one.

    Parameters
    ----------
    strategy : str
        Strategy name (must have stored versions), or ``"profile"`` for a serving profile.
    actor : str
        Who asked, recorded in the audit log.

    Returns
    -------
    dict
        The runtime's rollback answer plus ``"models"``: the runtime status rows; for a
        profile, ``{"strategy", "version", "previous_version", "models"}``.

    Raises
    ------
    RecsysError
        ``strategy`` is not a valid name.
    ModelError
        404 when ``strategy`` has no stored version.
    """
    _require_known(strategy)
    if strategy == PROFILE_KIND:
        repo = get_repository()
        previous = repo.active_version(PROFILE_KIND)
        version = rollback_profile(repo, actor=actor)
        return _profile_switched(version, previous)
    out = get_runtime().rollback(strategy, actor=actor)
    return {**out, "models": get_runtime().status()}


def load_model(strategy: str, version: str | None, actor: str) -> dict:
    """Load a version of ``strategy`` now and keep it preloaded (audited as ``model.load``).

    Parameters
    ----------
    strategy : str
        Strategy name; it must have stored versions.
    version : str or None
        Version to load; None loads the active version.
    actor : str
        Who asked (the audit entry takes the request's admin actor).

    Returns
    -------
    dict
        The runtime's row for ``strategy`` after the load (load mode, state, loaded version...).

    Raises
    ------
    RecsysError
        ``strategy`` is not a valid name.
    ModelError
        404 when ``strategy`` has no stored version.
    """
    _require_known(strategy)
    rt = get_runtime()
    before = rt.describe(strategy) if strategy in rt.wanted_versions() else None
    row = rt.load(strategy, version)
    _audit("model.load", strategy, _mode(before), _mode(row))
    return row


def unload_model(strategy: str, actor: str) -> dict:
    """Free the memory of ``strategy``'s model; it reloads lazily on next use (audited as
    ``model.unload``).

    Parameters
    ----------
    strategy : str
        Strategy name; it must have stored versions.
    actor : str
        Who asked (the audit entry takes the request's admin actor).

    Returns
    -------
    dict
        The runtime's row for ``strategy`` after the unload.

    Raises
    ------
    RecsysError
        ``strategy`` is not a valid name.
    ModelError
        404 when ``strategy`` has no stored version.
    """
    _require_known(strategy)
    rt = get_runtime()
    before = rt.describe(strategy) if strategy in rt.wanted_versions() else None
    row = rt.unload(strategy)
    _audit("model.unload", strategy, _mode(before), _mode(row))
    return row


def model_stats(strategy: str) -> dict:
    """Loads, load failures, load time, scoring latency of ``strategy`` (recsys.ops.modelstats).

    Parameters
    ----------
    strategy : str
        Strategy name.

    Returns
    -------
    dict
        Its counters and latency figures since start; ``modelstats.EMPTY`` when it has none.
    """
    return modelstats.stats_by_strategy().get(strategy, modelstats.EMPTY)


@bp.get("")
@bp.doc(summary="Model versions: stored, active, and what this process holds in memory")
def list_models():
    """Model versions: stored, active, and what this process holds in memory.

    Answers ``{"runtime": [row, ...], "ready": bool, "budget_bytes", "versions": [...]}``.
    """
    rt = get_runtime()
    return {
        "runtime": rt.status(),
        "ready": rt.ready(),
        "budget_bytes": rt.budget_bytes,
        "versions": get_repository().list_versions(),
    }


@bp.get("/<strategy>")
@bp.doc(
    summary="One strategy: its versions, what this process holds, rollback target, and stats",
    description="`stats`: loads, load failures and mean load time, scoring calls, scoring "
    "latency percentiles (ms) and deadline misses since start (every worker under gunicorn).",
)
def get_strategy(strategy: str):
    """One strategy: its versions, what this process holds, rollback target, and stats."""
    _require_known(strategy)
    repo = get_repository()
    rt = get_runtime()
    return {
        "strategy": strategy,
        "active_version": repo.active_version(strategy),
        "rollback_target": repo.rollback_target(strategy),
        "versions": repo.list_versions(strategy),
        "runtime": next((r for r in rt.status() if r["strategy"] == strategy), None),
        "stats": model_stats(strategy),
    }


@bp.post("/<strategy>/activate")
@bp.input(VersionIn, arg_name="body")
@bp.doc(summary="Activate a version: load and warm it beside the old one, then swap")
def activate(strategy: str, body: dict):
    """Activate a version: load and warm it beside the old one, then swap.

    Answers the activation result and the runtime status rows; 404 for an unknown strategy or
    version.
    """
    from flask import g

    return activate_version(strategy, body["version"], g.get("admin_actor", "admin"))


@bp.post("/<strategy>/rollback")
@bp.doc(summary="Re-activate the previously active version (loaded and warmed first)")
def rollback(strategy: str):
    """Re-activate the previously active version (loaded and warmed first).

    Answers the rollback result and the runtime status rows; 404 for an unknown strategy.
    """
    from flask import g

    return rollback_version(strategy, g.get("admin_actor", "admin"))


def _profile_switched(version: str, previous: str | None) -> dict:
    """After a profile switch: this process re-reads its configuration and models now (the
    others within CONFIG_POLL_SECONDS), so the answer to the next request already uses it."""
    from recsys.serving.settings_store import get_settings

    get_settings().changed()
    rt = get_runtime()
    rt.refresh()
    out = {"strategy": PROFILE_KIND, "version": version, "previous_version": previous}
    return {**out, "models": rt.status()}


@bp.get("/profile/active")
@bp.doc(
    summary="The active serving profile (routes, weights, hyperparameters, validation, guard)",
    description="Profiles are written by `recsys tune`; activate or roll one back with "
    "`POST /v1/admin/models/profile/activate` and `/rollback` like a model version.",
)
def active_serving_profile():
    """The active serving profile (routes, weights, hyperparameters, validation, guard)."""
    from recsys.models.profile import active_profile

    profile = active_profile(get_repository())
    if profile is None:
        raise RecsysError("no serving profile is active (recsys tune makes one)", 404)
    out = profile.to_dict()
    out.pop("trace", None)  # the search trace is long: GET .../versions lists it
    return out


@bp.post("/<strategy>/load")
@bp.input(OptionalVersionIn, arg_name="body")
@bp.doc(summary="Load the active version now and keep it preloaded in every worker")
def load(strategy: str, body: dict):
    """Load the active version (or the given one) now and keep it preloaded in every worker.

    Answers the runtime's row for the strategy; 404 for an unknown strategy.
    """
    from flask import g

    return load_model(strategy, body.get("version"), g.get("admin_actor", "admin"))


@bp.post("/<strategy>/unload")
@bp.doc(summary="Free the model's memory in every worker; it reloads lazily on next use")
def unload(strategy: str):
    """Free the model's memory in every worker; it reloads lazily on next use.

    Answers the runtime's row for the strategy; 404 for an unknown strategy.
    """
    from flask import g

    return unload_model(strategy, g.get("admin_actor", "admin"))


def _mode(row: dict | None) -> dict | None:
    if row is None:
        return None
    return {k: row.get(k) for k in ("load_mode", "state", "loaded_version")}
