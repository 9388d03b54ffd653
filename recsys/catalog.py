"""The in-memory item catalogue the request path filters with: availability and categories.

A ``Catalog`` is an immutable snapshot tagged with a ``version``. In the service,
``CatalogStore`` keeps one per process and refreshes it from SQL when the shared
``catalog_version`` (a ``settings`` row, bumped by ``PUT /v1/items`` when availability or
categories change) moves, reading only rows updated since its last refresh. Evaluation builds a
snapshot from an ``ItemMeta`` with ``Catalog.from_meta``.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

import numpy as np
from flask import Flask, current_app
from sqlalchemy import select

log = logging.getLogger(__name__)

# Rows updated this long before the last refresh are re-read, so clock skew between app
# servers (updated_at is written by whichever server handled the PUT) cannot hide an update.
_REFRESH_MARGIN = timedelta(seconds=120)


class Catalog:
    """External item id -> (available, categories). Unknown items count as available."""

    def __init__(
        self,
        items: Mapping[str, tuple[bool, tuple[str, ...]]] | None = None,
        version: int = 0,
    ):
        self._items: dict[str, tuple[bool, tuple[str, ...]]] = dict(items or {})
        self.version = version
        self._cat_index: dict[str, set[str]] | None = None
        self._allowed_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    @classmethod
    def from_meta(cls, items, meta, version: int = 0) -> Catalog:
        """From an IdMap and a features.interactions.ItemMeta (evaluation)."""
        rows = {}
        for i, ext in enumerate(items.ids):
            cats = tuple(meta.categories[i]) if meta is not None else ()
            avail = bool(meta.available[i]) if meta is not None else True
            rows[str(ext)] = (avail, cats)
        return cls(rows, version)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return str(item_id) in self._items

    def is_available(self, item_id: str) -> bool:
        row = self._items.get(item_id)
        return True if row is None else row[0]

    def categories(self, item_id: str) -> tuple[str, ...]:
        row = self._items.get(item_id)
        return row[1] if row else ()

    def primary_category(self, item_id: str) -> str | None:
        cats = self.categories(item_id)
        return cats[0] if cats else None

    def in_category(self, item_id: str, category: str) -> bool:
        want = category.casefold()
        return any(c.casefold() == want for c in self.categories(item_id))

    def known_categories(self) -> set[str]:
        return set(self._category_index())

    def _category_index(self) -> dict[str, set[str]]:
        if self._cat_index is None:
            idx: dict[str, set[str]] = {}
            for item, (_, cats) in self._items.items():
                for c in cats:
                    idx.setdefault(c.casefold(), set()).add(item)
            self._cat_index = idx
        return self._cat_index

    def allowed(self, idmap, category: str | None = None) -> np.ndarray | None:
        """Indices of ``idmap`` that may be recommended (available, in ``category``).

        ``None`` means "no restriction" (so strategies skip the masking work). Cached per IdMap.
        """
        key = category.casefold() if category else None
        with self._lock:
            per_map = self._allowed_cache.setdefault(idmap, {})
            if key in per_map:
                return per_map[key]
        ids = idmap.ids
        if key is None:
            unavailable = [i for i, x in enumerate(ids) if not self.is_available(str(x))]
            result = None
            if unavailable:
                mask = np.ones(len(ids), dtype=bool)
                mask[unavailable] = False
                result = np.flatnonzero(mask)
        else:
            members = self._category_index().get(key, set())
            result = np.fromiter(
                (i for i, x in enumerate(ids) if str(x) in members and self.is_available(str(x))),
                dtype=np.int64,
            )
        with self._lock:
            per_map[key] = result
        return result

    def updated(self, rows: Iterable[tuple[str, bool, tuple[str, ...]]], version: int) -> Catalog:
        """A new snapshot with ``rows`` replaced."""
        items = dict(self._items)
        for ext, avail, cats in rows:
            items[ext] = (avail, cats)
        return Catalog(items, version)


def _row(item) -> tuple[str, bool, tuple[str, ...]]:
    cats = item.categories or []
    if isinstance(cats, str):
        cats = [cats]
    return (item.external_id, bool(item.available), tuple(str(c) for c in cats))


class CatalogStore:
    """Per-process holder of the current catalogue snapshot, refreshed on version change."""

    def __init__(self, app: Flask):
        self.app = app
        self._catalog = Catalog()
        self._loaded_version: int | None = None
        self._watermark: datetime | None = None
        self._lock = threading.Lock()
        self._loaded_at = 0.0

    def current(self, version: int) -> Catalog:
        """The snapshot for shared catalogue ``version`` (refreshing from SQL if behind)."""
        if version == self._loaded_version:
            return self._catalog
        with self._lock:
            if version != self._loaded_version:
                self._refresh(version)
        return self._catalog

    def _refresh(self, version: int) -> None:
        from recsys.store import Item, session_scope
        from recsys.store.models import utcnow

        started = utcnow()
        with session_scope(self.app) as s:
            q = select(Item.external_id, Item.available, Item.categories)
            full = self._watermark is None
            if not full:
                q = q.where(Item.updated_at >= self._watermark - _REFRESH_MARGIN)
            rows = [_row(r) for r in s.execute(q)]
        if full:
            self._catalog = Catalog({e: (a, c) for e, a, c in rows}, version)
        else:
            self._catalog = self._catalog.updated(rows, version)
        self._watermark = started
        self._loaded_version = version
        self._loaded_at = time.monotonic()
        log.debug("catalog at version %s (%d rows read, full=%s)", version, len(rows), full)

    def reset(self) -> None:
        """Forget everything (after fork, or in tests) so the next call reloads fully."""
        self._lock = threading.Lock()  # an inherited lock may be held by a dead thread
        self._catalog = Catalog()
        self._loaded_version = None
        self._watermark = None


def init_app(app: Flask) -> None:
    app.extensions["recsys.catalog"] = CatalogStore(app)


def get_catalog_store(app: Flask | None = None) -> CatalogStore:
    return (app or current_app).extensions["recsys.catalog"]
