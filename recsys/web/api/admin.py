"""Admin: serving configuration and the audit log (``/v1/admin/strategies|routing|audit``).

Behind ``Authorization: Bearer $RECSYS_ADMIN_TOKEN`` (recsys.web.auth: constant-time comparison; no
token configured -> 403, admin disabled; missing or wrong token -> 401). Every change is
validated, audited (actor from ``X-Actor`` or "admin", before, after, when) and bumps the shared
config version, so every worker of every server applies it, and moves to fresh cache keys,
within ``CONFIG_POLL_SECONDS``. Model endpoints live in recsys.web.api.admin_models.
"""

from __future__ import annotations

from apiflask import APIBlueprint, abort
from flask import g
from marshmallow import ValidationError

from recsys.ops import audit
from recsys.serving.settings_store import get_settings
from recsys.store import session_scope
from recsys.web.auth import check_admin
from recsys.web.schemas import AuditQuery, ResetQuery, RoutingPatch, StrategyPatch
from strategies import STRATEGY_NAMES

bp = APIBlueprint("admin", __name__, url_prefix="/v1/admin", tag="Admin")

_strategy_patch = StrategyPatch()


@bp.before_request
def _admin_only():
    # Before input validation, so an unauthenticated caller learns nothing about the payload.
    check_admin()


def _actor() -> str:
    return g.get("admin_actor", "admin")


def _strategies_view() -> dict:
    settings = get_settings()
    settings.versions(force=True)
    cfg = settings.config()
    overrides = settings.overrides().get("strategies", {})
    return {
        "strategies": {
            name: {
                **cfg.to_dict()["strategies"][name],
                "overridden": sorted(overrides.get(name, {})),
            }
            for name in cfg.strategies
        },
        "config_version": settings.versions().config,
    }


@bp.get("/strategies")
@bp.doc(summary="Per-strategy enabled flag and blend weight (effective values)")
def get_strategies():
    """Per-strategy enabled flag and blend weight (effective values).

    Answers ``{"strategies": {name: {"enabled", "weight", "overridden"}}, "config_version"}``:
    the effective settings of every strategy (admin override, else the active serving profile,
    else the shipped default) and the names of the fields an admin has overridden.
    """
    return _strategies_view()


@bp.patch("/strategies")
@bp.input({}, arg_name="_doc", validation=False, schema_name="StrategiesPatch")
@bp.doc(
    summary='Change strategies: {"als": {"enabled": false}, "ease": {"weight": 0.5}}',
    description="Validated, audited; takes effect in every worker within a second and "
    "invalidates cached recommendations.",
)
def patch_strategies(_doc=None):
    """Change the enabled flag and / or blend weight of one or more strategies.

    Answers the settings before and after the change plus the current strategies view; 422
    (nothing changed) for an unknown strategy or an invalid field.
    """
    from flask import request

    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not body:
        abort(422, message="body must be a non-empty object of strategy -> settings")
    errors, patch = {}, {}
    for name, fields in body.items():
        if name not in STRATEGY_NAMES:
            errors[name] = [f"unknown strategy; expected one of {list(STRATEGY_NAMES)}"]
            continue
        try:
            patch[name] = _strategy_patch.load(fields if isinstance(fields, dict) else {"": 1})
        except ValidationError as e:
            errors[name] = e.messages
            continue
        if not patch[name]:
            errors[name] = ["give enabled and/or weight"]
    if errors:
        abort(422, message="invalid strategy settings; nothing changed", detail={"json": errors})
    try:
        before, after = get_settings().update_strategies(patch, _actor())
    except ValueError as e:
        abort(422, message=str(e))
    return {"before": before, "after": after, **_strategies_view()}


@bp.delete("/strategies/<name>")
@bp.input(ResetQuery, location="query", arg_name="_q", validation=False)
@bp.doc(
    summary="Reset a strategy to its default: drop the admin's override (all fields, or "
    "?field=weight / ?field=enabled)",
    description="The strategy takes the active serving profile's value again, else the shipped "
    "default. Audited; takes effect in every worker within a second.",
)
def reset_strategy(name: str, _q=None):
    """Reset a strategy to its default: drop the admin's override.

    Answers the settings before and after plus the current strategies view; 404 for an unknown
    strategy, 422 for an unknown field.
    """
    from flask import request

    try:
        before, after = get_settings().reset_strategy(
            name, request.args.getlist("field") or None, _actor()
        )
    except ValueError as e:
        abort(404 if name not in STRATEGY_NAMES else 422, message=str(e))
    return {"before": before, "after": after, **_strategies_view()}


def _routing_view() -> dict:
    settings = get_settings()
    settings.versions(force=True)
    return {
        "routing": settings.config().to_dict()["routing"],
        "overridden": sorted(settings.overrides().get("routing", {})),
        "config_version": settings.versions().config,
    }


