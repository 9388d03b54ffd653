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
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from apiflask import APIBlueprint, abort
from flask import current_app, request
from marshmallow import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from recsys.config import get_config
from recsys.ops import metrics
from recsys.serving.cache import get_cache, histories
from recsys.serving.history import unix_micros, unix_seconds
from recsys.serving.refresh import Job, get_refresher
from recsys.serving.settings_store import get_settings
from recsys.store import session_scope
from recsys.store.db import dialect_insert
from recsys.store.models import Event, Item, User, utcnow
from recsys.store.versions import CACHE_EPOCH
from recsys.web.auth import require_scope
from recsys.web.errors import RecsysError
from recsys.web.schemas import EventIn, EventsOut

log = logging.getLogger(__name__)

bp = APIBlueprint("events", __name__, url_prefix="/v1", tag="Events")

_schema = EventIn()


def blank_item() -> dict[str, Any]:
    """The columns of an item created because an event or an edit named an unknown id.

    Returns
    -------
    dict[str, Any]
        Column name -> value: empty title, description, categories and attributes, available.
    """
    return {"title": "", "description": "", "categories": [], "available": True, "attributes": {}}


def ensure_ids(
    s: Session,
    model,
    external_ids: set[str],
    refuse: Callable[[list[str]], None] | None = None,
    **defaults: Any,
) -> dict[str, int]:
    """external id -> row id, creating missing rows (concurrency-safe: ON CONFLICT DO NOTHING).
    ``refuse(missing)``, when given, is called with the ids about to be created and may raise
    instead.

    Parameters
    ----------
    s : Session
        Open SQLAlchemy session; the caller commits.
    model : type
        The ORM class with ``external_id`` and ``id`` columns (``User`` or ``Item``).
    external_ids : set[str]
        External ids wanted; empty answers ``{}`` without a query.
    refuse : Callable[[list[str]], None] or None
        Called with the sorted ids about to be created; it may raise to stop the creation.
        None creates them all.
    **defaults : Any
        Column values of the rows created (``created_at`` / ``updated_at`` are set to now).

    Returns
    -------
    dict[str, int]
        External id -> row id, for every id of ``external_ids``.
    """
    if not external_ids:
        return {}
    wanted = sorted(external_ids)
    found = dict(
        s.execute(select(model.external_id, model.id).where(model.external_id.in_(wanted))).all()
    )
    missing = [x for x in wanted if x not in found]
    if missing and refuse is not None:
        refuse(missing)
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


def new_items_policy(app, events: list[dict[str, Any]]) -> Callable[[list[str]], None]:
    """What to do with item ids of ``events`` the catalogue does not know (EVENTS_CREATE_ITEMS,
    EVENTS_MAX_NEW_ITEMS): refuse the batch (422) or let them be created, up to the limit.

    Parameters
    ----------
    app : Flask
        The app (its settings).
    events : list[dict[str, Any]]
        The loaded objects, each with an ``item_id``.

    Returns
    -------
    Callable[[list[str]], None]
        ``refuse(missing)`` for ``ensure_ids``: raises a 422 ``RecsysError`` or returns.
    """
    create = get_config(app).events_create_items
    limit = get_config(app).events_max_new_items

    def refuse(missing: list[str]) -> None:
        unknown = set(missing)
        where = [i for i, e in enumerate(events) if e["item_id"] in unknown][:10]
        sample = ", ".join(repr(x) for x in missing[:5])
        if not create:
            raise RecsysError(
                f"unknown item(s) {sample} (at index {', '.join(map(str, where))}); this server "
                "does not create items from events (EVENTS_CREATE_ITEMS=false): add them with "
                "PUT /v1/items/<id> first; nothing was stored",
                422,
            )
        if len(missing) > limit:
            raise RecsysError(
                f"{len(missing)} unknown items in one request (at most {limit} may be created "
                f"from events: EVENTS_MAX_NEW_ITEMS), e.g. {sample}; nothing was stored",
                422,
            )

    return refuse


