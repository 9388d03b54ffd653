"""Console pages (``/admin/...``) and their htmx fragments and actions (``/admin/ui/...``).

See ``recsys.web.console`` for how the token travels. A fragment answers 200 with the screen
re-rendered; an action that the service refuses (a bad weight, a corrupt model version, an
unknown experiment) answers 200 too, with the error shown plainly above the screen, because
that is what the operator needs to read. Only authentication failures are HTTP errors (401/403,
JSON as everywhere), which the page turns into its login form.

The Overview, Jobs and Items screens are in ``ops_views`` (on the same ``ui`` blueprint).
Over 600 lines with its docstrings; about 450 lines of code.
"""

from __future__ import annotations

import logging
import os
from typing import Any
from urllib.parse import quote

from apiflask import APIBlueprint
from flask import Response, current_app, g, render_template, request
from sqlalchemy import select

from recsys.config import get_config
from recsys.ops import audit
from recsys.serving.settings_store import STRATEGY_FIELDS, get_settings
from recsys.store import session_scope
from recsys.web.auth import INTERNAL_READ, check_admin
from recsys.web.errors import RecsysError

log = logging.getLogger(__name__)

_HERE = os.path.dirname(__file__)

bp = APIBlueprint(
    "console",
    __name__,
    url_prefix="/admin",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
    enable_openapi=False,
)
ui = APIBlueprint("console_ui", __name__, url_prefix="/admin/ui", enable_openapi=False)

SCREENS = (
    ("overview", "Overview", "overview"),
    ("strategies", "Strategies & routing", ""),
    ("models", "Models", "models"),
    ("live", "Live", "live"),
    ("users", "User inspector", "users"),
    ("items", "Items", "items"),
    ("jobs", "Jobs", "jobs"),
    ("experiments", "Experiments", "experiments"),
    ("audit", "Audit log", "audit"),
)
PREVIEW_N = 10
#: Variant rows of the experiment form.
VARIANT_ROWS = 4


# -- page shells (no data, no token) ----------------------------------------------------------
def _shell(screen: str) -> str:
    return render_template(
        "console/shell.html",
        screen=screen,
        screens=SCREENS,
        title=next(t for k, t, _ in SCREENS if k == screen),
        enabled=bool(get_config(current_app).admin_token),
    )


@bp.get("/", endpoint="index")
def index():
    """The console's page shell, opened on the Strategies & routing screen (HTML; no token)."""
    return _shell("strategies")


@bp.get(
    "/<any(overview, models, live, users, items, jobs, experiments, audit):screen>",
    endpoint="screen",
)
def screen(screen: str):
    """The page shell of one screen: overview, models, live, users, items, jobs, experiments or
    audit (HTML; no token)."""
    return _shell(screen)


# -- fragments and actions (admin token) ------------------------------------------------------
@ui.before_request
def _admin_only():
    check_admin()


@ui.after_request
def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


def _actor() -> str:
    return g.get("admin_actor", "admin")


def _fragment(name: str, **ctx: Any) -> str:
    return render_template(f"console/{name}.html", **ctx)


@ui.get("/whoami")
def whoami():
    """Answers ``{"actor": name}``: the actor the admin token's requests are audited as."""
    return {"actor": _actor()}


# Strategies & routing ---------------------------------------------------------------------
def _user_list(user_id: str) -> dict[str, Any]:
    """What ``user_id`` is served now: the real request path (cache, experiments, deadline)
    through this app's WSGI stack, so the preview is exactly the public answer. Not an
    exposure of an experiment: the operator is not the user."""
    from recsys.serving.experiments import no_exposures

    app = current_app._get_current_object()
    client = app.test_client()
    # A fresh app context: the inner request would otherwise share this request's ``g``
    # (Flask reuses the current app context), and its teardown would consume our timing state.
    with no_exposures(), app.app_context():
        r = client.get(
            f"/v1/users/{quote(user_id, safe='')}/recommendations",
            query_string={"n": PREVIEW_N, "explain": "true", "fields": "title"},
            environ_base={INTERNAL_READ: True},  # no API key needed: this is the admin
            headers={"X-Request-ID": f"console-preview-{g.get('request_id', '')}"[:64]},
        )
    body = r.get_json(silent=True) or {}
    if r.status_code != 200:
        return {"error": body.get("description") or f"HTTP {r.status_code}"}
    return body


