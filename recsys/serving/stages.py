"""The serving stages of a recommendation request, in order, and the one timing wrapper.

``PIPELINE_STAGES`` lists them with the answers that run each (``user``: a user's list,
``session``: a guest session's, ``similar``, ``popular``) and where the work is done;
``SCORING`` stands for the recommender's own stages (``recsys.core.stages.STAGES``: route,
candidates, blend, rules), which run inside a scoring turn. ``stage_rows`` expands the two
lists into the table of ARCHITECTURE.md (``scripts/gen_architecture_stages.py``; a test fails
when the document is out of date).

Each stage is timed once, by ``timed`` (the recommender's by ``Recommender.run_stages``,
reporting to ``record_stage``): its seconds go into ``recsys_stage_seconds{stage=...}`` and the
request's ``Server-Timing`` header.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from recsys.ops.logs import stage as server_timing_stage
from recsys.ops.metrics import STAGE_LATENCY

SCORING = "scoring"
USER, SESSION, SIMILAR, POPULAR = "user", "session", "similar", "popular"
# (name, answers that run it, what it does, where). SCORING: recsys.core.stages.STAGES.
PIPELINE_STAGES: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    (
        "snapshot",
        (USER, SESSION, SIMILAR, POPULAR),
        "configuration, catalogue, loaded and wanted model versions of this process; the cache "
        "key and every later stage use this one snapshot",
        "`RecommendationPipeline.snapshot`",
    ),
    (
        "cache_lookup",
        (USER,),
        "one `MGET` of the user's history token and the cached answer (or the worker's near "
        "cache); a fresh entry ends the path; a miss takes the stampede lock",
        "`serving.cache.ResultCache.lookup`",
    ),
    (
        "history",
        (USER,),
        "the user's last events from SQL within the request deadline; the store down: an "
        "empty history, popularity, degraded",
        "`serving.history.HistoryReader`",
    ),
    (
        "turn_wait",
        (USER, SESSION),
        "wait for one of this worker's scoring turns; none in time: popularity only, degraded",
        "`serving.gate.ScoringGate`",
    ),
    (SCORING, (USER, SESSION, SIMILAR, POPULAR), "", "`core.stages.STAGES`"),
    (
        "render",
        (USER, SESSION, SIMILAR, POPULAR),
        "the answer's JSON bytes",
        "`RecommendationPipeline.render`",
    ),
    (
        "cache_store",
        (USER,),
        "store the answer (not when degraded) and release the lock, one round trip",
        "`serving.cache.ResultCache.store`",
    ),
    (
        "fields",
        (USER, SESSION, SIMILAR, POPULAR),
        "item data (title, price ...) spliced in after the cache",
        "`serving.catalog.Catalog.render_items`",
    ),
)


def stage_rows() -> list[tuple[str, str, str, str]]:
    """Every stage of a recommendation request in order, the recommender's expanded in place.

    Returns
    -------
    list of (name, answers, what, where)
        ``answers`` comma-separated; the source of ARCHITECTURE.md's stage table.
    """
    from recsys.core import stages

    # A guest session is a user list without a stored history.
    core_answer = {USER: stages.USER, SESSION: stages.USER, SIMILAR: stages.SIMILAR}
    core_answer[POPULAR] = stages.POPULAR
    rows = []
    for name, answers, what, where in PIPELINE_STAGES:
        if name != SCORING:
            rows.append((name, ", ".join(answers), what, where))
            continue
        for stage in stages.STAGES:
            runs = [a for a in answers if core_answer[a] in stage.answers]
            rows.append(
                (stage.name, ", ".join(runs), stage.doc, f"`core.stages.{stage.run.__name__}`")
            )
    return rows


_stage_children: dict[str, Any] = {}


def record_stage(name: str, seconds: float) -> None:
    """One stage's time: the stage histogram and the request's ``Server-Timing`` header.

    Parameters
    ----------
    name : str
        The stage's name (``PIPELINE_STAGES``).
    seconds : float
        Its duration, in seconds.

    Returns
    -------
    None
    """
    child = _stage_children.get(name)
    if child is None:
        child = _stage_children[name] = STAGE_LATENCY.labels(name)
    child.observe(seconds)
    server_timing_stage(name, seconds)


def timed(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run one stage, ``fn(*args)``, and record its time under ``name`` (``record_stage``).

    Parameters
    ----------
    name : str
        The stage's name (``PIPELINE_STAGES``).
    fn : callable
        The stage's work.
    *args : Any
        Passed to ``fn``.

    Returns
    -------
    object
        What ``fn`` returned.
    """
    t0 = time.perf_counter()
    try:
        return fn(*args)
    finally:
        record_stage(name, time.perf_counter() - t0)
