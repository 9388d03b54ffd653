"""The result cache on real Redis and in-process: keys, staleness, stampede, outages, bounds."""

from __future__ import annotations

import threading
import time

import pytest
from flask import Flask

from recsys.config import init_config
from recsys.serving.cache import LocalBackend, RedisBackend, ResultCache
from tests.clocks import ManualClock

DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def make_cache(**config) -> ResultCache:
    app = Flask(__name__)
    init_config(app, config)
    return ResultCache(app)


@pytest.fixture(params=["redis", "local"])
def cache(request):
    if request.param == "local":
        return make_cache(REDIS_PREFIX="t", LOCAL_CACHE_SIZE=100)
    redis_url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    return make_cache(REDIS_URL=redis_url, REDIS_PREFIX=prefix, CACHE_TTL=60)


class Counter:
    def __init__(self, value=None, delay=0.0):
        self.calls = 0
        self.value = value
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.calls += 1
            n = self.calls
        time.sleep(self.delay)
        return self.value if self.value is not None else {"n": n, "degraded": False}


def test_keys_are_namespaced_and_quoted():
    c = make_cache(REDIS_PREFIX="shop1")
    assert c.key("rec", "a:b c") == "shop1:rec:a%3Ab%20c"
    # {user}: the hash tag that keeps one user's keys in one Redis Cluster slot.
    assert c.token_key("u") == "shop1:uver:{u}"
    assert c.token_key("a{b}") == "shop1:uver:{a%7Bb%7D}"
    k1 = c.result_key("u", {"n": 10, "cfg": 1})
    assert k1.startswith("shop1:rec:{u}:")
    assert k1 == c.result_key("u", {"cfg": 1, "n": 10})  # order-insensitive
    assert k1 != c.result_key("u", {"n": 10, "cfg": 2})


def test_hit_after_miss_and_invalidation(cache):
    compute = Counter()
    v1, cached = cache.get_or_compute("u1", {"n": 1}, compute)
    assert not cached and v1["n"] == 1
    v2, cached = cache.get_or_compute("u1", {"n": 1}, compute)
    assert cached and v2 == v1 and compute.calls == 1
    # Another user, other parameters: separate entries.
    assert not cache.get_or_compute("u2", {"n": 1}, compute)[1]
    assert not cache.get_or_compute("u1", {"n": 2}, compute)[1]
    assert cache.invalidate_users(["u1"])
    v3, cached = cache.get_or_compute("u1", {"n": 1}, compute)
    assert not cached and v3["n"] == 4
    assert cache.get_or_compute("u2", {"n": 1}, compute)[1]  # u2 untouched


def test_store_if_skips_degraded(cache):
    compute = Counter(value={"degraded": True})
    cache.get_or_compute("u", {}, compute, store_if=lambda b: not b["degraded"])
    cache.get_or_compute("u", {}, compute, store_if=lambda b: not b["degraded"])
    assert compute.calls == 2
    assert cache.peek_dict("u", {}) is None


def test_event_during_compute_makes_result_stale(cache):
    """The token is read before computing: an event landing meanwhile invalidates the entry."""

    def compute():
        cache.invalidate_users(["u"])  # an event committed while we computed
        return {"v": 1}

    cache.get_or_compute("u", {}, compute)
    assert cache.peek_dict("u", {}) is None


