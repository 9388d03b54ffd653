"""Recommendations over HTTP: per user (cached), per guest session, similar items, popular.

Every answer comes from ``recsys.service.Recommender`` (the same code offline evaluation runs)
built per request from this process's configuration snapshot (``recsys.settings``), catalogue
snapshot (``recsys.catalog``) and model runtime (``recsys.runtime``).

Experiments hook in through ``app.extensions["recsys.variant_resolver"]``: a callable
``(user_id) -> {"experiment": name, "variant": name, "overrides": {...}} | None``. When it
returns an assignment, the variant's overrides are merged over the configuration, the cache key
includes the variant (results are never mixed across variants), and the response carries
``"experiment": {"name", "variant"}``. ``app.extensions["recsys.exposure_hook"]``, if set, is
called with ``(user_id, assignment, response)`` after each answer (cached or not).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

from apiflask import APIBlueprint
from flask import Response, current_app, has_request_context, request

from recsys import metrics
from recsys.auth import require_scope
from recsys.cache import get_cache
from recsys.catalog import Catalog, get_catalog_store
from recsys.errors import DB_UNAVAILABLE, NotFound, RateLimitedLog
from recsys.history import DEFAULT_MAX_EVENTS, load_history
from recsys.httpcache import list_headers, not_modified
from recsys.logs import note, stage
from recsys.schemas import (
    MAX_EXCLUDE,
    MAX_ID,
    CountQuery,
    RecOut,
    RecQuery,
    SessionIn,
    SimilarQuery,
    check_text,
    item_fields,
)
from recsys.service import Recommender, RecRequest, RecResult, ServingConfig, UserHistory
from recsys.settings import Versions, get_settings

log = logging.getLogger(__name__)
# During an outage every uncached request fails its history read: one line per 10 s, not each.
_history_log = RateLimitedLog(log)

bp = APIBlueprint("recommend", __name__, url_prefix="/v1", tag="Recommendations")

# Where the cache fast path (recsys.fastpath) leaves its lookup of a miss for the view.
PEEK_ENVIRON_KEY = "recsys.cache_peek"
POPULAR_ONLY = {"routing": {"cold_strategies": ["popular"], "warm_strategies": ["popular"]}}


@dataclass
class Serving:
    """What one request serves with: config, versions, catalogue, models."""

    config: ServingConfig
    versions: Versions
    catalog: Catalog
    models: Any
    model_versions: dict[str, str]
    wanted_versions: dict[str, str]
    runner: Any

    def recommender(self, overrides: dict | None = None) -> Recommender:
        cfg = self.config.with_overrides(overrides) if overrides else self.config
        return Recommender(self.models, cfg, self.catalog, runner=self.runner)


def _runner(tasks, deadline_s):
    """Strategies in the request thread (``recsys.deadline.run_inline``, the default) or in
    the deadline pool (``STRATEGY_PARALLEL``)."""
    from recsys.deadline import run_inline, run_with_deadline

    if deadline_s is not None and current_app.config.get("STRATEGY_PARALLEL", False):
        return run_with_deadline(tasks, deadline_s)
    return run_inline(tasks, deadline_s)


def serving(app=None) -> Serving:
    from recsys.runtime import get_runtime

    app = app or current_app._get_current_object()
    settings = get_settings(app)
    versions = settings.versions()
    runtime = get_runtime(app)
    # wanted_versions() also makes the runtime notice activations made elsewhere even when
    # every request is a cache hit; the key carries both what is served and what is wanted,
    # so lists computed by the old model during a background swap go stale when it completes.
    wanted = runtime.wanted_versions()
    loaded = dict(runtime.active_versions())
    return Serving(
        config=settings.config(),
        versions=versions,
        catalog=get_catalog_store(app).current(versions.catalog, versions.items),
        models=runtime.get,
        model_versions=loaded,
        wanted_versions=wanted,
        runner=_runner,
    )


def recommend_in_turn(
    ctx: Serving,
    overrides: dict | None,
    history: UserHistory,
    req: RecRequest,
    popular_only: bool = False,
) -> tuple[RecResult, bool]:
    """``Recommender.recommend`` in one of this worker's scoring turns (``SCORING_SLOTS``,
    ``recsys.deadline.ScoringGate.combine``), with the time spent waiting taken off the
    request's deadline. ``(result, fell_back)``: when no turn comes within the deadline (or
    ``popular_only``: shed, or the SQL store down), popularity only, computed without a turn (it is
    cheap), and the caller marks the answer degraded.

    Whoever gets a turn also scores the requests waiting for one that would be scored exactly
    alike (``SCORING_BATCH_MAX`` in all): the same configuration, catalogue and models, the same
    priority and the same number of candidates per strategy. They go through
    ``Recommender.recommend_batch`` together, the path offline evaluation takes, and each gets
    the answer it would have got alone (the blend, rules and page are per user; the int8 deep
    model pins its quantisation range, see ``strategies.deep``)."""
    from recsys.deadline import scoring_gate

    if not popular_only:
        cfg = current_app.config
        rec = ctx.recommender(overrides)
        gate = scoring_gate(cfg.get("SCORING_SLOTS"))
        runtime = getattr(ctx.models, "__self__", ctx.models)
        key = (
            id(rec.config),
            id(ctx.catalog),
            id(runtime),
            req.priority,
            max(rec.config.candidates_per_strategy, req.n + req.offset),
        )

        def run_batch(jobs: list[tuple[tuple[UserHistory, RecRequest], float]]) -> list:
            histories, requests = [], []
            for (h, r), waited in jobs:
                if r.deadline_s is not None and waited > 0:
                    r = replace(r, deadline_s=max(0.0, r.deadline_s - waited))
                histories.append(h)
                requests.append(r)
            return rec.recommend_batch(histories, requests)

        scored, result, _ = gate.combine(
            key,
            (history, req),
            run_batch,
            req.priority,
            req.deadline_s,
            int(cfg.get("SCORING_BATCH_MAX", 8)),
        )
        if scored:
            return result, False
        log.warning("no scoring turn within the %.0f ms deadline: popularity", req.deadline_s * 1e3)
    rec = ctx.recommender({**(overrides or {}), **POPULAR_ONLY})
    return rec.recommend(history, req), not popular_only


def unloadable(ctx: Serving, result: RecResult) -> bool:
    """Whether a strategy the answer skipped has an active version that this process could
    not load (a corrupt or missing file): the list lacks a model it should have, so it is
    degraded (and not cached), unlike a strategy that simply has no active version."""
    return any(name in ctx.wanted_versions for name in result.skipped)


def split_exclude(raw: str | None) -> list[str] | None:
    """The item ids of an ``exclude`` query value (comma-separated, blanks dropped), or None
    when there are more than ``MAX_EXCLUDE`` or one is longer than ``MAX_ID``."""
    if not raw:
        return []
    out = [x.strip() for x in raw.split(",") if x.strip()]
    if len(out) > MAX_EXCLUDE or any(len(x) > MAX_ID for x in out):
        return None
    return out


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


def id_problem(value: str, what: str = "user_id") -> str | None:
    """Why ``value`` is not an acceptable id in a URL, or None."""
    if not value.strip() or len(value) > MAX_ID:
        return f"{what} must be 1..{MAX_ID} characters"
    if why := check_text(value):  # %00 in the URL would reach SQL
        return f"{what} {why}"
    return None


def _check_id(user_id: str, what: str = "user_id") -> None:
    if why := id_problem(user_id, what):
        from recsys.errors import RecsysError

        raise RecsysError(why)


# (versions, served models, wanted models) -> their canonical JSON, for the cache key: the
# same for every request until something changes, so serialised once, not per request.
_snapshot_memo: tuple[tuple, str] | None = None


def _snapshot(ctx: Serving) -> str:
    global _snapshot_memo
    key = (ctx.versions, ctx.model_versions, ctx.wanted_versions)
    memo = _snapshot_memo
    if memo is not None and memo[0] == key:
        return memo[1]
    text = json.dumps(
        {
            "cfg": ctx.versions.config,
            "cat": ctx.versions.catalog,
            "ep": ctx.versions.epoch,
            "m": ctx.model_versions,
            "w": ctx.wanted_versions,
        },
        sort_keys=True,
    )
    _snapshot_memo = (key, text)
    return text


_NOT_CACHED = b'"cached":false'
_DEGRADED = b'"degraded":true'
_CACHED = b'"cached":true'


def _render(out: dict[str, Any]) -> bytes:
    """The response body as ``@bp.output(RecOut)`` would serialise ``out``.

    ``out`` is built from ``RecResult.to_dict`` with exactly RecOut's fields and JSON types,
    for which the schema's dump is the identity (tests/test_api_recommend.py checks real
    answers against it), so it goes straight to Flask's JSON provider: ~50 instead of
    ~200 us per list."""
    return current_app.json.response(out).get_data()


def _mark_cached(body: bytes) -> bytes:
    # Keys are sorted, so ``"cached"`` is the first key; an id containing the text has its
    # quotes escaped (``\"``), so the first unescaped match is always the key itself.
    return body.replace(_NOT_CACHED, _CACHED, 1)


def user_cache_context(
    ctx: Serving,
    n: int,
    offset: int,
    category: str | None,
    exclude: list[str],
    explain: bool,
    assignment: dict | None,
) -> dict[str, Any]:
    """What a per-user list depends on besides the user's history (``ResultCache`` keys on
    this and the user; the history token guards the rest). The one place this is built: the
    Flask view and the WSGI fast path for hits (``recsys.fastpath``) must agree on it."""
    return {
        "n": n,
        "o": offset,
        "c": category,
        "x": sorted(exclude),
        "e": explain,
        "s": _snapshot(ctx),
        "var": [assignment.get("experiment"), assignment.get("variant")] if assignment else None,
    }


def user_request(q: dict[str, Any], exclude: list[str], adm) -> RecRequest:
    """The ``RecRequest`` of a valid recommendations query (``RecQuery``'s fields, ``exclude``
    already split) under ``adm``, the request's ``recsys.deadline.admission``: the view's and
    the fast path's."""
    return RecRequest(
        n=q["n"],
        offset=q["offset"],
        category=q["category"],
        exclude=exclude,
        explain=q["explain"],
        deadline_s=adm.deadline_s,
        priority=adm.priority,
    )


