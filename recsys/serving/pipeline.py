"""The request path of every recommendation endpoint, as named stages over one context.

Read top to bottom, ``RecommendationPipeline.user_list`` is what
``GET /v1/users/<id>/recommendations`` does, whether Flask's view (``recsys.web.api.recommend``) or
the WSGI fast path (``recsys.web.fastpath``) received it; both only parse and answer:

==============  =================================================================================
stage           what it does
==============  =================================================================================
snapshot        this process's configuration, catalogue, loaded and wanted model versions
                (``Snapshot``); the cache key and every later stage use this one snapshot
cache_lookup    one ``MGET`` of the user's history token and the cached answer
                (``recsys.serving.cache.ResultCache``); a fresh entry ends the path (cached = true)
history         the user's last events from SQL within the request deadline
                (``recsys.serving.history``); the SQL store down: an empty history, degraded
turn_wait       waiting for one of this worker's scoring turns (``recsys.serving.gate``);
                none within the deadline: popularity only, degraded
route           cold/warm (or a learned route) and its strategies (``Recommender.route``)
candidates      each strategy's top candidates (``Recommender.candidates``, the loaded models
                of ``recsys.models.runtime``, under the deadline through ``recsys.core.runners``)
blend           weighted score fusion (or RRF) of the candidate lists
rules           business rules (seen, unavailable, category, per-category cap) in rank order,
                stopping at the end of the page (so ``page`` costs nothing of its own)
render          the answer's JSON bytes
cache_store     the answer stored under the key looked up (not when degraded)
fields          item data (title, price ...) spliced in after the cache, from the snapshot's
                catalogue
==============  =================================================================================

Each stage's time goes into ``recsys_stage_seconds{stage=...}`` and the request's
``Server-Timing`` header. Stages inside a scoring turn (route ... rules) are timed in the thread
that holds the turn: a request scored in another's combined turn reports ``turn_wait`` only.
The other endpoints (guest session, similar items, popular) run the subset that applies.

Collaborators are injected by ``init_app`` (called from ``create_app``): the settings store
(configuration and versions), the catalogue store, the model runtime (created lazily, once per
process), the result cache and the history reader. Configuration values are read from
``app.config`` per request, so tests and operators can change them on a running app.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from flask import Flask

from recsys.config import get_config
from recsys.core.recommender import Recommender, RecRequest, RecResult, ServingConfig, UserHistory
from recsys.core.runners import run_inline, run_with_deadline
from recsys.errors import DB_UNAVAILABLE, NotFound, RateLimitedLog
from recsys.ops.logs import stage as server_timing_stage
from recsys.ops.metrics import STAGE_LATENCY, note_degraded
from recsys.serving.cache import LocalBackend, Peek, ResultCache
from recsys.serving.catalog import Catalog, CatalogStore
from recsys.serving.gate import scoring_gate
from recsys.serving.history import get_history_reader
from recsys.serving.settings_store import SettingsStore
from recsys.store.versions import Versions

log = logging.getLogger(__name__)
# During an outage every uncached request fails its history read: one line per 10 s, not each.
_history_log = RateLimitedLog(log)

# Where the WSGI fast path (recsys.web.fastpath) leaves its lookup of a miss for the view.
PEEK_ENVIRON_KEY = "recsys.cache_peek"
POPULAR_ONLY = {"routing": {"cold_strategies": ["popular"], "warm_strategies": ["popular"]}}
EXTENSION = "recsys.pipeline"

_DEGRADED = b'"degraded":true'
_NOT_CACHED = b'"cached":false'
_CACHED = b'"cached":true'
# A similar-items answer is kept until the snapshot changes (the key includes it).
_FOREVER_S = 10 * 365 * 86400.0

_stage_children: dict[str, Any] = {}


def record_stage(name: str, seconds: float) -> None:
    """One stage's time: the stage histogram and the request's ``Server-Timing`` header."""
    child = _stage_children.get(name)
    if child is None:
        child = _stage_children[name] = STAGE_LATENCY.labels(name)
    child.observe(seconds)
    server_timing_stage(name, seconds)


def is_degraded(body: bytes) -> bool:
    return _DEGRADED in body


def mark_cached(body: bytes) -> bytes:
    """A stored body (``"cached": false``) as a cache hit answers it."""
    # Keys are sorted, so ``"cached"`` is the first key; an id containing the text has its
    # quotes escaped (``\\"``), so the first unescaped match is always the key itself.
    return body.replace(_NOT_CACHED, _CACHED, 1)


@dataclass
class Snapshot:
    """What one request serves with: config, versions, catalogue, models."""

    config: ServingConfig
    versions: Versions
    catalog: Catalog
    models: Callable[[str], Any]
    model_versions: dict[str, str]
    wanted_versions: dict[str, str]
    runtime: Any
    # Canonical JSON of (versions, served models, wanted models), part of every cache key.
    key: str = ""

    def unloadable(self, result: RecResult) -> bool:
        """Whether a strategy the answer skipped has an active version that this process
        could not load (a corrupt or missing file): the list lacks a model it should have,
        so it is degraded (and not cached), unlike a strategy with no active version."""
        return any(name in self.wanted_versions for name in result.skipped)


@dataclass
class UserAsk:
    """One per-user list request: what the view or the fast path parsed, then what the stages
    found. ``peeked``: a cache lookup already made for this request (the fast path's miss)."""

    user_id: str
    req: RecRequest
    explain: bool = False
    shed: bool = False
    assignment: dict | None = None
    peeked: Peek | None = None
    snapshot: Snapshot | None = None


@dataclass
class UserAnswer:
    route: str
    body: bytes
    cached: bool
    snapshot: Snapshot


def user_request(q: dict[str, Any], exclude: list[str], adm: Any) -> RecRequest:
    """The ``RecRequest`` of a valid recommendations query (``RecQuery``'s fields, ``exclude``
    already split) under ``adm``, the request's ``recsys.serving.admission.Admission``: the
    view's and the fast path's."""
    return RecRequest(
        n=q["n"],
        offset=q["offset"],
        category=q["category"],
        exclude=exclude,
        explain=q["explain"],
        deadline_s=adm.deadline_s,
        priority=adm.priority,
    )


class RecommendationPipeline:
    """See the module docstring; one per app (``get_pipeline``)."""

    def __init__(
        self,
        app: Flask,
        *,
        settings: SettingsStore,
        catalogs: CatalogStore,
        runtime: Callable[[], Any],
        cache: ResultCache,
        history: Callable[[str, int, float | None], UserHistory],
    ) -> None:
        self.app = app
        self.settings = settings
        self.catalogs = catalogs
        self.runtime = runtime
        self.cache = cache
        self.history = history
        self._snapshot_memo: tuple[tuple, str] | None = None
        size = get_config(app).similar_cache_size
        # Serialised similar-items answers of this process (None: off).
        self._similar = LocalBackend(size) if size > 0 else None

    # -- stage: snapshot -----------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        t0 = time.perf_counter()
        versions = self.settings.versions()
        runtime = self.runtime()
        # wanted_versions() also makes the runtime notice activations made elsewhere even when
        # every request is a cache hit; the key carries both what is served and what is
        # wanted, so lists computed by the old model during a background swap go stale when it
        # completes.
        wanted = runtime.wanted_versions()
        loaded = dict(runtime.active_versions())
        snap = Snapshot(
            config=self.settings.config(),
            versions=versions,
            catalog=self.catalogs.current(versions.catalog, versions.items),
            models=runtime.get,
            model_versions=loaded,
            wanted_versions=wanted,
            runtime=runtime,
        )
        snap.key = self._snapshot_key(snap)
        record_stage("snapshot", time.perf_counter() - t0)
        return snap

    def _snapshot_key(self, snap: Snapshot) -> str:
        # The same for every request until something changes: serialised once, not per request.
        key = (snap.versions, snap.model_versions, snap.wanted_versions)
        memo = self._snapshot_memo
        if memo is not None and memo[0] == key:
            return memo[1]
        text = json.dumps(
            {
                "cfg": snap.versions.config,
                "cat": snap.versions.catalog,
                "ep": snap.versions.epoch,
                "m": snap.model_versions,
                "w": snap.wanted_versions,
            },
            sort_keys=True,
        )
        self._snapshot_memo = (key, text)
        return text

    # -- stage: cache_lookup ------------------------------------------------------------------
    @staticmethod
    def cache_context(
        snap: Snapshot,
        n: int,
        offset: int,
        category: str | None,
        exclude: list[str],
        explain: bool,
        assignment: dict | None,
    ) -> dict[str, Any]:
        """What a per-user list depends on besides the user's history (``ResultCache`` keys on
        this and the user; the history token guards the rest)."""
        return {
            "n": n,
            "o": offset,
            "c": category,
            "x": sorted(exclude),
            "e": explain,
            "s": snap.key,
            "var": [assignment.get("experiment"), assignment.get("variant")]
            if assignment
            else None,
        }

    def context_of(self, ask: UserAsk, snap: Snapshot) -> dict[str, Any]:
        r = ask.req
        return self.cache_context(
            snap, r.n, r.offset, r.category, list(r.exclude), ask.explain, ask.assignment
        )

    def lookup(self, user_id: str, context: dict[str, Any]) -> Peek | None:
        """The cache's entry for this request (None: the cache is unreachable)."""
        t0 = time.perf_counter()
        peeked = self.cache.peek(user_id, context)
        record_stage("cache_lookup", time.perf_counter() - t0)
        return peeked

    # -- the per-user list --------------------------------------------------------------------
    def resolve_assignment(self, user_id: str) -> dict | None:
        """The user's experiment assignment (``recsys.serving.experiments``), or None."""
        resolver = self.app.extensions.get("recsys.variant_resolver")
        return resolver(user_id) if resolver else None

    def user_list(self, ask: UserAsk) -> UserAnswer:
        """The per-user answer (before ``fields``), in an app context but without a request.

        The cache holds the serialised response (``route`` + newline + JSON body with
        ``"cached": false``), so a hit is one Redis round trip plus a byte replace: no JSON
        decoding or encoding, no SQL."""
        snap = ask.snapshot or self.snapshot()
        context = self.context_of(ask, snap)
        timing: dict[str, float] = {}

        def compute() -> tuple[bytes, bool]:
            timing["computing"] = time.perf_counter()
            if ask.peeked is None and not ask.shed:
                # The cache's read (and lock) before computing: a miss.
                record_stage("cache_lookup", timing["computing"] - t0)
            history, store_down = self._history(ask)
            result, fell_back = self.score(
                snap,
                ask.assignment.get("overrides") if ask.assignment else None,
                history,
                ask.req,
                popular_only=ask.shed or store_down,
            )
            degraded = note_degraded(
                ask.shed, store_down, fell_back, snap.unloadable(result), result.degraded
            )
            payload = self.render(result, ask.user_id, ask.explain, degraded, ask.assignment)
            timing["computed"] = time.perf_counter()
            return payload, not degraded

        t0 = time.perf_counter()
        if ask.shed:
            # Overloaded and low priority: the cache if it has it, else popularity only.
            payload = self.cache.peek_raw(ask.user_id, context)
            cached = payload is not None
            record_stage("cache_lookup", time.perf_counter() - t0)
            if payload is None:
                payload = compute()[0]
        else:
            payload, cached = self.cache.get_or_compute_raw(
                ask.user_id, context, compute, ask.peeked
            )
            end = time.perf_counter()
            if "computed" in timing:
                # The cache's write (and unlock) after computing.
                record_stage("cache_store", end - timing["computed"])
            elif "computing" not in timing and ask.peeked is None:
                record_stage("cache_lookup", end - t0)  # a hit
        route, _, body = payload.partition(b"\n")
        if cached:
            body = mark_cached(body)
        return UserAnswer(route.decode(), body, cached, snap)

    # -- stage: history -----------------------------------------------------------------------
    def _history(self, ask: UserAsk) -> tuple[UserHistory, bool]:
        """(history, store down)."""
        t0 = time.perf_counter()
        limit = get_config(self.app).history_max_events
        try:
            # Within the request's deadline: a database that hangs gets that long, no more.
            history, down = self.history(ask.user_id, limit, ask.req.deadline_s), False
        except DB_UNAVAILABLE as e:
            # No history without the SQL store: popular items beat an error page for a
            # shop's frontend; marked degraded, so never cached.
            _history_log.warning(
                "history lookup failed, serving popularity: %s", (str(e).splitlines() or [""])[0]
            )
            history, down = UserHistory.from_items(ask.user_id, [], type="click"), True
        record_stage("history", time.perf_counter() - t0)
        return history, down

    # -- stages: turn_wait, then route, candidates, blend, rules (the Recommender) -------------
    def recommender(self, snap: Snapshot, overrides: dict | None = None) -> Recommender:
        cfg = snap.config.with_overrides(overrides) if overrides else snap.config
        return Recommender(
            snap.models, cfg, snap.catalog, runner=self._runner, on_stage=record_stage
        )

    def _runner(self, tasks, deadline_s):
        """Strategies in the request thread (``run_inline``, the default) or in the deadline
        pool (``STRATEGY_PARALLEL``)."""
        if deadline_s is not None and get_config(self.app).strategy_parallel:
            return run_with_deadline(tasks, deadline_s)
        return run_inline(tasks, deadline_s)

    def score(
        self,
        snap: Snapshot,
        overrides: dict | None,
        history: UserHistory,
        req: RecRequest,
        popular_only: bool = False,
    ) -> tuple[RecResult, bool]:
        """``Recommender.recommend`` in one of this worker's scoring turns (``SCORING_SLOTS``,
        ``ScoringGate.combine``), with the time spent waiting taken off the request's deadline.
        ``(result, fell_back)``: when no turn comes within the deadline (or ``popular_only``:
        shed, or the SQL store down), popularity only, computed without a turn (it is cheap),
        and the caller marks the answer degraded.

        Whoever gets a turn also scores the requests waiting for one that would be scored
        exactly alike (``SCORING_BATCH_MAX`` in all): the same configuration, catalogue and
        models, the same priority and the same number of candidates per strategy. They go
        through ``Recommender.recommend_batch`` together, the path offline evaluation takes,
        and each gets the answer it would have got alone (the blend, rules and page are per
        user; the int8 deep model pins its quantisation range, see ``strategies.deep``)."""
        if not popular_only:
            cfg = get_config(self.app)
            rec = self.recommender(snap, overrides)
            gate = scoring_gate(_slots(cfg.scoring_slots))
            key = (
                id(rec.config),
                id(snap.catalog),
                id(snap.runtime),
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

            scored, result, waited = gate.combine(
                key,
                (history, req),
                run_batch,
                req.priority,
                req.deadline_s,
                cfg.scoring_batch_max,
            )
            record_stage("turn_wait", waited)
            if scored:
                return result, False
            log.warning(
                "no scoring turn within the %.0f ms deadline: popularity", req.deadline_s * 1e3
            )
        rec = self.recommender(snap, {**(overrides or {}), **POPULAR_ONLY})
        return rec.recommend(history, req), not popular_only

    # -- stage: render ------------------------------------------------------------------------
    def render(
        self,
        result: RecResult,
        user_id: str | None,
        explain: bool,
        degraded: bool,
        assignment: dict | None = None,
    ) -> bytes:
        """``route`` + newline + the answer's JSON body, as ``@bp.output(RecOut)`` would
        serialise it.

        The body is built from ``RecResult.to_dict`` with exactly RecOut's fields and JSON
        types, for which the schema's dump is the identity (tests/test_api_recommend.py checks
        real answers against it), so it goes straight to Flask's JSON provider: ~50 instead of
        ~200 us per list."""
        t0 = time.perf_counter()
        out = {"user_id": user_id, **result.to_dict(explain=explain), "cached": False}
        if degraded:
            out["degraded"] = True
        if assignment:
            out["experiment"] = {
                "name": assignment.get("experiment"),
                "variant": assignment.get("variant"),
            }
        body = self.app.json.response(out).get_data()
        record_stage("render", time.perf_counter() - t0)
        return out["route"].encode() + b"\n" + body

    # -- stage: fields ------------------------------------------------------------------------
    @staticmethod
    def fields(snap: Snapshot, body: bytes, fields: tuple[str, ...]) -> bytes:
        """Item data rendered after the cache, from the snapshot the answer was keyed on."""
        t0 = time.perf_counter()
        body = snap.catalog.render_items(body, fields)
        record_stage("fields", time.perf_counter() - t0)
        return body

    def expose(self, user_id: str, assignment: dict | None, body: bytes) -> None:
        """Tell the experiments what a user in one was shown (``recsys.serving.experiments``)."""
        hook = self.app.extensions.get("recsys.exposure_hook")
        if hook and assignment:
            try:
                hook(user_id, assignment, json.loads(body))
            except Exception:  # exposure logging must never fail a recommendation
                log.exception("exposure hook failed")

    # -- the other lists ----------------------------------------------------------------------
    def session_list(
        self, items: list[str], req: RecRequest, explain: bool, shed: bool
    ) -> tuple[str, bytes, Snapshot]:
        """A guest session's list (never cached): ``(route, body, snapshot)``."""
        snap = self.snapshot()
        history = UserHistory.from_items(None, items, type="click")
        req = replace(req, exclude=list(req.exclude) + list(items))
        result, fell_back = self.score(snap, None, history, req, shed)
        degraded = note_degraded(shed, False, fell_back, snap.unloadable(result), result.degraded)
        payload = self.render(result, None, explain, degraded)
        route, _, body = payload.partition(b"\n")
        return route.decode(), body, snap

    def similar_list(self, item_id: str, n: int, explain: bool) -> tuple[bytes, bool, Snapshot]:
        """Items similar to ``item_id``: ``(body, cached, snapshot)``; ``NotFound`` for an item
        neither the catalogue nor any model knows. Lists depend only on the item, n and what is
        served (config, catalogue, models): the serialised answer is kept per process under
        that key, so a repeat is one lookup."""
        snap = self.snapshot()
        key = f"{item_id}\x00{n}\x00{int(explain)}\x00{snap.key}"
        body = self._similar.mget([key])[0] if self._similar is not None else None
        if body is not None:
            return body, True, snap
        if not self._known_item(snap, item_id):
            raise NotFound(f"unknown item {item_id!r}")
        result = self.recommender(snap).similar_items(item_id, n=n)
        body = self.render(result, None, explain, degraded=False).partition(b"\n")[2]
        if self._similar is not None and not result.dropped:  # a strategy failed: not kept
            self._similar.set(key, body, _FOREVER_S)
        return body, False, snap

    @staticmethod
    def _known_item(snap: Snapshot, item_id: str) -> bool:
        if item_id in snap.catalog:
            return True
        for name in snap.config.strategies:
            lm = snap.models(name) if name in snap.model_versions else None
            if lm is not None and item_id in lm.items:
                return True
        return False

    def popular_list(
        self, n: int, category: str | None, offset: int, explain: bool
    ) -> tuple[bytes, Snapshot]:
        snap = self.snapshot()
        result = self.recommender(snap).popular(n=n, category=category, offset=offset)
        body = self.render(result, None, explain, degraded=False).partition(b"\n")[2]
        return body, snap


def _slots(configured: Any) -> int:
    from recsys.models.runtime import scoring_slots

    return scoring_slots(None if configured is None else int(configured))


def init_app(app: Flask) -> None:
    """Build the app's pipeline from its collaborators (after settings, catalogue, cache and
    runtime are set up)."""
    from recsys.models.runtime import get_runtime
    from recsys.serving.cache import get_cache
    from recsys.serving.catalog import get_catalog_store
    from recsys.serving.settings_store import get_settings

    def history(user_id: str, limit: int, timeout_s: float | None) -> UserHistory:
        # Looked up per call: the reader (and its engine) is made on first use in a process.
        return get_history_reader(app).load(user_id, limit, timeout_s)

    app.extensions[EXTENSION] = RecommendationPipeline(
        app,
        settings=get_settings(app),
        catalogs=get_catalog_store(app),
        runtime=lambda: get_runtime(app),
        cache=get_cache(app),
        history=history,
    )


def get_pipeline(app: Flask) -> RecommendationPipeline:
    return app.extensions[EXTENSION]
