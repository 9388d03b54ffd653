"""Refresh-ahead: an acknowledged event schedules the user's list, so the next read is a hit.

On a storefront the request after an event is the common one: the shopper views an item, the
next page asks for their list, and the event has just made the cached list stale. Without
refresh-ahead that request computes the list itself (history, scoring, render, store) while
the shopper waits. With it (``REFRESH_AHEAD``, on by default):

1. A miss that computes a plain list (no experiment, not shed) remembers the request with the
   entry, in the same round trip as the store (``<prefix>:uask:{<user>}``, same TTL).
2. ``POST /v1/events`` commits, then gives the users new history tokens and reads their
   remembered requests, in one round trip (``ResultCache.invalidate_users(..., asks=)``), and
   hands ``(user, new token, request)`` to this process's ``Refresher``.
3. The refresher's thread takes up to ``REFRESH_BATCH_MAX`` users (waiting up to
   ``REFRESH_WINDOW_MS`` for more), reads their histories kept in Redis for the tokens their
   events set (one ``MGET``; ``recsys.serving.cache.histories``), the others from SQL in one
   statement (``history.load_many``; after the commit: they have the event), scores them in one
   ``Recommender.recommend_batch`` call and stores every list in one round trip
   (``ResultCache.store_entries``), each tagged with the token its event set.

Freshness is unchanged by it (docs/freshness.md): a refreshed entry is tagged with the token
its event set after the commit, and its history is read after that, so it has the event; if
another event came since, that event's newer token makes the entry stale and it is never
served. A read that comes before the refresh has stored computes the list itself, as without
refresh-ahead. Users who have not asked for a list within ``CACHE_TTL`` (no remembered
request, e.g. a bulk import) are never refreshed.

Tests wait for the refresher with ``Refresher.wait_idle`` and hold it with their own
``compute`` (a barrier), never with sleeps.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from typing import NamedTuple

from flask import Flask

from recsys.config import get_config
from recsys.errors import DB_UNAVAILABLE
from recsys.serving.history import get_history_reader, load_many

log = logging.getLogger(__name__)
EXTENSION = "recsys.refresher"


class Job(NamedTuple):
    """One user's refresh: the token their event set and their remembered request."""

    user_id: str
    token: bytes
    ask: bytes


def ask_bytes(n: int, offset: int, category: str | None, exclude, explain: bool) -> bytes:
    """A plain request as remembered with its cache entry (``parse_ask`` reads it back).

    Parameters
    ----------
    n, offset : int
        Page size and start.
    category : str or None
        The category filter.
    exclude : sequence of str
        Items left out.
    explain : bool
        Whether the answer explains itself.

    Returns
    -------
    bytes
        Compact JSON.
    """
    return json.dumps(
        {"n": n, "o": offset, "c": category, "x": list(exclude), "e": explain},
        separators=(",", ":"),
    ).encode()


def parse_ask(raw: bytes) -> dict | None:
    """``ask_bytes``'s fields, or None for anything else (a foreign or older value).

    Parameters
    ----------
    raw : bytes
        The remembered request.

    Returns
    -------
    dict or None
        ``{"n", "o", "c", "x", "e"}``.
    """
    try:
        a = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(a, dict) or set(a) != {"n", "o", "c", "x", "e"}:
        return None
    return a


