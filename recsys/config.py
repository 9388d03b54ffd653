"""Configuration defaults.

Every key can be overridden from the environment with the ``RECSYS_`` prefix
(``RECSYS_DATABASE_URL`` sets ``DATABASE_URL``) or by the mapping given to ``create_app``.
Values read from the environment are parsed as JSON when they look like JSON, so
``RECSYS_CACHE_TTL=60`` is an int, except the keys in ``STRING_KEYS`` (secrets and URLs), which
are always taken as the exact string given: ``RECSYS_ADMIN_TOKEN=0`` is the token ``"0"``, not a
falsy number that would disable admin. The README documents each key.
"""

from __future__ import annotations

import os

DEFAULTS: dict[str, object] = {
    # SQL store. None means a SQLite file in the instance folder (embedded default).
    "DATABASE_URL": None,
    # Redis. None means a bounded in-process cache (embedded default, one process only).
    "REDIS_URL": None,
    # Where model versions live. None means <instance>/models.
    "MODEL_DIR": None,
    # Origins a browser may call the API from (a JSON list; ["*"] for any). None: no CORS.
    "CORS_ORIGINS": None,
    # Logging: level, and "json" (one JSON object a line, python-json-logger) or "text". Every
    # line carries the request's id (X-Request-ID).
    "LOG_LEVEL": "INFO",
    "LOG_FORMAT": "json",
    # One access-log line per request (method, path, status, latency, endpoint, route, cached,
    # degraded) on the "recsys.access" logger.
    "ACCESS_LOG": True,
    # Bearer token for /v1/admin. None disables admin entirely (it is never open).
    "ADMIN_TOKEN": None,
    # Namespace for every Redis key, so several deployments can share one Redis.
    "REDIS_PREFIX": "recsys",
    # Seconds a per-user result stays cached.
    "CACHE_TTL": 300,
    # Entries of the in-process cache used when REDIS_URL is unset.
    "LOCAL_CACHE_SIZE": 10_000,
    # Near cache (serving/cache/near.py): seconds each worker keeps a copy of the lists it has
    # read from Redis, kept fresh by Redis pub/sub, so a repeat request skips
    # the Redis round trip. 0: off (every hit reads the user's token from Redis). Only with
    # one Redis server (redis://); never longer than CACHE_TTL.
    "NEAR_CACHE_TTL": 0,
    # Entries of each worker's near cache (least recently used dropped first).
    "NEAR_CACHE_SIZE": 10_000,
    # Default per-request deadline in milliseconds.
    "DEADLINE_MS": 250,
    # Run a request's strategies in parallel in a per-process thread pool (True) or one after
    # another in the request thread (False). Measured under gunicorn on 2 cores (README,
    # "Model runtime"): the pool's hand-offs cost more CPU than the overlap saves, so False.
    # True lets a deadline abandon a strategy that is still running.
    "STRATEGY_PARALLEL": False,
    # Requests of one worker process that score (strategies, blend, rules) at once; the others
    # wait their turn (high priority first) for at most their deadline, then get popularity,
    # marked degraded. 0: no limit. The history lookup and the cache write are outside the
    # turn. None (auto): 1 when CUDA is absent, 0 with a GPU, where scoring waits on the
    # device without the GIL and concurrent requests should meet in the deep model's
    # micro-batcher. Measured under gunicorn on 2 cores (docs/benchmarks.md, "Serving benchmark").
    "SCORING_SLOTS": None,
    # With SCORING_SLOTS, the request that gets a turn also scores up to this many requests in
    # all that wait for one and would be scored alike, in one pass of every model (1: each
    # request alone). Measured under gunicorn on 2 cores (docs/benchmarks.md, "Serving benchmark").
    "SCORING_BATCH_MAX": 8,
    # Retention: versions kept per strategy after each `recsys train` (newest first; the
    # active version, the rollback target and the serving profile's models always stay).
    # None: keep every version. Also the default of `recsys models prune --keep`.
    "MODEL_KEEP_VERSIONS": None,
    # Per-process memory budget for loaded models, in MiB.
    "MODEL_MEMORY_BUDGET_MB": 768,
    # Micro-batching of the deep model.
    "BATCH_MAX_SIZE": 32,
    "BATCH_MAX_DELAY_MS": 2.0,
    # Batches of the deep model in a forward pass at once per worker (runner threads).
    "BATCH_CONCURRENCY": 2,
    # A deep-model request that finds the batcher idle (nothing queued or running) is scored
    # in its own thread instead of being handed to a runner thread and back.
    "BATCH_INLINE_WHEN_IDLE": True,
    # Precision the deep model serves in when it runs on the CPU, derived at load from the
    # saved fp32 weights: "int8" (dynamic quantization of the layers after the first; same
    # nDCG@10 on ml-100k and Online Retail, ~0.4 ms less per request), "fp32", or "" for
    # whatever the model was trained with. On CUDA the model serves as trained.
    "DEEP_CPU_PRECISION": "int8",
    # Largest list accepted by POST /v1/events.
    "EVENTS_MAX_BATCH": 1000,
    # Load active models when the app starts (True) or on first use (False).
    "PRELOAD_MODELS": True,
    # Seconds between checks of the shared configuration version in SQL.
    "CONFIG_POLL_SECONDS": 0.5,
    # Answer cache hits of GET /v1/users/<id>/recommendations in WSGI middleware in front of
    # Flask (recsys.web.fastpath): plain valid queries only, anything else goes through Flask.
    # Read per request, so it can be switched off at run time.
    "FAST_CACHE_PATH": True,
    # ... and compute that middleware's misses there too (the same function the view calls),
    # instead of handing them to Flask. Read per request; needs FAST_CACHE_PATH.
    "FAST_MISS_PATH": True,
    # -- hardening (README, "Reliability") ------------------------------------------------------
    # Largest request body in bytes (Content-Length or streamed/chunked), refused with 413
    # before it is read.
    "MAX_BODY_BYTES": 1 << 20,
    # API keys for writes (and, with API_KEYS_FOR_READS, reads): "key=scope,scope;key2=scope"
    # or, from create_app, a mapping {key: [scopes]}. Scopes: events:write, catalog:write, read.
    # None: writes are open (development only; see README).
    "API_KEYS": None,
    # Reads (recommendations, similar, popular) need a key with the "read" scope too.
    "API_KEYS_FOR_READS": False,
    # Unknown item ids in events create available stub items (True) or refuse the batch (422).
    "EVENTS_CREATE_ITEMS": True,
    # Most new items one POST /v1/events may create (more: the batch is refused, 422).
    "EVENTS_MAX_NEW_ITEMS": 100,
    # SQL timeouts. Connecting (libpq connect_timeout), each statement (server-side
    # statement_timeout, and client-side: a socket silent that long is cut, so a database that
    # hangs rather than refuses cannot hold a thread), lock waits, and waiting for a pooled
    # connection.
    "DB_CONNECT_TIMEOUT_S": 2.0,
    "DB_STATEMENT_TIMEOUT_MS": 3000,
    "DB_LOCK_TIMEOUT_MS": 2000,
    "DB_POOL_TIMEOUT_S": 2.0,
    # Circuit breaker over the SQL store: after DB_BREAKER_FAILURES consecutive connection
    # failures or timeouts, SQL is not tried for DB_BREAKER_RESET_S; then one request probes.
    # The CLI (imports, training, tuning, evaluation: long batch statements) uses these instead
    # of the request-path timeouts above; 0 means no limit.
    "CLI_DB_STATEMENT_TIMEOUT_MS": 0,
    "CLI_DB_LOCK_TIMEOUT_MS": 0,
    "DB_BREAKER_FAILURES": 1,
    "DB_BREAKER_RESET_S": 5.0,
}

# Taken from the environment as plain strings, never parsed as JSON (see the module docstring).
STRING_KEYS = ("ADMIN_TOKEN", "API_KEYS", "DATABASE_URL", "REDIS_URL", "REDIS_PREFIX")


def instance_defaults(instance_path: str) -> dict[str, str]:
    """Defaults that depend on the instance folder."""
    return {
        "DATABASE_URL": "sqlite:///" + os.path.join(instance_path, "recsys.db"),
        "MODEL_DIR": os.path.join(instance_path, "models"),
    }
