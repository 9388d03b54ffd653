"""The history stage of a per-user list: from the user's state kept in Redis when it is valid
(``recsys.serving.cache.histories``), else from SQL, the truth.

Split from ``recsys.serving.pipeline`` (which calls it) so that the request path reads top to
bottom there while the history's sources are explained here.
"""

from __future__ import annotations

import logging

from recsys.config import get_config
from recsys.core.types import RecRequest, UserHistory
from recsys.errors import DB_UNAVAILABLE, RateLimitedLog
from recsys.serving.cache import histories
from recsys.serving.cache.results import Lookup
from recsys.serving.request import Snapshot, UserAsk

log = logging.getLogger(__name__)
# During an outage every uncached request fails its history read: one line per 10 s, not each.
_history_log = RateLimitedLog(log)


def sql_history(pipeline, ask: UserAsk) -> tuple[UserHistory, bool]:
    """The user's history from SQL: ``(history, store down)``; the store down, an empty
    history (the answer is popularity, marked degraded, never cached).

    Parameters
    ----------
    pipeline : RecommendationPipeline
        Its app and history reader.
    ask : UserAsk
        The request (its user and deadline).

    Returns
    -------
    tuple of (UserHistory, bool)
    """
    limit = get_config(pipeline.app).history_max_events
    try:
        # Within the request's deadline: a database that hangs gets that long, no more.
        return pipeline.history(ask.user_id, limit, ask.req.deadline_s), False
    except DB_UNAVAILABLE as e:
        # No history without the SQL store: popular items beat an error page for a shop's
        # frontend; marked degraded, so never cached.
        _history_log.warning(
            "history lookup failed, serving popularity: %s", (str(e).splitlines() or [""])[0]
        )
        return UserHistory.from_items(ask.user_id, [], type="click"), True


def user_history(
    pipeline, ask: UserAsk, looked: Lookup | None
) -> tuple[UserHistory, bool, bytes | None]:
    """Stage history of a miss: ``(history, store down, history to keep in Redis)``.

    The history read with the miss's lock (``looked.history``) when it is valid for the
    token the request read; else SQL, and the history read is handed back encoded under that
    token, for ``ResultCache.store`` to keep with the list.

    Parameters
    ----------
    pipeline : RecommendationPipeline
        Its app and history reader.
    ask : UserAsk
        The request.
    looked : Lookup or None
        The miss (None: no cache, e.g. a shed request's).

    Returns
    -------
    tuple of (UserHistory, bool, bytes or None)
    """
    kept = looked is not None and looked.history_key is not None and looked.peek is not None
    if kept:
        limit = get_config(pipeline.app).history_max_events
        got = histories.decode(looked.history, looked.peek.token, ask.user_id, limit)
        if got is not None:
            return got, False, None
    history, down = sql_history(pipeline, ask)
    if not kept or down:
        return history, down, None
    return history, False, histories.encode(looked.peek.token, history, history.newest_us)


def popular_list(
    pipeline,
    n: int,
    category: str | None,
    offset: int,
    explain: bool,
    user_id: str | None = None,
    deadline_s: float | None = None,
) -> tuple[bytes, Snapshot]:
    """The popular list; with ``user_id``, without the items that user has events with.

    Parameters
    ----------
    pipeline : RecommendationPipeline
        The pipeline whose snapshot, store and cache answer.
    n : int
        Items asked for.
    category : str or None
        The category filter; None: any.
    offset : int
        Items skipped.
    explain : bool
        Include explanations.
    user_id : str or None
        Leave out every item of this user's history (its last ``HISTORY_MAX_EVENTS``
        events, any type). The store down: the list unfiltered, marked degraded.
    deadline_s : float or None
        Time budget of that history read; None: none.

    Returns
    -------
    tuple of (bytes, Snapshot)
        ``(body, snapshot)``.
    """
    snap = pipeline.snapshot()
    seen: list[str] = []
    down = False
    if user_id is not None:
        history, down = sql_history(
            pipeline, UserAsk(user_id=user_id, req=RecRequest(deadline_s=deadline_s))
        )
        seen = history.items
    result = pipeline.recommender(snap).popular(n=n, category=category, offset=offset, exclude=seen)
    body = pipeline.render(result, user_id, explain, degraded=down).partition(b"\n")[2]
    return body, snap
