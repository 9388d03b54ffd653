"""History lookup: a user's newest events from the SQL store (the first stage of every request).

One indexed query (the user by ``external_id``, then ``ix_events_user_ts``: user_id, ts),
newest first, bounded to the last ``HISTORY_MAX_EVENTS`` events so a heavy user cannot make a
request slow.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC

from sqlalchemy import select
from sqlalchemy.orm import Session

from recsys.service import UserHistory
from recsys.store.models import Event, Item, User

DEFAULT_MAX_EVENTS = 500


def _unix(ts) -> int:
    return int(ts.replace(tzinfo=UTC).timestamp()) if ts is not None else 0


def load_history(s: Session, user_id: str, limit: int = DEFAULT_MAX_EVENTS) -> UserHistory:
    """The user's last ``limit`` events, newest first. Unknown users get an empty history."""
    h = UserHistory(str(user_id))
    # One round trip: the user's row id is resolved in the same statement (unique index on
    # users.external_id), then ix_events_user_ts walks the newest events.
    rows = s.execute(
        select(Item.external_id, Event.type, Event.value, Event.ts)
        .join(User, User.id == Event.user_id)
        .join(Item, Item.id == Event.item_id)
        .where(User.external_id == str(user_id))
        .order_by(Event.ts.desc(), Event.id.desc())
        .limit(limit)
    ).all()
    for item, type_, value, ts in rows:
        h.items.append(item)
        h.types.append(type_)
        h.values.append(float(value if value is not None else 1.0))
        h.ts.append(_unix(ts))
    return h


def load_histories(
    s: Session, user_ids: Sequence[str], limit: int = DEFAULT_MAX_EVENTS
) -> list[UserHistory]:
    return [load_history(s, u, limit) for u in user_ids]
