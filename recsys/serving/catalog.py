"""The in-memory item catalogue the request path filters with: availability and categories.

A ``Catalog`` is an immutable snapshot tagged with a ``version``. In the service,
``CatalogStore`` keeps one per process and refreshes it from SQL when the shared
``catalog_version`` (a ``settings`` row, bumped by ``PUT /v1/items`` when availability or
categories change) moves, reading only rows updated since its last refresh. Evaluation builds a
snapshot from an ``ItemMeta`` with ``Catalog.from_meta``.

The snapshot also carries what a storefront shows of each item (title, price, image, categories,
attributes). It is refreshed when the shared ``items_version`` moves (bumped by every item
edit) without touching ``catalog_version``, so a title or price edit reaches the next answer
without invalidating any cached list: lists are cached as ids and scores, and
``Catalog.render_items`` adds the item fields to the serialised body at response time, from
per-item JSON fragments built once per snapshot.

Over 500 lines only through the numpy-style docstrings of its public API (about 320
lines without them): the code is one unit, not split for length.
"""

from __future__ import annotations

import bisect
import json
import logging
import re
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from flask import Flask, current_app
from sqlalchemy import select

log = logging.getLogger(__name__)

# Rows updated this long before the last refresh are re-read, so clock skew between app
# servers (updated_at is written by whichever server handled the PUT) cannot hide an update.
_REFRESH_MARGIN = timedelta(seconds=120)

# What a list can carry of each item (``fields=``), in the order they are rendered.
ITEM_FIELDS = ("title", "price", "image_url", "categories", "attributes")
DEFAULT_ITEM_FIELDS = ("title", "price", "image_url")
# An item object of a serialised list opens with its id (keys are sorted, and the item's other
# keys sort after it). A quote inside a JSON string is always escaped, so this only occurs as
# structure, never inside an id or any other text.
_ITEM_OPEN = b'{"item_id":'
# A JSON string at the start of bytes, escapes included.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NO_DATA: dict[str, Any] = {}


def parse_fields(raw: str | None) -> tuple[str, ...] | None:
    """``fields=`` as a tuple in ``ITEM_FIELDS`` order.

    Parameters
    ----------
    raw : str or None
        Comma-separated field names; None: the default set; ``""``: none.

    Returns
    -------
    tuple of str or None
        The fields wanted, in ``ITEM_FIELDS`` order.

    Raises
    ------
    ValueError
        A field not in ``ITEM_FIELDS`` (named in the message).
    """
    if raw is None:
        return DEFAULT_ITEM_FIELDS
    wanted = {f.strip() for f in raw.split(",") if f.strip()}
    unknown = wanted - set(ITEM_FIELDS)
    if unknown:
        raise ValueError(
            f"unknown field(s) {', '.join(sorted(unknown))}; choose among {', '.join(ITEM_FIELDS)}"
        )
    return tuple(f for f in ITEM_FIELDS if f in wanted)


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