def batch_ids(
    s: Session, app, user_ids: Iterable[str], with_items: list[dict[str, Any]]
) -> tuple[dict[str, int], dict[str, int]]:
    """Internal ids of a write batch's users (created as needed) and items (created or refused
    by ``new_items_policy``), in the batch's transaction.

    Parameters
    ----------
    s : Session
        The batch's session.
    app : Flask
        The app (its settings).
    user_ids : Iterable[str]
        External user ids.
    with_items : list[dict[str, Any]]
        Objects each with an ``item_id`` (the 422 names their positions).

    Returns
    -------
    tuple of (dict[str, int], dict[str, int])
        External -> internal ids of the users and of the items.
    """
    users = ensure_ids(s, User, set(user_ids), attributes={})
    items = ensure_ids(
        s,
        Item,
        {e["item_id"] for e in with_items},
        refuse=new_items_policy(app, with_items),
        **blank_item(),
    )
    return users, items


def drop_cached_lists(
    app,
    users: Iterable[str],
    why: str,
    refresh: bool = False,
    appends: dict[str, tuple[str, list]] | None = None,
) -> None:
    """Invalidate ``users``' cached lists; the cache unreachable, every cached list (the cache
    epoch is bumped), so that no list computed before the change is served after it.

    Parameters
    ----------
    app : Flask
        The app.
    users : Iterable[str]
        External user ids.
    why : str
        What changed ("events arrived"), for the epoch bump's log line.
    refresh : bool
        Refresh-ahead: recompute, in the background, the lists of those users who asked
        recently (``recsys.serving.refresh``), so that their next read is a hit.
    appends : dict, optional
        The users' new events for their histories kept in Redis (``history_appends``).

    Returns
    -------
    None
    """
    refresher = get_refresher(app) if refresh else None
    asks: list | None = [] if refresher is not None else None
    if not get_cache(app).invalidate_users(set(users), asks, appends):
        get_settings(app).bump_version(f"{why} while the cache was unreachable", CACHE_EPOCH)
    if refresher is not None and asks:
        # Refresh-ahead: their lists are recomputed in the background, so the next read is a
        # hit; the tokens were set after the commit.
        refresher.schedule([Job(*a) for a in asks])


# What the insert hands back for ``history_appends``: as the history read returns it.
RETURNED = (
    Event.id,
    Event.user_id,
    Event.item_id,
    Event.type,
    Event.value,
    unix_seconds(Event.ts),
    unix_micros(Event.ts),
)


def history_appends(
    app, stored: list, users: dict[str, int], items: dict[str, int]
) -> dict[str, tuple[str, list]] | None:
    """The stored events as ``ResultCache.invalidate_users``'s ``appends``: per user, the
    history key and ``recsys.serving.cache.histories.APPEND``'s arguments (the events as
    lines, newest first, as SQL orders them; their oldest and newest times; their count; the
    most events a kept history may hold).

    Parameters
    ----------
    app : Flask
        The app (its cache, versions and ``HISTORY_MAX_EVENTS``).
    stored : list
        The inserted rows, ``RETURNED``'s columns.
    users, items : dict of str to int
        External -> row ids of the batch's users and items.

    Returns
    -------
    dict or None
        None when histories are not kept (the in-process cache).
    """
    cache = get_cache(app)
    limit = get_config(app).history_max_events
    epoch = get_settings(app).versions().epoch
    if not stored or cache.history_key("", epoch, limit) is None:
        return None
    user_of = {v: k for k, v in users.items()}
    item_of = {v: k for k, v in items.items()}
    per_user: dict[int, list] = {}
    for row in stored:
        per_user.setdefault(row[1], []).append(row)
    out = {}
    for uid, rows in per_user.items():
        rows.sort(key=lambda r: (r[6], r[0]), reverse=True)  # newest first: (ts, id) desc
        text = histories.lines(
            [item_of[r[2]] for r in rows],
            [r[3] for r in rows],
            [float(r[4]) for r in rows],
            [int(r[5]) for r in rows],
        )
        if text is None:
            continue  # an id the lines cannot hold: the script drops the history
        user = user_of[uid]
        out[user] = (
            cache.history_key(user, epoch, limit),
            [text, int(rows[-1][6]), int(rows[0][6]), len(rows), 2 * limit],
        )
    return out


