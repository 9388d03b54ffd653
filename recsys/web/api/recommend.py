"""Recommendations over HTTP: per user (cached), per guest session, similar items, popular.

Thin views: each parses its input (the schemas of ``recsys.web.schemas``), asks the recommendation
pipeline (``recsys.serving.pipeline``, where the request path's stages live) and answers. The
per-user GET is usually answered in front of Flask by ``recsys.web.fastpath`` through the same
pipeline; it gets here when the fast path hands it on (any doubt, an experiment, an error).

Experiments hook in through ``app.extensions["recsys.variant_resolver"]``: a callable
``(user_id) -> {"experiment": name, "variant": name, "overrides": {...}} | None``. When it
returns an assignment, the variant's overrides are merged over the configuration, the cache key
includes the variant (results are never mixed across variants), and the response carries
``"experiment": {"name", "variant"}``. ``app.extensions["recsys.exposure_hook"]``, if set, is
called with ``(user_id, assignment, response)`` after each answer (cached or not).
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from apiflask import APIBlueprint
from flask import Response, current_app, has_request_context, request
from sqlalchemy import select

from recsys.config import get_config
from recsys.core.types import RecItem, RecRequest, RecResult
from recsys.ops import metrics
from recsys.ops.logs import note
from recsys.serving.admission import admission
from recsys.serving.pipeline import get_pipeline
from recsys.serving.request import Snapshot, UserAsk, is_degraded, user_request
from recsys.serving.userstate import popular_list
from recsys.store import session_scope
from recsys.store.models import Item
from recsys.web.auth import require_scope
from recsys.web.errors import RecsysError
from recsys.web.httpcache import list_headers, not_modified
from recsys.web.schemas import (
    MAX_EXCLUDE,
    MAX_ID,
    LatestQuery,
    PopularQuery,
    RecOut,
    RecQuery,
    SessionIn,
    SimilarQuery,
    id_problem,
    item_fields,
    split_exclude,
)

bp = APIBlueprint("recommend", __name__, url_prefix="/v1", tag="Recommendations")


def _parse_exclude(raw: str | None) -> list[str]:
    out = split_exclude(raw)
    if out is None:
        from apiflask import abort

        abort(
            422,
            message="invalid query",
            detail={"query": {"exclude": [f"at most {MAX_EXCLUDE} ids of <= {MAX_ID} chars"]}},
        )
    return out


def _check_id(value: str, what: str = "user_id") -> None:
    if why := id_problem(value, what):
        raise RecsysError(why)


def list_answer(body: bytes, conditional: bool = True) -> Response:
    """A list's response: with ``ETag`` and ``Cache-Control`` (``recsys.web.httpcache``), 304 when
    the request's ``If-None-Match`` names it; exactly what the fast path sends.

    Parameters
    ----------
    body : bytes
        The serialised list.
    conditional : bool
        Answer 304 when the request's ``If-None-Match`` matches.

    Returns
    -------
    Response
        The 200 (or 304) response.
    """
    app = current_app
    tag, headers = list_headers(body, get_config(app).cache_ttl)
    if conditional and has_request_context():
        if not_modified(request.headers.get("If-None-Match"), tag):
            return Response(status=304, headers=headers)
    return Response(body, headers=headers, mimetype=app.json.mimetype)


def note_access(**fields: Any) -> None:
    """What the access-log line of this request says besides method, path and status.

    Does nothing outside a request.

    Parameters
    ----------
    **fields : Any
        Key -> value pairs added to the request's access-log line (e.g. ``cached=True``).
    """
    if has_request_context():
        note(request.environ, **fields)


def _list_response(
    snap: Snapshot, body: bytes, fields: tuple[str, ...], cached: bool = False
) -> Response:
    """A list answer with the chosen item data rendered from ``snap``'s catalogue."""
    note_access(cached=cached, degraded=is_degraded(body))
    body = get_pipeline(current_app).fields(snap, body, fields)
    return list_answer(body, conditional=request.method == "GET")


@bp.get("/users/<user_id>/recommendations")
@require_scope("read")
@bp.input(RecQuery, location="query", arg_name="q")
@bp.output(RecOut)
@bp.doc(
    summary="Recommendations for a user",
    description="Unknown users are cold users (popular items), not errors. Cached per user; "
    "the cache is invalidated by the user's events and by admin or model changes. "
    "`X-Priority: low|normal|high` sets the deadline and overload behaviour.",
)
def user_recommendations(user_id: str, q: dict):
    """Recommendations for a user."""
    _check_id(user_id)
    adm = admission()
    pipeline = get_pipeline(current_app)
    ask = UserAsk(
        user_id=user_id,
        req=user_request(q, _parse_exclude(q["exclude"]), adm),
        explain=q["explain"],
        shed=adm.shed,
        assignment=pipeline.resolve_assignment(user_id),
    )
    answer = pipeline.user_list(ask)
    body = pipeline.fields(answer.snapshot, answer.body, item_fields(q["fields"]))
    note_access(cached=answer.cached, degraded=is_degraded(body))
    pipeline.expose(user_id, ask.assignment, body)
    metrics.set_route(answer.route)
    return list_answer(body)


