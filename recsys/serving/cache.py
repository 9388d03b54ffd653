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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple
from urllib.parse import quote, unquote, urlsplit

from flask import Flask, current_app

from recsys.config import get_config
from recsys.ops.lifecycle import on_after_fork
from recsys.serving.nearcache import NearCache, messages

log = logging.getLogger(__name__)

LOCK_TTL_MS = 2000
POLL_MS = 10
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
# First bytes of every cache entry (format version): entries of another format are misses.
ENTRY_TAG = b"r2:"


class LocalBackend:
    """A bounded LRU with per-entry TTL, standing in for Redis in a single process."""

    def __init__(self, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self.max_entries = max(1, int(max_entries))
        self.clock = clock
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def _get(self, key: str, now: float) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        expires, value = item
        if expires <= now:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def mget(self, keys: list[str]) -> list[bytes | None]:
        now = self.clock()
        with self._lock:
            return [self._get(k, now) for k in keys]

    def set(self, key: str, value: bytes, ttl_s: float) -> None:
        with self._lock:
            self._data[key] = (self.clock() + ttl_s, value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def set_many(self, items: dict[str, bytes], ttl_s: float, publish: object = None) -> None:
        # ``publish`` (near-cache invalidations) never applies in one process.
        for k, v in items.items():
            self.set(k, v, ttl_s)

    def set_nx(self, key: str, value: bytes, ttl_ms: int) -> bool:
        now = self.clock()
        with self._lock:
            if self._get(key, now) is not None:
                return False
        self.set(key, value, ttl_ms / 1000.0)
        return True

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def store(self, key: str, value: bytes | None, ttl_s: float, unlock: str | None) -> None:
        """Set ``key`` (unless ``value`` is None) and delete ``unlock`` (unless None)."""
        if value is not None:
            self.set(key, value, ttl_s)
        if unlock is not None:
            self.delete(unlock)

    def __len__(self) -> int:
        return len(self._data)


class _RedisWrites:
    """Writes shared by the plain and the cluster backend (``self.client`` is either)."""

    client: Any

    def set(self, key: str, value: bytes, ttl_s: float) -> None:
        self.client.set(key, value, ex=max(1, int(ttl_s)))

    def set_many(
        self, items: dict[str, bytes], ttl_s: float, publish: tuple[str, list[bytes]] | None = None
    ) -> None:
        """Set every key; then, in the same round trip, publish each message of
        ``publish = (channel, messages)`` (the near caches' invalidations)."""
        # Non-transactional: a cluster client groups the keys (many slots) by node.
        pipe = self.client.pipeline(transaction=False)
        for k, v in items.items():
            pipe.set(k, v, ex=max(1, int(ttl_s)))
        if publish is not None:
            for message in publish[1]:
                pipe.publish(publish[0], message)
        pipe.execute()


class RedisBackend(_RedisWrites):
    """redis-py, with one raw connection per thread for the request path's commands.

    The client API checks a pooled connection out (a lock and a ``can_read`` poll syscall) and
    back in, and wraps every command in retry machinery; for the one read of a cache hit this
    was about two thirds of its Redis client CPU, so each thread keeps its own connection and
    speaks to it directly: the ``MGET`` of every lookup, and a miss's stampede lock and its
    store-and-unlock. Other writes (invalidation) use the pooled client.
    """

    def __init__(self, url: str, timeout_s: float = 0.25):
        import redis

        self.url = url
        self.timeout_s = timeout_s
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._local = threading.local()

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # Connects lazily on the first command, with the client's URL, db and timeouts.
            conn = self._local.conn = self.client.connection_pool.make_connection()
        return conn

    def _run(self, *commands: tuple) -> list:
        """``commands`` on this thread's own connection in one round trip: their replies."""
        conn = self._conn()
        try:
            if len(commands) == 1:
                conn.send_command(*commands[0])
                return [conn.read_response()]
            conn.send_packed_command(conn.pack_commands(commands))
            return [conn.read_response() for _ in commands]
        except BaseException:
            # A half-read reply would poison the next call: drop the connection (the next
            # call reconnects; the caller backs off on errors).
            conn.disconnect()
            raise

    def mget(self, keys: list[str]) -> list[bytes | None]:
        return self._run(("MGET", *keys))[0]

    def set_nx(self, key: str, value: bytes, ttl_ms: int) -> bool:
        return self._run(("SET", key, value, "NX", "PX", int(ttl_ms)))[0] is not None

    def delete(self, key: str) -> None:
        self.client.delete(key)

    def store(self, key: str, value: bytes | None, ttl_s: float, unlock: str | None) -> None:
        """Set ``key`` (unless ``value`` is None) and delete ``unlock`` (unless None)."""
        commands: list[tuple] = []
        if value is not None:
            commands.append(("SET", key, value, "EX", max(1, int(ttl_s))))
        if unlock is not None:
            commands.append(("DEL", unlock))
        if commands:
            self._run(*commands)


CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}


def cluster_nodes(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """``redis+cluster://[user:password@]host:port[,host:port...][/0]``: the startup nodes and
    client options (``rediss+cluster://`` for TLS). Raises ValueError with the reason."""
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"not a Redis Cluster URL (redis+cluster://host:port,...): {url!r}")
    creds, _, hosts = parts.netloc.rpartition("@")
    nodes = []
    for hp in filter(None, hosts.split(",")):
        host, sep, port = hp.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"Redis Cluster node {hp!r} is not host:port")
        nodes.append((host.strip("[]"), int(port)))
    if not nodes:
        raise ValueError(f"Redis Cluster URL names no node: {url!r}")
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError("Redis Cluster has only database 0; drop the /N from the URL")
    opts: dict[str, Any] = {"ssl": CLUSTER_SCHEMES[parts.scheme]}
    if creds:
        user, sep, password = creds.partition(":")
        if sep:
            if user:
                opts["username"] = unquote(user)
            opts["password"] = unquote(password)
        else:
            opts["password"] = unquote(user)
    return nodes, opts