def ingest(events: list[dict[str, Any]]) -> dict[str, int]:
    """Store validated events in one transaction; returns counts. Invalidates caches after.

    Parameters
    ----------
    events : list[dict[str, Any]]
        Events loaded by ``EventIn``: ``user_id``, ``item_id``, ``type``, ``value``,
        ``timestamp`` (datetime, or None for now) and ``id`` (idempotency key, or None).

    Returns
    -------
    dict[str, int]
        ``{"received", "inserted", "duplicates"}``: events given, rows stored, and events
        skipped because their idempotency key was already stored.

    Raises
    ------
    RecsysError
        422 when the events name unknown items the server may not create (nothing is stored).
    """
    app = current_app._get_current_object()
    with session_scope(app) as s:
        users, items = batch_ids(s, app, (e["user_id"] for e in events), events)
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
        stmt = stmt.on_conflict_do_nothing(index_elements=["idem_key"]).returning(*RETURNED)
        stored = s.execute(stmt).all()
        inserted = len(stored)
    for etype, n in Counter(r[3] for r in stored).items():
        metrics.EVENTS_INGESTED.labels(etype).inc(n)
    # Durable now. Invalidate after the commit so no reader can cache the pre-event history
    # under the new token; the histories kept in Redis get the new events in the same trip.
    appends = history_appends(app, stored, users, items)
    drop_cached_lists(
        app, {e["user_id"] for e in events}, "events arrived", refresh=True, appends=appends
    )
    return {"received": len(events), "inserted": inserted, "duplicates": len(events) - inserted}


@bp.post("/events")
@require_scope("events:write")
@bp.input(EventIn, arg_name="_doc", validation=False)
@bp.output(EventsOut, status_code=201)
@bp.doc(
    summary="Record one event or a list of events",
    description="Body: one event object, or a JSON list of up to EVENTS_MAX_BATCH (default "
    "1000) of them. `type` is one of view, click, cart, purchase, rating, dislike; `timestamp` "
    "is ISO-8601 or unix seconds (default: now); `id` is an idempotency key. 201 when "
    "something was inserted, 200 when every event was a duplicate. Unknown users are created; "
    "unknown items as available stubs, at most EVENTS_MAX_NEW_ITEMS (100) per request, or "
    "never with EVENTS_CREATE_ITEMS=false (422). Any invalid event rejects the whole list "
    "(422). With RECSYS_API_KEYS set: a key with scope events:write (X-API-Key).",
    responses={200: "every event was already stored (duplicates)"},
)
def post_events(_doc=None):
    """Record one event or a list of events."""
    counts = ingest(load_batch(_schema, "event"))
    return counts, 201 if counts["inserted"] else 200


def load_batch(schema: Any, noun: str) -> list[dict[str, Any]]:
    """The request's JSON body, one object or a list of up to ``EVENTS_MAX_BATCH``, each
    loaded by ``schema``; any invalid one refuses the whole body (422 naming each).

    Parameters
    ----------
    schema : Schema
        A schema instance loading one object.
    noun : str
        What one object is, for the messages ("event", "impression").

    Returns
    -------
    list[dict[str, Any]]
        The loaded objects, in order.
    """
    payload = request.get_json(silent=True)
    if payload is None:
        abort(400, message=f"body must be JSON: an {noun} object or a list of {noun}s")
    single = isinstance(payload, dict)
    batch = [payload] if single else payload
    if not isinstance(batch, list):
        abort(422, message=f"body must be an {noun} object or a list of {noun}s")
    limit = get_config(current_app).events_max_batch
    if not batch:
        abort(422, message=f"empty list: send at least one {noun}")
    if len(batch) > limit:
        abort(413, message=f"at most {limit} {noun}s per request (got {len(batch)})")
    out, errors = [], {}
    for i, raw in enumerate(batch):
        if not isinstance(raw, dict):
            errors[i] = {"_schema": [f"each {noun} must be an object"]}
            continue
        try:
            out.append(schema.load(raw))
        except ValidationError as e:
            errors[i] = e.messages
    if errors:
        detail = {"json": errors[0]} if single else {"json": errors}
        where = "" if single else f" at index {', '.join(str(i) for i in sorted(errors)[:10])}"
        abort(422, message=f"invalid {noun}{where}; nothing was stored", detail=detail)
    return out
