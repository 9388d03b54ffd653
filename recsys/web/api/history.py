"""A user's events (list, delete one, forget an item) and impressions (what was shown).

* ``GET /v1/users/<id>/events``: newest first, cursor paging (the cursor is the last event's
  time and id, so rows inserted meanwhile never shift a page).
* ``DELETE /v1/users/<id>/events/<event_id>`` and ``DELETE /v1/users/<id>/events?item_id=``:
  a shop's "forget this". The events (and, for an item, the impressions of it) are deleted in
  one transaction with an audit row (``events.delete``: who, which user, how many, the event
  ids; not the item, which is what the user asked to be forgotten), then the user's cached
  lists are dropped, so the next list no longer leans on them.
* ``GET /v1/users/<id>/neighbors``: users whose items overlap this user's most (cosine of the
  two item sets, from SQL: the user's last ``HISTORY_MAX_EVENTS`` events; dislikes aside).
* ``POST /v1/impressions``: one row per item shown, with its position, so that "shown but not
  clicked" can be read back (``recsys.store.impressions``). Written like ``POST /v1/events``:
  acknowledged after the commit, idempotent with an ``id``, unknown users created, unknown
  items as the events' policy says; the database down: 503 with ``Retry-After``. Impressions
  change no recommendation, so no cache is touched.

Personal data: every operation here needs an API key with ``events:write`` when keys are
configured.
"""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint
from flask import current_app
from sqlalchemy import and_, delete, desc, func, or_, select
from sqlalchemy.orm import aliased

from recsys.ops import audit
from recsys.store import session_scope
from recsys.store.db import dialect_insert
from recsys.store.models import Event, Impression, Item, User, utcnow
from recsys.web.api.catalog import decode_cursor, encode_cursor, existing_row
from recsys.web.api.events import batch_ids, drop_cached_lists, load_batch
from recsys.web.auth import request_actor, require_scope
from recsys.web.errors import NotFound, RecsysError
from recsys.web.schemas import (
    EventsDeletedOut,
    EventsOut,
    ForgetItemQuery,
    ImpressionIn,
    NeighborsOut,
    NeighborsQuery,
    UserEventsOut,
    UserEventsQuery,
    id_problem,
)

bp = APIBlueprint("history", __name__, url_prefix="/v1", tag="Events")

_impression = ImpressionIn()
# Row ids are SQL bigints: a larger number in a URL or cursor is no row (SQLite cannot bind it).
MAX_ROW_ID = 2**63 - 1


def _check_id(value: str, what: str = "user_id") -> None:
    if why := id_problem(value, what):
        raise RecsysError(why)


def _cursor(raw: str | None) -> tuple[Any, int] | None:
    """``(ts, id)`` of an events cursor, or None for the first page."""
    text = decode_cursor(raw)
    if text is None:
        return None
    from datetime import datetime

    ts, _, ident = text.rpartition("|")
    try:
        when, row = datetime.fromisoformat(ts), int(ident)
    except ValueError:
        when, row = None, -1
    if when is None or not 0 <= row <= MAX_ROW_ID:
        raise RecsysError("invalid cursor: pass the next_cursor of a previous page")
    return when, row


@bp.get("/users/<user_id>/events")
@require_scope("events:write")
@bp.input(UserEventsQuery, location="query", arg_name="q")
@bp.output(UserEventsOut)
@bp.doc(
    summary="A user's events, newest first (cursor pagination)",
    description="Follow `next_cursor` until it is null; `type` keeps one event type. 404 for "
    "an unknown user. With RECSYS_API_KEYS set: a key with scope events:write.",
    responses={404: "unknown user"},
)
def list_user_events(user_id: str, q: dict):
    """A user's events, newest first (cursor pagination)."""
    _check_id(user_id)
    after = _cursor(q["cursor"])
    with session_scope() as s:
        user = existing_row(s, User, user_id)
        stmt = (
            select(Event.id, Item.external_id, Event.type, Event.value, Event.ts)
            .join(Item, Item.id == Event.item_id)
            .where(Event.user_id == user.id)
            .order_by(Event.ts.desc(), Event.id.desc())
            .limit(q["limit"] + 1)
        )
        if q["type"] is not None:
            stmt = stmt.where(Event.type == q["type"])
        if after is not None:
            ts, ident = after
            stmt = stmt.where(or_(Event.ts < ts, and_(Event.ts == ts, Event.id < ident)))
        rows = s.execute(stmt).all()
    more = len(rows) > q["limit"]
    rows = rows[: q["limit"]]
    events = [
        {
            "event_id": ident,
            "item_id": item,
            "type": etype,
            "value": value,
            "timestamp": ts.isoformat() + "Z",
        }
        for ident, item, etype, value, ts in rows
    ]
    last = f"{rows[-1][4].isoformat()}|{rows[-1][0]}" if more and rows else None
    return {"user_id": user_id, "events": events, "next_cursor": encode_cursor(last)}