def is_cluster_url(url: str | None) -> bool:
    return bool(url) and urlsplit(url).scheme in CLUSTER_SCHEMES


class RedisClusterBackend(_RedisWrites):
    """redis-py's ``RedisCluster``: commands go to the node owning their keys' slot.

    Every multi-key command here names keys of one user, which share a hash tag and so a slot:
    ``MGET`` of token and entry, and ``SET`` + ``DEL`` of a miss's store-and-unlock, sent as a
    two-command pipeline to that one node (one round trip, as on a single Redis). The client is
    made on first use: its constructor asks a node for the slot map, and a cluster that is down
    when a worker starts must mean uncached answers, not a worker that cannot start.
    """

    def __init__(self, url: str, timeout_s: float = 0.25):
        self.url = url
        self.timeout_s = timeout_s
        self.nodes, self._opts = cluster_nodes(url)
        self._client = None
        self._lock = threading.Lock()

    @property
    def client(self):
        if self._client is None:
            from redis.backoff import NoBackoff
            from redis.cluster import ClusterNode, RedisCluster
            from redis.retry import Retry

            with self._lock:
                if self._client is None:
                    self._client = RedisCluster(
                        startup_nodes=[ClusterNode(h, p) for h, p in self.nodes],
                        socket_timeout=self.timeout_s,
                        socket_connect_timeout=self.timeout_s,
                        # The cache is optional: one failed try means "serve uncached" (the
                        # caller backs off), not seconds of retries inside a request.
                        retry=Retry(NoBackoff(), 0),
                        **self._opts,
                    )
        return self._client

    def mget(self, keys: list[str]) -> list[bytes | None]:
        if len(keys) == 1:
            return [self.client.get(keys[0])]
        return self.client.mget(keys)  # one slot (one user's keys): refused otherwise

    def set_nx(self, key: str, value: bytes, ttl_ms: int) -> bool:
        return self.client.set(key, value, nx=True, px=int(ttl_ms)) is not None

    def delete(self, key: str) -> None:
        self.client.delete(key)

    def store(self, key: str, value: bytes | None, ttl_s: float, unlock: str | None) -> None:
        """Set ``key`` (unless ``value`` is None) and delete ``unlock`` (unless None)."""
        if value is not None and unlock is not None:
            pipe = self.client.pipeline(transaction=False)
            pipe.set(key, value, ex=max(1, int(ttl_s)))
            pipe.delete(unlock)
            pipe.execute()
        elif value is not None:
            self.set(key, value, ttl_s)
        elif unlock is not None:
            self.delete(unlock)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


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


