"""The near cache (serving/cache/near.py) on the real Redis: local hits, invalidation by pub/sub
across processes (two caches or two apps on one Redis stand for two gunicorn workers), tickets,
a lost subscription, TTL and size bounds."""

from __future__ import annotations

import pytest
import redis
from flask import Flask

from recsys.config import init_config
from recsys.serving.cache import ResultCache
from recsys.serving.cache.near import PUBLISH_MAX_USERS, NearCache
from tests.clocks import ManualClock

pytestmark = pytest.mark.redis

CTX = {"n": 3}


def make_cache(redis_url: str, prefix: str, **config) -> ResultCache:
    app = Flask(__name__)
    init_config(
        app,
        {"REDIS_URL": redis_url, "REDIS_PREFIX": prefix, "CACHE_TTL": 60, "NEAR_CACHE_TTL": 30}
        | config,
    )
    cache = ResultCache(app)
    if cache.near is not None:
        assert cache.near.wait_subscribed(5.0)
    return cache


@pytest.fixture
def two(redis_url, redis_prefix):
    """Two processes' caches on one Redis and one prefix, both subscribed."""
    a, b = make_cache(redis_url, redis_prefix), make_cache(redis_url, redis_prefix)
    yield a, b
    a.near.close()
    b.near.close()


def compute(body: bytes):
    return lambda: (body, True)


def test_off_by_default_and_without_a_single_redis(redis_url, redis_prefix):
    assert make_cache(redis_url, redis_prefix, NEAR_CACHE_TTL=0).near is None
    assert make_cache(redis_url, redis_prefix, NEAR_CACHE_TTL=None).near is None
    bare = Flask(__name__)
    init_config(bare)
    local = ResultCache(bare)  # no REDIS_URL: the in-process cache
    assert local.near is None and local.near_channel is None
    on = make_cache(redis_url, redis_prefix, CACHE_TTL=10, NEAR_CACHE_TTL=30)
    assert on.near.ttl_s == 10  # never longer than the entries it copies
    on.near.close()


def test_a_repeat_read_is_served_from_memory(two, redis_url):
    a, b = two
    assert a.get_or_compute_raw("u", CTX, compute(b"list-1")) == (b"list-1", False)
    assert a.near.stats()["stores"] == 0  # computed lists are kept from their first read
    assert a.peek("u", CTX).payload == b"list-1"  # from Redis, now kept by a
    assert b.peek("u", CTX).payload == b"list-1"  # from Redis, now kept by b
    assert b.near.stats()["stores"] == 1 and b.near.stats()["hits"] == 0
    # Gone from Redis, still answered: the second read did not go there.
    redis.Redis.from_url(redis_url).delete(b.result_key("u", CTX))
    assert b.peek("u", CTX).payload == b"list-1"
    assert b.near.stats()["hits"] == 1
    assert a.peek("u", CTX).payload == b"list-1" and a.near.stats()["hits"] == 1


def test_an_event_on_one_process_drops_the_others_copy_before_it_is_acknowledged(two):
    a, b = two
    a.get_or_compute_raw("u", CTX, compute(b"old"))
    a.get_or_compute_raw("v", CTX, compute(b"v-list"))
    assert b.peek("u", CTX).payload == b"old" and b.peek("v", CTX).payload == b"v-list"
    assert a.invalidate_users(["u"])  # what POST /v1/events does after its commit
    # Read right after the invalidation returned: the message already waits on b's socket.
    assert b.peek("u", CTX).payload is None
    assert b.peek("v", CTX).payload == b"v-list"  # other users keep their copies
    assert b.near.stats()["invalidations"] == 1
    # a dropped its own copy at once; the next list is computed and copied again.
    assert a.peek("u", CTX).payload is None and a.near.stats()["entries"] == 0
    assert a.get_or_compute_raw("u", CTX, compute(b"new")) == (b"new", False)
    assert b.peek("u", CTX).payload == b"new"


def test_a_large_batch_publishes_everyone(two):
    a, b = two
    a.get_or_compute_raw("u", CTX, compute(b"x"))
    assert b.peek("u", CTX).payload == b"x" and b.near.stats()["entries"] == 1
    a.invalidate_users([f"w{i}" for i in range(PUBLISH_MAX_USERS + 1)])
    b.peek("zz", CTX)  # any lookup reads the pending invalidation
    assert b.near.stats()["entries"] == 0
    # u's token did not change: its entry is still good in Redis, and copied again.
    assert b.peek("u", CTX).payload == b"x" and b.near.stats()["entries"] == 1