def _preview(user_id: str | None, before: dict | None) -> dict | None:
    if not user_id or before is None:
        return None
    after = _user_list(user_id)
    b = [it["item_id"] for it in before.get("items", [])]
    a = [it["item_id"] for it in after.get("items", [])]
    return {
        "user_id": user_id,
        "before": before,
        "after": after,
        "added": sorted(set(a) - set(b)),
        "removed": sorted(set(b) - set(a)),
        "changed": a != b,
    }


def _routing_served() -> dict[str, Any]:
    """Which routing serves: the learned profile's routes, or hand-set ones (see strategies)."""
    from recsys.serving.settings_store import get_settings

    settings = get_settings()
    cfg = settings.config().to_dict()
    over = settings.overrides().get("routing", {})
    routes = cfg["routing"].get("routes")
    if "routes" in over:
        source = "admin" if over["routes"] else "hand-set (profile routes switched off)"
    elif routes:
        source = "profile"
    else:
        source = "hand-set"
    return {
        "source": source,
        "profile": cfg.get("profile"),
        "routes": [r["name"] for r in routes or []],
        "profile_routes_off": "routes" in over and not over["routes"],
    }


def _strategies_screen(**extra: Any) -> str:
    from recsys.models.profile import active_profile
    from recsys.models.repository import get_repository

    settings = get_settings()
    settings.versions(force=True)
    cfg = settings.config().to_dict()
    over = settings.overrides()
    profile, profile_error = None, None
    try:
        p = active_profile(get_repository())
        if p is not None:
            profile = {"version": p.version, "summary": p.summary(), "blend": p.blend}
    except RecsysError as e:
        profile_error = e.description
    except Exception as e:  # noqa: BLE001 - shown, not raised: the screen must still render
        profile_error = f"{type(e).__name__}: {e}"
    models = get_repository().active_versions(models_only=True)
    return _fragment(
        "strategies",
        served=_routing_served(),
        strategies=cfg["strategies"],
        routing=cfg["routing"],
        strategy_overrides=over.get("strategies", {}),
        routing_overrides=sorted(over.get("routing", {})),
        config_version=settings.versions().config,
        profile=profile,
        profile_error=profile_error,
        models=models,
        preview_user=request.values.get("preview_user", ""),
        bounds=_form_bounds(),
        **extra,
    )


def _form_bounds() -> dict[str, Any]:
    """The inputs' min/max, from the bounds the settings are validated against
    (recsys.core.config); the server checks them again (a bad value: the error, no change)."""
    from recsys.core.config import MAX_WEIGHT, ROUTING

    return {
        "weight_max": MAX_WEIGHT,
        "cold_threshold_min": ROUTING["cold_threshold"].low,
        "cold_threshold_max": ROUTING["cold_threshold"].high,
    }


@ui.get("/strategies")
def strategies():
    """The Strategies & routing screen (HTML fragment): settings, overrides, active profile."""
    return _strategies_screen()


def _change(apply) -> str:
    """Run one settings change with the preview user's list before and after it."""
    user_id = (request.form.get("preview_user") or "").strip()[:128] or None
    before = _user_list(user_id) if user_id else None
    try:
        apply()
    except (ValueError, RecsysError) as e:
        return _strategies_screen(error=getattr(e, "description", None) or str(e))
    return _strategies_screen(preview=_preview(user_id, before), done=True)


@ui.post("/strategies/<name>/enabled")
def set_enabled(name: str):
    """Enable or disable a strategy (form field ``enabled``); answers the updated screen."""
    enabled = request.form.get("enabled") in ("1", "true", "on")
    return _change(lambda: get_settings().update_strategies({name: {"enabled": enabled}}, _actor()))


@ui.post("/strategies/<name>/weight")
def set_weight(name: str):
    """Set a strategy's blend weight (form field ``weight``); answers the updated screen."""
    raw = (request.form.get("weight") or "").strip()
    try:
        weight = float(raw)
    except ValueError:
        return _strategies_screen(error=f"weight of {name} must be a number (got {raw!r})")
    return _change(lambda: get_settings().update_strategies({name: {"weight": weight}}, _actor()))


@ui.post("/strategies/<name>/reset")
def reset_strategy(name: str):
    """Drop the admin's override of a strategy (one ``field``, or all); answers the screen."""
    field = request.form.get("field") or None
    if field is not None and field not in STRATEGY_FIELDS:
        return _strategies_screen(error=f"unknown field {field!r}")
    fields = [field] if field else None
    return _change(lambda: get_settings().reset_strategy(name, fields, _actor()))