def _forget(user_id: str, item_id: str | None, event_id: int | None) -> dict[str, Any]:
    """Delete one event of the user, or every event and impression of one item; audited; the
    user's cached lists dropped after the commit."""
    app = current_app._get_current_object()
    with session_scope(app) as s:
        user = existing_row(s, User, user_id, lock=True)
        where = [Event.user_id == user.id]
        impressions = 0
        if event_id is not None:
            where.append(Event.id == event_id)
        else:
            item = s.scalar(select(Item.id).where(Item.external_id == item_id))
            where.append(Event.item_id == (item if item is not None else -1))
            if item is not None:
                impressions = s.execute(
                    delete(Impression).where(
                        Impression.user_id == user.id, Impression.item_id == item
                    )
                ).rowcount
        ids = list(s.scalars(delete(Event).where(*where).returning(Event.id)))
        if event_id is not None and not ids:
            raise NotFound(f"user {user_id!r} has no event {event_id}")
        if ids or impressions:
            audit.record(
                s,
                request_actor(),
                "events.delete",
                f"user:{user_id}",
                None,
                {
                    "by": "event" if event_id is not None else "item",
                    "events_deleted": len(ids),
                    "event_ids": sorted(ids)[:1000],
                    "impressions_deleted": impressions,
                },
            )
    drop_cached_lists(app, [user_id], "a user's events were deleted")
    return {
        "user_id": user_id,
        "item_id": item_id,
        "event_id": event_id,
        "events_deleted": len(ids),
        "impressions_deleted": impressions,
    }


@bp.delete("/users/<user_id>/events/<int:event_id>")
@require_scope("events:write")
@bp.output(EventsDeletedOut)
@bp.doc(
    summary="Delete one of a user's events",
    description="`event_id` as `GET /v1/users/<id>/events` lists it. Audited; the user's "
    "cached lists are dropped. 404 for an unknown user or an event not theirs.",
    responses={404: "unknown user, or no such event of theirs"},
)
def delete_user_event(user_id: str, event_id: int):
    """Delete one of a user's events."""
    _check_id(user_id)
    if event_id > MAX_ROW_ID:
        raise NotFound(f"user {user_id!r} has no event {event_id}")
    return _forget(user_id, None, event_id)


@bp.delete("/users/<user_id>/events")
@require_scope("events:write")
@bp.input(ForgetItemQuery, location="query", arg_name="q")
@bp.output(EventsDeletedOut)
@bp.doc(
    summary="Forget an item for a user: delete their events and impressions of it",
    description='A shop\'s "forget this": every event of the user on `item_id` and every '
    "impression of it go in one transaction (0 when there were none). Audited; the user's "
    "cached lists are dropped, so the next list is computed without them. Models trained "
    "before keep what they learnt until the next training run.",
    responses={404: "unknown user"},
)
def delete_user_item_events(user_id: str, q: dict):
    """Forget an item for a user: delete their events and impressions of it."""
    _check_id(user_id)
    return _forget(user_id, q["item_id"], None)


@bp.post("/impressions")
@require_scope("events:write")
@bp.input(ImpressionIn, arg_name="_doc", validation=False)
@bp.output(EventsOut, status_code=201)
@bp.doc(
    summary="Record what was shown: one list or a list of lists",
    description="Body: one impression object (a user, the `items` in the order shown) or a "
    "JSON list of up to EVENTS_MAX_BATCH of them. Stored one row per item with its position, "
    "so that shown-but-not-clicked can be used by models and experiments. `received` / "
    "`inserted` / `duplicates` count lists; a list whose `id` was already stored inserts "
    "nothing (200 when every list was). Unknown users are created, unknown items as "
    "POST /v1/events does. With RECSYS_API_KEYS set: a key with scope events:write.",
    responses={200: "every list was already stored (duplicates)"},
)
def post_impressions(_doc=None):
    """Record what was shown: one list or a list of lists."""
    shown = load_batch(_impression, "impression")
    counts = store_impressions(shown)
    return counts, 201 if counts["inserted"] else 200


