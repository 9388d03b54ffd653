"""The catalogue: items and users (``PUT``, ``GET`` one, ``GET`` a page, ``DELETE``).

A change to an item's availability or categories bumps the shared ``catalog_version`` in the
same transaction, so every worker of every server refreshes its catalogue snapshot and moves to
fresh cache keys within ``CONFIG_POLL_SECONDS``; the answering worker sees it at once. Every
item edit bumps ``items_version``, which refreshes the snapshot's display data (titles,
prices, images) without touching any cache key. The item list is read from that snapshot, not
SQL.

With API keys configured (``recsys.web.auth``), items are read with ``read`` and changed with
``catalog:write``; users, personal data, are read and erased with ``catalog:write`` only.
"""

from __future__ import annotations

import base64
import binascii

from apiflask import APIBlueprint
from flask import current_app
from sqlalchemy import delete, func, select

from recsys.serving.settings_store import get_settings
from recsys.store import session_scope
from recsys.store.models import Event, Item, User
from recsys.store.versions import CATALOG_VERSION, ITEMS_VERSION, bump
from recsys.web.api.events import blank_item, drop_cached_lists, ensure_ids
from recsys.web.auth import require_scope
from recsys.web.errors import NotFound, RecsysError
from recsys.web.schemas import (
    MAX_ID,
    ItemIn,
    ItemListOut,
    ItemListQuery,
    ItemOut,
    UserDeletedOut,
    UserDetailOut,
    UserIn,
    UserListOut,
    UserListQuery,
    UserOut,
    check_text,
)

bp = APIBlueprint("catalog", __name__, url_prefix="/v1", tag="Catalogue")

ITEM_FIELDS = (
    "title",
    "description",
    "categories",
    "price",
    "image_url",
    "available",
    "attributes",
)


def _check(external_id: str, what: str) -> None:
    if not external_id.strip() or len(external_id) > MAX_ID:
        raise RecsysError(f"{what} must be 1..{MAX_ID} characters")
    if why := check_text(external_id):  # %00 in the URL would reach SQL
        raise RecsysError(f"{what} {why}")


def _item_out(item: Item, created: bool) -> dict:
    return {
        "item_id": item.external_id,
        "title": item.title,
        "description": item.description,
        "categories": list(item.categories or []),
        "price": item.price,
        "image_url": item.image_url,
        "available": item.available,
        "attributes": dict(item.attributes or {}),
        "created": created,
    }


@bp.put("/items/<item_id>")
@require_scope("catalog:write")
@bp.input(ItemIn, arg_name="body")
@bp.output(ItemOut)
@bp.doc(
    summary="Create or update an item",
    description="Fields not given keep their value (new items: empty, available). "
    "`available: false` stops the item being recommended at once, in every worker.",
    responses={201: "created"},
)
def put_item(item_id: str, body: dict):
    """Create or update an item."""
    _check(item_id, "item_id")
    app = current_app._get_current_object()
    with session_scope(app) as s:
        item = s.scalar(select(Item).where(Item.external_id == item_id).with_for_update())
        created = item is None
        if created:
            ensure_ids(s, Item, {item_id}, **blank_item())
            item = s.scalar(select(Item).where(Item.external_id == item_id).with_for_update())
        before = (bool(item.available), list(item.categories or []))
        for field in ITEM_FIELDS:
            if field in body:
                setattr(item, field, body[field])
        after = (bool(item.available), list(item.categories or []))
        # Title or price edits do not change what may be recommended: no catalogue bump (the
        # cached lists stay), only the display data of the snapshots.
        if after != before:
            bump(s, CATALOG_VERSION, f"item {item_id} availability/categories changed")
        bump(s, ITEMS_VERSION, f"item {item_id} edited")
        out = _item_out(item, created)
    get_settings(app).versions(force=True)
    return out, 201 if created else 200


def existing_row(s, model, external_id: str, lock: bool = False):
    """The ``Item`` or ``User`` row with ``external_id`` (locked for update), or 404.

    Parameters
    ----------
    s : Session
        An open session.
    model : type
        ``Item`` or ``User``.
    external_id : str
        The client's id.
    lock : bool
        ``SELECT ... FOR UPDATE`` (where the dialect has it).

    Returns
    -------
    Item or User
        The row.

    Raises
    ------
    NotFound
        No row has that id.
    """
    q = select(model).where(model.external_id == external_id)
    row = s.scalar(q.with_for_update() if lock else q)
    if row is None:
        raise NotFound(f"unknown {model.__name__.lower()} {external_id!r}")
    return row


def encode_cursor(last_id: str | None) -> str | None:
    """Encode the last id of a page as an opaque, URL-safe pagination cursor.

    Parameters
    ----------
    last_id : str or None
        External id of the last row of the page; None when the page is the last one.

    Returns
    -------
    str or None
        URL-safe base64 of ``last_id``; None when ``last_id`` is None (no next page).
    """
    return base64.urlsafe_b64encode(last_id.encode()).decode() if last_id is not None else None


def decode_cursor(cursor: str | None) -> str | None:
    """Decode a cursor made by ``encode_cursor``.

    Parameters
    ----------
    cursor : str or None
        The ``next_cursor`` of a previous page; None for the first page.

    Returns
    -------
    str or None
        The external id the next page starts after; None for the first page.

    Raises
    ------
    RecsysError
        ``cursor`` is not valid URL-safe base64 of UTF-8 text.
    """
    if cursor is None:
        return None
    try:
        return base64.b64decode(cursor.encode("ascii"), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeError, ValueError) as e:
        raise RecsysError("invalid cursor: pass the next_cursor of a previous page") from e