@bp.post("/recommendations")
@require_scope("read")
@bp.input(SessionIn, arg_name="body")
@bp.output(RecOut)
@bp.doc(
    summary="Recommendations for a guest session",
    description="`items` are the guest's recent items (newest first); they are treated as "
    "clicks and are not recommended back. Not cached.",
)
def session_recommendations(body: dict):
    """Recommendations for a guest session."""
    adm = admission()
    req = RecRequest(
        n=body["n"],
        offset=body["offset"],
        category=body["category"],
        exclude=list(body["exclude"]),
        explain=body["explain"],
        deadline_s=adm.deadline_s,
        priority=adm.priority,
    )
    route, out, snap = get_pipeline(current_app).session_list(
        body["items"], req, body["explain"], adm.shed
    )
    metrics.set_route(route)
    return _list_response(snap, out, item_fields(body["fields"]))


@bp.get("/items/<item_id>/similar")
@require_scope("read")
@bp.input(SimilarQuery, location="query", arg_name="q")
@bp.output(RecOut)
@bp.doc(
    summary="Items similar to an item",
    description="404 for an item neither the catalogue nor any model knows. An item no model "
    "knows yet (new) gets popular items of its category (or of `category`), marked degraded. "
    "Paged with `n` / `offset`; `category` keeps that category's items; `exclude` leaves out "
    "the ids given (the item itself never comes back).",
)
def similar(item_id: str, q: dict):
    """Items similar to an item."""
    _check_id(item_id, "item_id")
    req = RecRequest(
        offset=q["offset"], category=q["category"], exclude=_parse_exclude(q["exclude"])
    )
    body, cached, snap = get_pipeline(current_app).similar_list(item_id, q["n"], q["explain"], req)
    metrics.set_route("similar")
    return _list_response(snap, body, item_fields(q["fields"]), cached)


@bp.get("/popular")
@require_scope("read")
@bp.input(PopularQuery, location="query", arg_name="q")
@bp.output(RecOut)
@bp.doc(
    summary="Most popular available items, optionally within a category",
    description="With `user_id`: without the items that user has an event with (seen, "
    "clicked, bought ...; their last HISTORY_MAX_EVENTS events). The database down: the "
    "list unfiltered, marked degraded.",
)
def popular(q: dict):
    """Most popular available items, optionally within a category.

    Answers a recommendation list (items with their scores and the requested item fields),
    paged with ``n`` / ``offset``.
    """
    if q["user_id"] is not None:
        _check_id(q["user_id"])
    body, snap = popular_list(
        get_pipeline(current_app),
        q["n"],
        q["category"],
        q["offset"],
        q["explain"],
        user_id=q["user_id"],
        deadline_s=admission().deadline_s,
    )
    metrics.set_route("popular")
    return _list_response(snap, body, item_fields(q["fields"]))


@bp.get("/latest")
@require_scope("read")
@bp.input(LatestQuery, location="query", arg_name="q")
@bp.output(RecOut)
@bp.doc(
    summary="The newest available items, optionally within a category",
    description="Items newest first (the time the catalogue first saw them); `score` is that "
    "time in unix seconds. Paged with `n` / `offset`.",
)
def latest(q: dict):
    """The newest available items, optionally within a category."""
    pipeline = get_pipeline(current_app)
    snap = pipeline.snapshot()
    items = newest_items(snap.catalog, q["n"], q["offset"], q["category"])
    result = RecResult(items=[RecItem(i, s) for i, s in items], route="latest")
    body = pipeline.render(result, None, False, degraded=False).partition(b"\n")[2]
    metrics.set_route("latest")
    return _list_response(snap, body, item_fields(q["fields"]))


def newest_items(
    catalog: Any, n: int, offset: int, category: str | None
) -> list[tuple[str, float]]:
    """The page of the newest items of ``catalog`` that are available (and in ``category``).

    Parameters
    ----------
    catalog : Catalog
        The worker's catalogue snapshot: availability and categories as every list sees them.
    n, offset : int
        The page.
    category : str or None
        Only items of this category; None: any.

    Returns
    -------
    list of (str, float)
        ``(item_id, created at in unix seconds)``, newest first.
    """
    stmt = (
        select(Item.external_id, Item.created_at)
        .where(Item.available.is_(True))
        .order_by(Item.created_at.desc(), Item.id.desc())
        .execution_options(yield_per=500)
    )
    out: list[tuple[str, float]] = []
    skip = offset
    with session_scope() as s:
        for item_id, created in s.execute(stmt):
            if not catalog.is_available(item_id):
                continue
            if category is not None and not catalog.in_category(item_id, category):
                continue
            if skip:
                skip -= 1
                continue
            out.append((item_id, created.replace(tzinfo=UTC).timestamp()))
            if len(out) == n:
                break
    return out
