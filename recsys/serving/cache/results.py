"""Per-user result cache: Redis when ``REDIS_URL`` is set, else a bounded in-process LRU.

Keys (every one built by ``ResultCache.key`` under ``REDIS_PREFIX``)::

    <prefix>:rec:{<user>}:<digest>   one cached response; <digest> hashes the request
                                     parameters, the config, catalogue and epoch versions, the
                                     active model versions and the experiment variant, so a
                                     toggle, a model swap or an item update moves every user to
                                     fresh keys
    <prefix>:uver:{<user>}           the user's history token: a random value re-set by
                                     POST /v1/events after the SQL commit
    <prefix>:rec:...:lock            short stampede lock (SET NX PX)
    <prefix>:uask:{<user>}           the user's last plain request, for refresh-ahead
                                     (recsys.serving.refresh)
    <prefix>:uhist:{<user>}:<epoch>:<limit>
                                     the user's history, under their token, for misses
                                     (recsys.serving.cache.histories)

``{<user>}`` is a Redis Cluster hash tag: every key of one user hashes to one slot, so the
lookup's ``MGET`` of token and entry and the store-and-unlock of a miss are single-slot commands
on a cluster (``redis+cluster://`` URLs, ``RedisClusterBackend``). No command ever spans two
users; invalidating many users is a non-transactional pipeline the cluster client splits by node.

A cached value stores the history token it was computed under (``ENTRY_TAG + token + "\\n" +
payload``, the payload being the serialised HTTP response), and a lookup reads the token
and the value in one ``MGET``: if they differ the entry is stale (the user has had an event
since) and is recomputed. The token is read *before* the history, so an event that lands
while a result is being computed always makes that result stale. Tokens are random rather
than counters so an evicted token can never come back with an old value.

Only one worker computes a missing entry: the first takes the lock; the others poll for the
value for up to ``CACHE_LOCK_WAIT_MS`` and then compute themselves (a slow lock holder never
blocks anyone for long). When Redis is unreachable, requests are served uncached (logged once
per outage, retried with exponential backoff), never failed; an invalidation that could not be
written bumps the shared ``cache_epoch`` in SQL instead (see recsys.serving.settings_store), so no
entry from before the outage is served after it.

Memory: every entry has a TTL (``CACHE_TTL``); run Redis with ``maxmemory`` and
``maxmemory-policy allkeys-lru`` (README, "Caching") so it stays bounded under any load.

Over 500 lines only through the numpy-style docstrings of its public API (about 360
lines without them): the code is one unit, not split for length.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple
from urllib.parse import quote

from flask import Flask, current_app

from recsys.config import get_config
from recsys.ops.lifecycle import on_after_fork
from recsys.serving.cache.backends import (
    LocalBackend,
    RedisBackend,
    RedisClusterBackend,
    is_cluster_url,
)
from recsys.serving.cache.compute import ComputeOnMiss
from recsys.serving.cache.near import NearCache, messages

log = logging.getLogger(__name__)

LOCK_TTL_MS = 2000
POLL_MS = 10
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
# First bytes of every cache entry (format version): entries of another format are misses.
ENTRY_TAG = b"r2:"


class Peek(NamedTuple):
    """One lookup's raw reads: the entry's key, the user's history token and the entry, and
    the user and context the key was built from."""

    key: str
    token: bytes | None
    raw: bytes | None
    user_id: str
    context: dict[str, Any]

    @property
    def payload(self) -> bytes | None:
        return ResultCache._payload(self.raw, self.token)


class Lookup(NamedTuple):
    """One request's read of its cache entry (``ResultCache.lookup``).

    ``peek``: the raw reads (None: the cache is unavailable, nothing will be stored);
    ``hit``: the cached payload, or None on a miss; ``lock``: the stampede lock this request
    took for a miss (released by ``ResultCache.store`` or ``release``); ``history_key`` and
    ``history``: on a miss, the user's history key and what it held, read with the lock
    (``recsys.serving.cache.histories``; None: not asked for)."""

    peek: Peek | None
    hit: bytes | None
    lock: str | None
    history_key: str | None = None
    history: bytes | None = None


class ResultCache(ComputeOnMiss):
    """The per-process cache front: versioned keys, stale checks, stampede lock, outage mode."""

    def __init__(self, app: Flask):
        cfg = get_config(app)
        self.prefix = cfg.redis_prefix
        self.ttl = float(cfg.cache_ttl)
        self.lock_wait_ms = cfg.cache_lock_wait_ms
        self.lock_polls = 0  # times a request looked again while another held the entry's lock
        self.url = cfg.redis_url or None
        self.local_size = cfg.local_cache_size
        # The per-process copy of hits (recsys.serving.cache.near): seconds, never beyond CACHE_TTL.
        self.near_ttl = min(cfg.near_cache_ttl or 0.0, self.ttl)
        self.near_size = cfg.near_cache_size
        self.near_max_lag_ms = cfg.near_cache_max_lag_ms
        self._down_until = 0.0
        self._backoff = BACKOFF_START_S
        self._outage_logged = False
        self._pid = os.getpid()
        # Why this process must not cache at all (None: it may). See ``disable``.
        self.disabled: str | None = None
        if "{" in self.prefix or "}" in self.prefix:
            # A brace in the prefix would become the keys' hash tag on a cluster.
            raise ValueError(f"REDIS_PREFIX must not contain braces: {self.prefix!r}")
        self.backend: LocalBackend | RedisBackend | RedisClusterBackend = self._make_backend()
        self.near = self._make_near()

    def _make_backend(self):
        if is_cluster_url(self.url):
            return RedisClusterBackend(self.url)
        if self.url:
            return RedisBackend(self.url)
        return LocalBackend(self.local_size)

    @property
    def near_channel(self) -> str | None:
        """The pub/sub channel of near-cache invalidations (None: the near cache is off)."""
        if self.near_ttl <= 0 or not isinstance(self.backend, RedisBackend):
            return None
        return self.key("near")

    def _make_near(self) -> NearCache | None:
        if self.near_ttl > 0 and not isinstance(self.backend, RedisBackend):
            log.warning("NEAR_CACHE_TTL ignored: the near cache needs one Redis server (redis://)")
        channel = self.near_channel
        if channel is None:
            return None
        pool = self.backend.client.connection_pool
        return NearCache(
            pool.make_connection,
            channel,
            self.near_ttl,
            self.near_size,
            publish=self.backend.client.publish,
            max_lag_s=self.near_max_lag_ms / 1000.0,
        )

    @property
    def shared(self) -> bool:
        """True when the cache is shared between processes (Redis or Redis Cluster)."""
        return not isinstance(self.backend, LocalBackend)

    def after_fork(self) -> None:
        """A worker must not share the master's Redis sockets: new client, fresh state.

        Returns
        -------
        None
        """
        self._pid = os.getpid()
        self._down_until = 0.0
        self._backoff = BACKOFF_START_S
        # The parent's sockets are left alone (closing them would cut the parent's too).
        self.backend = self._make_backend()
        self.near = self._make_near()

    # -- keys -------------------------------------------------------------------------------
    def key(self, *parts: str) -> str:
        """The one place keys are built: ``<prefix>:<part>:...`` with parts URL-quoted.

        Parameters
        ----------
        *parts : str
            The key's parts (each turned into text, then quoted).

        Returns
        -------
        str
            The key.
        """
        return ":".join([self.prefix, *(_quote(str(p)) for p in parts)])

    def user_key(self, kind: str, user_id: str, *rest: str) -> str:
        """``<prefix>:<kind>:{<user>}:<rest>...``: the braces are the user's hash tag, so on a
        Redis Cluster all of one user's keys live in one slot (quoting never leaves a brace in
        an id, and an empty id is spelt ``%``, which quoting never produces).

        Parameters
        ----------
        kind : str
            The key's kind (``"rec"``, ``"uver"``, ...).
        user_id : str
            The external user id.
        *rest : str
            Further parts, quoted.

        Returns
        -------
        str
            The key.
        """
        return (
            self.key(kind)
            + ":{"
            + (_quote(str(user_id)) or "%")
            + "}"
            + "".join(":" + _quote(str(p)) for p in rest)
        )

    def result_key(self, user_id: str, context: dict[str, Any]) -> str:
        """The key of a user's cached list for ``context``.

        Parameters
        ----------
        user_id : str
            The external user id.
        context : dict
            Everything the answer depends on besides the user's history (JSON-able; hashed).

        Returns
        -------
        str
            ``<prefix>:rec:{<user>}:<24 hex digits of the context's sha256>``.
        """
        digest = hashlib.sha256(
            json.dumps(context, sort_keys=True, default=str).encode()
        ).hexdigest()[:24]
        return self.user_key("rec", user_id, digest)

    def history_key(self, user_id: str, epoch: Any, limit: int) -> str | None:
        """The key of a user's history kept in Redis (``recsys.serving.cache.histories``),
        under the cache epoch and history length; None when histories are not kept here (the
        in-process cache).

        Parameters
        ----------
        user_id : str
            The external user id.
        epoch : Any
            The cache epoch served with (an outage's bump moves every user to new keys).
        limit : int
            ``HISTORY_MAX_EVENTS``.

        Returns
        -------
        str or None
            ``<prefix>:uhist:{<user>}:<epoch>:<limit>``.
        """
        if not self.shared or self.disabled is not None:
            return None
        return self.user_key("uhist", user_id, str(epoch), str(int(limit)))

    def token_key(self, user_id: str) -> str:
        """The key of a user's history token.

        Parameters
        ----------
        user_id : str
            The external user id.

        Returns
        -------
        str
            ``<prefix>:uver:{<user>}``.
        """
        return self.user_key("uver", user_id)

    # -- availability -----------------------------------------------------------------------
    @property
    def available(self) -> bool:
        return self.disabled is None and time.monotonic() >= self._down_until

    def disable(self, reason: str) -> None:
        """Serve everything uncached from now on in this process (logged once).

        For an in-process cache under several gunicorn workers: each worker would keep its own
        copy, and an event handled by one worker could not make another's copy stale.

        Parameters
        ----------
        reason : str
            Why, for the log and diagnostics.

        Returns
        -------
        None
        """
        if self.disabled is None:
            log.warning("result cache off in this process: %s", reason)
        self.disabled = reason

    def _failed(self, exc: Exception) -> None:
        if not self._outage_logged:
            log.warning("cache unavailable, serving uncached: %s", exc)
            self._outage_logged = True
        self._down_until = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)

    def _ok(self) -> None:
        if self._outage_logged:
            log.warning("cache reachable again")
        self._outage_logged = False
        self._backoff = BACKOFF_START_S

    def _call(self, fn: Callable[[], Any], default: Any = None) -> tuple[bool, Any]:
        if self._pid != os.getpid():
            self.after_fork()
        if not self.available:
            return False, default
        try:
            out = fn()
        except Exception as e:  # redis errors of every kind: the cache is optional
            self._failed(e)
            return False, default
        self._ok()
        return True, out

    # -- the cache --------------------------------------------------------------------------
    # An entry is ``ENTRY_TAG + token + b"\n" + payload``: the history token it was computed
    # under, then opaque bytes (the HTTP layer stores the serialised response, so a hit is one
    # MGET and a byte copy, no JSON decoding). Entries of any other shape read as misses.
    def lookup(
        self,
        user_id: str,
        context: dict[str, Any],
        peeked: Peek | None = None,
        history_key: str | None = None,
    ) -> Lookup:
        """One request's read of its entry: a fresh hit, or a miss for the caller to compute
        and hand to ``store``. Counts the hit or miss.

        On a miss the request takes the entry's stampede lock; when another request holds it,
        this one polls for that request's value for up to ``CACHE_LOCK_WAIT_MS`` (a hit if it
        comes), then computes itself.

        Parameters
        ----------
        user_id : str
            Whose list.
        context : dict
            What the list depends on besides the user's history (``result_key``).
        peeked : Peek, optional
            What ``peek`` read for this request a moment ago (the fast path's miss); used, key
            included, instead of a second ``MGET`` when it is for the same user and an equal
            context.
        history_key : str or None, optional
            On a miss, also read this key (the user's history, ``history_key``) in the round
            trip that takes the lock; None: do not.

        Returns
        -------
        Lookup
            ``hit`` is the cached payload, or None on a miss (``store`` or ``release`` it).
        """
        from recsys.ops import metrics

        if peeked is None or peeked.user_id != user_id or peeked.context != context:
            peeked = self._read(user_id, context)
        if peeked is None:
            metrics.CACHE_MISSES.inc()
            return Lookup(None, None, None)
        hit = self._payload(peeked.raw, peeked.token)
        if hit is not None:
            metrics.CACHE_HITS.inc()
            return Lookup(peeked, hit, None)
        metrics.CACHE_MISSES.inc()
        lock = peeked.key + ":lock"
        value = uuid.uuid4().hex.encode()
        history = None
        if history_key is None:
            got, acquired = self._call(lambda: self.backend.set_nx(lock, value, LOCK_TTL_MS), False)
        else:
            got, (acquired, history) = self._call(
                lambda: self.backend.set_nx_get(lock, value, LOCK_TTL_MS, history_key),
                (False, None),
            )
        if got and not acquired:
            # Someone else is computing this entry: wait briefly for it.
            tkey, rkey = self.token_key(user_id), peeked.key
            deadline = time.monotonic() + self.lock_wait_ms / 1000.0
            while time.monotonic() < deadline:
                time.sleep(POLL_MS / 1000.0)
                self.lock_polls += 1
                ok, vals = self._call(lambda: self.backend.mget([tkey, rkey]))
                if not ok:
                    break
                hit = self._payload(vals[1], vals[0])
                if hit is not None:
                    return Lookup(peeked, hit, None)
        return Lookup(peeked, None, lock if acquired else None, history_key, history)

    def store(
        self,
        looked: Lookup,
        payload: bytes | None,
        ask: bytes | None = None,
        history: bytes | None = None,
    ) -> None:
        """Store a miss's computed payload (None: do not store, a degraded answer is not pinned
        for a whole TTL) and release the lock it holds, in one round trip.

        Parameters
        ----------
        looked : Lookup
            The miss ``lookup`` returned.
        payload : bytes or None
            What to keep for the user and context looked up.
        ask : bytes or None, optional
            The request, remembered with the entry for refresh-ahead
            (``recsys.serving.refresh``); None: nothing remembered.
        history : bytes or None, optional
            The user's history as read from SQL, kept under ``looked.history_key``
            (``recsys.serving.cache.histories.encode``); None: nothing kept.

        Returns
        -------
        None
        """
        if looked.peek is None or looked.hit is not None:
            return
        entry = None
        if payload is not None:
            entry = b"".join((ENTRY_TAG, _bytes(looked.peek.token), b"\n", payload))
        if entry is not None or looked.lock is not None:
            # Not copied into the near cache: a list is kept there from its first read out of
            # Redis, so one-off lists (a unique exclude, a deep page) never take its room.
            key = looked.peek.key
            also = {self.user_key("uask", looked.peek.user_id): ask} if ask and entry else None
            if history is not None and entry is not None and looked.history_key is not None:
                also = {**(also or {}), looked.history_key: history}
            self._call(lambda: self.backend.store(key, entry, self.ttl, looked.lock, also))

    def release(self, looked: Lookup) -> None:
        """Give up a miss without storing (its computation failed): the lock is released, so
        the next request computes at once instead of waiting for this one.

        Parameters
        ----------
        looked : Lookup
            The miss ``lookup`` returned.

        Returns
        -------
        None
        """
        if looked.peek is not None and looked.lock is not None:
            key = looked.peek.key
            self._call(lambda: self.backend.store(key, None, self.ttl, looked.lock))

    def peek(self, user_id: str, context: dict[str, Any]) -> Peek | None:
        """The user's token and the entry (one ``MGET``, or the near cache). Counts nothing and
        never computes.

        Parameters
        ----------
        user_id : str
            The external user id.
        context : dict
            What the answer depends on besides the history (see ``result_key``).

        Returns
        -------
        Peek or None
            What it read (``.payload``: the cached payload if present and fresh); None when the
            cache is unavailable.
        """
        return self._read(user_id, context)

    def _read(self, user_id: str, context: dict[str, Any]) -> Peek | None:
        """The user's token and the entry: from the near cache when it holds them, else one
        ``MGET`` (a fresh hit is then kept in the near cache). None: the cache is unavailable."""
        if self._pid != os.getpid():
            self.after_fork()
        rkey = self.result_key(user_id, context)
        near, ticket = self.near, None
        if near is not None and self.available:
            got, ticket = near.get(user_id, rkey)
            if got is not None:
                from recsys.ops import metrics

                metrics.CACHE_NEAR_HITS.inc()
                return Peek(rkey, got[0], got[1], user_id, context)
        tkey = self.token_key(user_id)
        ok, vals = self._call(lambda: self.backend.mget([tkey, rkey]))
        if not ok:
            return None
        token, raw = vals
        if ticket is not None and self._payload(raw, token) is not None:
            near.put(ticket, user_id, rkey, token, raw)  # type: ignore[union-attr]
        return Peek(rkey, token, raw, user_id, context)

    def peek_raw(self, user_id: str, context: dict[str, Any]) -> bytes | None:
        """The cached payload if present and fresh; never computes.

        Parameters
        ----------
        user_id : str
            The external user id.
        context : dict
            What the answer depends on besides the history (see ``result_key``).

        Returns
        -------
        bytes or None
            The payload; None: missing, stale, or the cache is unavailable.
        """
        p = self.peek(user_id, context)
        return None if p is None else p.payload

    @staticmethod
    def _payload(raw: bytes | None, token: bytes | None) -> bytes | None:
        if raw is None or not raw.startswith(ENTRY_TAG):
            return None
        head, sep, payload = raw.partition(b"\n")
        if not sep or head[len(ENTRY_TAG) :] != _bytes(token):
            return None  # the user has had an event since (or a foreign/old entry)
        return payload

    def invalidate_users(
        self,
        user_ids: Iterable[str],
        asks: list[tuple[str, bytes, bytes]] | None = None,
        appends: dict[str, tuple[str, list]] | None = None,
    ) -> bool:
        """Give each user a new history token (their cached lists become stale).

        Parameters
        ----------
        user_ids : Iterable[str]
            External user ids (duplicates are fine).
        asks : list, optional
            When given, ``(user, new token, remembered request)`` is appended for each user
            with a request remembered by ``store`` (read in the same round trip), for
            refresh-ahead (``recsys.serving.refresh``).
        appends : dict, optional
            ``user -> (history key, APPEND's arguments after the token's)``: the new events of
            users whose history is kept in Redis (``recsys.serving.cache.histories``), added
            to it in the same round trip, or the history dropped.

        Returns
        -------
        bool
            False when the cache could not be written (the caller bumps the cache epoch); True
            otherwise, also when nothing is cached here.
        """
        users = sorted({str(u) for u in user_ids})
        if not users or self.disabled is not None:
            return True  # nothing cached here, so nothing can be stale
        tokens = [uuid.uuid4().hex.encode() for _ in users]
        items = {self.token_key(u): t for u, t in zip(users, tokens, strict=True)}
        channel = self.near_channel
        publish = (channel, messages(users)) if channel is not None else None
        get = [self.user_key("uask", u) for u in users] if asks is not None else None
        # Tokens outlive the results they guard, so a result never meets an expired token.
        by_key = {self.token_key(u): a for u, a in (appends or {}).items()} or None
        ttl = self.ttl * 2 + 60
        ok, got = self._call(
            lambda: (
                self.backend.set_many(items, ttl, publish, get, by_key)
                if by_key
                else self.backend.set_many(items, ttl, publish, get)
            ),
            [],
        )
        if self.near is not None:
            self.near.drop(users)
        if ok and asks is not None:
            asks.extend((u, t, a) for u, t, a in zip(users, tokens, got, strict=True) if a)
        return ok

    def store_entries(self, entries: list[tuple[str, dict[str, Any], bytes, bytes]]) -> bool:
        """Store computed lists in one round trip (refresh-ahead's batch).

        Parameters
        ----------
        entries : list of (str, dict, bytes, bytes)
            ``(user, context, history token, payload)``: each payload is kept under the user's
            key for the context, tagged with the token it was computed under (a newer token
            makes it stale, as for ``store``).

        Returns
        -------
        bool
            False when the cache could not be written.
        """
        items = {
            self.result_key(u, ctx): b"".join((ENTRY_TAG, _bytes(token), b"\n", payload))
            for u, ctx, token, payload in entries
        }
        if not items:
            return True
        ok, _ = self._call(lambda: self.backend.set_many(items, self.ttl))
        return ok

    def ping(self) -> bool:
        """Whether the backend answers a read now.

        Returns
        -------
        bool
            True when a one-key ``MGET`` succeeded.
        """
        ok, out = self._call(lambda: self.backend.mget([self.key("ping")]))
        return ok


_SAFE_PART = re.compile(r"[A-Za-z0-9_.~-]*")


def _quote(part: str) -> str:
    # quote() is slow for the common case of an id with nothing to escape.
    return part if _SAFE_PART.fullmatch(part) else quote(part, safe="")


def _bytes(token: bytes | str | None) -> bytes:
    """A history token as stored in an entry (no token yet: empty; tokens are never empty)."""
    if token is None:
        return b""
    return token if isinstance(token, bytes) else str(token).encode()


def init_app(app: Flask) -> None:
    """Make the app's result cache (``app.extensions["recsys.cache"]``).

    Parameters
    ----------
    app : Flask
        The app; its cache settings choose the backend.

    Returns
    -------
    None
    """
    app.extensions["recsys.cache"] = ResultCache(app)


def get_cache(app: Flask | None = None) -> ResultCache:
    """The app's result cache.

    Parameters
    ----------
    app : Flask or None, optional
        The app; None: ``current_app``.

    Returns
    -------
    ResultCache
        The cache ``init_app`` made.
    """
    return (app or current_app).extensions["recsys.cache"]


@on_after_fork
def _after_fork(app: Flask | None) -> None:
    if app is None:  # hooks may be run without an app (e.g. a bare process)
        return
    cache = app.extensions.get("recsys.cache")
    if cache is not None:
        cache.after_fork()
    settings = app.extensions.get("recsys.settings")
    if settings is not None:
        settings.reset()
    catalog = app.extensions.get("recsys.catalog")
    if catalog is not None:
        catalog.after_fork()  # keeps the master's snapshot (recsys.serving.catalog.preload)
