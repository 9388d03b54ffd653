"""Store statistics from a handful of aggregate queries (timings: docs/design-notes.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, false, func, select

from recsys.store.models import EVENT_TYPES, Event, Item, User


def store_stats(conn: Connection) -> dict[str, Any]:
    """Counts of users, items and events (by type), plus what reconciles them.

    ``users_with_events`` / ``items_with_events`` count distinct ids in events (what the models
    train on); ``items_available`` counts items that may be recommended.

    Parameters
    ----------
    conn : Connection
        A connection to the store.

    Returns
    -------
    dict[str, Any]
        ``users``, ``items``, ``events``, ``events_by_type`` (type -> count, every type),
        ``items_available``, ``users_with_events``, ``items_with_events`` and ``time_range``
        (``[first, last]`` event times as text, UTC; None with no events).
    """
    by_type = dict.fromkeys(EVENT_TYPES, 0)
    for typ, n in conn.execute(select(Event.type, func.count()).group_by(Event.type)):
        by_type[typ] = n
    first, last = conn.execute(select(func.min(Event.ts), func.max(Event.ts))).one()
    return {
        "users": conn.scalar(select(func.count()).select_from(User)),
        "items": conn.scalar(select(func.count()).select_from(Item)),
        "events": sum(by_type.values()),
        "events_by_type": by_type,
        "items_available": conn.scalar(
            select(func.count()).select_from(Item).where(Item.available != false())
        ),
        "users_with_events": conn.scalar(select(func.count(func.distinct(Event.user_id)))),
        "items_with_events": conn.scalar(select(func.count(func.distinct(Event.item_id)))),
        "time_range": [_iso(first), _iso(last)] if first is not None else None,
    }


def _iso(dt: datetime | str) -> str:
    return dt.isoformat(sep=" ") if isinstance(dt, datetime) else str(dt)


def has_events(conn: Connection) -> bool:
    """Whether the store holds at least one event.

    Parameters
    ----------
    conn : Connection
        A connection to the store.

    Returns
    -------
    bool
        True when the events table is not empty.
    """
    return conn.scalar(select(Event.id).limit(1)) is not None
