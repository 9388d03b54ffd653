"""The scoring core: route -> candidates per strategy -> blend -> rules -> page.

The request path (``recsys.serving.pipeline``, which adds the snapshot, the cache, the history
read, the scoring turn and rendering around it) and offline evaluation (recsys.offline.evaluation)
both call ``Recommender``; there is no second implementation of routing, blending or business rules.

The stages are components, listed in order in ``recsys.core.stages.STAGES``; ``run_stages``
runs the ones an answer needs and reports each one's time to ``on_stage``:

* ``route(history)``: "cold" when the user has fewer than ``cold_threshold`` distinct positive
  items, else "warm" (or a learned route of the configuration).
* ``candidates``: every enabled strategy of the route scores its users in one batched
  ``recommend`` call (per category group), over-fetching ``candidates_per_strategy`` items so
  the business rules still leave ``n``. Strategies never filter beyond what they are handed.
* ``blend``: weighted fusion of per-strategy normalised scores ("weighted") or reciprocal-rank
  fusion ("rrf"); ``sources`` records each strategy's contribution per item.
* ``rules`` (``page_of``): exclude seen items, request ``exclude``, category, unavailable
  items, at most ``max_per_category`` items per primary category, in rank order, stopping at
  the end of the page (``offset`` / ``n``).

Models come from a callable ``models(strategy) -> LoadedModel | None`` (recsys.models.repository's
LoadedModel, or any object with ``.model``, ``.items`` and ``.version``), so the same code runs
on the model runtime, on in-memory models in evaluation, and in tests.

Degradation policy: a strategy with no loaded model is *skipped* and does not make the answer
degraded (it is simply not deployed, e.g. no deep model trained). A strategy that raises or
misses the request deadline is *dropped* and the answer says ``degraded=True``; so does an
answer where no strategy of the route could serve and the fallback (popular) was used, or
nothing could serve at all.

Over the ~500-line mark through its numpy-style docstrings (about 310 lines are code): the
``Recommender`` is one class whose methods the stages call.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from features.interactions import DEFAULT_WEIGHTS, user_batch
from recsys.core.config import ServingConfig
from recsys.core.runners import Runner, run_inline
from recsys.core.stages import POPULAR, SIMILAR, STAGES, USER, Batch, Stage
from recsys.core.types import (
    Candidates,
    CatalogView,
    Fused,
    RecItem,
    RecRequest,
    RecResult,
    UserHistory,
    canonical_idmap,
    id_order,
)

log = logging.getLogger(__name__)


class Recommender:
    """The recommender: runs the stages of ``recsys.core.stages`` for each answer.

    Cheap to build: one per request (configuration snapshot) is fine.

    Parameters
    ----------
    models : callable
        ``models(strategy) -> LoadedModel | None``: the model serving a strategy (``.model``,
        ``.items``, ``.version``), or None when it has none.
    config : ServingConfig, optional
        Routes, weights and rules; the shipped defaults when omitted.
    catalog : CatalogView, optional
        Availability and categories for the rules; without one, no item is known to be in a
        category and every item is available.
    runner : callable, optional
        How the strategies of one call run under its deadline (``recsys.core.runners``).
    event_weights : dict, optional
        Weight of each event type in the user matrix.
    on_stage : callable, optional
        ``on_stage(name, seconds)``, told each stage's time.
    stages : sequence of Stage, optional
        The stages to run, in order (``recsys.core.stages.STAGES``).
    ranker : Ranker, optional
        The learned second stage (``recsys.core.ranker``); None: the blend's order stands.
    """

    def __init__(
        self,
        models: Callable[[str], Any],
        config: ServingConfig | None = None,
        catalog: CatalogView | None = None,
        runner: Runner | None = None,
        event_weights: dict[str, float] | None = None,
        on_stage: Callable[[str, float], None] | None = None,
        stages: Sequence[Stage] = STAGES,
        ranker: Any = None,
    ):
        self.models = models
        self.config = config or ServingConfig.default()
        self.catalog = catalog
        self.runner = runner or run_inline
        self.event_weights = event_weights or DEFAULT_WEIGHTS
        # Told each stage's name and seconds (``run_stages``).
        self.on_stage = on_stage
        self.stages = tuple(stages)
        self.ranker = ranker

    # -- stage: route -----------------------------------------------------------------------
    def route(self, history: UserHistory) -> str:
        """The user's route: a learned route of the config (``ServingConfig.routes``), else
        "cold" below ``cold_threshold`` distinct positive items and "warm" from there.

        Parameters
        ----------
        history : UserHistory
            The user's current history.

        Returns
        -------
        str
            The route name.
        """
        return self.config.route_for(len(history.positive_items()))

    def strategies_for(self, route: str, history: UserHistory) -> list[str]:
        """The strategies a route asks for this history.

        Parameters
        ----------
        route : str
            Route name (``route``).
        history : UserHistory
            The user's current history.

        Returns
        -------
        list of str
            The route's enabled strategies; for an empty history only those that declare
            ``Strategy.scores_empty_history``.
        """
        names = self.config.route_strategies(route)
        if not history.positive_items():
            # Nothing to be similar to: a strategy that cannot score an empty history (it
            # declares so, ``Strategy.scores_empty_history``) is never asked to.
            names = [s for s in names if _scores_empty_history(s)]
        return names

    def strategies_able_empty(self, names: Sequence[str]) -> list[str]:
        """Those of ``names`` that can score an empty history.

        Parameters
        ----------
        names : sequence of str
            Strategy names.

        Returns
        -------
        list of str
        """
        return [s for s in names if _scores_empty_history(s)]

    # -- what the stages call ------------------------------------------------------------------
    def loaded_model(self, name: str):
        """The model serving ``name``, or None (a failing model source is logged, not raised).

        Parameters
        ----------
        name : str
            Strategy name.

        Returns
        -------
        LoadedModel or None
            An object with ``.model``, ``.items`` and ``.version``; ``None``: no model.
        """
        try:
            return self.models(name)
        except Exception:  # a broken model source must not fail the request
            log.exception("model source failed for %s", name)
            return None

    def candidates(
        self,
        name: str,
        loaded,
        histories: Sequence[UserHistory],
        requests: Sequence[RecRequest],
        shared: dict | None = None,
    ) -> list[Candidates]:
        """Per user, the strategy's top candidates as (external item id, raw score), best first.

        One batched ``recommend`` call per distinct category among the requests. ``shared``
        (one dict per ``recommend_batch`` call) lets strategies with equal item maps reuse
        one user matrix; it is made read-only, so a strategy can never alter another's input.

        Parameters
        ----------
        name : str
            Strategy name.
        loaded : LoadedModel
            Its model (``.model``, ``.items``, optionally ``.users``).
        histories : sequence of UserHistory
            The users, newest event first.
        requests : sequence of RecRequest
            One per history: its ``category``, ``exclude``, ``n`` and ``offset`` are read.
        shared : dict, optional
            Cache of user batches across strategies of one call; ``None``: no sharing.

        Returns
        -------
        list of Candidates
            One per history; at most ``max(candidates_per_strategy, offset + n)`` items each,
            seen, excluded and disallowed items left out, with indices of the model's item map.
        """
        items = loaded.items
        n_items = len(items)
        users_map = getattr(loaded, "users", None)
        out: list[Candidates] = [Candidates([], np.zeros(0)) for _ in histories]
        groups: dict[str | None, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(req.category, []).append(i)
        for category, rows in groups.items():
            hs = [histories[i] for i in rows]
            user_index = users_map.indices([h.user_id or "" for h in hs]) if users_map else None
            key = (id(canonical_idmap(items)), n_items, tuple(id(h) for h in hs))
            base = shared.get(key) if shared is not None else None
            if base is None:
                base = user_batch([h.as_history(items) for h in hs], n_items, self.event_weights)
                if shared is not None:
                    for arr in (base.matrix.data, base.matrix.indices, base.matrix.indptr):
                        arr.flags.writeable = False
                    shared[key] = base
            batch = type(base)(
                matrix=base.matrix,
                sequences=base.sequences,
                user_index=(
                    user_index if user_index is not None else np.full(len(hs), -1, np.int64)
                ),
            )
            exclude = []
            for i, h in zip(rows, hs, strict=True):
                idx = h.excluded_idx(self.config, items)
                if requests[i].exclude:
                    idx = np.concatenate([idx, items.indices(requests[i].exclude)])
                exclude.append(idx[idx >= 0])
            allowed = self.catalog.allowed(items, category) if self.catalog else None
            want = max(
                self.config.candidates_per_strategy,
                max(requests[i].n + requests[i].offset for i in rows),
            )
            ids, scores = loaded.model.recommend(
                batch, n=min(want, n_items), exclude=exclude, candidates=allowed
            )
            ext = items.ids
            for r, i in enumerate(rows):
                keep = ids[r] >= 0
                names = np.asarray(ext[ids[r][keep]]).tolist()
                if names and type(names[0]) is not str:
                    names = [str(x) for x in names]
                out[i] = Candidates(
                    names,
                    scores[r][keep].astype(np.float64),
                    idx=ids[r][keep],
                    idmap=canonical_idmap(items),
                )
        return out

    def blend(
        self, per_strategy: Mapping[str, list[tuple[str, float]]], route: str | None = None
    ) -> list[RecItem]:
        """Fuse one user's candidate lists into one ranked list with per-item sources.

        Parameters
        ----------
        per_strategy : Mapping of str to list of (str, float)
            Strategy name -> its candidates, best first.
        route : str, optional
            Whose weights and blend method apply; ``None``: the global ones.

        Returns
        -------
        list of RecItem
            Every candidate, best first.
        """
        fused = self.fuse(per_strategy, route)
        return [fused.item(r) for r in range(len(fused))]

    def fuse(
        self, per_strategy: Mapping[str, list[tuple[str, float]]], route: str | None = None
    ) -> Fused:
        """Weighted score fusion (or RRF) of the candidate lists, ranked by total contribution,
        ties broken by item id so results are deterministic across processes.

        Vectorised: the (item, score) pairs of a request become one array of item
        ids; ``np.unique`` numbers the distinct items in id order, ``np.bincount`` sums their
        contributions (in strategy order, as a running sum would) and one ``lexsort`` ranks
        them. Per-item sources are only materialised for the items a caller asks for.

        Parameters
        ----------
        per_strategy : Mapping of str to list of (str, float)
            Strategy name -> its candidates (``Candidates`` or pairs), best first; empty lists
            are ignored.
        route : str, optional
            Whose weights and blend method apply; ``None``: the global ones.

        Returns
        -------
        Fused
            ``Fused.empty()`` when every list is empty.
        """
        names: list[str] = []
        lists: list[Candidates] = []
        contribs: list[np.ndarray] = []
        blend = self.config.route_blend(route)
        for name, cands in per_strategy.items():
            if not cands:
                continue
            cands = Candidates.of(cands)
            names.append(name)
            lists.append(cands)
            w = self.config.route_weight(route, name)
            contribs.append(self._contributions(cands, w, blend))
        if not lists:
            return Fused.empty()
        idmap = lists[0].idmap
        if idmap is not None and all(c.idmap is idmap for c in lists):
            # One catalogue (the usual case): number the items by their index in it, and break
            # ties by each index's place in id order, precomputed per IdMap (same order as
            # the strings would give, without sorting strings per request).
            str_ids, id_rank = id_order(idmap)
            uniq_idx, inverse = np.unique(
                np.concatenate([c.idx for c in lists]), return_inverse=True
            )
            tiebreak = id_rank[uniq_idx]
            uniq = None
        else:
            uniq, inverse = np.unique(
                np.array([i for c in lists for i in c.ids]), return_inverse=True
            )
            tiebreak = np.arange(len(uniq))
        n_uniq = len(tiebreak)
        flat = np.concatenate(contribs)
        totals = np.bincount(inverse, weights=flat, minlength=n_uniq)
        # The contribution of each strategy to each distinct item (NaN: not a candidate there).
        per = np.full((len(names), n_uniq), np.nan)
        start = 0
        for row, c in enumerate(contribs):
            per[row, inverse[start : start + len(c)]] = c
            start += len(c)
        order = np.lexsort((tiebreak, -totals))
        ranked = str_ids[uniq_idx[order]].tolist() if uniq is None else uniq[order].tolist()
        return Fused(names, ranked, totals[order].tolist(), per[:, order])

    def _contributions(self, cands: Candidates, w: float, blend: str) -> np.ndarray:
        n = len(cands)
        if blend == "rrf":
            return w / (self.config.rrf_k + np.arange(1, n + 1, dtype=np.float64))
        if self.config.normalize == "rank":
            return w * (1.0 - np.arange(n, dtype=np.float64) / n)
        scores = cands.scores
        finite = np.isfinite(scores)
        if not finite.any():
            return np.zeros(n)
        lo, hi = scores[finite].min(), scores[finite].max()
        if hi - lo <= 1e-12:
            return np.full(n, float(w))
        out = w * (scores - lo) / (hi - lo)
        out[~finite] = 0.0
        return out

    def _rule_filter(
        self, history: UserHistory, request: RecRequest, seen_ok: bool = False
    ) -> Callable[[str], bool]:
        """The business rules as a predicate over item ids, called in rank order (the
        per-category cap counts the items it has let through)."""
        config = dataclasses.replace(self.config, exclude_seen=False) if seen_ok else self.config
        excluded = history.excluded_items(config) | {str(x) for x in request.exclude}
        cat = self.catalog
        cap = self.config.max_per_category
        category = request.category
        per_cat: dict[str | None, int] = {}

        def keep(item_id: str) -> bool:
            if item_id in excluded:
                return False
            if cat is not None:
                if not cat.is_available(item_id):
                    return False
                if category and not cat.in_category(item_id, category):
                    return False
            elif category:
                return False  # no catalogue: nothing is known to be in the category
            if cap is not None:
                pc = cat.primary_category(item_id) if cat is not None else None
                if pc is not None:
                    if per_cat.get(pc, 0) >= cap:
                        return False
                    per_cat[pc] = per_cat.get(pc, 0) + 1
            return True

        return keep

    def page_of(
        self, fused: Fused, history: UserHistory, request: RecRequest, seen_ok: bool = False
    ) -> list[RecItem]:
        """The page of ``fused`` that passes the business rules, in rank order.

        Parameters
        ----------
        fused : Fused
            A blended ranking.
        history : UserHistory
            Whose seen items are excluded (per the configuration).
        request : RecRequest
            Page (``offset``, ``n``), ``category`` and ``exclude``.
        seen_ok : bool
            Let the user's seen items through (dislikes never): a ranker trained with repeats.

        Returns
        -------
        list of RecItem
            At most ``n`` items; the rules stop at the end of the page and build an item only
            for the items on it.
        """
        keep = self._rule_filter(history, request, seen_ok)
        lo, hi = request.offset, request.offset + request.n
        page: list[RecItem] = []
        passed = 0
        for rank, item in enumerate(fused.ids):
            if passed >= hi:
                break
            if not keep(item):
                continue
            if passed >= lo:
                page.append(fused.item(rank))
            passed += 1
        return page

    def ranked_page(
        self,
        per: Mapping[str, list[tuple[str, float]]],
        history: UserHistory,
        request: RecRequest,
        route: str | None = None,
    ) -> list[RecItem]:
        """Stages blend and rules of one user's candidate lists (the tuner ranks its trials
        through it).

        Parameters
        ----------
        per : mapping
            Strategy name -> its candidates, best first.
        history, request
            As for ``page_of``.
        route : str, optional
            Whose weights blend the lists (None: the global weights).

        Returns
        -------
        list of RecItem
        """
        return self.page_of(self.fuse(per, route), history, request)

    def run_tasks(self, tasks, deadline):
        """Run strategy tasks in the runner; a task that raises is dropped (logged), never fails
        the call.

        Parameters
        ----------
        tasks : dict
            Strategy name -> zero-argument callable.
        deadline : float or None
            Seconds the runner may take.

        Returns
        -------
        results : dict of str to Any
            The results of the tasks that finished.
        missed : list of str
            The names that missed the deadline (or raised, as the runner reports them).
        """

        def guard(name, fn):
            def run():
                try:
                    return fn()
                except Exception:
                    log.exception("strategy %s failed; dropped from the blend", name)
                    return _FAILED

            return run

        results, missed = self.runner({n: guard(n, fn) for n, fn in tasks.items()}, deadline)
        results = {n: r for n, r in results.items() if r is not _FAILED}
        return results, list(missed)

    # -- the answers ------------------------------------------------------------------------
    def run_stages(self, batch: Batch) -> Batch:
        """Run every stage that applies to ``batch.kind``, in order, each timed once.

        Parameters
        ----------
        batch : Batch
            The lists to compute; filled in by the stages.

        Returns
        -------
        Batch
            The same batch.
        """
        clock = time.perf_counter
        for stage in self.stages:
            if batch.kind not in stage.answers:
                continue
            t0 = clock()
            stage.run(self, batch)
            if self.on_stage is not None:
                self.on_stage(stage.name, clock() - t0)
        return batch

    def recommend(self, history: UserHistory, request: RecRequest | None = None) -> RecResult:
        """One user's list (``recommend_batch`` of one).

        Parameters
        ----------
        history : UserHistory
            The user's current history, newest event first.
        request : RecRequest, optional
            ``None``: ``RecRequest()`` (10 items, first page).

        Returns
        -------
        RecResult
        """
        return self.recommend_batch([history], [request or RecRequest()])[0]

    def recommend_batch(
        self, histories: Sequence[UserHistory], requests: Sequence[RecRequest] | None = None
    ) -> list[RecResult]:
        """Recommend for many users, batching each strategy's scoring across them.

        Parameters
        ----------
        histories : sequence of UserHistory
            One per user, newest event first.
        requests : sequence of RecRequest, optional
            One per history (default: ``RecRequest()`` for each).

        Returns
        -------
        list of RecResult
            One per history, in order. ``degraded`` when a strategy of the route failed or
            missed the deadline, or the list fell back to popularity.

        Raises
        ------
        ValueError
            If ``requests`` and ``histories`` differ in length.
        """
        if requests is None:
            requests = [RecRequest()] * len(histories)
        if len(requests) != len(histories):
            raise ValueError("histories and requests must have the same length")
        b = self.run_stages(Batch(USER, list(histories), list(requests)))
        out = []
        for i, h in enumerate(b.histories):
            used = [s for s in b.wanted[i] if s in b.loaded]
            user_dropped = [s for s in used if s in b.dropped]
            out.append(
                RecResult(
                    items=b.pages[i],
                    route=b.routes[i],
                    degraded=bool(user_dropped) or b.fallback[i] or not b.per[i],
                    model_versions=self._versions(b, i, used),
                    skipped=[s for s in self.strategies_for(b.routes[i], h) if s in b.skipped_all],
                    dropped=user_dropped,
                    profile=self.config.profile,
                )
            )
        return out

    def _versions(self, b: Batch, i: int, used: list[str]) -> dict[str, str]:
        """Strategy -> version of the models that answered list ``i`` (and the ranker's)."""
        out = {s: str(b.loaded[s].version) for s in used if s not in b.dropped}
        if b.ranked and b.ranked[i]:
            out["ranker"] = str(getattr(self.ranker, "version", None) or "")
        return out

    def popular(
        self,
        n: int = 10,
        category: str | None = None,
        offset: int = 0,
        exclude: Sequence[str] = (),
    ) -> RecResult:
        """Most popular available items (optionally in a category).

        Parameters
        ----------
        n, offset : int
            The page.
        category : str, optional
            Only items of this category.
        exclude : sequence of str
            Item ids never to return (e.g. what a user already has).

        Returns
        -------
        RecResult
            Scores are relative popularity in 0..1 (the model's score over the most popular
            candidate's: raw scores are weighted event counts, whose scale means nothing to a
            client); ``degraded`` with no items when no popularity model is loaded.
        """
        req = RecRequest(n=n, offset=offset, category=category, exclude=list(exclude))
        b = self.run_stages(Batch(POPULAR, [UserHistory(None)], [req]))
        lm = b.loaded.get("popular")
        if lm is None:
            return RecResult(items=[], route="popular", degraded=True, skipped=["popular"])
        return RecResult(
            items=b.pages[0], route="popular", model_versions={"popular": str(lm.version)}
        )

    def similar_items(
        self,
        item_id: str,
        n: int = 10,
        category: str | None = None,
        offset: int = 0,
        exclude: Sequence[str] = (),
    ) -> RecResult:
        """Items similar to ``item_id``, blended over every enabled strategy that supports it.

        Parameters
        ----------
        item_id : str
            The item's external id.
        n : int
            How many.
        category : str, optional
            Only items of this category.
        offset : int
            Items of the ranked list skipped before the page.
        exclude : sequence of str
            Item ids never to return (the item itself never is).

        Returns
        -------
        RecResult
            Route ``"similar"``. When no model knows the item (a brand-new item): popular
            items of its category, ``degraded``.
        """
        skip = [item_id, *exclude]
        req = RecRequest(n=n, offset=offset, category=category, exclude=skip)
        b = self.run_stages(Batch(SIMILAR, [UserHistory(None)], [req], item_id=item_id))
        dropped = sorted(b.dropped, key=b.wanted[0].index)
        if not b.per[0]:
            cat = category or (self.catalog.primary_category(item_id) if self.catalog else None)
            res = self.popular(n=n, category=cat, offset=offset, exclude=skip)
            items = res.items
            return RecResult(
                items=items,
                route="similar",
                degraded=True,
                model_versions=res.model_versions,
                dropped=dropped,
            )
        return RecResult(
            items=b.pages[0],
            route="similar",
            degraded=bool(dropped),
            model_versions={s: str(b.loaded[s].version) for s in b.per[0]},
            dropped=dropped,
        )


_FAILED = object()


def _scores_empty_history(name: str) -> bool:
    """Whether strategy ``name`` declares it can score a user with no history (an unknown
    name, e.g. a test's own strategy, is assumed able: the request path stays as it was)."""
    from strategies import scores_empty_history

    return scores_empty_history(name)
