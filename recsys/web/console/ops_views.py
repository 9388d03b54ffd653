"""Console screens for running the service day to day: Overview, Jobs and the Item browser
(fragments under ``/admin/ui/...``, on ``views.ui``: the same admin token, the same rules).

The data comes from the admin API's functions (``recsys.web.api.admin_overview``,
``recsys.web.api.admin_jobs``), so the console and ``/v1/admin`` answer alike; a retrain started
here is audited and runs as a CLI child process, exactly as ``POST /v1/admin/jobs``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from flask import current_app, render_template, request
from sqlalchemy import String, cast, func, or_, select

from recsys.store import session_scope
from recsys.web.console.views import _actor, _routing_served, ui
from recsys.web.errors import RecsysError

ITEMS_PAGE = 50
NEIGHBOURS = 10
ITEM_EVENTS = 20
#: Events of one item counted at most (the count says "at least" beyond).
ITEM_EVENTS_COUNT_CAP = 100_000


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s // size} {unit}"
    return f"{s} s"


# Overview -------------------------------------------------------------------------------------
@ui.get("/overview")
def overview():
    """The Overview screen (HTML fragment): store, traffic, models, profile, runs, routing."""
    from recsys.web.api.admin_overview import overview as compute

    data = compute(fresh=request.args.get("fresh") == "1")
    return render_template(
        "console/overview.html",
        o=data,
        routing=_routing_served(),
        age=_age,
        per_day=json.dumps(data["store"]["events_per_day"]),
    )


# Jobs -----------------------------------------------------------------------------------------
def _jobs_list(**extra: Any) -> str:
    from recsys.ops.jobs import ACTIVE
    from recsys.web.api.admin_jobs import list_recent

    rows = list_recent(limit=30)
    running = any(r["outcome"] in ACTIVE for r in rows)
    return render_template("console/_jobs_list.html", jobs=rows, running=running, **extra)


def _jobs_screen(**extra: Any) -> str:
    from strategies import available_strategies, opt_in

    names = available_strategies()
    return render_template(
        "console/jobs.html",
        strategies=[(n, not opt_in(n)) for n in names],
        list_html=_jobs_list(),
        **extra,
    )


@ui.get("/jobs")
def jobs_screen():
    """The Jobs screen (HTML fragment): start a retrain or re-tune, and every recorded run."""
    return _jobs_screen()


@ui.get("/jobs/list")
def jobs_list():
    """The list of runs alone (it polls itself every second while one is queued or running)."""
    return _jobs_list()


@ui.post("/jobs/<any(train, tune):kind>")
def job_start(kind: str):
    """Start a retrain (form field ``strategies``, repeated) or a re-tune (``budget``); answers
    the Jobs screen with the new job, or the refusal (another job runs, a bad value)."""
    from recsys.web.api.admin_jobs import start_job

    args = {"strategies": request.form.getlist("strategies"), "budget": request.form.get("budget")}
    try:
        job = start_job(kind, args, _actor())
    except RecsysError as e:
        return _jobs_screen(error=e.description)
    return _jobs_screen(done=f"{kind} job #{job['id']} started", started=job["id"])


# Item browser ---------------------------------------------------------------------------------
def _search(q: str, category: str, availability: str) -> list[dict[str, Any]]:
    from recsys.store.models import Item

    stmt = select(Item)
    if q:
        like = f"%{_escape_like(q)}%"
        stmt = stmt.where(
            or_(
                Item.external_id == q,
                Item.external_id.ilike(like, escape="\\"),
                Item.title.ilike(like, escape="\\"),
            )
        )
    if category:
        # categories is a JSON list: match the quoted name in its text (both dialects).
        stmt = stmt.where(
            cast(Item.categories, String).ilike(f'%"{_escape_like(category)}"%', escape="\\")
        )
    if availability in ("yes", "no"):
        stmt = stmt.where(Item.available.is_(availability == "yes"))
    stmt = stmt.order_by((Item.external_id == q).desc(), Item.id).limit(ITEMS_PAGE)
    with session_scope() as s:
        rows = s.scalars(stmt).all()
        return [
            {
                "item_id": r.external_id,
                "title": r.title,
                "categories": r.categories or [],
                "price": r.price,
                "available": r.available,
            }
            for r in rows
        ]


def _escape_like(raw: str) -> str:
    return raw.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@ui.get("/items")
def items_search():
    """The Item browser's results (HTML fragment): items whose id or title contains ``q``,
    in ``category``, available or not (``available``: yes, no or any); 50 at most."""
    a = request.args
    q = (a.get("q") or "").strip()[:128]
    category = (a.get("category") or "").strip()[:128]
    availability = a.get("available") or "any"
    rows = _search(q, category, availability)
    return render_template(
        "console/items.html",
        rows=rows,
        q=q,
        category=category,
        available=availability,
        page=ITEMS_PAGE,
    )


def _neighbours(item_id: str) -> list[dict[str, Any]]:
    """Each loaded strategy's most similar items to ``item_id`` (those that can say)."""
    from recsys.models.runtime import get_runtime
    from recsys.serving.settings_store import get_settings

    rt = get_runtime()
    out = []
    for name, sc in sorted(get_settings().config().strategies.items()):
        entry: dict[str, Any] = {"strategy": name, "enabled": sc.enabled, "items": []}
        try:
            lm = rt.get(name)
        except Exception as e:  # noqa: BLE001 - one strategy's failure is shown, not raised
            entry["note"] = f"not loaded: {getattr(e, 'description', e)}"
            out.append(entry)
            continue
        if lm is None:
            entry["note"] = "no active model"
        elif item_id not in lm.items:
            entry["note"] = "the model does not know this item (newer than its training)"
        else:
            try:
                ids, scores = lm.model.similar_items(
                    np.array([lm.items.index(item_id)]), NEIGHBOURS
                )
            except NotImplementedError:
                entry["note"] = "no item similarity in this strategy"
            else:
                keep = ids[0] >= 0
                names = lm.items.external(ids[0][keep].tolist())
                entry["version"] = lm.version
                entry["items"] = [
                    {"item_id": i, "score": float(sc_)}
                    for i, sc_ in zip(names, scores[0][keep].tolist(), strict=True)
                ]
        out.append(entry)
    return out