@bp.get("/routing")
@bp.doc(summary="Routing: cold-start threshold, strategies per route, blend method, rules")
def get_routing():
    """Routing: cold-start threshold, strategies per route, blend method, rules.

    Answers ``{"routing": {...}, "overridden": [key, ...], "config_version"}``: the effective
    routing settings and the keys an admin has overridden.
    """
    return _routing_view()


@bp.patch("/routing")
@bp.input(RoutingPatch, arg_name="body")
@bp.doc(
    summary='Change routing (partial): e.g. {"cold_threshold": 3, "blend": "rrf"}',
    description="Validated, audited; takes effect in every worker within a second and "
    "invalidates cached recommendations.",
)
def patch_routing(body: dict):
    """Change routing settings (a partial update).

    Answers the routing before and after plus the current routing view; 422 when the change is
    invalid (nothing changed).
    """
    try:
        before, after = get_settings().update_routing(body, _actor())
    except ValueError as e:
        abort(422, message=str(e))
    return {"before": before, "after": after, **_routing_view()}


@bp.delete("/routing/<key>")
@bp.doc(
    summary="Reset one routing setting to its default (drop the admin's override)",
    description="The key takes the active serving profile's value again, else the shipped "
    "default. Audited; takes effect in every worker within a second.",
)
def reset_routing(key: str):
    """Reset one routing setting to its default (drop the admin's override).

    Answers the routing before and after plus the current routing view; 422 for an unknown key.
    """
    try:
        before, after = get_settings().reset_routing([key], _actor())
    except ValueError as e:
        abort(422, message=str(e))
    return {"before": before, "after": after, **_routing_view()}


@bp.get("/audit")
@bp.input(AuditQuery, location="query", arg_name="q")
@bp.doc(
    summary="The audit log, newest first (paged with limit/offset; filter by action, actor, target)"
)
def get_audit(q: dict):
    """The audit log, newest first.

    Answers one page of audit entries (actor, action, target, before, after, when), paged with
    ``limit`` / ``offset`` and filtered by ``action``, ``actor`` and ``target`` when given.
    """
    with session_scope() as s:
        return audit.page(
            s,
            limit=q["limit"],
            offset=q["offset"],
            action=q["action"],
            actor=q["actor"],
            target=q["target"],
        )


# -- API keys (recsys.serving.keystore): added and revoked without a restart ---------------------
def _key_change(fn):
    """Run a key-store write in its own transaction, audited; 422 for what the store refuses."""
    from flask import current_app

    from recsys.serving import keystore
    from recsys.web.auth import key_table

    table = key_table(current_app)
    try:
        with session_scope() as s:
            out = fn(s, table)
            action = out.pop("_action")
            after = {k: v for k, v in out.items() if k != "key"}  # never the key itself
            audit.record(s, _actor(), action, out["id"], None, after)
    except keystore.KeyStoreError as e:
        abort(422, message=str(e))
    table.changed()  # this process refuses a revoked key at once; the others within a poll
    return out


@bp.get("/keys")
@bp.doc(summary="API keys in force: configured (RECSYS_API_KEYS) and stored; never the keys")
def list_keys():
    """API keys in force: their ids, source, scopes and labels (never the keys themselves)."""
    from flask import current_app

    from recsys.serving import keystore
    from recsys.web.auth import key_table

    with session_scope() as s:
        return {"keys": keystore.list_keys(s, key_table(current_app).config)}


@bp.post("/keys")
@bp.input({}, arg_name="_doc", validation=False, schema_name="ApiKeyCreate")
@bp.doc(
    summary='Create an API key: {"scopes": ["read"], "label": "mobile app"}',
    description="The key is in the answer this once (only its SHA-256 is stored); every worker "
    "accepts it within one CONFIG_POLL_SECONDS. Audited.",
)
def create_key(_doc=None):
    """Create an API key with scopes; answers it once (201)."""
    from flask import request

    from recsys.serving import keystore

    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("scopes"), list):
        abort(422, message='body must be {"scopes": [scope, ...], "label"?: text}')
    label = body.get("label", "")
    if not isinstance(label, str):
        abort(422, message="label must be text")
    return (
        _key_change(
            lambda s, _t: {
                **keystore.add_key(s, body["scopes"], label),
                "_action": "api_key.create",
            }
        ),
        201,
    )


@bp.delete("/keys/<ident>")
@bp.doc(
    summary="Revoke an API key (its id, or a RECSYS_API_KEYS key's id)",
    description="Refused by every worker of every server within one CONFIG_POLL_SECONDS, "
    "without a restart. Audited.",
)
def revoke_key(ident: str):
    """Revoke an API key, stored or configured; 422 when none matches."""
    from recsys.serving import keystore

    if len(ident) > 128 or "\x00" in ident:
        abort(422, message="give a key id (12 hex characters) or the key")
    return _key_change(
        lambda s, t: {
            **keystore.revoke_key(s, ident, t.config),
            "_action": "api_key.revoke",
        }
    )