def _names(raw: str) -> list[str]:
    return [x.strip() for x in raw.replace(" ", ",").split(",") if x.strip()]


@ui.post("/routing")
def set_routing():
    """Change the routing settings the form gives (only those that differ); answers the screen."""
    f = request.form
    patch: dict[str, Any] = {}
    try:
        if f.get("cold_threshold", "").strip():
            patch["cold_threshold"] = int(f["cold_threshold"])
    except ValueError:
        return _strategies_screen(error="cold threshold must be a whole number")
    for key in ("cold_strategies", "warm_strategies"):
        if key in f:
            patch[key] = _names(f[key])
    if f.get("blend"):
        patch["blend"] = f["blend"]
    cfg = get_settings().config().to_dict()["routing"]
    patch = {k: v for k, v in patch.items() if cfg.get(k) != v}  # only what changed
    if not patch:
        return _strategies_screen(error="nothing changed")
    return _change(lambda: get_settings().update_routing(patch, _actor()))


@ui.post("/routing/profile")
def set_profile_routes():
    """Switch the serving profile's learned routes off (form field ``on`` = 0: the hand-set
    cold/warm routing serves, an admin override of ``routing.routes``) or back on (``on`` = 1:
    that override is dropped); through the settings store, so validated, audited and applied
    by every worker. Answers the Strategies screen."""
    if request.form.get("on") in ("1", "true", "on"):
        return _change(lambda: get_settings().reset_routing(["routes"], _actor()))
    return _change(lambda: get_settings().update_routing({"routes": None}, _actor()))


@ui.post("/routing/<key>/reset")
def reset_routing(key: str):
    """Drop the admin's override of one routing setting; answers the updated screen."""
    return _change(lambda: get_settings().reset_routing([key], _actor()))


@ui.post("/preview")
def preview():
    """The Strategies screen with the preview user's current list (form field ``preview_user``)."""
    user_id = (request.form.get("preview_user") or "").strip()[:128]
    if not user_id:
        return _strategies_screen(error="give a user id to preview")
    now = _user_list(user_id)
    return _strategies_screen(preview={"user_id": user_id, "before": now, "after": None})


# Models ---------------------------------------------------------------------------------------
def _dir_bytes(path: str) -> int | None:
    from recsys.models.artifacts import dir_bytes

    if not path or not os.path.isdir(path):
        return None
    return dir_bytes(path)


def _models_screen(**extra: Any) -> str:
    from recsys.models.repository import PROFILE_KIND, get_repository
    from recsys.models.runtime import get_runtime
    from recsys.web.api.admin_models import model_stats

    repo = get_repository()
    rt = get_runtime()
    status = {row["strategy"]: row for row in rt.status()}
    groups: dict[str, list[dict[str, Any]]] = {}
    for v in repo.list_versions():
        row = status.get(v["strategy"], {})
        v = {
            **v,
            "nbytes": _dir_bytes(v["path"]),
            "loaded": row.get("loaded_version") == v["version"],
        }
        groups.setdefault(v["strategy"], []).append(v)
    strategies = []
    # Serving profiles (recsys tune) last: activating one activates the model versions it pins.
    for name, versions in sorted(groups.items(), key=lambda kv: (kv[0] == PROFILE_KIND, kv[0])):
        versions.sort(key=lambda v: v["version"], reverse=True)
        strategies.append(
            {
                "name": name,
                "versions": versions,
                "runtime": status.get(name),
                "rollback_target": repo.rollback_target(name),
                "stats": model_stats(name),
                "profile": name == PROFILE_KIND,
            }
        )
    return _fragment("models", strategies=strategies, ready=rt.ready(), **extra)


@ui.get("/models")
def models():
    """The Models screen (HTML fragment): versions, runtime state, stats and disk size."""
    return _models_screen()