@pytest.mark.redis
def test_no_stampede_on_redis(redis_url, redis_prefix):
    caches = [
        make_cache(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, CACHE_LOCK_WAIT_MS=60_000)
        for _ in range(8)
    ]  # eight "workers", each with its own client; none gives up waiting for the lock
    compute = Counter(delay=0.3)
    results = []
    start = threading.Barrier(len(caches))

    def worker(c):
        start.wait()
        results.append(c.get_or_compute("hot", {"n": 10}, compute))

    threads = [threading.Thread(target=worker, args=(c,)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert compute.calls == 1
    assert sum(1 for _, cached in results if cached) == 7
    assert len({v["n"] for v, _ in results}) == 1


@pytest.mark.redis
def test_slow_lock_holder_does_not_block_others(redis_url, redis_prefix):
    c = make_cache(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, CACHE_LOCK_WAIT_MS=50)
    rkey = c.result_key("u", {})
    assert c.backend.set_nx(rkey + ":lock", b"someone", 600_000)  # a holder that never finishes
    value, cached = c.get_or_compute("u", {}, Counter())
    assert not cached and value["n"] == 1
    assert c.lock_polls >= 1  # it did wait for the holder, briefly:
    assert c.backend.mget([rkey + ":lock"]) == [b"someone"]  # not until the holder was done


@pytest.mark.redis
def test_a_failed_compute_releases_the_lock(redis_url, redis_prefix):
    """Whoever computes next does so at once instead of waiting out the lock."""
    c = make_cache(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, CACHE_LOCK_WAIT_MS=2000)
    lock = c.result_key("u", {}) + ":lock"

    def broken():
        assert c.backend.mget([lock]) != [None]  # held while computing
        raise RuntimeError("compute broke")

    with pytest.raises(RuntimeError, match="compute broke"):
        c.get_or_compute("u", {}, broken)
    assert c.backend.mget([lock]) == [None]
    value, cached = c.get_or_compute("u", {}, Counter())
    assert not cached and value["n"] == 1 and c.lock_polls == 0  # no waiting at all


def test_redis_down_serves_uncached_with_backoff(caplog):
    c = make_cache(REDIS_URL=DEAD_REDIS)
    compute = Counter()
    with caplog.at_level("WARNING", logger="recsys.serving.cache"):
        for _ in range(3):
            value, cached = c.get_or_compute("u", {}, compute)
            assert not cached and value["degraded"] is False
    assert compute.calls == 3
    assert sum("cache unavailable" in r.message for r in caplog.records) == 1  # logged once
    assert not c.available  # backing off: later calls skip Redis until the backoff ends
    assert c.invalidate_users(["u"]) is False


def test_local_backend_is_bounded_lru_with_ttl():
    clock = ManualClock()
    b = LocalBackend(max_entries=3, clock=clock)
    for k in "abc":
        b.set(k, k.encode(), 60)
    b.mget(["a"])  # a is now the most recently used
    b.set("d", b"d", 60)
    assert b.mget(["a", "b", "c", "d"]) == [b"a", None, b"c", b"d"]
    b.set("e", b"e", 0.05)
    assert b.mget(["e"]) == [b"e"]
    clock.advance(0.05)  # its TTL is over
    assert b.mget(["e"]) == [None] and len(b) <= 3
    assert b.set_nx("lock", b"1", 1000) and not b.set_nx("lock", b"2", 1000)


@pytest.mark.redis
def test_after_fork_makes_a_new_client(redis_url, redis_prefix):
    c = make_cache(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix)
    old = c.backend
    c.after_fork()
    assert isinstance(c.backend, RedisBackend) and c.backend is not old
    assert c.backend.client is not old.client


@pytest.mark.redis
def test_ttl_is_set_on_redis_entries(redis_url, redis_prefix):
    import redis

    c = make_cache(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, CACHE_TTL=30)
    c.get_or_compute("u", {}, Counter())
    c.invalidate_users(["u"])
    r = redis.Redis.from_url(redis_url)
    keys = list(r.scan_iter(f"{redis_prefix}:*"))
    assert keys and all(0 < r.ttl(k) <= 120 for k in keys)


@pytest.mark.postgres
def test_api_with_redis_down_never_500s_and_bumps_epoch(make_app):
    from recsys.serving.settings_store import get_settings

    app = make_app(REDIS_URL=DEAD_REDIS)
    client = app.test_client()
    r = client.get("/v1/users/u/recommendations")
    assert r.status_code == 200 and r.get_json()["cached"] is False
    epoch = get_settings(app).versions(force=True).epoch
    r = client.post("/v1/events", json={"user_id": "u", "item_id": "i", "type": "view"})
    assert r.status_code == 201
    assert get_settings(app).versions(force=True).epoch == epoch + 1


@pytest.mark.postgres
def test_after_fork_hook_resets_cache_and_settings_and_keeps_the_catalogue(
    make_app, redis_url, redis_prefix
):
    from recsys.ops.lifecycle import run_after_fork_hooks
    from recsys.serving.cache import get_cache
    from recsys.serving.catalog import get_catalog_store
    from recsys.serving.settings_store import get_settings

    app = make_app(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix)
    settings, store, cache = get_settings(app), get_catalog_store(app), get_cache(app)
    v = settings.versions()
    store.current(v.catalog)
    old_client, old_lock, snapshot = cache.backend.client, store._lock, store._catalog
    assert settings.holds_versions and store.loaded_version is not None
    run_after_fork_hooks(app)
    assert cache.backend.client is not old_client
    assert not settings.holds_versions
    # The master's catalogue snapshot stays (tests/serving/test_catalog_preload.py), with a
    # lock of the worker's own.
    assert store.loaded_version == (v.catalog, 0) and store._catalog is snapshot
    assert store._lock is not old_lock


def test_raw_payload_round_trip_and_foreign_entries_are_misses(cache):
    calls = []

    def compute():
        calls.append(1)
        return b'{"cached":false}', True

    assert cache.get_or_compute_raw("r", {"n": 1}, compute) == (b'{"cached":false}', False)
    assert cache.get_or_compute_raw("r", {"n": 1}, compute) == (b'{"cached":false}', True)
    assert cache.peek_raw("r", {"n": 1}) == b'{"cached":false}'
    # An entry in another format (e.g. written by an older release) is never served.
    cache.backend.set(cache.result_key("r", {"n": 2}), b'{"t":null,"v":{}}', 60)
    assert cache.peek_raw("r", {"n": 2}) is None
    assert cache.get_or_compute_raw("r", {"n": 2}, compute)[1] is False
    assert len(calls) == 2
    # Not stored when compute says so (degraded answers).
    cache.get_or_compute_raw("r", {"n": 3}, lambda: (b"x", False))
    assert cache.peek_raw("r", {"n": 3}) is None


def test_disabled_cache_computes_every_time_and_has_nothing_to_invalidate(cache):
    compute = Counter(value={"n": 1})
    cache.get_or_compute("u", {"n": 1}, compute)
    assert cache.get_or_compute("u", {"n": 1}, compute)[1] is True
    cache.disable("test")
    assert not cache.available
    for _ in range(2):
        assert cache.get_or_compute("u", {"n": 1}, compute)[1] is False
    assert compute.calls == 3
    assert cache.peek_raw("u", {"n": 1}) is None
    assert cache.invalidate_users(["u"]) is True  # no epoch bump needed: nothing is cached