class ResultCache:
    """The per-process cache front: versioned keys, stale checks, stampede lock, outage mode."""

    def __init__(self, app: Flask):
        cfg = get_config(app)
        self.prefix = cfg.redis_prefix
        self.ttl = float(cfg.cache_ttl)
        self.lock_wait_ms = cfg.cache_lock_wait_ms
        self.lock_polls = 0  # times a request looked again while another held the entry's lock
        self.url = cfg.redis_url or None
        self.local_size = cfg.local_cache_size
        # The per-process copy of hits (recsys.serving.nearcache): seconds, never beyond CACHE_TTL.
        self.near_ttl = min(cfg.near_cache_ttl or 0.0, self.ttl)
        self.near_size = cfg.near_cache_size
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
        return NearCache(pool.make_connection, channel, self.near_ttl, self.near_size)

    @property
    def shared(self) -> bool:
        """True when the cache is shared between processes (Redis or Redis Cluster)."""
        return not isinstance(self.backend, LocalBackend)

    def after_fork(self) -> None:
        """A worker must not share the master's Redis sockets: new client, fresh state."""
        self._pid = os.getpid()
        self._down_until = 0.0
        self._backoff = BACKOFF_START_S
        # The parent's sockets are left alone (closing them would cut the parent's too).
        self.backend = self._make_backend()
        self.near = self._make_near()

    # -- keys -------------------------------------------------------------------------------
    def key(self, *parts: str) -> str:
        """The one place keys are built: ``<prefix>:<part>:...`` with parts URL-quoted."""
        return ":".join([self.prefix, *(_quote(str(p)) for p in parts)])

    def user_key(self, kind: str, user_id: str, *rest: str) -> str:
        """``<prefix>:<kind>:{<user>}:<rest>...``: the braces are the user's hash tag, so on a
        Redis Cluster all of one user's keys live in one slot (quoting never leaves a brace in
        an id, and an empty id is spelt ``%``, which quoting never produces)."""
        return (
            self.key(kind)
            + ":{"
            + (_quote(str(user_id)) or "%")
            + "}"
            + "".join(":" + _quote(str(p)) for p in rest)
        )

    def result_key(self, user_id: str, context: dict[str, Any]) -> str:
        digest = hashlib.sha256(
            json.dumps(context, sort_keys=True, default=str).encode()
        ).hexdigest()[:24]
        return self.user_key("rec", user_id, digest)

    def token_key(self, user_id: str) -> str:
        return self.user_key("uver", user_id)

    # -- availability -----------------------------------------------------------------------
    @property
    def available(self) -> bool:
        return self.disabled is None and time.monotonic() >= self._down_until

    def disable(self, reason: str) -> None:
        """Serve everything uncached from now on in this process (logged once).

        For an in-process cache under several gunicorn workers: each worker would keep its own
        copy, and an event handled by one worker could not make another's copy stale."""
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
    def get_or_compute_raw(
        self,
        user_id: str,
        context: dict[str, Any],
        compute: Callable[[], tuple[bytes, bool]],
        peeked: Peek | None = None,
    ) -> tuple[bytes, bool]:
        """(payload, cached). On a miss ``compute() -> (payload, store)`` runs and the payload
        is stored when ``store`` is true (degraded answers are not pinned for a whole TTL).

        ``peeked``: what ``peek`` read for this request a moment ago (the fast path's miss);
        used, key included, instead of a second ``MGET`` when it is for the same user and an
        equal context."""
        from recsys.ops import metrics

        tkey = self.token_key(user_id)
        if peeked is None or peeked.user_id != user_id or peeked.context != context:
            peeked = self._read(user_id, context)
        if peeked is None:
            metrics.CACHE_MISSES.inc()
            return compute()[0], False
        rkey, token, raw = peeked.key, peeked.token, peeked.raw
        hit = self._payload(raw, token)
        if hit is not None:
            metrics.CACHE_HITS.inc()
            return hit, True
        metrics.CACHE_MISSES.inc()
        lock = rkey + ":lock"
        got, acquired = self._call(
            lambda: self.backend.set_nx(lock, uuid.uuid4().hex.encode(), LOCK_TTL_MS), False
        )
        if got and not acquired:
            # Someone else is computing this entry: wait briefly for it.
            deadline = time.monotonic() + self.lock_wait_ms / 1000.0
            while time.monotonic() < deadline:
                time.sleep(POLL_MS / 1000.0)
                self.lock_polls += 1
                ok, vals = self._call(lambda: self.backend.mget([tkey, rkey]))
                if not ok:
                    break
                hit = self._payload(vals[1], vals[0])
                if hit is not None:
                    return hit, True
        try:
            payload, store = compute()
        except BaseException:
            if acquired:  # let the next request compute at once instead of waiting for us
                self._call(lambda: self.backend.store(rkey, None, self.ttl, lock))
            raise
        entry = b"".join((ENTRY_TAG, _bytes(token), b"\n", payload)) if store else None
        if entry is not None or acquired:
            # Store and unlock in one round trip.
            # Not copied into the near cache: a list is kept there from its first read out of
            # Redis, so one-off lists (a unique exclude, a deep page) never take its room.
            self._call(
                lambda: self.backend.store(rkey, entry, self.ttl, lock if acquired else None)
            )
        return payload, False

    def peek(self, user_id: str, context: dict[str, Any]) -> Peek | None:
        """The user's token and the entry (one ``MGET``, or the near cache): what it read (None
        when the cache is unavailable); ``.payload`` is the cached payload if present and
        fresh. Counts nothing and never computes."""
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
        """The cached payload if present and fresh; never computes."""
        p = self.peek(user_id, context)
        return None if p is None else p.payload

    def get_or_compute(
        self,
        user_id: str,
        context: dict[str, Any],
        compute: Callable[[], dict[str, Any]],
        store_if: Callable[[dict[str, Any]], bool] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """``get_or_compute_raw`` for JSON-able dicts: (value, cached)."""
        computed: list[dict[str, Any]] = []

        def raw() -> tuple[bytes, bool]:
            value = compute()
            computed.append(value)
            body = json.dumps(value, separators=(",", ":")).encode()
            return body, store_if is None or bool(store_if(value))

        payload, cached = self.get_or_compute_raw(user_id, context, raw)
        return (json.loads(payload), True) if cached else (computed[0], False)

    def peek_dict(self, user_id: str, context: dict[str, Any]) -> dict[str, Any] | None:
        """The cached dict if present and fresh; never computes."""
        raw = self.peek_raw(user_id, context)
        return None if raw is None else json.loads(raw)

    @staticmethod
    def _payload(raw: bytes | None, token: bytes | None) -> bytes | None:
        if raw is None or not raw.startswith(ENTRY_TAG):
            return None
        head, sep, payload = raw.partition(b"\n")
        if not sep or head[len(ENTRY_TAG) :] != _bytes(token):
            return None  # the user has had an event since (or a foreign/old entry)
        return payload

    def invalidate_users(self, user_ids: Iterable[str]) -> bool:
        """Give each user a new history token (their cached lists become stale).

        Returns False when the cache could not be written (the caller bumps the cache epoch).
        """
        users = sorted({str(u) for u in user_ids})
        if not users or self.disabled is not None:
            return True  # nothing cached here, so nothing can be stale
        items = {self.token_key(u): uuid.uuid4().hex.encode() for u in users}
        channel = self.near_channel
        publish = (channel, messages(users)) if channel is not None else None
        # Tokens outlive the results they guard, so a result never meets an expired token.
        ok, _ = self._call(lambda: self.backend.set_many(items, self.ttl * 2 + 60, publish))
        if self.near is not None:
            self.near.drop(users)
        return ok

    def ping(self) -> bool:
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
    app.extensions["recsys.cache"] = ResultCache(app)


def get_cache(app: Flask | None = None) -> ResultCache:
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
        catalog.reset()