def _model_action(strategy: str, what: str) -> str:
    from recsys.web.api import admin_models

    actor = _actor()
    try:
        if what == "activate":
            version = (request.form.get("version") or "").strip()
            out = admin_models.activate_version(strategy, version, actor)
            msg = f"{strategy}: {out['previous_version']} -> {out['version']} (activated)"
        elif what == "rollback":
            out = admin_models.rollback_version(strategy, actor)
            msg = f"{strategy}: {out['previous_version']} -> {out['version']} (rolled back)"
        elif what == "load":
            out = admin_models.load_model(strategy, None, actor)
            msg = f"{strategy}: loaded {out.get('loaded_version')}, kept preloaded"
        else:
            out = admin_models.unload_model(strategy, actor)
            msg = f"{strategy}: unloaded (reloads on next use)"
    except RecsysError as e:
        return _models_screen(error=e.description)
    return _models_screen(done=msg)


@ui.post("/models/<strategy>/<any(activate, rollback, load, unload):what>")
def model_action(strategy: str, what: str):
    """Activate, roll back, load or unload a strategy's model; answers the Models screen."""
    return _model_action(strategy, what)


# Live -----------------------------------------------------------------------------------------
@ui.get("/live.json")
def live_json():
    """Answers the service's metrics parsed by ``live.snapshot`` (JSON) for the Live screen,
    kept in the short shared history (``live.History``); with ``history=1`` also the kept
    snapshots before it (``history``), so the charts survive a page reload."""
    from recsys.ops import metrics
    from recsys.web.console.live import snapshot

    data, _ = metrics.exposition()
    snap = snapshot(data.decode())
    history = _live_history()
    try:
        earlier = history.recent() if request.args.get("history") == "1" else None
        history.add(snap)
    except Exception as e:  # noqa: BLE001 - Redis down: live figures still, no history
        log.warning("live history unavailable: %s", e)
        earlier = [] if request.args.get("history") == "1" else None
    if earlier is None:
        return snap
    return {**snap, "history": earlier}


def _live_history():
    """This app's ``live.History`` (Redis when the cache is, else this process's memory)."""
    from recsys.web.console.live import history_of

    return history_of(current_app._get_current_object())


# User inspector -------------------------------------------------------------------------------
def _history(user_id: str, limit: int = 20) -> list[dict[str, Any]] | None:
    from recsys.store.models import Event, Item, User

    with session_scope() as s:
        user = s.scalar(select(User).where(User.external_id == user_id))
        if user is None:
            return None
        rows = s.execute(
            select(Event.type, Event.ts, Item.external_id, Item.title)
            .join(Item, Item.id == Event.item_id)
            .where(Event.user_id == user.id)
            .order_by(Event.ts.desc(), Event.id.desc())
            .limit(limit)
        ).all()
    return [
        {
            "type": r.type,
            "at": r.ts.isoformat(timespec="seconds") + "Z",
            "item_id": r[2],
            "title": r[3],
        }
        for r in rows
    ]


def _titles(item_ids: list[str]) -> dict[str, str]:
    from recsys.store.models import Item

    if not item_ids:
        return {}
    with session_scope() as s:
        rows = s.execute(
            select(Item.external_id, Item.title).where(Item.external_id.in_(item_ids))
        ).all()
    return {r[0]: r[1] for r in rows}


@ui.get("/user")
def user():
    """The User inspector (HTML fragment): history, current list and experiment assignments."""
    from recsys.serving.experiments import get_experiments

    user_id = (request.args.get("user_id") or "").strip()[:128]
    if not user_id:
        return _fragment("user", user_id="")
    history = _history(user_id)
    recs = _user_list(user_id)
    titles = _titles([it["item_id"] for it in recs.get("items", [])])
    assignments = get_experiments(current_app._get_current_object()).assignments(user_id)
    return _fragment(
        "user",
        user_id=user_id,
        history=history,
        recs=recs,
        titles=titles,
        assignments=[a for a in assignments if a.get("variant")],
    )


# Experiments ----------------------------------------------------------------------------------
def _experiments_screen(**extra: Any) -> str:
    from recsys.serving import experiments, experiments_report

    with session_scope() as s:
        rows = experiments.list_all(s)
        reports = {}
        for e in rows:
            try:
                reports[e.name] = experiments_report.report(s, e.name)
            except Exception as err:  # noqa: BLE001 - one broken report must not hide the rest
                log.exception("experiment report %s failed", e.name)
                reports[e.name] = {"error": str(err)}
    return _fragment(
        "experiments",
        experiments=[e.to_dict() for e in reversed(rows)],
        reports=reports,
        strategy_names=sorted(get_settings().config().strategies),
        variant_rows=VARIANT_ROWS,
        **extra,
    )