def _item_events(item_pk: int) -> tuple[list[dict[str, Any]], int, dict[str, int]]:
    from recsys.store.models import Event, User

    with session_scope() as s:
        rows = s.execute(
            select(Event.type, Event.ts, User.external_id)
            .join(User, User.id == Event.user_id)
            .where(Event.item_id == item_pk)
            .order_by(Event.ts.desc(), Event.id.desc())
            .limit(ITEM_EVENTS)
        ).all()
        capped = (
            select(Event.type).where(Event.item_id == item_pk).limit(ITEM_EVENTS_COUNT_CAP)
        ).subquery()
        by_type = dict(s.execute(select(capped.c.type, func.count()).group_by(capped.c.type)).all())
    recent = [
        {"type": r.type, "at": r.ts.isoformat(timespec="seconds") + "Z", "user_id": r[2]}
        for r in rows
    ]
    return recent, sum(by_type.values()), {k: int(v) for k, v in sorted(by_type.items())}


@ui.get("/items/<path:item_id>")
def item_detail(item_id: str):
    """One item (HTML fragment): its fields and availability, its recent events, and its
    neighbours per strategy (with titles)."""
    from recsys.store.models import Item
    from recsys.web.console.views import _titles

    item_id = item_id[:128]
    with session_scope() as s:
        row = s.scalar(select(Item).where(Item.external_id == item_id))
        item = None
        if row is not None:
            item = {
                "item_id": row.external_id,
                "title": row.title,
                "description": row.description,
                "categories": row.categories or [],
                "price": row.price,
                "image_url": row.image_url,
                "available": row.available,
                "attributes": row.attributes or {},
                "updated_at": row.updated_at.isoformat(timespec="seconds") + "Z",
                "pk": row.id,
            }
    if item is None:
        return render_template("console/item.html", item=None, item_id=item_id)
    recent, total, by_type = _item_events(item["pk"])
    neighbours = _neighbours(item_id)
    titles = _titles(sorted({i["item_id"] for n in neighbours for i in n["items"]}))
    return render_template(
        "console/item.html",
        item=item,
        item_id=item_id,
        recent=recent,
        total=total,
        capped=total >= ITEM_EVENTS_COUNT_CAP,
        by_type=by_type,
        neighbours=neighbours,
        titles=titles,
        app_name=current_app.name,
    )
