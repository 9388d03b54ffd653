"""Event ingestion: ``POST /v1/events`` with one event or a list of them.

Acknowledged only after the SQL commit. Unknown users are created; unknown items are created as
stub items (available, no title or category: the catalogue feed fills them in later with
``PUT /v1/items/<id>``), because an event is worth keeping even when the catalogue sync lags.
An ``id`` is the client's idempotency key (stored as ``api:<id>``): sending it again inserts
nothing and counts as a duplicate. A list with any invalid event is refused as a whole (422,
naming each bad index and field), so a client never has to guess what was stored.

After the commit every affected user's cached recommendations are invalidated, so the next
request sees the new history (purchases excluded, maybe a cold -> warm route change, fresh user
vectors) without retraining.
"""

from __future__ import annotations

import logging
from typing import Any

from apiflask import APIBlueprint, abort
from flask import current_app, request
from marshmallow import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from recsys.cache import get_cache
from recsys.schemas import EventIn, EventsOut
from recsys.settings import CACHE_EPOCH, get_settings
from recsys.store import session_scope
from recsys.store.db import dialect_insert
from recsys.store.models import Event, Item, User, utcnow

log = logging.getLogger(__name__)

bp = APIBlueprint("events", __name__, url_prefix="/v1", tag="Events")

_schema = EventIn()


def ensure_ids(s: Session, model, external_ids: set[str], **defaults: Any) -> dict[str, int]:
    """external id -> row id, creating missing rows (concurrency-safe: ON CONFLICT DO NOTHING)."""
    if not external_ids:
        return {}
    wanted = sorted(external_ids)
    found = dict(
        s.execute(select(model.external_id, model.id).where(model.external_id.in_(wanted))).all()
    )
    missing = [x for x in wanted if x not in found]
    if missing:
        now = utcnow()
        rows = [
            {"external_id": x, "created_at": now, "updated_at": now, **defaults} for x in missing
        ]
        s.execute(
            dialect_insert(s, model)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["external_id"])
        )
        found.update(
            s.execute(
                select(model.external_id, model.id).where(model.external_id.in_(missing))
            ).all()
        )
    return found


def ingest(events: list[dict[str, Any]]) -> dict[str, int]:
    """Store validated events in one transaction; returns counts. Invalidates caches after."""
    app = current_app._get_current_object()
    with session_scope(app) as s:
        users = ensure_ids(s, User, {e["user_id"] for e in events}, attributes={})
        items = ensure_ids(
            s,
            Item,
            {e["item_id"] for e in events},
            title="",
            description="",
            categories=[],
            available=True,
            attributes={},
        )
        now = utcnow()
        rows = [
            {
                "user_id": users[e["user_id"]],
                "item_id": items[e["item_id"]],
                "type": e["type"],
                "value": float(e["value"]),
                "ts": e["timestamp"] or now,
                "idem_key": f"api:{e['id']}" if e["id"] is not None else None,
            }
            for e in events
        ]
        stmt = dialect_insert(s, Event).values(rows)
        stmt = stmt.on_conflict_do_nothing(index_elements=["idem_key"]).returning(Event.id)
        inserted = len(s.execute(stmt).all())
    # Durable now. Invalidate after the commit so no reader can cache the pre-event history
    # under the new token.
    if not get_cache(app).invalidate_users({e["user_id"] for e in events}):
        get_settings(app).bump_version(
            "events arrived while the cache was unreachable", CACHE_EPOCH
        )
    return {"received": len(events), "inserted": inserted, "duplicates": len(events) - inserted}


@bp.post("/events")
@bp.input(EventIn, arg_name="_doc", validation=False)
@bp.output(EventsOut, status_code=201)
@bp.doc(
    summary="Record one event or a list of events",
    description="Body: one event object, or a JSON list of up to EVENTS_MAX_BATCH (default "
    "1000) of them. `type` is one of view, click, cart, purchase, rating, dislike; `timestamp` "
    "is ISO-8601 or unix seconds (default: now); `id` is an idempotency key. 201 when "
    "something was inserted, 200 when every event was a duplicate. Unknown users and items are "
    "created (items as available stubs). Any invalid event rejects the whole list (422).",
    responses={200: "every event was already stored (duplicates)"},
)
def post_events(_doc=None):
    payload = request.get_json(silent=True)
    if payload is None:
        abort(400, message="body must be JSON: an event object or a list of events")
    single = isinstance(payload, dict)
    batch = [payload] if single else payload
    if not isinstance(batch, list):
        abort(422, message="body must be an event object or a list of events")
    limit = int(current_app.config.get("EVENTS_MAX_BATCH", 1000))
    if not batch:
        abort(422, message="empty list: send at least one event")
    if len(batch) > limit:
        abort(413, message=f"at most {limit} events per request (got {len(batch)})")
    events, errors = [], {}
    for i, raw in enumerate(batch):
        if not isinstance(raw, dict):
            errors[i] = {"_schema": ["each event must be an object"]}
            continue
        try:
            events.append(_schema.load(raw))
        except ValidationError as e:
            errors[i] = e.messages
    if errors:
        detail = {"json": errors[0]} if single else {"json": errors}
        where = "" if single else f" at index {', '.join(str(i) for i in sorted(errors)[:10])}"
        abort(422, message=f"invalid event{where}; nothing was stored", detail=detail)
    counts = ingest(events)
    return counts, 201 if counts["inserted"] else 200
