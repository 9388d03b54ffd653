"""Catalogue upserts: ``PUT /v1/items/<id>`` and ``PUT /v1/users/<id>``.

A change to an item's availability or categories bumps the shared ``catalog_version`` in the
same transaction, so every worker of every server refreshes its catalogue snapshot and moves to
fresh cache keys within ``CONFIG_POLL_SECONDS``; the answering worker sees it at once.
"""

from __future__ import annotations

from apiflask import APIBlueprint
from flask import current_app
from sqlalchemy import select

from recsys.api.events import ensure_ids
from recsys.auth import require_scope
from recsys.schemas import MAX_ID, ItemIn, ItemOut, UserIn, UserOut, check_text
from recsys.settings import CATALOG_VERSION, bump, get_settings
from recsys.store import session_scope
from recsys.store.models import Item, User

bp = APIBlueprint("catalog", __name__, url_prefix="/v1", tag="Catalogue")

ITEM_FIELDS = ("title", "description", "categories", "price", "available", "attributes")


def _check(external_id: str, what: str) -> None:
    from recsys.errors import RecsysError

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
    _check(item_id, "item_id")
    app = current_app._get_current_object()
    with session_scope(app) as s:
        item = s.scalar(select(Item).where(Item.external_id == item_id).with_for_update())
        created = item is None
        if created:
            ensure_ids(
                s,
                Item,
                {item_id},
                title="",
                description="",
                categories=[],
                available=True,
                attributes={},
            )
            item = s.scalar(select(Item).where(Item.external_id == item_id).with_for_update())
        before = (bool(item.available), list(item.categories or []))
        for field in ITEM_FIELDS:
            if field in body:
                setattr(item, field, body[field])
        after = (bool(item.available), list(item.categories or []))
        # Title or price edits do not change what may be recommended: no catalogue bump.
        if after != before:
            bump(s, CATALOG_VERSION, f"item {item_id} availability/categories changed")
        out = _item_out(item, created)
    if after != before:
        get_settings(app).versions(force=True)
    return out, 201 if created else 200


@bp.put("/users/<user_id>")
@require_scope("catalog:write")
@bp.input(UserIn, arg_name="body")
@bp.output(UserOut)
@bp.doc(summary="Create or update a user's attributes", responses={201: "created"})
def put_user(user_id: str, body: dict):
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