# ``user_payload``'s default ``assignment``: resolve it there.
_RESOLVE = object()


def user_payload(
    app,
    user_id: str,
    req: RecRequest,
    explain: bool = False,
    shed: bool = False,
    peeked=None,
    ctx: Serving | None = None,
    assignment: dict | None | object = _RESOLVE,
) -> tuple[str, bytes, bool, dict | None]:
    """The per-user answer: ``(route, body, cached, assignment)``, in an app context but
    without a request (the Flask view and the WSGI fast path, ``recsys.fastpath``, both call
    this). ``peeked``: the fast path's lookup of this request's cache entry (a miss), reused
    instead of a second read; ``ctx``: the snapshot that lookup was keyed on (default: the
    current one); ``assignment``: the user's experiment assignment when the caller has already
    resolved it (default: resolved here).

    The cache holds the serialised response (``route`` + newline + JSON body with
    ``"cached": false``), so a hit is one Redis round trip plus a byte replace: no JSON
    decoding or encoding, no SQL.
    """
    ctx = ctx or serving(app)
    if assignment is _RESOLVE:
        resolver = app.extensions.get("recsys.variant_resolver")
        assignment = resolver(user_id) if resolver else None
    overrides = assignment.get("overrides") if assignment else None
    cache_context = user_cache_context(
        ctx, req.n, req.offset, req.category, req.exclude, explain, assignment
    )
    limit = int(app.config.get("HISTORY_MAX_EVENTS", DEFAULT_MAX_EVENTS))
    cache = get_cache(app)

    def compute() -> tuple[bytes, bool]:
        store_down = False
        t0 = time.perf_counter()
        try:
            # Within the request's deadline: a database that hangs gets that long, no more.
            history = load_history(app, user_id, limit, req.deadline_s)
        except DB_UNAVAILABLE as e:
            # No history without the SQL store: popular items beat an error page for a
            # shop's frontend; marked degraded, so never cached.
            _history_log.warning(
                "history lookup failed, serving popularity: %s", (str(e).splitlines() or [""])[0]
            )
            history, store_down = UserHistory.from_items(user_id, [], type="click"), True
        t1 = time.perf_counter()
        stage("history", t1 - t0)
        result, fell_back = recommend_in_turn(ctx, overrides, history, req, shed or store_down)
        stage("score", time.perf_counter() - t1)
        out = {"user_id": user_id, **result.to_dict(explain=explain), "cached": False}
        if metrics.note_degraded(
            shed, store_down, fell_back, unloadable(ctx, result), out["degraded"]
        ):
            out["degraded"] = True
        if assignment:
            out["experiment"] = {
                "name": assignment.get("experiment"),
                "variant": assignment.get("variant"),
            }
        return out["route"].encode() + b"\n" + _render(out), not out["degraded"]

    if shed:
        # Overloaded and low priority: the cache if it has it, else popularity only.
        payload = cache.peek_raw(user_id, cache_context)
        cached = payload is not None
        if payload is None:
            payload = compute()[0]
    else:
        payload, cached = cache.get_or_compute_raw(user_id, cache_context, compute, peeked)
    route, _, body = payload.partition(b"\n")
    if cached:
        body = _mark_cached(body)
    return route.decode(), body, cached, assignment


