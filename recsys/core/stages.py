"""The recommender's stages as components: one function each over a shared ``Batch``.

``STAGES`` is the ordered list the ``Recommender`` runs. Each entry names the stage, the
function that does it, and which answers run it:

* ``user``: per-user lists and guest sessions (``Recommender.recommend_batch``);
* ``similar``: items similar to one item (``Recommender.similar_items``);
* ``popular``: the most popular items (``Recommender.popular``).

Every stage is timed by one wrapper (``Recommender.run_stages``), which reports its name and
seconds to the recommender's ``on_stage`` (the serving pipeline turns that into the
``recsys_stage_seconds`` histogram and the ``Server-Timing`` header).

Adding a stage is one function ``def my_stage(rec: Recommender, batch: Batch) -> None`` that
reads and writes ``batch`` fields, and one ``Stage`` entry in the list (or a list passed to
``Recommender(stages=...)``). ARCHITECTURE.md's stage table is generated from this list
(``scripts/gen_architecture_stages.py``; a test fails when it is out of date).

A scorer never filters and a filter never scores (LensKit's rule): ``candidates`` only asks the
models, ``blend`` only combines scores, ``rules`` only drops items and cuts the page.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from recsys.core.types import Candidates, Fused, RecItem, RecRequest, UserHistory

if TYPE_CHECKING:  # the Recommender imports this module
    from recsys.core.recommender import Recommender

log = logging.getLogger(__name__)

USER, SIMILAR, POPULAR = "user", "similar", "popular"
ANSWERS = (USER, SIMILAR, POPULAR)


@dataclass
class Batch:
    """What the stages of one ``Recommender`` call read and write.

    Parameters
    ----------
    kind : str
        The answer being computed: ``"user"``, ``"similar"`` or ``"popular"``.
    histories : list of UserHistory
        One per list (for ``similar`` and ``popular``: one empty history).
    requests : list of RecRequest
        One per history: page, category, exclusions, deadline.
    item_id : str, optional
        The item of a ``similar`` answer.

    The stages fill in, in order: ``routes``, ``wanted``, ``loaded``, ``skipped_all``,
    ``fallback`` and ``extra`` (route); ``per`` and ``dropped`` (candidates); ``fused``
    (blend, then rank); ``ranked`` (rank); ``pages`` (rules).
    """

    kind: str
    histories: list[UserHistory]
    requests: list[RecRequest]
    item_id: str | None = None
    # route
    routes: list[str] = field(default_factory=list)
    wanted: list[list[str]] = field(default_factory=list)
    loaded: dict[str, Any] = field(default_factory=dict)
    skipped_all: list[str] = field(default_factory=list)
    fallback: list[bool] = field(default_factory=list)
    # per list, strategies asked only for the ranker's pool (not blended)
    extra: list[set[str]] = field(default_factory=list)
    # candidates: per list, strategy -> its candidates; strategies that failed or missed the
    # deadline
    per: list[dict[str, Candidates]] = field(default_factory=list)
    dropped: set[str] = field(default_factory=set)
    # blend and rules
    fused: list[Fused] = field(default_factory=list)
    # rank: whether the ranker ordered each list (its rules then let repeats through), and
    # the blended lists it ordered (its features read them again to explain a page)
    ranked: list[bool] = field(default_factory=list)
    blended: list[Fused] = field(default_factory=list)
    pages: list[list[RecItem]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.histories)


class Stage(NamedTuple):
    """One entry of the stage list.

    Parameters
    ----------
    name : str
        The stage's name in metrics, ``Server-Timing`` and the docs.
    run : callable
        ``run(recommender, batch) -> None``: reads and writes ``batch``.
    answers : tuple of str
        Which answers run it (``"user"``, ``"similar"``, ``"popular"``).
    doc : str
        One line for the docs' stage table.
    """

    name: str
    run: Callable[[Recommender, Batch], None]
    answers: tuple[str, ...]
    doc: str


# -- stage: route ---------------------------------------------------------------------------
def route(rec: Recommender, b: Batch) -> None:
    """Pick each list's route and strategies, and load their models.

    ``user``: a learned route of the configuration by history length, else cold/warm; the
    route's strategies that can score this history; a list whose route has no loaded model
    falls back to popularity (``fallback``, degraded). ``similar``: the enabled warm strategies
    and ``content`` whose model knows the item. ``popular``: the popularity model.

    Parameters
    ----------
    rec : Recommender
        The recommender running the stage.
    b : Batch
        Read: ``kind``, ``histories``, ``item_id``; written: ``routes``, ``wanted``, ``loaded``,
        ``skipped_all``, ``fallback``.
    """
    if b.kind == USER:
        b.routes = [rec.route(h) for h in b.histories]
        b.wanted = [rec.strategies_for(r, h) for r, h in zip(b.routes, b.histories, strict=True)]
        names = sorted({s for ws in b.wanted for s in ws} | {"popular"})
    elif b.kind == SIMILAR:
        cfg = rec.config
        names = [s for s in cfg.warm_strategies if cfg.enabled(s)]
        names += [s for s in ("content",) if cfg.enabled(s) and s not in names]
        b.routes = ["similar"]
        b.wanted = [names]
    else:
        names = ["popular"]
        b.routes = ["popular"]
        b.wanted = [names]
    for name in names:
        lm = rec.loaded_model(name)
        if lm is not None and (b.kind != SIMILAR or b.item_id in lm.items):
            b.loaded[name] = lm
    b.skipped_all = [n for n in names if n not in b.loaded]
    b.fallback = [False] * len(b)
    b.extra = [set() for _ in range(len(b))]
    if b.kind == USER:
        for i, ws in enumerate(b.wanted):
            if not any(s in b.loaded for s in ws):
                b.fallback[i] = True
                b.wanted[i] = ["popular"] if "popular" in b.loaded else []
    elif b.kind == SIMILAR:
        b.wanted = [[s for s in names if s in b.loaded]]
    if b.kind == USER and rec.ranker is not None:
        _ranker_generators(rec, b)


def _ranker_generators(rec: Recommender, b: Batch) -> None:
    """Add the ranker's generators a route does not call (as ``extra``: not blended)."""
    gens = rec.ranker.generators
    for name in gens:
        if name not in b.loaded:
            lm = rec.loaded_model(name)
            if lm is not None:
                b.loaded[name] = lm
    for i, h in enumerate(b.histories):
        if b.fallback[i] or not rec.ranker.serves(b.routes[i], h):
            continue
        able = [g for g in gens if g in b.loaded and g not in b.wanted[i]]
        if not h.positive_items():
            able = [g for g in able if g in rec.strategies_able_empty(able)]
        b.extra[i] = set(able)
        b.wanted[i] = [*b.wanted[i], *able]


