"""Where cached bytes live: a bounded in-process LRU (the embedded default), Redis, or Redis
Cluster. Each backend offers the same few calls the result cache needs (``mget``, ``set``,
``set_many``, ``set_nx``, ``delete``, and ``store``: store-and-unlock in one round trip).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from recsys.serving.cache.histories import APPEND


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
        """The values of ``keys`` (expired or missing: None), each hit made most recently used.

        Parameters
        ----------
        keys : list of str
            The keys to read.

        Returns
        -------
        list of bytes or None
            One value per key, in order.
        """
        now = self.clock()
        with self._lock:
            return [self._get(k, now) for k in keys]

    def set(self, key: str, value: bytes, ttl_s: float) -> None:
        """Set ``key`` for ``ttl_s`` seconds, evicting the least recently used entries over
        ``max_entries``.

        Parameters
        ----------
        key : str
            The key.
        value : bytes
            The value.
        ttl_s : float
            Time to live, in seconds.

        Returns
        -------
        None
        """
        with self._lock:
            self._data[key] = (self.clock() + ttl_s, value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def set_many(
        self,
        items: dict[str, bytes],
        ttl_s: float,
        publish: object = None,
        get: list[str] | None = None,
        appends: object = None,
    ) -> list[bytes | None]:
        # ``publish`` (near-cache invalidations) and ``appends`` (histories kept in Redis)
        # never apply in one process.
        """``set`` each of ``items`` with the same time to live, then read the keys ``get``.

        Parameters
        ----------
        items : dict of str to bytes
            Keys and values.
        ttl_s : float
            Time to live, in seconds.
        publish : object, optional
            The near-cache invalidation the Redis backends publish; ignored here (one process).
        get : list of str, optional
            Keys read after the writes (the Redis backends: in the same round trip).
        appends : object, optional
            The kept-history appends the Redis backends run; ignored here (one process).

        Returns
        -------
        list of bytes or None
            The values of ``get``, in order (empty without ``get``).
        """
        for k, v in items.items():
            self.set(k, v, ttl_s)
        return self.mget(get) if get else []

    def set_nx_get(self, key: str, value: bytes, ttl_ms: int, get: str) -> tuple[bool, Any]:
        """``set_nx``, then read ``get`` (the Redis backends: in one round trip).

        Parameters
        ----------
        key, value, ttl_ms
            As for ``set_nx``.
        get : str
            The key read.

        Returns
        -------
        tuple of (bool, bytes or None)
            Whether the lock was taken, and the value of ``get``.
        """
        return self.set_nx(key, value, ttl_ms), self.mget([get])[0]

    def set_nx(self, key: str, value: bytes, ttl_ms: int) -> bool:
        """Set ``key`` only if it holds no live value (the stampede lock).

        Parameters
        ----------
        key : str
            The key.
        value : bytes
            The value.
        ttl_ms : int
            Time to live, in milliseconds.

        Returns
        -------
        bool
            True when set; False when the key already held a live value.
        """
        now = self.clock()
        with self._lock:
            if self._get(key, now) is not None:
                return False
        self.set(key, value, ttl_ms / 1000.0)
        return True

    def delete(self, key: str) -> None:
        """Remove ``key`` (nothing happens when it is missing).

        Parameters
        ----------
        key : str
            The key.

        Returns
        -------
        None
        """
        with self._lock:
            self._data.pop(key, None)

    def store(
        self,
        key: str,
        value: bytes | None,
        ttl_s: float,
        unlock: str | None,
        also: dict[str, bytes] | None = None,
    ) -> None:
        """Set ``key`` (unless ``value`` is None) and ``also``, and delete ``unlock`` (unless
        None).

        Parameters
        ----------
        key : str
            The entry's key.
        value : bytes or None
            The entry; None: set nothing.
        ttl_s : float
            The entry's time to live, in seconds.
        unlock : str or None
            The stampede lock's key to delete; None: none held.
        also : dict of str to bytes, optional
            Further keys of the same user set with the same time to live (the Redis backends:
            in the same round trip).

        Returns
        -------
        None
        """
        if value is not None:
            self.set(key, value, ttl_s)
        for k, v in (also or {}).items():
            self.set(k, v, ttl_s)
        if unlock is not None:
            self.delete(unlock)

    def __len__(self) -> int:
        return len(self._data)


class _RedisWrites:
    """Writes shared by the plain and the cluster backend (``self.client`` is either)."""

    client: Any
    # Whether EVAL can go in a pipeline (redis-py's cluster pipeline refuses it).
    eval_in_pipeline = True

    def set(self, key: str, value: bytes, ttl_s: float) -> None:
        self.client.set(key, value, ex=max(1, int(ttl_s)))

    def set_many(
        self,
        items: dict[str, bytes],
        ttl_s: float,
        publish: tuple[str, list[bytes]] | None = None,
        get: list[str] | None = None,
        appends: dict[str, tuple[str, list]] | None = None,
    ) -> list[bytes | None]:
        """Set every key; then, in the same round trip, publish each message of
        ``publish = (channel, messages)`` (the near caches' invalidations) and read the keys
        ``get`` (their values are returned, in order). A key of ``appends`` (a history token,
        ``key -> (history key, arguments)``) is set by ``histories.APPEND`` instead, which
        also brings that history up to date or drops it."""
        # Non-transactional: a cluster client groups the keys (many slots) by node.
        pipe = self.client.pipeline(transaction=False)
        ex = max(1, int(ttl_s))
        later = []
        for k, v in items.items():
            extra = appends.get(k) if appends else None
            if extra is None:
                pipe.set(k, v, ex=ex)
            elif self.eval_in_pipeline:  # one user's two keys: one slot
                pipe.eval(APPEND, 2, k, extra[0], v, ex, *extra[1])
            else:  # a cluster: the token now, the script on the user's node after
                pipe.set(k, v, ex=ex)
                later.append((APPEND, 2, k, extra[0], v, ex, *extra[1]))
        if publish is not None:
            for message in publish[1]:
                pipe.publish(publish[0], message)
        for k in get or ():
            pipe.get(k)
        out = pipe.execute()
        for args in later:  # sets the token again, as it is now
            self.client.eval(*args)
        return out[len(out) - len(get) :] if get else []


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
        """See ``LocalBackend.mget``: one ``MGET`` on this thread's connection."""
        return self._run(("MGET", *keys))[0]

    def set_nx(self, key: str, value: bytes, ttl_ms: int) -> bool:
        """See ``LocalBackend.set_nx``: ``SET key value NX PX ttl_ms``."""
        return self._run(("SET", key, value, "NX", "PX", int(ttl_ms)))[0] is not None

    def set_nx_get(self, key: str, value: bytes, ttl_ms: int, get: str) -> tuple[bool, Any]:
        """See ``LocalBackend.set_nx_get``: ``SET NX`` and ``GET`` in one round trip."""
        got = self._run(("SET", key, value, "NX", "PX", int(ttl_ms)), ("GET", get))
        return got[0] is not None, got[1]

    def delete(self, key: str) -> None:
        """See ``LocalBackend.delete``: ``DEL key``."""
        self.client.delete(key)

    def store(
        self,
        key: str,
        value: bytes | None,
        ttl_s: float,
        unlock: str | None,
        also: dict[str, bytes] | None = None,
    ) -> None:
        """See ``LocalBackend.store``: the SETs (whole seconds, at least 1) and ``DEL`` in
        one round trip.
        """
        commands: list[tuple] = []
        ex = max(1, int(ttl_s))
        if value is not None:
            commands.append(("SET", key, value, "EX", ex))
        for k, v in (also or {}).items():
            commands.append(("SET", k, v, "EX", ex))
        if unlock is not None:
            commands.append(("DEL", unlock))
        if commands:
            self._run(*commands)


CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}