def recommend_user(
    user_id: str,
    req: RecRequest,
    explain: bool = False,
    shed: bool = False,
    fields: tuple[str, ...] = (),
) -> Response:
    """The cached per-user answer (GET /v1/users/<id>/recommendations) as a Flask response,
    with item ``fields`` rendered after the cache. Plain requests get here only when
    ``recsys.fastpath`` hands them on (the cache unreachable, ``FAST_MISS_PATH`` off for a
    miss, an error there): it answers the rest in front of Flask with the same bytes
    (``user_payload``)."""
    app = current_app._get_current_object()
    peeked = request.environ.get(PEEK_ENVIRON_KEY) if has_request_context() else None
    ctx = serving(app)
    route, body, cached, assignment = user_payload(app, user_id, req, explain, shed, peeked, ctx)
    t0 = time.perf_counter()
    body = ctx.catalog.render_items(body, fields)
    stage("render", time.perf_counter() - t0)
    note_access(cached=cached, degraded=_DEGRADED in body)
    hook = app.extensions.get("recsys.exposure_hook")
    if hook and assignment:
        try:
            hook(user_id, assignment, json.loads(body))
        except Exception:  # exposure logging must never fail a recommendation
            log.exception("exposure hook failed")
    metrics.set_route(route)
    return list_answer(body)


