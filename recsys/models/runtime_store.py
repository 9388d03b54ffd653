"""What the model runtime reads and writes in the SQL store besides model versions.

* the per-strategy load mode (``strategy_settings.load_mode``: ``preload`` or ``lazy``);
* the warm-up query: the newest events, real histories to score a freshly loaded model with.

``ModelRepository`` exposes these as methods (``load_modes``, ``set_load_mode``,
``recent_events``) so the runtime talks to one object for everything it keeps in SQL.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from recsys.store.models import Event, Item, StrategySetting


def load_modes(sm: sessionmaker[Session]) -> dict[str, str]:
    """The load modes an admin set.

    Parameters
    ----------
    sm : sessionmaker
        The SQL store.

    Returns
    -------
    dict
        ``{strategy: "preload" | "lazy"}``; a strategy without a setting is absent (it gets the
        runtime's default).
    """
    with sm() as s:
        rows = s.execute(select(StrategySetting.name, StrategySetting.load_mode)).all()
    return {name: mode for name, mode in rows}


def set_load_mode(sm: sessionmaker[Session], strategy: str, mode: str) -> None:
    """Store a strategy's load mode (creating its settings row if needed).

    Parameters
    ----------
    sm : sessionmaker
        The SQL store.
    strategy : str
        The strategy name.
    mode : str
        ``"preload"`` or ``"lazy"`` (the runtime checks the value).

    Returns
    -------
    None
    """
    with sm() as s, s.begin():
        row = s.get(StrategySetting, strategy)
        if row is None:
            s.add(StrategySetting(name=strategy, load_mode=mode))
        else:
            row.load_mode = mode


def recent_events(
    sm: sessionmaker[Session], limit: int
) -> list[tuple[Any, str, str, float | None, Any]]:
    """The newest events, real histories to warm a freshly loaded model up with.

    Parameters
    ----------
    sm : sessionmaker
        The SQL store.
    limit : int
        How many events at most.

    Returns
    -------
    list of tuple
        ``(user row id, item external id, event type, value, ts)``, newest first.
    """
    with sm() as s:
        return [
            tuple(r)
            for r in s.execute(
                select(Event.user_id, Item.external_id, Event.type, Event.value, Event.ts)
                .join(Item, Item.id == Event.item_id)
                .order_by(Event.id.desc())
                .limit(limit)
            ).all()
        ]
