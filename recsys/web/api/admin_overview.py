"""Admin: how the service is doing, on one page (``GET /v1/admin/overview``; console Overview).

Cheap on a big store, and computed at most once per ``TTL_S`` per process:

* counts of users, items and events: PostgreSQL's planner estimate (``pg_class.reltuples``,
  kept by autovacuum) once a table is past ``EXACT_BELOW`` rows, an exact ``COUNT(*)`` below it
  (and always on SQLite); the answer says which (``estimated``);
* events per day: one ``GROUP BY date`` over the ``ix_events_ts`` index, bounded to ``DAYS``
  days (ending today, or at the newest event when nothing happened in that window: imported
  history);
* requests, errors, cache hits and degraded answers: the service's own metrics (every worker
  under gunicorn), cumulative since it started;
* the active model versions and profile: a few rows; the last runs: one indexed query per kind.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

from apiflask import APIBlueprint
from flask import current_app
from sqlalchemy import func, select, text

from recsys.ops import jobs
from recsys.store import session_scope
from recsys.store.models import Event, Item, ModelVersion, User, utcnow
from recsys.web.auth import check_admin

bp = APIBlueprint("admin_overview", __name__, url_prefix="/v1/admin", tag="Admin")

#: Seconds an overview is reused by this process.
TTL_S = 15.0
#: Days of the events-per-day series.
DAYS = 30
#: Tables with fewer (estimated) rows are counted exactly.
EXACT_BELOW = 200_000

_lock = threading.Lock()
_EXT = "recsys.overview"
#: The cache's clock (tests move it).
clock = time.monotonic


@bp.before_request
def _admin_only():
    check_admin()


def _count(s, model, table: str) -> tuple[int, bool]:
    """(rows, estimated): the planner's estimate on PostgreSQL for big tables, else exact."""
    if s.get_bind().dialect.name == "postgresql":
        est = s.execute(
            text("SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(:t)"), {"t": table}
        ).scalar()
        if est is not None and est >= EXACT_BELOW:
            return int(est), True
    return int(s.scalar(select(func.count()).select_from(model)) or 0), False


def _per_day(s) -> dict[str, Any]:
    now = utcnow()
    start = (now - timedelta(days=DAYS - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    newest = s.scalar(select(func.max(Event.ts)))
    end, anchored = now, "today"
    if newest is not None and newest < start:  # only older (imported) history: show its end
        end, anchored = newest, "newest event"
        start = (end - timedelta(days=DAYS - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    day = func.date(Event.ts)
    rows = s.execute(
        select(day, func.count()).where(Event.ts >= start, Event.ts <= end).group_by(day)
    ).all()
    counts = {str(d)[:10]: int(n) for d, n in rows}
    days = [(start + timedelta(days=k)).date().isoformat() for k in range(DAYS)]
    return {
        "days": days,
        "counts": [counts.get(d, 0) for d in days],
        "ending": anchored,
        "newest_event": None if newest is None else newest.isoformat(timespec="seconds") + "Z",
    }


def _models(s) -> list[dict[str, Any]]:
    now = utcnow()
    rows = s.scalars(
        select(ModelVersion).where(ModelVersion.is_active.is_(True)).order_by(ModelVersion.strategy)
    ).all()
    return [
        {
            "strategy": r.strategy,
            "version": r.version,
            "created_at": r.created_at.isoformat(timespec="seconds") + "Z",
            "age_seconds": round((now - r.created_at).total_seconds()),
            "metrics": {k: v for k, v in (r.metrics or {}).items() if not isinstance(v, dict)},
        }
        for r in rows
    ]


def _traffic() -> dict[str, Any]:
    from recsys.ops import metrics
    from recsys.ops.livestats import snapshot

    snap = snapshot(metrics.exposition()[0].decode())
    hits, misses = snap["cache_hits"], snap["cache_misses"]
    return {
        "requests": int(snap["requests"]),
        "errors": int(snap["errors"]),
        "error_ratio": snap["errors"] / snap["requests"] if snap["requests"] else None,
        "cache_hits": int(hits),
        "cache_misses": int(misses),
        "cache_hit_ratio": hits / (hits + misses) if hits + misses else None,
        "shed": int(snap["shed"]),
        "degraded": {k: int(v) for k, v in sorted(snap["degraded"].items())},
        "since": "the service started (every worker)",
    }


def compute() -> dict[str, Any]:
    """The overview, computed now (``overview`` caches it).

    Returns
    -------
    dict[str, Any]
        ``store`` (``users``, ``items``, ``items_available``, ``events``, ``estimated``,
        ``events_per_day``), ``traffic`` (requests, errors, cache, degraded by reason),
        ``models`` (active versions with their age), ``profile`` (the active one, its
        validation figures and guard; None when none), ``jobs`` (``latest`` per kind,
        ``active``) and ``computed_at``.
    """
    with session_scope() as s:
        users, est_u = _count(s, User, "users")
        items, est_i = _count(s, Item, "items")
        events, est_e = _count(s, Event, "events")
        available = None
        if not est_i:
            available = int(
                s.scalar(select(func.count()).select_from(Item).where(Item.available.is_(True)))
                or 0
            )
        store = {
            "users": users,
            "items": items,
            "items_available": available,
            "events": events,
            "estimated": {"users": est_u, "items": est_i, "events": est_e},
            "events_per_day": _per_day(s),
        }
        models = _models(s)
        jobs.reap_lost(s)
        job_info = {"latest": jobs.latest(s), "active": jobs.active(s)}
    from recsys.models.repository import PROFILE_KIND

    profile = next((m for m in models if m["strategy"] == PROFILE_KIND), None)
    return {
        "store": store,
        "traffic": _traffic(),
        "models": [m for m in models if m["strategy"] != PROFILE_KIND],
        "profile": profile,
        "jobs": job_info,
        "computed_at": utcnow().isoformat(timespec="seconds") + "Z",
    }


def overview(fresh: bool = False) -> dict[str, Any]:
    """The overview, reused for ``TTL_S`` seconds by this process (per app).

    Parameters
    ----------
    fresh : bool
        Compute it now even if a recent one is kept.

    Returns
    -------
    dict[str, Any]
        ``compute``'s answer, plus ``age_seconds`` (how old the figures are).
    """
    ext = current_app.extensions
    now = clock()
    with _lock:
        kept = ext.get(_EXT)
    if kept is None or fresh or now - kept[0] >= TTL_S:
        kept = (now, compute())
        with _lock:
            ext[_EXT] = kept
    return {**kept[1], "age_seconds": round(now - kept[0], 1)}


@bp.get("/overview")
@bp.doc(
    summary="How the service is doing: store, traffic, models, profile, last runs",
    description=f"Computed at most every {TTL_S:.0f} s per process; counts of big PostgreSQL "
    "tables are the planner's estimates (`store.estimated`).",
)
def get_overview():
    """Users, items, events (and per day), requests, errors, cache hit ratio, degraded answers,
    active models and their age, the active profile and its validation score, the last runs."""
    return overview()
