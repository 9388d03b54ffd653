"""Training data from the SQL store: every event as arrays, plus the item catalogue.

Built for bulk reads (hundreds of thousands of events): only the needed columns are selected,
event types and timestamps are converted in SQL where the dialect allows, and the result rows
go straight into numpy arrays; no ORM objects are created per event.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import BigInteger, Engine, Integer, case, cast, func, select
from sqlalchemy.orm import Session

from features.idmap import IdMap
from features.interactions import EVENT_CODE, EVENT_TYPES, InteractionData, ItemMeta
from recsys.store.models import Event, Item, User

log = logging.getLogger(__name__)


def _engine(engine_or_session: Engine | Session) -> Engine:
    if isinstance(engine_or_session, Session):
        bind = engine_or_session.get_bind()
        return bind if isinstance(bind, Engine) else bind.engine
    return engine_or_session


def _epoch_seconds(dialect: str):
    """A SQL expression for ``events.ts`` as integer unix seconds (ts is naive UTC)."""
    if dialect == "postgresql":
        return cast(func.extract("epoch", Event.ts), BigInteger)
    if dialect == "sqlite":
        if sqlite3.sqlite_version_info >= (3, 38, 0):
            return func.unixepoch(Event.ts)  # same result as strftime('%s'), faster
        return cast(func.strftime("%s", Event.ts), Integer)
    return None


def _catalog_stmt():
    """The item columns both loaders read, in row-id order (the item IdMap's order)."""
    return select(
        Item.id,
        Item.external_id,
        Item.title,
        Item.description,
        Item.categories,
        Item.available,
        Item.price,
    ).order_by(Item.id)


def load_catalog(engine_or_session: Engine | Session) -> tuple[IdMap, ItemMeta]:
    """Every item in the store, ordered by row id.

    Parameters
    ----------
    engine_or_session : Engine or Session
        Where to read from.

    Returns
    -------
    tuple of (IdMap, ItemMeta)
        The item IdMap (external ids) and the ItemMeta aligned with it.
    """
    engine = _engine(engine_or_session)
    stmt = _catalog_stmt()
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    _, ids, meta = _catalog_from_rows(rows)
    return ids, meta


def _catalog_from_rows(rows: Sequence[Any]) -> tuple[np.ndarray, IdMap, ItemMeta]:
    row_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    ids = IdMap(r[1] for r in rows)
    meta = ItemMeta(
        titles=[r[2] or "" for r in rows],
        descriptions=[r[3] or "" for r in rows],
        categories=[[str(c) for c in (r[4] or [])] for r in rows],
        available=np.fromiter((bool(r[5]) for r in rows), dtype=bool, count=len(rows)),
        price=np.fromiter(
            (np.nan if r[6] is None else float(r[6]) for r in rows),
            dtype=np.float64,
            count=len(rows),
        ),
    )
    return row_ids, ids, meta


def load_interactions(engine_or_session: Engine | Session) -> InteractionData:
    """Every event in the store as an ``InteractionData``.

    The item IdMap holds every item in the store (ordered by row id), so a model trained on it
    can score items nobody has interacted with yet; the user IdMap holds users with at least one
    event, ordered by row id. ``info`` carries the snapshot counts the model repository records.

    Parameters
    ----------
    engine_or_session : Engine or Session
        Where to read from.

    Returns
    -------
    InteractionData
        The events, their id maps, item metadata and ``info``.
    """
    engine = _engine(engine_or_session)
    dialect = engine.dialect.name
    type_code = case(
        {name: EVENT_CODE[name] for name in EVENT_TYPES}, value=Event.type, else_=-1
    ).label("type_code")
    epoch = _epoch_seconds(dialect)
    ts_col = epoch.label("ts") if epoch is not None else Event.ts
    ev_stmt = select(Event.user_id, Event.item_id, type_code, Event.value, ts_col).order_by(
        Event.id
    )
    item_stmt = _catalog_stmt()
    with engine.connect() as conn:
        item_rows = conn.execute(item_stmt).all()
        ev_rows = conn.execute(ev_stmt).all()
        user_rows = conn.execute(select(User.id, User.external_id).order_by(User.id)).all()

    item_row_ids, items, meta = _catalog_from_rows(item_rows)
    n = len(ev_rows)
    if epoch is not None:
        # All columns are numeric: one flat pass into a float64 buffer (np.array on a list of
        # Row objects is ~50x slower, it goes through the generic sequence protocol per row).
        # float64 holds row ids and unix seconds exactly (both far below 2**53).
        flat = np.fromiter((x for r in ev_rows for x in r), dtype=np.float64, count=5 * n)
        arr = flat.reshape(n, 5)
        ts = arr[:, 4].astype(np.int64)
    else:  # pragma: no cover - other dialects: convert datetimes in Python
        arr = np.array([r[:4] for r in ev_rows], dtype=np.float64).reshape(n, 4)
        ts = np.fromiter(
            (int(r[4].replace(tzinfo=UTC).timestamp()) for r in ev_rows), np.int64, count=n
        )
    del ev_rows
    user_row = arr[:, 0].astype(np.int64)
    item_row = arr[:, 1].astype(np.int64)
    event_type = arr[:, 2].astype(np.int8)
    value = arr[:, 3].astype(np.float32)
    if (event_type < 0).any():
        # The CHECK constraint makes this impossible unless the schema grows a type we lack.
        bad = int((event_type < 0).sum())
        log.warning("dropping %d events of unknown type", bad)
        keep = event_type >= 0
        user_row, item_row, event_type, value, ts = (
            user_row[keep],
            item_row[keep],
            event_type[keep],
            value[keep],
            ts[keep],
        )

    # Items: events reference row ids; item_row_ids is sorted (ORDER BY id).
    item_idx = np.searchsorted(item_row_ids, item_row).astype(np.int32)
    # Users: only those with events, in row-id order.
    user_uniq, user_idx = np.unique(user_row, return_inverse=True)
    user_ext = {r[0]: r[1] for r in user_rows}
    users = IdMap(user_ext[int(u)] for u in user_uniq)

    data = InteractionData(
        users=users,
        items=items,
        user_idx=user_idx.astype(np.int32),
        item_idx=item_idx,
        event_type=event_type,
        value=value,
        ts=ts,
        item_meta=meta,
    )
    data.info = snapshot_info(data)
    log.info(
        "loaded %d events, %d users, %d items from %s",
        len(data),
        data.n_users,
        data.n_items,
        dialect,
    )
    return data


def snapshot_info(data: InteractionData) -> dict[str, Any]:
    """Counts and time range of a training set (what the repository's snapshot.json records).

    Parameters
    ----------
    data : InteractionData
        The training set.

    Returns
    -------
    dict
        ``users``, ``items``, ``events`` (counts), ``events_by_type`` (type -> count, nonzero
        only), ``ts_min`` / ``ts_max`` (ISO 8601 UTC; None when there are no events).
    """
    counts = np.bincount(data.event_type.astype(np.int64), minlength=len(EVENT_TYPES))
    info: dict[str, Any] = {
        "users": int(data.n_users),
        "items": int(data.n_items),
        "events": int(len(data)),
        "events_by_type": {t: int(c) for t, c in zip(EVENT_TYPES, counts, strict=True) if c},
        "ts_min": None,
        "ts_max": None,
    }
    if len(data):
        lo, hi = int(data.ts.min()), int(data.ts.max())
        info["ts_min"] = datetime.fromtimestamp(lo, UTC).isoformat()
        info["ts_max"] = datetime.fromtimestamp(hi, UTC).isoformat()
    return info
