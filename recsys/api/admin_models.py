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

from recsys.auth import check_admin
from recsys.errors import RecsysError
from recsys.registry import PROFILE_KIND, get_repository
from recsys.runtime import get_runtime
from recsys.store.db import session_scope
from recsys.store.models import AuditLog
from recsys.tuning.profile import activate_profile, rollback_profile

bp = APIBlueprint("admin_models", __name__, url_prefix="/v1/admin/models", tag="Admin")

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class VersionIn(Schema):
    version = String(required=True, validate=[Length(1, 64), Regexp(_NAME)])


class OptionalVersionIn(Schema):
    version = String(load_default=None, validate=[Length(1, 64), Regexp(_NAME)])


@bp.before_request
def _admin_only():
    # Before input validation, so an unauthenticated caller learns nothing about the payload.
    check_admin()


def _check_strategy(strategy: str) -> None:
    import re

    if not re.match(_NAME, strategy):
        raise RecsysError(f"invalid strategy name {strategy!r}")


def _audit(action: str, target: str, before: dict | None, after: dict | None) -> None:
    from flask import g

    with session_scope() as s:
        s.add(
            AuditLog(
                actor=g.get("admin_actor", "admin"),
                action=action,
                target=target,
                before=before,
                after=after,
            )
        )


@bp.get("")
@bp.doc(summary="Model versions: stored, active, and what this process holds in memory")
def list_models():
    rt = get_runtime()
    return {
        "runtime": rt.status(),
        "ready": rt.ready(),
        "budget_bytes": rt.budget_bytes,
        "versions": get_repository().list_versions(),
    }


@bp.post("/<strategy>/activate")
@bp.input(VersionIn, arg_name="body")
@bp.doc(summary="Activate a version: load and warm it beside the old one, then swap")
def activate(strategy: str, body: dict):
    from flask import g

    _check_strategy(strategy)
    actor = g.get("admin_actor", "admin")
    if strategy == PROFILE_KIND:
        # A serving profile: its models first, then the profile and config_version together.
        previous = activate_profile(get_repository(), body["version"], actor=actor)
        return _profile_switched(body["version"], previous)
    out = get_runtime().activate(strategy, body["version"], actor=actor)
    return {**out, "models": get_runtime().status()}


@bp.post("/<strategy>/rollback")
@bp.doc(summary="Re-activate the previously active version (loaded and warmed first)")
def rollback(strategy: str):
    from flask import g

    _check_strategy(strategy)
    actor = g.get("admin_actor", "admin")
    if strategy == PROFILE_KIND:
        repo = get_repository()
        previous = repo.active_version(PROFILE_KIND)
        version = rollback_profile(repo, actor=actor)
        return _profile_switched(version, previous)
    out = get_runtime().rollback(strategy, actor=actor)
    return {**out, "models": get_runtime().status()}


def _profile_switched(version: str, previous: str | None) -> dict:
    """After a profile switch: this process re-reads its configuration and models now (the
    others within CONFIG_POLL_SECONDS), so the answer to the next request already uses it."""
    from recsys.settings import get_settings

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
    from recsys.tuning.profile import active_profile

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
    _check_strategy(strategy)
    rt = get_runtime()
    before = rt.describe(strategy) if strategy in rt.wanted_versions() else None
    row = rt.load(strategy, body.get("version"))
    _audit("model.load", strategy, _mode(before), _mode(row))
    return row


@bp.post("/<strategy>/unload")
@bp.doc(summary="Free the model's memory in every worker; it reloads lazily on next use")
def unload(strategy: str):
    _check_strategy(strategy)
    rt = get_runtime()
    before = rt.describe(strategy) if strategy in rt.wanted_versions() else None
    row = rt.unload(strategy)
    _audit("model.unload", strategy, _mode(before), _mode(row))
    return row


def _mode(row: dict | None) -> dict | None:
    if row is None:
        return None
    return {k: row.get(k) for k in ("load_mode", "state", "loaded_version")}