def cluster_nodes(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The startup nodes and client options of a Redis Cluster URL.

    Parameters
    ----------
    url : str
        ``redis+cluster://[user:password@]host:port[,host:port...][/0]``
        (``rediss+cluster://`` for TLS).

    Returns
    -------
    tuple of (list of (str, int), dict)
        ``[(host, port), ...]`` and the ``RedisCluster`` keyword options (``ssl``, and
        ``username`` / ``password`` when given).

    Raises
    ------
    ValueError
        Not a cluster URL, a node that is not ``host:port``, no node, or a database other
        than 0 (the message says which).
    """
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
    """Whether ``url`` names a Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``).

    Parameters
    ----------
    url : str or None
        A cache URL; None or empty: no.

    Returns
    -------
    bool
        True for a cluster URL.
    """
    return bool(url) and urlsplit(url).scheme in CLUSTER_SCHEMES


class RedisClusterBackend(_RedisWrites):
    """redis-py's ``RedisCluster``: commands go to the node owning their keys' slot.

    Every multi-key command here names keys of one user, which share a hash tag and so a slot:
    ``MGET`` of token and entry, and ``SET`` + ``DEL`` of a miss's store-and-unlock, sent as a
    two-command pipeline to that one node (one round trip, as on a single Redis). The client is
    made on first use: its constructor asks a node for the slot map, and a cluster that is down
    when a worker starts must mean uncached answers, not a worker that cannot start.
    """

    eval_in_pipeline = False

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
        """See ``LocalBackend.mget``: the keys must share a slot (one user's keys do)."""
        if len(keys) == 1:
            return [self.client.get(keys[0])]
        return self.client.mget(keys)  # one slot (one user's keys): refused otherwise

    def set_nx(self, key: str, value: bytes, ttl_ms: int) -> bool:
        """See ``LocalBackend.set_nx``: ``SET key value NX PX ttl_ms`` on the key's node."""
        return self.client.set(key, value, nx=True, px=int(ttl_ms)) is not None

    def set_nx_get(self, key: str, value: bytes, ttl_ms: int, get: str) -> tuple[bool, Any]:
        """See ``LocalBackend.set_nx_get``: one pipeline to the user's node (one slot)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(key, value, nx=True, px=int(ttl_ms))
        pipe.get(get)
        acquired, got = pipe.execute()
        return acquired is not None and acquired is not False, got

    def delete(self, key: str) -> None:
        """See ``LocalBackend.delete``: ``DEL key`` on the key's node."""
        self.client.delete(key)

    def store(
        self,
        key: str,
        value: bytes | None,
        ttl_s: float,
        unlock: str | None,
        also: dict[str, bytes] | None = None,
    ) -> None:
        """See ``LocalBackend.store``: the SETs and ``DEL`` as one pipeline to the user's
        node (every key is of one user: one slot).
        """
        writes = ([(key, value)] if value is not None else []) + list((also or {}).items())
        if len(writes) + (unlock is not None) > 1:
            pipe = self.client.pipeline(transaction=False)
            for k, v in writes:
                pipe.set(k, v, ex=max(1, int(ttl_s)))
            if unlock is not None:
                pipe.delete(unlock)
            pipe.execute()
        elif writes:
            self.set(*writes[0], ttl_s)
        elif unlock is not None:
            self.delete(unlock)

    def close(self) -> None:
        """Close the cluster client, if one was made.

        Returns
        -------
        None
        """
        if self._client is not None:
            self._client.close()