def store_impressions(shown: list[dict[str, Any]]) -> dict[str, int]:
    """Store loaded impressions in one transaction (one row per item shown).

    Parameters
    ----------
    shown : list[dict[str, Any]]
        Objects loaded by ``ImpressionIn``.

    Returns
    -------
    dict[str, int]
        ``{"received", "inserted", "duplicates"}``, counted in lists (not items).

    Raises
    ------
    RecsysError
        422 when the lists name unknown items the server may not create (nothing is stored).
    """
    app = current_app._get_current_object()
    flat = [{"item_id": i} for one in shown for i in one["items"]]
    with session_scope(app) as s:
        users, items = batch_ids(s, app, (one["user_id"] for one in shown), flat)
        now = utcnow()
        rows = [
            {
                "user_id": users[one["user_id"]],
                "item_id": items[item],
                "position": pos,
                "context": one["context"],
                "request_id": one["request_id"],
                "ts": one["timestamp"] or now,
                "idem_key": f"api:{one['id']}:{pos}" if one["id"] is not None else None,
            }
            for one in shown
            for pos, item in enumerate(one["items"])
        ]
        stmt = dialect_insert(s, Impression).values(rows)
        stmt = stmt.on_conflict_do_nothing(index_elements=["idem_key"]).returning(
            Impression.idem_key, Impression.position
        )
        stored = s.execute(stmt).all()
    # A list counts as inserted when its first item was (a list is stored whole or not at all).
    inserted = sum(1 for _, pos in stored if pos == 0)
    return {"received": len(shown), "inserted": inserted, "duplicates": len(shown) - inserted}


# Users sharing the most items are scored (cosine) among this many, per request.
NEIGHBOR_CANDIDATES = 200


@bp.get("/users/<user_id>/neighbors")
@require_scope("catalog:write")
@bp.input(NeighborsQuery, location="query", arg_name="q")
@bp.output(NeighborsOut)
@bp.doc(
    summary="Users most like a user (items in common)",
    description="The users whose items overlap this user's most: cosine similarity of the two "
    "item sets (any event type but dislike; this user's last HISTORY_MAX_EVENTS events), "
    "among the 200 users sharing the most items. 404 for an unknown user; an empty list for a "
    "user with no events. Other users' ids: with RECSYS_API_KEYS set, a key with scope "
    "catalog:write.",
    responses={404: "unknown user"},
)
def user_neighbors(user_id: str, q: dict):
    """Users most like a user (items in common)."""
    from recsys.config import get_config

    _check_id(user_id)
    limit = get_config(current_app).history_max_events
    with session_scope() as s:
        user = existing_row(s, User, user_id)
        recent = (
            select(Event.item_id)
            .where(Event.user_id == user.id, Event.type != "dislike")
            .order_by(Event.ts.desc(), Event.id.desc())
            .limit(limit)
            .subquery()
        )
        mine = len(set(s.scalars(select(recent.c.item_id))))
        other = aliased(Event)
        shared = func.count(other.item_id.distinct()).label("shared")
        top = s.execute(
            select(other.user_id, shared)
            .where(
                other.item_id.in_(select(recent.c.item_id)),
                other.user_id != user.id,
                other.type != "dislike",
            )
            .group_by(other.user_id)
            .order_by(desc(shared), other.user_id)
            .limit(NEIGHBOR_CANDIDATES)
        ).all()
        ids = [u for u, _ in top]
        sizes = dict(
            s.execute(
                select(Event.user_id, func.count(Event.item_id.distinct()))
                .where(Event.user_id.in_(ids), Event.type != "dislike")
                .group_by(Event.user_id)
            ).all()
        )
        names = dict(s.execute(select(User.id, User.external_id).where(User.id.in_(ids))).all())
    scored = sorted(
        (
            (n / ((mine * sizes[u]) ** 0.5), n, names[u])
            for u, n in top
            if sizes.get(u) and u in names
        ),
        key=lambda t: (-t[0], -t[1], t[2]),
    )[: q["n"]]
    return {
        "user_id": user_id,
        "neighbors": [
            {"user_id": name, "score": round(score, 6), "shared_items": n}
            for score, n, name in scored
        ],
    }