# -- stage: candidates ----------------------------------------------------------------------
def candidates(rec: Recommender, b: Batch) -> None:
    """Ask each strategy for its top candidates.

    ``user``: one batched ``recommend`` per strategy over the lists that want it, in the
    request's runner under its deadline; a strategy that raises or misses the deadline is
    dropped. ``similar``: each strategy's ``similar_items`` (one that does not implement it is
    left out, one that fails is dropped). ``popular``: the popularity model's ranking.

    Parameters
    ----------
    rec : Recommender
        The recommender running the stage.
    b : Batch
        Read: the route stage's fields and ``requests``; written: ``per``, ``dropped``.
    """
    b.per = [{} for _ in range(len(b))]
    if b.kind == USER:
        _user_candidates(rec, b)
    elif b.kind == SIMILAR:
        _similar_candidates(rec, b)
    elif "popular" in b.loaded:
        lm = b.loaded["popular"]
        b.per[0]["popular"] = rec.candidates("popular", lm, b.histories, b.requests)[0]


def _user_candidates(rec: Recommender, b: Batch) -> None:
    users_of: dict[str, list[int]] = {}
    for i, ws in enumerate(b.wanted):
        for s in ws:
            if s in b.loaded:
                users_of.setdefault(s, []).append(i)
    shared: dict = {}

    def task(name: str, rows: list[int]):
        return lambda: rec.candidates(
            name,
            b.loaded[name],
            [b.histories[i] for i in rows],
            [b.requests[i] for i in rows],
            shared,
        )

    tasks = {name: task(name, rows) for name, rows in users_of.items()}
    deadline = min((r.deadline_s for r in b.requests if r.deadline_s is not None), default=None)
    results, missed = rec.run_tasks(tasks, deadline)
    b.dropped = set(missed) | (set(tasks) - set(results))
    for name, rows in users_of.items():
        if name in results:
            for pos, i in enumerate(rows):
                b.per[i][name] = results[name][pos]


def _similar_candidates(rec: Recommender, b: Batch) -> None:
    item_id = b.item_id
    for name in b.wanted[0]:
        lm = b.loaded[name]
        try:
            ids, scores = lm.model.similar_items(
                np.array([lm.items.index(item_id)], dtype=np.int64),
                n=min(rec.config.candidates_per_strategy, len(lm.items)),
            )
        except NotImplementedError:
            continue
        except Exception:
            log.exception("similar_items failed in %s", name)
            b.dropped.add(name)
            continue
        keep = ids[0] >= 0
        b.per[0][name] = Candidates(
            [str(x) for x in lm.items.ids[ids[0][keep]]], scores[0][keep].astype(np.float64)
        )