def test_a_read_that_an_invalidation_overtook_is_not_kept(two):
    a, b = two
    a.get_or_compute_raw("u", CTX, compute(b"old"))
    got, ticket = b.near.get("u", b.result_key("u", CTX))
    assert got is None and ticket is not None
    token, raw = redis.Redis.from_url(b.url).mget(b.token_key("u"), b.result_key("u", CTX))
    a.invalidate_users(["u"])  # lands between b's read and b's store
    b.near.get("v", "other")  # another request of b's reads the invalidation first
    assert not b.near.put(ticket, "u", b.result_key("u", CTX), token, raw)
    assert b.near.stats()["entries"] == 0


def test_a_read_stored_before_its_invalidation_was_read_is_never_served(two):
    a, b = two
    a.get_or_compute_raw("u", CTX, compute(b"old"))
    key = b.result_key("u", CTX)
    got, ticket = b.near.get("u", key)
    token, raw = redis.Redis.from_url(b.url).mget(b.token_key("u"), key)
    a.invalidate_users(["u"])  # on b's socket, not read yet
    assert b.near.put(ticket, "u", key, token, raw)  # put does not read the socket
    assert b.near.get("u", key)[0] is None  # the next lookup reads it first
    assert b.peek("u", CTX).payload is None


def test_a_lost_subscription_drops_every_copy_until_resubscribed(redis_url, redis_prefix):
    clock = ManualClock()
    made = []
    pool = redis.Redis.from_url(redis_url).connection_pool

    def connect():
        made.append(pool.make_connection())
        return made[-1]

    near = NearCache(connect, f"{redis_prefix}:near", ttl_s=30, max_entries=100, clock=clock)
    assert near.wait_subscribed(5.0)
    _, ticket = near.get("u", "k")
    assert near.put(ticket, "u", "k", b"t", b"raw")
    host, port = made[0]._sock.getsockname()[:2]
    assert redis.Redis.from_url(redis_url).client_kill(f"{host}:{port}")
    assert near.get("u", "k") == (None, None)  # nothing served without a subscription
    stats = near.stats()
    assert stats["entries"] == 0 and stats["resets"] == 1 and not stats["subscribed"]
    assert not near.wait_subscribed(5.0)  # backing off: no reconnect before the retry time
    clock.advance(1.0)
    assert near.wait_subscribed(5.0) and len(made) == 2
    _, ticket = near.get("u", "k")
    assert near.put(ticket, "u", "k", b"t", b"raw")
    assert near.get("u", "k")[0] == (b"t", b"raw")
    near.close()


def test_copies_expire_and_are_bounded(redis_url, redis_prefix):
    clock = ManualClock()
    pool = redis.Redis.from_url(redis_url).connection_pool
    near = NearCache(pool.make_connection, f"{redis_prefix}:near", 30, 2, clock=clock)
    assert near.wait_subscribed(5.0)
    for key in ("k1", "k2", "k3"):
        _, ticket = near.get("u", key)
        assert near.put(ticket, "u", key, b"t", key.encode())
    assert near.get("u", "k1")[0] is None  # least recently used, dropped at the third
    assert near.get("u", "k3")[0] == (b"t", b"k3")
    clock.advance(30.0)
    assert near.get("u", "k3")[0] is None and near.stats()["entries"] == 1
    near.drop(["u"])
    assert near.stats()["entries"] == 0
    near.close()


@pytest.fixture
def two_apps(make_app, redis_url, redis_prefix):
    """Two fully wired apps on one PostgreSQL and one Redis (two workers of one deployment),
    with the near cache on."""
    from recsys.models.runtime import get_runtime
    from recsys.serving.cache import get_cache
    from tests.servicekit import seed_store, train_and_register

    config = {
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": redis_prefix,
        "NEAR_CACHE_TTL": 60,
        "CONFIG_POLL_SECONDS": 0.05,
        "DEADLINE_MS": 5000,
    }
    first = make_app(**config)
    seed_store(first.test_client())
    versions = train_and_register(first)
    second = make_app(**config)
    for app in (first, second):
        for name in versions:
            assert get_runtime(app).get(name) is not None
        assert get_cache(app).near.wait_subscribed(5.0)
    yield first, second
    for app in (first, second):
        get_cache(app).near.close()


def test_an_event_through_one_worker_is_seen_by_the_other(two_apps):
    from recsys.serving.cache import get_cache

    first, second = (app.test_client() for app in two_apps)
    url = "/v1/users/u0/recommendations?n=3"
    computed = first.get(url).get_json()
    assert computed["cached"] is False
    assert second.get(url).get_json()["cached"] is True  # from Redis
    again = second.get(url).get_json()
    assert again["cached"] is True and again["items"] == computed["items"]
    assert get_cache(two_apps[1]).near.stats()["hits"] == 1  # from memory
    top = computed["items"][0]["item_id"]
    event = {"user_id": "u0", "item_id": top, "type": "purchase"}
    assert first.post("/v1/events", json=[event]).status_code == 201
    after = second.get(url).get_json()
    assert after["cached"] is False
    assert top not in [i["item_id"] for i in after["items"]]