@ui.get("/experiments")
def experiments_list():
    """The Experiments screen (HTML fragment): every experiment with its report."""
    return _experiments_screen()


def _variant(f, i: int, names: list[str]) -> dict[str, Any] | None:
    """Variant ``i`` of the experiment form, or None when its name is left empty."""
    name = (f.get(f"v{i}_name") or "").strip()
    if not name:
        return None
    raw = (f.get(f"v{i}_traffic") or "").strip()
    try:
        traffic = float(raw) / 100.0
    except ValueError:
        raise ValueError(f"variant {name}: traffic must be a percentage (got {raw!r})") from None
    config: dict[str, Any] = {}
    strategies: dict[str, dict[str, Any]] = {}
    off = set(f.getlist(f"v{i}_off"))
    for s in names:
        w = (f.get(f"v{i}_w_{s}") or "").strip()
        if w:
            try:
                strategies.setdefault(s, {})["weight"] = float(w)
            except ValueError:
                raise ValueError(f"variant {name}: weight of {s} must be a number") from None
        if s in off:
            strategies.setdefault(s, {})["enabled"] = False
    if strategies:
        config["strategies"] = strategies
    if f.get(f"v{i}_blend") in ("weighted", "rrf"):
        config["routing"] = {"blend": f[f"v{i}_blend"]}
    return {"name": name, "weight": traffic, "config": config}


def experiment_body(f) -> dict[str, Any]:
    """The ``POST /v1/admin/experiments`` body the experiment form stands for.

    Parameters
    ----------
    f : MultiDict
        The form: ``name``, ``start_at`` / ``stop_at`` (``datetime-local``, UTC; empty: none),
        and per variant row ``i``: ``v{i}_name`` (empty: row unused), ``v{i}_traffic`` (%),
        ``v{i}_blend`` (empty, ``weighted`` or ``rrf``), ``v{i}_off`` (strategies switched off,
        repeated) and ``v{i}_w_<strategy>`` (a blend weight; empty: unchanged).

    Returns
    -------
    dict[str, Any]
        The definition (validated by ``create_audited`` like the API's).

    Raises
    ------
    ValueError
        A traffic share or weight that is not a number.
    """
    names = sorted(get_settings().config().strategies)
    variants = [v for i in range(VARIANT_ROWS) if (v := _variant(f, i, names)) is not None]
    body: dict[str, Any] = {"name": (f.get("name") or "").strip(), "variants": variants}
    for key in ("start_at", "stop_at"):
        if (f.get(key) or "").strip():
            body[key] = f[key].strip() + "Z"  # the form's times are UTC
    return body


@ui.post("/experiments")
def experiment_create():
    """Create an experiment from the form (``experiment_body``); answers the screen, with the
    form as it was sent when the service refuses it."""
    from recsys.serving import experiments
    from recsys.web.api.experiments import create_audited

    form = request.form.to_dict(flat=True)
    form["_off"] = {k: request.form.getlist(k) for k in request.form if k.endswith("_off")}
    try:
        body = experiment_body(request.form)
        view = create_audited(body, _actor())
    except (ValueError, experiments.ExperimentError) as e:
        return _experiments_screen(error=str(e), form=form)
    return _experiments_screen(done=f"experiment {view.name} created")


@ui.post("/experiments/<name>/stop")
def experiment_stop(name: str):
    """Stop an experiment; answers the Experiments screen (with the error, if any)."""
    from recsys.serving import experiments
    from recsys.web.api.experiments import stop_audited

    try:
        stop_audited(name, _actor())
    except (RecsysError, experiments.ExperimentError) as e:
        return _experiments_screen(error=getattr(e, "description", None) or str(e))
    return _experiments_screen(done=f"experiment {name} stopped")


# Audit ----------------------------------------------------------------------------------------
@ui.get("/audit")
def audit_log():
    """The Audit log screen (HTML fragment): 50 entries from ``offset``, filtered."""
    a = request.args
    try:
        offset = max(0, min(int(a.get("offset") or 0), 1_000_000_000))
    except ValueError:
        offset = 0
    filters = {k: (a.get(k) or "").strip()[:256] or None for k in ("action", "actor", "target")}
    with session_scope() as s:
        page = audit.page(s, limit=50, offset=offset, **filters)
    return _fragment("audit", page=page, filters=filters)