# -- stage: blend ---------------------------------------------------------------------------
def blend(rec: Recommender, b: Batch) -> None:
    """Fuse each list's candidates into one ranking with per-item sources.

    ``user``: weighted score fusion or reciprocal-rank fusion with the route's weights (a
    fallback list is ranked on its own). ``similar``: the same fusion with the global weights.
    ``popular``: the model's order, scores relative to the most popular candidate (0..1).

    Parameters
    ----------
    rec : Recommender
        The recommender running the stage.
    b : Batch
        Read: ``per``, ``routes``, ``fallback``; written: ``fused``.
    """
    if b.kind == POPULAR:
        b.fused = [_relative(c.get("popular")) for c in b.per]
        return
    extra = b.extra or [set()] * len(b)
    b.fused = [
        rec.fuse(
            {s: c for s, c in per.items() if s not in extra[i]} if extra[i] else per,
            None if (b.fallback[i] or b.kind == SIMILAR) else b.routes[i],
        )
        for i, per in enumerate(b.per)
    ]


# -- stage: rank ----------------------------------------------------------------------------
def rank(rec: Recommender, b: Batch) -> None:
    """Order each blended list with the learned ranker (``recsys.core.ranker``), when the
    recommender has one: its pool (every generator's top candidates, the blend's top, and with
    ``repeats`` the user's own items) first, in the ranker's order, then the rest of the blend.
    A fallback list (popularity alone) is left as it is.

    Parameters
    ----------
    rec : Recommender
        The recommender running the stage.
    b : Batch
        Read: ``per``, ``fused``, ``histories``, ``routes``, ``fallback``; written: ``fused``,
        ``ranked``.
    """
    b.ranked = [False] * len(b)
    b.blended = list(b.fused)
    rk = rec.ranker
    if rk is None:
        return
    names = rec.config.route_names()
    for i, h in enumerate(b.histories):
        if b.fallback[i] or not b.per[i] or not rk.serves(b.routes[i], h):
            continue
        route = names.index(b.routes[i]) if b.routes[i] in names else 0
        try:
            b.fused[i] = rk.rerank(b.per[i], b.fused[i], h, route)
        except Exception:  # a broken ranker must not fail the request: the blend stands
            log.exception("ranker failed; the blended order stands")
            continue
        b.ranked[i] = True


def _relative(cands: Candidates | None) -> Fused:
    if cands is None or not len(cands):
        return Fused.empty()
    scores = cands.scores
    top = float(scores.max()) if len(scores) else 0.0
    scale = 1.0 / top if top > 0 else 1.0
    rel = [float(s) * scale for s in scores.tolist()]
    return Fused(["popular"], list(cands.ids), rel, np.asarray([rel], dtype=np.float64))


# -- stage: rules ---------------------------------------------------------------------------
def rules(rec: Recommender, b: Batch) -> None:
    """Apply the business rules in rank order and cut the page.

    Seen items (per the configuration), the request's ``exclude``, unavailable items, the
    category filter and the per-category cap, stopping at the end of the page
    (``offset`` + ``n``), so a deep page costs only the items it passes.

    Parameters
    ----------
    rec : Recommender
        The recommender running the stage.
    b : Batch
        Read: ``fused``, ``histories``, ``requests``; written: ``pages``.
    """
    repeats = rec.ranker is not None and rec.ranker.repeats
    ranked = b.ranked or [False] * len(b)
    b.pages = [
        rec.page_of(f, h, r, seen_ok=repeats and ranked[i])
        for i, (f, h, r) in enumerate(zip(b.fused, b.histories, b.requests, strict=True))
    ]
    for i, r in enumerate(b.requests):
        if r.explain and ranked[i] and b.pages[i]:
            _explain(rec, b, i)


def _explain(rec: Recommender, b: Batch, i: int) -> None:
    """The ranker's per-feature contributions for the items of list ``i``'s page."""
    names = rec.config.route_names()
    route = names.index(b.routes[i]) if b.routes[i] in names else 0
    page = b.pages[i]
    try:
        got = rec.ranker.explain(
            b.per[i], b.blended[i], b.histories[i], [it.item_id for it in page], route
        )
    except Exception:  # an explanation must not fail the request
        log.exception("ranker explanation failed")
        return
    for it in page:
        it.features = got.get(it.item_id)


STAGES: tuple[Stage, ...] = (
    Stage(
        "route",
        route,
        ANSWERS,
        "the route (cold/warm or a learned route) and its strategies; their models",
    ),
    Stage(
        "candidates",
        candidates,
        ANSWERS,
        "each strategy's top candidates, under the request deadline",
    ),
    Stage("blend", blend, ANSWERS, "weighted score fusion or RRF of the candidate lists"),
    Stage(
        "rank",
        rank,
        (USER,),
        "the learned ranker (when one is active) orders the pool of every generator's top "
        "candidates over their features",
    ),
    Stage(
        "rules",
        rules,
        ANSWERS,
        "seen / excluded / unavailable / category / per-category cap, up to the page's end",
    ),
)
