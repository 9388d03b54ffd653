"""Impressions (what a storefront showed) read back with the events: "shown but not clicked".

``POST /v1/impressions`` stores one ``Impression`` row per item shown. A model or an experiment
report asks here which shown items the user then left alone: no ``click``, ``cart`` or
``purchase`` of that item by that user at or after the impression (a negative signal that plain
events cannot give: an item never shown was never declined).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, exists, select
from sqlalchemy.orm import Session

from recsys.store.models import Event, Impression, Item, User

# Event types that count as taking up what was shown.
ENGAGED = ("click", "cart", "purchase")


def shown_not_clicked(
    s: Session,
    since: datetime | None = None,
    user_id: str | None = None,
    limit: int = 100_000,
) -> list[tuple[str, str, int, datetime]]:
    """Impressions not followed by a click, cart or purchase of the same item by the same user.

    Parameters
    ----------
    s : Session
        An open session.
    since : datetime or None
        Only impressions at or after this time (naive UTC); None: all.
    user_id : str or None
        Only this user's (external id); None: every user.
    limit : int
        At most this many rows, oldest first.

    Returns
    -------
    list of (str, str, int, datetime)
        ``(user_id, item_id, position, shown_at)`` per impression, external ids.
    """
    engaged = exists().where(
        and_(
            Event.user_id == Impression.user_id,
            Event.item_id == Impression.item_id,
            Event.type.in_(ENGAGED),
            Event.ts >= Impression.ts,
        )
    )
    stmt = (
        select(User.external_id, Item.external_id, Impression.position, Impression.ts)
        .join(User, User.id == Impression.user_id)
        .join(Item, Item.id == Impression.item_id)
        .where(~engaged)
        .order_by(Impression.ts, Impression.id)
        .limit(limit)
    )
    if since is not None:
        stmt = stmt.where(Impression.ts >= since)
    if user_id is not None:
        stmt = stmt.where(User.external_id == user_id)
    return [tuple(row) for row in s.execute(stmt).all()]  # type: ignore[misc]