class Catalog:
    """External item id -> (available, categories), plus each item's display data (``data``:
    id -> {title, price, image_url, attributes}). Unknown items count as available."""

    def __init__(
        self,
        items: Mapping[str, tuple[bool, tuple[str, ...]]] | None = None,
        version: int = 0,
        data: Mapping[str, Mapping[str, Any]] | None = None,
    ):
        self._items: dict[str, tuple[bool, tuple[str, ...]]] = dict(items or {})
        self.version = version
        self._data: dict[str, Mapping[str, Any]] = dict(data or {})
        self._cat_index: dict[str, set[str]] | None = None
        self._allowed_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        # fields -> JSON-encoded item id -> the bytes spliced after it (render_items).
        self._fragments: dict[tuple[str, ...], dict[bytes, bytes]] = {}
        self._sorted_ids: list[str] | None = None

    @classmethod
    def from_meta(cls, items, meta, version: int = 0) -> Catalog:
        """From an IdMap and a features.interactions.ItemMeta (evaluation).

        Parameters
        ----------
        items : IdMap
            The item ids (``items.ids``).
        meta : ItemMeta or None
            Categories and availability aligned with ``items``; None: every item available,
            without categories.
        version : int, optional
            The catalogue version the snapshot stands for.

        Returns
        -------
        Catalog
            The snapshot (without display data).
        """
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
        """Whether ``item_id`` may be recommended (unknown items count as available).

        Parameters
        ----------
        item_id : str
            The external item id.

        Returns
        -------
        bool
            Its availability; True for an item the catalogue lacks.
        """
        row = self._items.get(item_id)
        return True if row is None else row[0]

    def categories(self, item_id: str) -> tuple[str, ...]:
        """The item's categories, the primary one first.

        Parameters
        ----------
        item_id : str
            The external item id.

        Returns
        -------
        tuple of str
            Its categories; empty for an unknown item.
        """
        row = self._items.get(item_id)
        return row[1] if row else ()

    def primary_category(self, item_id: str) -> str | None:
        """The item's first category.

        Parameters
        ----------
        item_id : str
            The external item id.

        Returns
        -------
        str or None
            Its first category; None: none, or an unknown item.
        """
        cats = self.categories(item_id)
        return cats[0] if cats else None

    def in_category(self, item_id: str, category: str) -> bool:
        """Whether the item has ``category`` (compared case-insensitively).

        Parameters
        ----------
        item_id : str
            The external item id.
        category : str
            The category name.

        Returns
        -------
        bool
            True when any of its categories matches.
        """
        want = category.casefold()
        return any(c.casefold() == want for c in self.categories(item_id))

    def known_categories(self) -> set[str]:
        """Every category some item of the catalogue has.

        Returns
        -------
        set of str
            The category names, as stored.
        """
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
        """Indices of ``idmap`` that may be recommended (available, in ``category``). Cached per
        IdMap.

        Parameters
        ----------
        idmap : IdMap
            The model's item id map.
        category : str or None, optional
            Only items of this category (case-insensitive); None: any.

        Returns
        -------
        numpy.ndarray or None
            Sorted integer indices into ``idmap``; None means "no restriction" (so strategies
            skip the masking work).
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

    # -- display data ----------------------------------------------------------------------
    def item(self, item_id: str) -> dict[str, Any] | None:
        """The item as ``GET /v1/items`` lists it.

        Parameters
        ----------
        item_id : str
            The external item id.

        Returns
        -------
        dict or None
            Its id, availability, categories and display data; None when the catalogue lacks it.
        """
        row = self._items.get(item_id)
        if row is None:
            return None
        data = self._data.get(item_id, _NO_DATA)
        return {
            "item_id": item_id,
            "title": data.get("title", ""),
            "price": data.get("price"),
            "image_url": data.get("image_url"),
            "categories": list(row[1]),
            "attributes": dict(data.get("attributes") or {}),
            "available": row[0],
        }

    def _fragment(self, item_id: str, fields: tuple[str, ...]) -> bytes:
        data = self._data.get(item_id, _NO_DATA)
        parts = []
        for f in fields:
            if f == "categories":
                value: Any = list(self.categories(item_id))
            elif f == "attributes":
                value = data.get("attributes") or {}
            else:
                value = data.get(f)
            parts.append(b'"' + f.encode() + b'":' + _json(value))
        return b"," + b",".join(parts)

    def render_items(self, body: bytes, fields: tuple[str, ...]) -> bytes:
        """``body`` (a serialised list answer) with ``fields`` of each item added to the item's
        object: null (or empty) for an item the catalogue lacks. A split at each item, a dict
        lookup and a join (faster than a regex substitution: docs/design-notes.md); each
        item's fragment is encoded once per snapshot and field set.

        Parameters
        ----------
        body : bytes
            The answer's JSON (compact, sorted keys).
        fields : tuple of str
            Fields of ``ITEM_FIELDS`` to add (``parse_fields``); empty: ``body`` unchanged.

        Returns
        -------
        bytes
            The answer with the fields spliced in.
        """
        if not fields:
            return body
        memo = self._fragments.get(fields)
        if memo is None:
            memo = self._fragments.setdefault(fields, {})

        parts = body.split(_ITEM_OPEN)
        out = [parts[0]]
        for part in parts[1:]:
            end = part.find(b'"', 1) + 1
            raw = part[:end]
            if b"\\" in raw or not raw.startswith(b'"'):  # an escape in the id: parse it
                m = _JSON_STRING.match(part)
                if m is None:
                    return body  # not what we serialise: leave it as it is
                raw, end = m.group(0), m.end()
            frag = memo.get(raw)
            if frag is None:
                frag = memo[raw] = self._fragment(json.loads(raw), fields)
            out.append(raw + frag + part[end:])
        return _ITEM_OPEN.join(out)

    def page(
        self,
        after: str | None,
        limit: int,
        category: str | None = None,
        available: bool | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to ``limit`` items in id order after ``after``, filtered.

        Parameters
        ----------
        after : str or None
            Start after this external id; None: from the first.
        limit : int
            Items at most.
        category : str or None, optional
            Only items of this category; None: any.
        available : bool or None, optional
            Only items of this availability; None: any.

        Returns
        -------
        tuple of (list of dict, str or None)
            The items (as ``item`` gives them) and the id to continue after (None at the end).
        """
        if self._sorted_ids is None:
            self._sorted_ids = sorted(self._items)
        ids = self._sorted_ids
        members = self._category_index().get(category.casefold(), set()) if category else None
        start = bisect.bisect_right(ids, after) if after is not None else 0
        out: list[dict[str, Any]] = []
        for i in range(start, len(ids)):
            item_id = ids[i]
            if members is not None and item_id not in members:
                continue
            if available is not None and self._items[item_id][0] != available:
                continue
            if len(out) == limit:
                return out, out[-1]["item_id"]
            out.append(self.item(item_id))  # type: ignore[arg-type]
        return out, None

    def updated(
        self,
        rows: Iterable[tuple[str, bool, tuple[str, ...]]],
        version: int,
        data: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Catalog:
        """A new snapshot with ``rows`` (and their ``data``) replaced; this one is left as is.

        Parameters
        ----------
        rows : Iterable of (str, bool, tuple of str)
            ``(external id, available, categories)`` of each changed item.
        version : int
            The new snapshot's catalogue version.
        data : Mapping or None, optional
            External id -> display data of the changed items; None: display data unchanged.

        Returns
        -------
        Catalog
            The new snapshot.
        """
        items = dict(self._items)
        same = True
        for ext, avail, cats in rows:
            same = same and items.get(ext) == (avail, cats)
            items[ext] = (avail, cats)
        merged = self._data
        if data:
            merged = {**self._data, **data}
        out = Catalog(items, version, merged)
        if same:
            # Only display data moved: what may be recommended is unchanged, and so are the
            # derived filters (shared, not rebuilt).
            out._cat_index = self._category_index()
            out._allowed_cache = self._allowed_cache
        return out


def _row(item) -> tuple[str, bool, tuple[str, ...]]:
    cats = item.categories or []
    if isinstance(cats, str):
        cats = [cats]
    return (item.external_id, bool(item.available), tuple(str(c) for c in cats))


def _data(item) -> dict[str, Any]:
    return {
        "title": item.title or "",
        "price": item.price,
        "image_url": item.image_url,
        "attributes": item.attributes or {},
    }


class CatalogStore:
    """Per-process holder of the current catalogue snapshot, refreshed on version change."""

    def __init__(self, app: Flask):
        self.app = app
        self._catalog = Catalog()
        self._loaded_version: tuple[int, int] | None = None
        self._watermark: datetime | None = None
        self._lock = threading.Lock()
        self._loaded_at = 0.0

    @property
    def loaded_version(self) -> tuple[int, int] | None:
        """``(catalogue version, items version)`` of the snapshot held (None: none yet)."""
        return self._loaded_version

    def current(self, version: int, items_version: int = 0) -> Catalog:
        """The snapshot for shared catalogue ``version`` and item data ``items_version``
        (refreshing from SQL if behind).

        Parameters
        ----------
        version : int
            The shared ``catalog_version``.
        items_version : int, optional
            The shared ``items_version``.

        Returns
        -------
        Catalog
            The snapshot of those versions.
        """
        key = (version, items_version)
        if key == self._loaded_version:
            return self._catalog
        with self._lock:
            if key != self._loaded_version:
                self._refresh(key)
        return self._catalog

    def _refresh(self, key: tuple[int, int]) -> None:
        from recsys.store import Item, session_scope
        from recsys.store.models import utcnow

        started = utcnow()
        with session_scope(self.app) as s:
            q = select(
                Item.external_id,
                Item.available,
                Item.categories,
                Item.title,
                Item.price,
                Item.image_url,
                Item.attributes,
            )
            full = self._watermark is None
            if not full:
                q = q.where(Item.updated_at >= self._watermark - _REFRESH_MARGIN)
            result = list(s.execute(q))
        rows = [_row(r) for r in result]
        data = {r.external_id: _data(r) for r in result}
        version = key[0]
        if full:
            self._catalog = Catalog({e: (a, c) for e, a, c in rows}, version, data)
        else:
            self._catalog = self._catalog.updated(rows, version, data)
        self._watermark = started
        self._loaded_version = key
        self._loaded_at = time.monotonic()
        log.debug("catalog at version %s (%d rows read, full=%s)", version, len(rows), full)

    def after_fork(self) -> None:
        """In a new worker: keep the snapshot the master loaded (``preload``), with a lock of
        its own. Its versions and watermark stay, so the worker's first request reads only
        the items changed since the master read them, not the whole catalogue (a full read
        of 50k items' rows and JSON took 4-10 s under load: issue 29's "first similar-items
        call")."""
        self._lock = threading.Lock()  # an inherited lock may be held by a dead thread

    def reset(self) -> None:
        """Forget everything (in tests) so the next call reloads fully.

        Returns
        -------
        None
        """
        self._lock = threading.Lock()  # an inherited lock may be held by a dead thread
        self._catalog = Catalog()
        self._loaded_version = None
        self._watermark = None


def preload(app: Flask) -> int:
    """Load the current catalogue snapshot, and each loaded model's filter of recommendable
    items (``Catalog.allowed``), now: gunicorn's master calls it after preloading the models
    and before the workers fork, so they inherit both (copy-on-write) instead of building
    them on their first request.

    Parameters
    ----------
    app : Flask
        The app (its settings store, catalogue store and model runtime).

    Returns
    -------
    int
        Items in the snapshot.
    """
    from recsys.models.runtime import get_runtime
    from recsys.serving.settings_store import get_settings

    versions = get_settings(app).versions()
    catalog = get_catalog_store(app).current(versions.catalog, versions.items)
    runtime = get_runtime(app)
    for name in runtime.active_versions():  # loaded models only: nothing is loaded here
        loaded = runtime.get(name)
        if loaded is not None:
            catalog.allowed(loaded.items)
    return len(catalog)


def init_app(app: Flask) -> None:
    """Make the app's catalogue store (``app.extensions["recsys.catalog"]``).

    Parameters
    ----------
    app : Flask
        The app.

    Returns
    -------
    None
    """
    app.extensions["recsys.catalog"] = CatalogStore(app)


def get_catalog_store(app: Flask | None = None) -> CatalogStore:
    """The app's catalogue store.

    Parameters
    ----------
    app : Flask or None, optional
        The app; None: ``current_app``.

    Returns
    -------
    CatalogStore
        The store ``init_app`` made.
    """
    return (app or current_app).extensions["recsys.catalog"]