@bp.get("/items")
@require_scope("read")
@bp.input(ItemListQuery, location="query", arg_name="q")
@bp.output(ItemListOut)
@bp.doc(
    summary="List items (cursor pagination)",
    description="Items in id order, from this worker's catalogue snapshot (no SQL query), "
    "optionally in a `category` and by availability. Follow `next_cursor` until it is null.",
)
def list_items(q: dict):
    """List items (cursor pagination)."""
    from recsys.serving.pipeline import get_pipeline

    snap = get_pipeline(current_app).snapshot()
    items, last = snap.catalog.page(
        decode_cursor(q["cursor"]), q["limit"], q["category"], q["available"]
    )
    return {"items": items, "next_cursor": encode_cursor(last)}


@bp.get("/items/<item_id>")
@require_scope("read")
@bp.output(ItemOut)
@bp.doc(summary="One item", responses={404: "unknown item"})
def get_item(item_id: str):
    """One item.

    Answers the item's id, title, categories, price, availability and attributes; 404 for an
    unknown item.
    """
    _check(item_id, "item_id")
    with session_scope() as s:
        return _item_out(existing_row(s, Item, item_id), False)


@bp.delete("/items/<item_id>")
@require_scope("catalog:write")
@bp.output(ItemOut)
@bp.doc(
    summary="Retire an item",
    description="Marks the item unavailable (never recommended again, at once in every "
    "worker); its events stay in the history that trains the models. `PUT` with "
    "`available: true` brings it back.",
    responses={404: "unknown item"},
)
def delete_item(item_id: str):
    """Retire an item."""
    _check(item_id, "item_id")
    app = current_app._get_current_object()
    with session_scope(app) as s:
        item = existing_row(s, Item, item_id, lock=True)
        if item.available:
            item.available = False
            bump(s, CATALOG_VERSION, f"item {item_id} retired")
            bump(s, ITEMS_VERSION, f"item {item_id} retired")
        out = _item_out(item, False)
    get_settings(app).versions(force=True)
    return out


@bp.put("/users/<user_id>")
@require_scope("catalog:write")
@bp.input(UserIn, arg_name="body")
@bp.output(UserOut)
@bp.doc(summary="Create or update a user's attributes", responses={201: "created"})
def put_user(user_id: str, body: dict):
    """Create or update a user's attributes.

    Answers the user's id, attributes and whether it was created (201) or updated (200).
    """
    _check(user_id, "user_id")
    with session_scope() as s:
        user = s.scalar(select(User).where(User.external_id == user_id))
        created = user is None
        if created:
            ensure_ids(s, User, {user_id}, attributes={})
            user = s.scalar(select(User).where(User.external_id == user_id))
        user.attributes = body["attributes"]
        out = {"user_id": user_id, "attributes": dict(user.attributes or {}), "created": created}
    return out, 201 if created else 200


def _user_entry(user: User, events: int) -> dict:
    return {
        "user_id": user.external_id,
        "attributes": dict(user.attributes or {}),
        "events": events,
        "created_at": user.created_at.isoformat() + "Z",
        "updated_at": user.updated_at.isoformat() + "Z",
    }


@bp.get("/users/<user_id>")
@require_scope("catalog:write")
@bp.output(UserDetailOut)
@bp.doc(summary="One user", responses={404: "unknown user"})
def get_user(user_id: str):
    """One user.

    Answers the user's id, attributes, number of events and creation / update times (UTC,
    ISO 8601); 404 for an unknown user.
    """
    _check(user_id, "user_id")
    with session_scope() as s:
        user = existing_row(s, User, user_id)
        events = s.scalar(select(func.count()).where(Event.user_id == user.id)) or 0
        return _user_entry(user, events)


@bp.get("/users")
@require_scope("catalog:write")
@bp.input(UserListQuery, location="query", arg_name="q")
@bp.output(UserListOut)
@bp.doc(summary="List users (cursor pagination)", description="Users in id order.")
def list_users(q: dict):
    """List users (cursor pagination)."""
    after = decode_cursor(q["cursor"])
    with session_scope() as s:
        stmt = select(User).order_by(User.external_id).limit(q["limit"] + 1)
        if after is not None:
            stmt = stmt.where(User.external_id > after)
        users = list(s.scalars(stmt))
        more = len(users) > q["limit"]
        users = users[: q["limit"]]
        counts = dict(
            s.execute(
                select(Event.user_id, func.count())
                .where(Event.user_id.in_([u.id for u in users]))
                .group_by(Event.user_id)
            ).all()
        )
        out = [_user_entry(u, counts.get(u.id, 0)) for u in users]
    last = out[-1]["user_id"] if more and out else None
    return {"users": out, "next_cursor": encode_cursor(last)}


@bp.delete("/users/<user_id>")
@require_scope("catalog:write")
@bp.output(UserDeletedOut)
@bp.doc(
    summary="Erase a user",
    description="Deletes the user and every event of theirs (right to erasure) and drops "
    "their cached lists. Models trained before keep what they learnt until the next "
    "training run.",
    responses={404: "unknown user"},
)
def delete_user(user_id: str):
    """Erase a user."""
    _check(user_id, "user_id")
    app = current_app._get_current_object()
    with session_scope(app) as s:
        user = existing_row(s, User, user_id, lock=True)
        events = s.execute(delete(Event).where(Event.user_id == user.id)).rowcount
        s.delete(user)
    drop_cached_lists(app, [user_id], "a user was erased")
    return {"user_id": user_id, "deleted": True, "events_deleted": events}
