"""The service's configuration: one typed ``Settings`` object per app.

Each field is one key (``CACHE_TTL``), with its type, default, bounds and description; the
field of key ``CACHE_TTL`` is ``cache_ttl``. ``docs/configuration.md`` is generated from this
declaration (``scripts/gen_config_docs.py``).

A key is set from the environment with the ``RECSYS_`` prefix (``RECSYS_CACHE_TTL=60``), then
by the mapping given to ``create_app`` (``{"CACHE_TTL": 60}``), both validated the same way:
a bad value stops the start with a ``ConfigError`` naming the variable, e.g.
``RECSYS_CACHE_TTL: Input should be a valid integer, ... (got 'abc')``. Environment values are
parsed as JSON when they look like JSON (``60`` is an int, ``["a"]`` a list, ``true`` a
boolean), except for the fields that take a string (secrets, URLs, paths, names), which are
always the exact string given: ``RECSYS_ADMIN_TOKEN=0`` is the token ``"0"``, not a falsy
number that would disable admin.

``create_app`` builds the settings once (``init_config``) and every reader takes them from
``get_config(app)``. They are frozen; a change at run time (tests, an operator's shell) goes
through ``update_config(app, KEY=value)``, validated like a start. The values are mirrored into
``app.config`` for Flask and its extensions; writing a key of ours there after the start is an
error, never a change silently ignored.

Longer than our usual module: it is the declaration of every key with its description, the
single source of ``docs/configuration.md``; split, the reference would be scattered.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

if TYPE_CHECKING:
    from flask import Flask

ENV_PREFIX = "RECSYS_"
EXTENSION = "recsys.config"


class ConfigError(ValueError):
    """A configuration value that does not validate, or a key that does not exist; the message
    names the variable (``RECSYS_CACHE_TTL: ...``), one line per problem."""


def _takes_string(field: FieldInfo) -> bool:
    """Whether ``field`` accepts a ``str`` (its environment value is then taken as given)."""
    annotation = field.annotation
    return annotation is str or str in getattr(annotation, "__args__", ())


class _EnvSource(EnvSettingsSource):
    """``RECSYS_*`` variables: exact strings for string fields, JSON (or else the string) for
    the others, as ``Flask.config.from_prefixed_env`` parsed them."""

    def prepare_field_value(
        self, field_name: str, field: FieldInfo, value: Any, value_is_complex: bool
    ) -> Any:
        """The value of ``field`` from its raw environment string.

        Parameters
        ----------
        field_name, field, value, value_is_complex
            As pydantic-settings passes them; ``value`` is the raw string or None (unset).

        Returns
        -------
        Any
            None when unset; the string for string fields; else its JSON value, or the string
            when it is not JSON (validation then names the variable).
        """
        if value is None or _takes_string(field):
            return value
        try:
            return json.loads(value)
        except ValueError:
            return value


class Settings(BaseSettings):
    """Every configuration key of the service, typed and bounded (see the module docstring).

    Build it with ``load_settings`` (environment, then overrides, errors as ``ConfigError``);
    read an app's with ``get_config(app)``.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, case_sensitive=False, extra="forbid", frozen=True
    )

    # -- stores ---------------------------------------------------------------------------------
    database_url: str | None = Field(
        None,
        description="SQL store, a SQLAlchemy URL (postgresql+psycopg://user@host:5432/db). "
        "Unset: a SQLite file in the instance folder, <instance>/recsys.db (embedded default).",
    )
    redis_url: str | None = Field(
        None,
        description="Redis URL of the shared result cache (redis://host:6379/0, or a cluster: "
        "redis+cluster://h1:6379,h2:6379). Unset: a bounded in-process cache (embedded "
        "default, one process only).",
    )
    model_dir: str | None = Field(
        None,
        description="Model repository root (<strategy>/<version>/). Unset: <instance>/models.",
    )
    cors_origins: list[str] | None = Field(
        None,
        description='Origins a browser may call the API from (a JSON list; ["*"] for any; one '
        "origin may be given bare); preflights are answered, X-Request-ID, ETag and Server-Timing "
        "exposed. Unset: no CORS.",
    )
    # -- logging --------------------------------------------------------------------------------
    log_level: str = Field("INFO", description="Logging level of the root logger.")
    log_format: str = Field(
        "json",
        description='"json": one JSON object a line (python-json-logger: time, level, logger, '
        'message, request_id and the fields); "text": plain lines. Every line carries the '
        "request's id (X-Request-ID).",
    )
    access_log: bool = Field(
        True,
        description="One access-log line per request (method, path, status, latency, endpoint, "
        'route, cached, degraded) on the "recsys.access" logger.',
    )
    # -- admin and keys -------------------------------------------------------------------------
    admin_token: str | None = Field(
        None,
        description="Bearer token for /v1/admin (an exact string). Unset disables admin "
        "entirely (it is never open).",
    )
    api_keys: str | dict[str, list[str] | str] | None = Field(
        None,
        description='API keys for writes (and, with API_KEYS_FOR_READS, reads): "key=scope,'
        'scope;key2=scope" (entries separated by ";" or newlines; an exact string) or, from '
        "create_app, a mapping {key: [scopes]}. Scopes: events:write, catalog:write, read. "
        'Unset: writes are open (development only; set it in production, README "API keys").',
    )
    api_keys_for_reads: bool = Field(
        False,
        description='Reads (recommendations, similar, popular) need a key with the "read" '
        "scope too.",
    )
    # -- result cache ---------------------------------------------------------------------------
    redis_prefix: str = Field(
        "recsys",
        description="Namespace for every Redis key, so several deployments can share one Redis "
        "(empty: the default).",
    )
    cache_ttl: int = Field(300, ge=0, description="Seconds a per-user result stays cached.")
    cache_lock_wait_ms: float = Field(
        300,
        ge=0,
        description="Milliseconds a request that finds another computing the same entry (the "
        "stampede lock) polls for it before computing itself.",
    )
    local_cache_size: int = Field(
        10_000, ge=0, description="Entries of the in-process cache used when REDIS_URL is unset."
    )
    near_cache_ttl: float | None = Field(
        0,
        ge=0,
        description="Near cache (recsys.serving.nearcache): seconds each worker keeps a copy of "
        "the lists it has read from Redis, kept fresh by Redis pub/sub, so a repeat request "
        "skips the Redis round trip. 0 or unset: off (every hit reads the user's token from "
        "Redis). Only with one Redis server (redis://); never longer than CACHE_TTL.",
    )
    near_cache_size: int = Field(
        10_000,
        ge=0,
        description="Entries of each worker's near cache (least recently used dropped first).",
    )
    near_cache_max_lag_ms: int = Field(
        200,
        gt=0,
        description="Near cache: the most milliseconds by which a list a worker serves from its "
        "near cache may miss an acknowledged event. Each worker publishes a ping on the "
        "invalidation channel at most every half of this and serves a local copy only while its "
        "last ping came back within this; otherwise it reads Redis.",
    )
    refresh_ahead: bool = Field(
        True,
        description="Refresh-ahead (recsys.serving.refresh): an event for a user who asked for "
        "a list within CACHE_TTL recomputes that list in the background of the worker that "
        "took the event, batched across users, so the next read is a cache hit. Off: the next "
        "read computes it. Needs a shared cache (Redis).",
    )
    refresh_batch_max: int = Field(
        32,
        ge=1,
        le=1024,
        description="Most users one refresh-ahead batch scores together.",
    )
    refresh_window_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="Milliseconds refresh-ahead waits for more users before scoring a batch "
        "that is not full.",
    )
    similar_cache_size: int = Field(
        20_000,
        ge=0,
        description="Serialised similar-items answers kept per process. 0: off.",
    )
    # -- request path ---------------------------------------------------------------------------
    deadline_ms: float = Field(
        250, ge=0, description="Default per-request deadline in milliseconds."
    )
    overload_in_flight: int = Field(
        3,
        ge=0,
        description="Requests in flight in one worker above which low-priority requests are "
        "answered from the cache or popularity only.",
    )
    history_max_events: int = Field(
        500, ge=0, description="Most recent events of a user read for one request."
    )
    strategy_parallel: bool = Field(
        False,
        description="Run a request's strategies in parallel in a per-process thread pool (true) "
        "or one after another in the request thread (false). Measured under gunicorn on 2 "
        'cores (README, "Model runtime"): the pool\'s hand-offs cost more CPU than the overlap '
        "saves, so false. True lets a deadline abandon a strategy that is still running.",
    )
    deadline_pool_size: int = Field(
        8,
        ge=0,
        description="Threads of the per-process pool that runs strategies with "
        "STRATEGY_PARALLEL (at least 1 is used).",
    )
    scoring_slots: int | None = Field(
        None,
        ge=0,
        description="Requests of one worker process that score (strategies, blend, rules) at "
        "once; the others wait their turn (high priority first) for at most their deadline, "
        "then get popularity, marked degraded. 0: no limit. The history lookup and the cache "
        "write are outside the turn. Unset (auto): 1 when CUDA is absent, 0 with a GPU, where "
        "scoring waits on the device without the GIL and concurrent requests should meet in "
        "the deep model's micro-batcher. Measured under gunicorn on 2 cores (docs/benchmarks.md, "
        '"Serving benchmark").',
    )
    scoring_batch_max: int = Field(
        8,
        ge=1,
        description="With SCORING_SLOTS, the request that gets a turn also scores up to this many "
        "requests in all that wait for one and would be scored alike, in one pass of every "
        "model (1: each request alone). Measured under gunicorn on 2 cores (docs/benchmarks.md, "
        '"Serving benchmark").',
    )
    fast_cache_path: bool = Field(
        True,
        description="Answer cache hits of GET /v1/users/<id>/recommendations in WSGI middleware "
        "in front of Flask (recsys.web.fastpath): plain valid queries only, anything else goes "
        "through Flask. Read per request (update_config changes it at run time).",
    )
    fast_miss_path: bool = Field(
        True,
        description="... and compute that middleware's misses there too (the same function the "
        "view calls), instead of handing them to Flask. Read per request; needs "
        "FAST_CACHE_PATH.",
    )
    # -- models ---------------------------------------------------------------------------------
    model_keep_versions: int | None = Field(
        None,
        ge=0,
        description="Retention: versions kept per strategy after each `recsys train` (newest "
        "first; the active version, the rollback target and the serving profile's models "
        "always stay). Unset: keep every version. Also the default of `recsys models prune "
        "--keep`.",
    )
    model_memory_budget_mb: float = Field(
        768,
        ge=0,
        description="Per-process memory budget for loaded models, in MiB (least recently used "
        "idle models are evicted).",
    )
    train_memory_budget_mb: float | None = Field(
        None,
        ge=0,
        description="Training memory budget, in MiB: `recsys train` estimates each strategy's "
        "peak memory from its cost formula (`Strategy.estimate_cost`, docs/scale.md) before "
        "fitting and leaves out, with a one-line message, a strategy whose estimate exceeds "
        "it; the others train. Unset: 50% of the machine's memory (or of the cgroup's limit, "
        "if lower). 0: no budget.",
    )
    train_fit_time_limit_s: float = Field(
        600,
        ge=0,
        description="Longest estimated single fit, in seconds: `recsys train` (and `recsys "
        "tune`'s final fits) leave out, with a one-line message, a strategy whose cost "
        "formula (`Strategy.estimate_cost`, docs/scale.md) predicts a longer fit; a training "
        "run fits each strategy twice (holdout and final). 0: no limit.",
    )
    ann_min_items: int = Field(
        200_000,
        ge=0,
        description="Catalogue size from which `recsys train` has the embedding strategies "
        "(ALS, BPR) build approximate-nearest-neighbour indexes (hnswlib) at training time, "
        "saved and checksummed with the model: their user recommendations and similar items "
        "then search the index for candidates and score those exactly (docs/scale.md, "
        '"Candidate retrieval"). Below it the search is exact: at 50k-100k items and 32-64 '
        "factors an exact scan is as fast as the graph search on this project's 2-core "
        "machine (bench/ann_bench.py). 0: never. An explicit `--param als.ann_min_items=N` "
        "wins.",
    )
    preload_models: bool = Field(
        True, description="Load active models when the app starts (true) or on first use (false)."
    )
    batch_max_size: int = Field(
        32, ge=1, description="Micro-batching of the deep model: most requests in one batch."
    )
    batch_max_delay_ms: float = Field(
        2.0,
        ge=0,
        description="Micro-batching of the deep model: longest wait for a batch to fill, in "
        "milliseconds.",
    )
    batch_concurrency: int = Field(
        2,
        ge=1,
        description="Batches of the deep model in a forward pass at once per worker (runner "
        "threads).",
    )
    batch_inline_when_idle: bool = Field(
        True,
        description="A deep-model request that finds the batcher idle (nothing queued or "
        "running) is scored in its own thread instead of being handed to a runner thread and "
        "back.",
    )
    deep_cpu_precision: str | None = Field(
        "int8",
        description="Precision the deep model serves in when it runs on the CPU, derived at load "
        'from the saved fp32 weights: "int8" (dynamic quantization of the layers after the '
        'first; same nDCG@10 on ml-100k and Online Retail), "fp32", or "" (or unset) for '
        "whatever the model was trained with. On CUDA the model serves as trained (the sequence "
        "model always serves as trained: docs/sequence.md).",
    )
    worker_threads_blas: int = Field(
        1,
        ge=0,
        description="BLAS/OpenMP (and torch) threads of each gunicorn worker, set after the fork.",
    )
    config_poll_seconds: float = Field(
        0.5,
        ge=0,
        description="Seconds between checks of the shared configuration version in SQL: how "
        "often each process re-reads shared config, catalogue, model and experiment state (in a "
        "background thread).",
    )
    console_history_sampler: bool = Field(
        True,
        description="Each gunicorn worker samples the service's metrics for the console's Live "
        "history every 3 s (one worker per slot), so the history has no gaps while no page is "
        "open; false: only an open Live page adds samples.",
    )
    # -- events ---------------------------------------------------------------------------------
    events_max_batch: int = Field(
        1000, ge=1, description="Largest list accepted by POST /v1/events."
    )
    events_create_items: bool = Field(
        True,
        description="Unknown item ids in events create available stub items (true) or refuse "
        "the batch (422).",
    )
    events_max_new_items: int = Field(
        100,
        ge=0,
        description="Most new items one POST /v1/events may create (more: the batch is "
        "refused, 422).",
    )
    # -- hardening (README, "Reliability") ------------------------------------------------------
    strict_params: bool = Field(
        True,
        description="Refuse unknown query parameters on every API endpoint (422 naming them: "
        "a typo such as ?categroy= is an error, not an unfiltered list); false ignores them, "
        "for lenient clients.",
    )
    trusted_proxies: int = Field(
        0,
        ge=0,
        le=10,
        description="Reverse proxies in front of the service whose X-Forwarded-For, -Proto, "
        "-Host and -Prefix headers are believed (werkzeug ProxyFix; -Prefix sets the path "
        "prefix of the URLs the service builds). 0 believes none: the headers are ignored.",
    )
    max_body_bytes: int | None = Field(
        1 << 20,
        ge=0,
        description="Largest request body in bytes (Content-Length or streamed/chunked), "
        "refused with 413 before it is read (declared length) or as soon as it passes the limit "
        "(chunked). 0 or null: no limit.",
    )
    client_timeout: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="Seconds a client has to send a request's line and headers (from the "
        "connection's start, or its first byte after a keep-alive response), and then most "
        "seconds between body bytes; past that the server closes the connection. Requests are "
        "read whole on the worker's event loop before a thread takes them, so a slow or idle "
        "client holds a socket, never a request thread (docs/slow-clients.md).",
    )
    db_connect_timeout_s: float = Field(
        2.0, ge=0, description="SQL: seconds to connect (libpq connect_timeout)."
    )
    db_statement_timeout_ms: int = Field(
        3000,
        ge=0,
        description="SQL: milliseconds per statement (server-side statement_timeout, and "
        "client-side: a socket silent that long plus a second is cut, so a database that hangs "
        "rather than refuses cannot hold a thread).",
    )
    db_lock_timeout_ms: int = Field(2000, ge=0, description="SQL: milliseconds of lock waits.")
    db_pool_timeout_s: float = Field(
        2.0, ge=0, description="SQL: seconds of waiting for a pooled connection."
    )
    cli_db_statement_timeout_ms: int = Field(
        0,
        ge=0,
        description="DB_STATEMENT_TIMEOUT_MS of the recsys CLI commands (imports, training, "
        "tuning, evaluation: long batch statements). 0: no limit. The served app (recsys serve, "
        "wsgi:app) keeps the request-path value.",
    )
    cli_db_lock_timeout_ms: int = Field(
        0, ge=0, description="DB_LOCK_TIMEOUT_MS of the CLI. 0: no limit."
    )
    db_breaker_failures: int = Field(
        1,
        ge=1,
        description="Circuit breaker over the SQL store: after this many consecutive connection "
        "failures or timeouts, SQL is not tried for DB_BREAKER_RESET_S; then one request probes.",
    )
    db_breaker_reset_s: float = Field(
        5.0, ge=0, description="Seconds the circuit breaker keeps SQL off (see above)."
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _one_origin(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("redis_prefix", mode="before")
    @classmethod
    def _empty_prefix(cls, value: Any) -> Any:
        # An empty (or null) prefix has always meant the default one: keys never start with ":".
        return cls.model_fields["redis_prefix"].default if value in ("", None) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The overrides given to the constructor, then ``RECSYS_*`` (no dotenv, no secrets).

        Parameters
        ----------
        settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
            As pydantic-settings passes them.

        Returns
        -------
        tuple of PydanticBaseSettingsSource
            The sources, first wins.
        """
        return init_settings, _EnvSource(settings_cls)

    @classmethod
    def keys(cls) -> list[str]:
        """The configuration keys, in declaration order.

        Returns
        -------
        list of str
            ``["DATABASE_URL", ...]``, the fields' names upper-cased.
        """
        return [name.upper() for name in cls.model_fields]

    @classmethod
    def default(cls, key: str) -> Any:
        """The declared default of ``key``, for code that needs it without an app.

        Parameters
        ----------
        key : str
            A configuration key (``"BATCH_CONCURRENCY"``) or field name.

        Returns
        -------
        Any
            The field's default.
        """
        return cls.model_fields[key.lower()].default

    def as_config(self) -> dict[str, Any]:
        """The values by key, as mirrored into ``app.config``.

        Returns
        -------
        dict
            ``{"DATABASE_URL": ..., ...}``.
        """
        return {name.upper(): getattr(self, name) for name in type(self).model_fields}


def _messages(error: ValidationError, from_mapping: set[str]) -> str:
    lines = []
    for e in error.errors():
        field = str(e["loc"][0]) if e["loc"] else ""
        key = field.upper()
        name = key if key in from_mapping else ENV_PREFIX + key
        if e["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown configuration key")
        else:
            lines.append(f"{name}: {e['msg']} (got {e['input']!r})")
    return "\n".join(lines)


def load_settings(overrides: Mapping[str, Any] | None = None) -> Settings:
    """The settings from the ``RECSYS_*`` environment, then ``overrides``, validated.

    Parameters
    ----------
    overrides : Mapping, optional
        Values by key (``{"CACHE_TTL": 60}``); they win over the environment.

    Returns
    -------
    Settings
        The validated settings.

    Raises
    ------
    ConfigError
        A value that does not validate, or a key in ``overrides`` that is not a setting; the
        message names each (``RECSYS_CACHE_TTL: ...`` for the environment, ``CACHE_TTL: ...``
        for ``overrides``).
    """
    given = {str(k).upper(): v for k, v in (overrides or {}).items()}
    if unknown := sorted(set(given) - set(Settings.keys())):
        raise ConfigError("\n".join(f"{k}: unknown configuration key" for k in unknown))
    try:
        return Settings(**{k.lower(): v for k, v in given.items()})
    except ValidationError as e:
        raise ConfigError(_messages(e, set(given))) from None


def install_config(app: Flask, settings: Settings) -> Settings:
    """Store ``settings`` on ``app`` (what ``get_config`` returns) and mirror them into
    ``app.config``.

    Parameters
    ----------
    app : Flask
        The app.
    settings : Settings
        Validated settings (``load_settings``).

    Returns
    -------
    Settings
        ``settings``.
    """
    app.extensions[EXTENSION] = settings
    values = settings.as_config()
    if hasattr(app.config, "mirror"):  # recsys.app.AppConfig: our keys are read-only there
        app.config.mirror(values)
    else:
        app.config.update(values)
    return settings


def init_config(app: Flask, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Build the app's settings once (``load_settings``) and store them on ``app``.

    Parameters
    ----------
    app : Flask
        The app (``create_app``'s, or a bare Flask app in a test).
    overrides : Mapping, optional
        Values by key, over the environment.

    Returns
    -------
    Settings
        The stored settings (also mirrored into ``app.config``).

    Raises
    ------
    ConfigError
        As ``load_settings``.
    """
    return install_config(app, load_settings(overrides))


def get_config(app: Flask) -> Settings:
    """The app's settings (``init_config``; ``create_app`` calls it).

    Parameters
    ----------
    app : Flask
        The app.

    Returns
    -------
    Settings
        Its settings.
    """
    try:
        return app.extensions[EXTENSION]
    except KeyError:
        raise RuntimeError(
            "no recsys settings on this app: see recsys.config.init_config"
        ) from None


def update_config(app: Flask, **changes: Any) -> Settings:
    """Change settings of a running app (tests, an operator's shell), validated like a start.

    Only the values read per request take effect at once (``FAST_CACHE_PATH``,
    ``FAST_MISS_PATH``, ``STRATEGY_PARALLEL``, ``DEADLINE_MS``, ``SCORING_SLOTS``,
    ``ACCESS_LOG``, ``REFRESH_AHEAD``, ...); a value read when a component is built
    (``CACHE_TTL`` by the cache, the database timeouts by the engine) applies to what is built
    after the change.

    Parameters
    ----------
    app : Flask
        The app.
    **changes
        New values by key (``FAST_CACHE_PATH=False``).

    Returns
    -------
    Settings
        The new settings (stored on the app and mirrored into ``app.config``).

    Raises
    ------
    ConfigError
        A bad value or an unknown key; the settings stay as they were.
    """
    current = get_config(app)
    given = {k.upper(): v for k, v in changes.items()}
    if unknown := sorted(set(given) - set(Settings.keys())):
        raise ConfigError("\n".join(f"{k}: unknown configuration key" for k in unknown))
    values = {**current.model_dump(), **{k.lower(): v for k, v in given.items()}}
    try:
        new = Settings.model_validate(values)
    except ValidationError as e:
        raise ConfigError(_messages(e, set(given))) from None
    return install_config(app, new)


def instance_defaults(instance_path: str) -> dict[str, str]:
    """Defaults that depend on the instance folder.

    Parameters
    ----------
    instance_path : str
        The app's instance folder.

    Returns
    -------
    dict
        ``DATABASE_URL`` (a SQLite file there) and ``MODEL_DIR`` (``<instance>/models``).
    """
    return {
        "DATABASE_URL": "sqlite:///" + os.path.join(instance_path, "recsys.db"),
        "MODEL_DIR": os.path.join(instance_path, "models"),
    }
