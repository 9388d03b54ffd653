"""The per-user result cache and what it is built on.

* ``results``: ``ResultCache``, versioned keys, the history token, stale checks, the stampede
  lock, outage mode; ``lookup`` / ``store`` for the pipeline.
* ``backends``: the in-process LRU, Redis and Redis Cluster backends.
* ``compute``: compute-on-miss helpers ``ResultCache`` inherits (dicts, raw payloads).
* ``near``: the opt-in per-worker copy of hits in front of Redis, kept fresh by pub/sub.
* ``histories``: users' histories kept in Redis beside their lists (incremental user state).

The names below are the package's API.
"""

from recsys.serving.cache.backends import (
    LocalBackend,
    RedisBackend,
    RedisClusterBackend,
    cluster_nodes,
    is_cluster_url,
)
from recsys.serving.cache.results import Lookup, Peek, ResultCache, get_cache, init_app

__all__ = [
    "LocalBackend",
    "Lookup",
    "Peek",
    "RedisBackend",
    "RedisClusterBackend",
    "ResultCache",
    "cluster_nodes",
    "get_cache",
    "init_app",
    "is_cluster_url",
]