def list_answer(body: bytes, conditional: bool = True) -> Response:
    """A list's response: with ``ETag`` and ``Cache-Control`` (``recsys.httpcache``), 304 when
    the request's ``If-None-Match`` names it; exactly what the fast path sends."""
    app = current_app
    tag, headers = list_headers(body, app.config.get("CACHE_TTL", 300))
    if conditional and has_request_context():
        if not_modified(request.headers.get("If-None-Match"), tag):
            return Response(status=304, headers=headers)
    return Response(body, headers=headers, mimetype=app.json.mimetype)


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
    from recsys.deadline import admission

    _check_id(user_id)
    adm = admission()
    req = user_request(q, _parse_exclude(q["exclude"]), adm)
    return recommend_user(
        user_id, req, explain=q["explain"], shed=adm.shed, fields=item_fields(q["fields"])
    )


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
    from recsys.deadline import admission

    adm = admission()
    ctx = serving()
    history = UserHistory.from_items(None, body["items"], type="click")
    req = RecRequest(
        n=body["n"],
        offset=body["offset"],
        category=body["category"],
        exclude=list(body["exclude"]) + list(body["items"]),
        explain=body["explain"],
        deadline_s=adm.deadline_s,
        priority=adm.priority,
    )
    result, fell_back = recommend_in_turn(ctx, None, history, req, adm.shed)
    metrics.set_route(result.route)
    out = {"user_id": None, **result.to_dict(explain=body["explain"]), "cached": False}
    if metrics.note_degraded(adm.shed, False, fell_back, unloadable(ctx, result), out["degraded"]):
        out["degraded"] = True
    return _list_response(ctx, _render(out), item_fields(body["fields"]))