class Refresher:
    """This process's refresh-ahead queue and its thread (started on first use, again after a
    fork). Jobs of one user replace each other (the newest token wins).

    Parameters
    ----------
    compute : callable
        ``compute(jobs)``: recompute and store the lists (``RecommendationPipeline.refresh``).
    batch_max : int
        Most jobs handed to one ``compute`` call.
    window_s : float
        Seconds to wait for more jobs before computing a batch that is not full.
    """

    def __init__(self, compute: Callable[[list[Job]], None], batch_max: int, window_s: float):
        self.compute = compute
        self.batch_max = batch_max
        self.window_s = window_s
        self._pending: dict[str, Job] = {}
        self._cond = threading.Condition()
        self._busy = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self.scheduled = self.batches = self.failed = self.discarded = 0

    def schedule(self, jobs: list[Job]) -> None:
        """Queue ``jobs`` (returns at once).

        Parameters
        ----------
        jobs : list of Job
            Users to refresh.

        Returns
        -------
        None
        """
        if not jobs:
            return
        with self._cond:
            if self._pid != os.getpid():  # forked: the parent's queue and thread are not ours
                self._pending.clear()
                self._busy = False
                self._thread = None
                self._pid = os.getpid()
            for job in jobs:
                self._pending[job.user_id] = job
            self.scheduled += len(jobs)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="refresh-ahead", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def discard(self, user_id: str, token: bytes | None) -> None:
        """Drop ``user_id``'s queued job if it is for ``token``: a read has just computed and
        stored that very list (a miss that came before the refresh), so it would be computed
        twice.

        Parameters
        ----------
        user_id : str
            The user.
        token : bytes or None
            The history token the read computed under.

        Returns
        -------
        None
        """
        if token is None or not self._pending:
            return
        with self._cond:
            job = self._pending.get(user_id)
            if job is not None and job.token == token:
                del self._pending[user_id]
                self.discarded += 1

    def _take(self) -> list[Job]:
        with self._cond:
            while not self._pending:
                self._cond.wait()
            if len(self._pending) < self.batch_max and self.window_s > 0:
                self._cond.wait(self.window_s)  # a few more users for the same batch
            users = list(self._pending)[: self.batch_max]
            self._busy = True
            return [self._pending.pop(u) for u in users]

    def _run(self) -> None:
        while True:
            batch = self._take()
            try:
                self.compute(batch)
            except Exception:  # a failed refresh only means the next read computes
                self.failed += len(batch)
                log.exception("refresh-ahead of %d users failed", len(batch))
            finally:
                with self._cond:
                    self.batches += 1
                    self._busy = False
                    self._cond.notify_all()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until nothing is queued or being computed.

        Parameters
        ----------
        timeout : float, optional
            Seconds at most (a hang guard).

        Returns
        -------
        bool
            True when idle, False on timeout.
        """
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)


def refresh_lists(pipeline, jobs: list[Job]) -> int:
    """Recompute and store the lists of ``jobs`` (the refresher's ``compute``).

    One snapshot; the histories kept in Redis, the others from SQL in one statement; one
    ``Recommender.recommend_batch``
    per group of requests scored alike; one round trip to store. Users in an experiment or with
    a degraded answer are skipped, and the whole batch when the histories cannot be read
    (their next read computes).

    Parameters
    ----------
    pipeline : RecommendationPipeline
        The app's pipeline (its snapshot, history, recommender, render and cache).
    jobs : list of Job
        Users to refresh.

    Returns
    -------
    int
        Lists stored.
    """
    from recsys.core.types import RecRequest

    with pipeline.app.app_context():
        snap = pipeline.snapshot()
        cps = snap.config.candidates_per_strategy
        todo = []
        for job in jobs:
            a = parse_ask(job.ask)
            if a is not None and pipeline.resolve_assignment(job.user_id) is None:
                todo.append((job, a))
        if not todo:
            return 0
        limit = get_config(pipeline.app).history_max_events
        # The histories kept in Redis for the tokens the events set (the event write appended
        # the events to them), the others from SQL in one statement.
        histories = kept_histories(pipeline.cache, snap.versions.epoch, limit, [j for j, _ in todo])
        try:
            missing = [j.user_id for j, _ in todo if j.user_id not in histories]
            if missing:
                histories.update(load_many(get_history_reader(pipeline.app), missing, limit))
        except DB_UNAVAILABLE as e:  # the reads that follow compute (and degrade) themselves
            log.warning("refresh-ahead: history read failed: %s", (str(e).splitlines() or [""])[0])
            return 0
        groups: dict[int, list] = {}
        for job, a in todo:
            req = RecRequest(
                n=a["n"], offset=a["o"], category=a["c"], exclude=a["x"], explain=a["e"]
            )
            # Scored together only when scored alike (as ScoringGate.combine groups).
            groups.setdefault(max(cps, req.n + req.offset), []).append(
                (job, req, a, histories[job.user_id])
            )
        entries = []
        rec = pipeline.recommender(snap)
        for todo in groups.values():
            results = rec.recommend_batch([t[3] for t in todo], [t[1] for t in todo])
            for (job, req, a, _), result in zip(todo, results, strict=True):
                if result.degraded or snap.unloadable(result):
                    continue
                payload = pipeline.render(result, job.user_id, a["e"], False, None)
                context = pipeline.cache_context(
                    snap, req.n, req.offset, req.category, list(req.exclude), a["e"], None
                )
                entries.append((job.user_id, context, job.token, payload))
        pipeline.cache.store_entries(entries)
        return len(entries)


def kept_histories(cache, epoch, limit: int, jobs: list[Job]) -> dict:
    """The users' histories kept in Redis that are valid for their jobs' tokens (one ``MGET``;
    ``recsys.serving.cache.histories``): user -> history. Empty when none are kept here, or on
    a cluster (the users' keys are in many slots) or an error: SQL is read instead.

    Parameters
    ----------
    cache : ResultCache
        The app's cache.
    epoch : Any
        The cache epoch served with.
    limit : int
        ``HISTORY_MAX_EVENTS``.
    jobs : list of Job
        The refreshes.

    Returns
    -------
    dict of str to UserHistory
    """
    from recsys.serving.cache import RedisBackend, histories

    if not jobs or not isinstance(cache.backend, RedisBackend):
        return {}
    keys = [cache.history_key(j.user_id, epoch, limit) for j in jobs]
    if any(k is None for k in keys):
        return {}
    ok, raws = cache._call(lambda: cache.backend.mget(keys), None)
    if not ok or raws is None:
        return {}
    out = {}
    for job, raw in zip(jobs, raws, strict=True):
        got = histories.decode(raw, job.token, job.user_id, limit)
        if got is not None:
            out[job.user_id] = got
    return out


def get_refresher(app: Flask) -> Refresher | None:
    """The app's refresher; None when refresh-ahead is off or the cache is not shared (an
    in-process cache: a read computes, the event already made the entry stale).

    Parameters
    ----------
    app : Flask
        The app.

    Returns
    -------
    Refresher or None
        The refresher ``init_app`` made.
    """
    from recsys.serving.cache import get_cache

    if not get_config(app).refresh_ahead or not get_cache(app).shared:
        return None
    return app.extensions.get(EXTENSION)


def make_refresher(app: Flask, pipeline) -> Refresher:
    """The refresher of ``app``'s ``pipeline`` (``recsys.serving.pipeline.init_app``).

    Parameters
    ----------
    app : Flask
        The app (its refresh settings).
    pipeline : RecommendationPipeline
        What computes and stores the lists.

    Returns
    -------
    Refresher
        Kept in ``app.extensions``; ``get_refresher`` returns it.
    """
    cfg = get_config(app)
    refresher = Refresher(
        lambda jobs: refresh_lists(pipeline, jobs),
        cfg.refresh_batch_max,
        cfg.refresh_window_ms / 1000,
    )
    app.extensions[EXTENSION] = refresher
    return refresher
