"""The request path of every recommendation endpoint, as named stages over one snapshot.

Read top to bottom, ``RecommendationPipeline.user_list`` is what
``GET /v1/users/<id>/recommendations`` does, whether Flask's view (``recsys.web.api.recommend``)
or the WSGI fast path (``recsys.web.fastpath``) received it; both only parse and answer.

The stages, in order, are listed in ``recsys.serving.stages`` (with the recommender's own,
``recsys.core.stages``), and each is timed once by ``recsys.serving.stages.timed``. The cache
does not own the flow: ``ResultCache.lookup`` answers a hit or a miss, the pipeline computes,
and ``ResultCache.store`` keeps the answer and releases the lock. What a request carries
(``Snapshot``, ``UserAsk``, ``UserAnswer``) is in ``recsys.serving.request``.

Collaborators are injected by ``init_app`` (called from ``create_app``): the settings store
(configuration and versions), the catalogue store, the model runtime (created lazily, once per
process), the result cache and the history reader.

Over 500 lines only through the numpy-style docstrings of its public API (about 370
lines without them): the code is one unit, not split for length.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from flask import Flask

from recsys.config import get_config
from recsys.core.ranker import RANKER_KIND
from recsys.core.recommender import Recommender
from recsys.core.runners import run_inline, run_with_deadline
from recsys.core.types import RecRequest, RecResult, UserHistory
from recsys.errors import NotFound
from recsys.ops.metrics import note_degraded
from recsys.serving.cache import LocalBackend, Peek, ResultCache
from recsys.serving.cache.results import Lookup
from recsys.serving.catalog import CatalogStore
from recsys.serving.gate import scoring_gate
from recsys.serving.history import get_history_reader
from recsys.serving.refresh import EXTENSION as REFRESHER
from recsys.serving.refresh import ask_bytes, make_refresher
from recsys.serving.request import Snapshot, UserAnswer, UserAsk, mark_cached
from recsys.serving.settings_store import SettingsStore
from recsys.serving.stages import record_stage, timed
from recsys.serving.userstate import user_history

log = logging.getLogger(__name__)

POPULAR_ONLY = {"routing": {"cold_strategies": ["popular"], "warm_strategies": ["popular"]}}
EXTENSION = "recsys.pipeline"

# A similar-items answer is kept until the snapshot changes (the key includes it).
_FOREVER_S = 10 * 365 * 86400.0


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
        """Stage snapshot: what this request serves with (config, versions, catalogue, models).

        Returns
        -------
        Snapshot
            What this request serves with.
        """
        return timed("snapshot", self._snapshot)

    def _snapshot(self) -> Snapshot:
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
        this and the user; the history token guards the rest).

        Parameters
        ----------
        snap : Snapshot
            The snapshot served with (its ``key``).
        n : int
            Items asked for.
        offset : int
            Items skipped.
        category : str or None
            The category filter; None: any.
        exclude : list of str
            External item ids left out (order does not matter).
        explain : bool
            Whether the answer carries explanations.
        assignment : dict or None
            The user's experiment assignment; None: not enrolled.

        Returns
        -------
        dict
            A compact JSON-able dict (``ResultCache.result_key`` hashes it).
        """
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
        """``cache_context`` of a parsed request.

        Parameters
        ----------
        ask : UserAsk
            The request.
        snap : Snapshot
            The snapshot served with.

        Returns
        -------
        dict
            The cache context.
        """
        r = ask.req
        return self.cache_context(
            snap, r.n, r.offset, r.category, list(r.exclude), ask.explain, ask.assignment
        )

    def lookup(self, user_id: str, context: dict[str, Any]) -> Peek | None:
        """Stage cache_lookup without taking a lock: the cache's entry for this request.

        Parameters
        ----------
        user_id : str
            The external user id.
        context : dict
            ``cache_context`` of the request.

        Returns
        -------
        Peek or None
            None when the cache is unreachable.
        """
        return timed("cache_lookup", self.cache.peek, user_id, context)

    # -- the per-user list --------------------------------------------------------------------
    def resolve_assignment(self, user_id: str) -> dict | None:
        """The user's experiment assignment (``recsys.serving.experiments``).

        Parameters
        ----------
        user_id : str
            The external user id.

        Returns
        -------
        dict or None
            The assignment; None when not enrolled or no resolver is installed.
        """
        resolver = self.app.extensions.get("recsys.variant_resolver")
        return resolver(user_id) if resolver else None

    def user_list(self, ask: UserAsk) -> UserAnswer:
        """The per-user answer (before ``fields``), in an app context but without a request.

        The cache holds the serialised response (``route`` + newline + JSON body with
        ``"cached": false``), so a hit is one Redis round trip plus a byte replace: no JSON
        decoding or encoding, no SQL.

        Parameters
        ----------
        ask : UserAsk
            What the view or the fast path parsed.

        Returns
        -------
        UserAnswer
            The route, the JSON body, whether it came from the cache, and the snapshot.
        """
        snap = ask.snapshot or self.snapshot()
        context = self.context_of(ask, snap)
        if ask.shed:
            # Overloaded and low priority: the cache if it has it, else popularity only.
            payload = timed("cache_lookup", self.cache.peek_raw, ask.user_id, context)
            cached = payload is not None
            if payload is None:
                payload = self._compute(snap, ask)[0]
        else:
            # A miss also reads the user's history kept in Redis, with its lock.
            hkey = self.cache.history_key(
                ask.user_id, snap.versions.epoch, get_config(self.app).history_max_events
            )
            if ask.peeked is None:
                looked = timed("cache_lookup", self.cache.lookup, ask.user_id, context, None, hkey)
            else:  # the fast path's lookup, already timed there
                looked = self.cache.lookup(ask.user_id, context, ask.peeked, hkey)
            cached = looked.hit is not None
            if cached:
                payload = looked.hit
            else:
                try:
                    payload, keep, history = self._compute(snap, ask, looked)
                except BaseException:
                    self.cache.release(looked)
                    raise
                r = ask.req
                remember = (  # for refresh-ahead (recsys.serving.refresh): plain lists only
                    ask_bytes(r.n, r.offset, r.category, r.exclude, ask.explain)
                    if keep and ask.assignment is None
                    else None
                )
                stored = payload if keep else None
                timed("cache_store", self.cache.store, looked, stored, remember, history)
                if remember is not None and looked.peek is not None:
                    refresher = self.app.extensions.get(REFRESHER)
                    if refresher is not None:  # its queued refresh of this list is now done
                        refresher.discard(ask.user_id, looked.peek.token)
        route, _, body = payload.partition(b"\n")
        if cached:
            body = mark_cached(body)
        return UserAnswer(route.decode(), body, cached, snap)

    def _compute(
        self, snap: Snapshot, ask: UserAsk, looked: Lookup | None = None
    ) -> tuple[bytes, bool, bytes | None]:
        """Stages history, turn_wait, the recommender's, and render: ``(payload, keep,
        history to keep in Redis)``, ``keep`` false for a degraded answer (not cached)."""
        history, store_down, kept = timed("history", user_history, self, ask, looked)
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
        return payload, not degraded, kept

    # -- stages: turn_wait, then route, candidates, blend, rules (the Recommender) -------------
    def recommender(self, snap: Snapshot, overrides: dict | None = None) -> Recommender:
        """A ``Recommender`` over the snapshot, its configuration with ``overrides`` applied.

        Parameters
        ----------
        snap : Snapshot
            The snapshot (config, catalogue, models).
        overrides : dict or None, optional
            A ServingConfig override (an experiment variant's); None: the snapshot's config.

        Returns
        -------
        Recommender
            Running strategies inline or in the deadline pool, recording stage times.
        """
        cfg = snap.config.with_overrides(overrides) if overrides else snap.config
        try:  # the learned second stage, when one is active
            ranker = snap.models(RANKER_KIND)
        except Exception:  # a failing model source: the blend stands
            log.exception("ranker lookup failed")
            ranker = None
        return Recommender(
            snap.models,
            cfg,
            snap.catalog,
            runner=self._runner,
            on_stage=record_stage,
            ranker=_ranker_of(ranker),
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
        When no turn comes within the deadline (or ``popular_only``: shed, or the SQL store
        down), popularity only, computed without a turn (it is cheap), and the caller marks the
        answer degraded.

        Whoever gets a turn also scores the requests waiting for one that would be scored
        exactly alike (``SCORING_BATCH_MAX`` in all): the same configuration, catalogue and
        models, the same priority and the same number of candidates per strategy. They go
        through ``Recommender.recommend_batch`` together, the path offline evaluation takes,
        and each gets the answer it would have got alone (the blend, rules and page are per
        user; the int8 deep model pins its quantisation range, see ``strategies.deep``).

        Parameters
        ----------
        snap : Snapshot
            The snapshot served with.
        overrides : dict or None
            A ServingConfig override (an experiment variant's); None: none.
        history : UserHistory
            The user's history, newest first.
        req : RecRequest
            The request (its deadline, in seconds, and priority).
        popular_only : bool, optional
            Skip the models: popularity only, without a turn.

        Returns
        -------
        tuple of (RecResult, bool)
            ``(result, fell_back)``: ``fell_back`` is True when popularity stood in.
        """
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
        types, for which the schema's dump is the identity (tests/web/test_api_recommend.py checks
        real answers against it), so it goes straight to Flask's JSON provider, skipping the
        schema's dump (docs/design-notes.md).

        Parameters
        ----------
        result : RecResult
            The answer.
        user_id : str or None
            The external user id; None: a guest or an item/popular list.
        explain : bool
            Include explanations.
        degraded : bool
            Mark the answer ``"degraded": true``.
        assignment : dict or None, optional
            The experiment assignment to name in the answer; None: none.

        Returns
        -------
        bytes
            The route (``cold``, ``warm`` ...), a newline, then the JSON body.
        """
        return timed("render", self._render, result, user_id, explain, degraded, assignment)

    def _render(self, result, user_id, explain, degraded, assignment) -> bytes:
        out = {"user_id": user_id, **result.to_dict(explain=explain), "cached": False}
        if degraded:
            out["degraded"] = True
        if assignment:
            out["experiment"] = {
                "name": assignment.get("experiment"),
                "variant": assignment.get("variant"),
            }
        body = self.app.json.response(out).get_data()
        return out["route"].encode() + b"\n" + body

    # -- stage: fields ------------------------------------------------------------------------
    @staticmethod
    def fields(snap: Snapshot, body: bytes, fields: tuple[str, ...]) -> bytes:
        """Stage fields: item data rendered after the cache, from the snapshot the answer was
        keyed on.

        Parameters
        ----------
        snap : Snapshot
            The snapshot the answer was keyed on.
        body : bytes
            The answer's JSON.
        fields : tuple of str
            Item fields to add (``catalog.parse_fields``).

        Returns
        -------
        bytes
            The answer with the fields (``Catalog.render_items``).
        """
        return timed("fields", snap.catalog.render_items, body, fields)

    def expose(self, user_id: str, assignment: dict | None, body: bytes) -> None:
        """Tell the experiments what a user in one was shown (``recsys.serving.experiments``).

        A failing hook is logged, never raised.

        Parameters
        ----------
        user_id : str
            The external user id.
        assignment : dict or None
            The user's assignment; None: not enrolled (nothing is recorded).
        body : bytes
            The answer's JSON.

        Returns
        -------
        None
        """
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
        """A guest session's list (never cached).

        Parameters
        ----------
        items : list of str
            External item ids of the session, used as a click history and excluded.
        req : RecRequest
            The request.
        explain : bool
            Include explanations.
        shed : bool
            The request was shed: popularity only.

        Returns
        -------
        tuple of (str, bytes, Snapshot)
            ``(route, body, snapshot)``.
        """
        snap = self.snapshot()
        history = UserHistory.from_items(None, items, type="click")
        req = replace(req, exclude=list(req.exclude) + list(items))
        result, fell_back = self.score(snap, None, history, req, shed)
        degraded = note_degraded(shed, False, fell_back, snap.unloadable(result), result.degraded)
        payload = self.render(result, None, explain, degraded)
        route, _, body = payload.partition(b"\n")
        return route.decode(), body, snap

    def similar_list(
        self, item_id: str, n: int, explain: bool, req: RecRequest | None = None
    ) -> tuple[bytes, bool, Snapshot]:
        """Items similar to ``item_id``. Lists depend only on the item, the request and what is
        served (config, catalogue, models): the serialised answer is kept per process under
        that key, so a repeat is one lookup.

        Parameters
        ----------
        item_id : str
            The external item id.
        n : int
            Items asked for.
        explain : bool
            Include explanations.
        req : RecRequest or None
            Its ``category``, ``offset`` and ``exclude`` (its ``n`` is not read); None: none.

        Returns
        -------
        tuple of (bytes, bool, Snapshot)
            ``(body, cached, snapshot)``.

        Raises
        ------
        NotFound
            An item neither the catalogue nor any model knows.
        """
        req = req or RecRequest()
        snap = self.snapshot()
        ask = f"{req.category or ''}\x00{req.offset}\x00{','.join(req.exclude)}"
        key = f"{item_id}\x00{n}\x00{int(explain)}\x00{ask}\x00{snap.key}"
        body = self._similar.mget([key])[0] if self._similar is not None else None
        if body is not None:
            return body, True, snap
        if not self._known_item(snap, item_id):
            raise NotFound(f"unknown item {item_id!r}")
        result = self.recommender(snap).similar_items(
            item_id, n=n, category=req.category, offset=req.offset, exclude=req.exclude
        )
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


def _slots(configured: Any) -> int:
    from recsys.models.runtime import scoring_slots

    return scoring_slots(None if configured is None else int(configured))


def init_app(app: Flask) -> None:
    """Build the app's pipeline from its collaborators (after settings, catalogue, cache and
    runtime are set up).

    Parameters
    ----------
    app : Flask
        The app.

    Returns
    -------
    None
    """
    from recsys.models.runtime import get_runtime
    from recsys.serving.cache import get_cache
    from recsys.serving.catalog import get_catalog_store
    from recsys.serving.settings_store import get_settings

    def history(user_id: str, limit: int, timeout_s: float | None) -> UserHistory:
        # Looked up per call: the reader (and its engine) is made on first use in a process.
        return get_history_reader(app).load(user_id, limit, timeout_s)

    pipeline = app.extensions[EXTENSION] = RecommendationPipeline(
        app,
        settings=get_settings(app),
        catalogs=get_catalog_store(app),
        runtime=lambda: get_runtime(app),
        cache=get_cache(app),
        history=history,
    )
    make_refresher(app, pipeline)


def get_pipeline(app: Flask) -> RecommendationPipeline:
    """The app's pipeline.

    Parameters
    ----------
    app : Flask
        The app (``init_app`` ran on it).

    Returns
    -------
    RecommendationPipeline
        The pipeline kept in ``app.extensions``.
    """
    return app.extensions[EXTENSION]


def _ranker_of(loaded):
    """The ranker of a loaded version, knowing its version (answers name it), or None."""
    if loaded is None:
        return None
    loaded.model.version = loaded.version  # one object per loaded version: idempotent
    return loaded.model