def _list_response(
    ctx: Serving, body: bytes, fields: tuple[str, ...], cached: bool = False
) -> Response:
    """A list answer with the chosen item data rendered from ``ctx``'s catalogue snapshot."""
    note_access(cached=cached, degraded=_DEGRADED in body)
    t0 = time.perf_counter()
    body = ctx.catalog.render_items(body, fields)
    stage("render", time.perf_counter() - t0)
    return list_answer(body, conditional=request.method == "GET")


def note_access(**fields: Any) -> None:
    """What the access-log line of this request says besides method, path and status."""
    if has_request_context():
        note(request.environ, **fields)


@bp.get("/items/<item_id>/similar")
@require_scope("read")
@bp.input(SimilarQuery, location="query", arg_name="q")
@bp.output(RecOut)
@bp.doc(
    summary="Items similar to an item",
    description="404 for an item neither the catalogue nor any model knows. An item no model "
    "knows yet (new) gets popular items of its category, marked degraded.",
)
def similar(item_id: str, q: dict):
    _check_id(item_id, "item_id")
    app = current_app._get_current_object()
    ctx = serving(app)
    # Lists depend only on the item, n and what is served (config, catalogue, models): the
    # serialised answer is kept per process under that key, so a repeat is a dict lookup.
    key = (item_id, q["n"], q["explain"], _snapshot(ctx))
    cache = _similar_cache(app)
    body = cache.get(key)
    cached = body is not None
    if body is None:
        known = item_id in ctx.catalog
        if not known:
            for name in ctx.config.strategies:
                lm = ctx.models(name) if name in ctx.model_versions else None
                if lm is not None and item_id in lm.items:
                    known = True
                    break
        if not known:
            raise NotFound(f"unknown item {item_id!r}")
        result = ctx.recommender().similar_items(item_id, n=q["n"])
        out = {"user_id": None, **result.to_dict(explain=q["explain"]), "cached": False}
        body = _render(out)
        if not result.dropped:  # a strategy failed: do not keep the partial list
            cache.put(key, body)
    metrics.set_route("similar")
    return _list_response(ctx, body, item_fields(q["fields"]), cached)


class _LRU:
    """A small thread-safe LRU of serialised answers (per process)."""

    def __init__(self, size: int):
        self.size = max(0, int(size))
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key, value) -> None:
        if not self.size:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)


def _similar_cache(app) -> _LRU:
    cache = app.extensions.get("recsys.similar_cache")
    if cache is None:
        cache = app.extensions.setdefault(
            "recsys.similar_cache", _LRU(app.config.get("SIMILAR_CACHE_SIZE", 20_000))
        )
    return cache


@bp.get("/popular")
@require_scope("read")
@bp.input(CountQuery, location="query", arg_name="q")
@bp.output(RecOut)
@bp.doc(summary="Most popular available items, optionally within a category")
def popular(q: dict):
    ctx = serving()
    result = ctx.recommender().popular(n=q["n"], category=q["category"], offset=q["offset"])
    metrics.set_route("popular")
    out = {"user_id": None, **result.to_dict(explain=q["explain"]), "cached": False}
    return _list_response(ctx, _render(out), item_fields(q["fields"]))
