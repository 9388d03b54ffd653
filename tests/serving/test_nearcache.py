"""The near cache (serving/cache/near.py) on the real Redis: local hits, invalidation by pub/sub
across processes (two caches or two apps on one Redis stand for two gunicorn workers), tickets,
a lost subscription, TTL and size bounds, and the lag bound kept by each process's pings
(NEAR_CACHE_MAX_LAG_MS; an injected clock, messages held back by hand, no sleeps)."""

from __future__ import annotations

import pytest
import redis
from flask import Flask

from recsys.config import get_config, init_config
from recsys.serving.cache import ResultCache
from recsys.serving.cache.near import EVERYONE, PING_PREFIX, PUBLISH_MAX_USERS, NearCache, messages
from tests.clocks import ManualClock

pytestmark = pytest.mark.redis

CTX = {"n": 3}
# The tests that are not about the lag bound run on the real clock: a bound of a minute keeps a
# slow (loaded) test from missing a local hit it expects.
LONG_LAG = {"NEAR_CACHE_MAX_LAG_MS": 60_000}


def make_cache(redis_url: str, prefix: str, **config) -> ResultCache:
    app = Flask(__name__)
    init_config(
        app,
        {"REDIS_URL": redis_url, "REDIS_PREFIX": prefix, "CACHE_TTL": 60, "NEAR_CACHE_TTL": 30}
        | LONG_LAG
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
    assert on.near.max_lag_s == 60.0  # NEAR_CACHE_MAX_LAG_MS, in seconds
    assert get_config(bare).near_cache_max_lag_ms == 200  # the default
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

    publish = redis.Redis.from_url(redis_url).publish
    near = NearCache(
        connect, f"{redis_prefix}:near", ttl_s=30, max_entries=100, clock=clock, publish=publish
    )
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
    publish = redis.Redis.from_url(redis_url).publish
    near = NearCache(
        pool.make_connection, f"{redis_prefix}:near", 30, 2, clock=clock, publish=publish
    )
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
    } | LONG_LAG
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


# -- the lag bound (NEAR_CACHE_MAX_LAG_MS) --------------------------------------------------------
class Wire:
    """One process's view of Redis with messages held back by hand: ``publish`` (its pings) can
    be held before they reach Redis, and its subscription can stop reading (a message still on
    its way to the socket)."""

    def __init__(self, redis_url: str):
        self.client = redis.Redis.from_url(redis_url)
        self.sent: list[bytes] = []
        self.held: list[tuple[str, bytes]] = []
        self.hold_pings = False
        self.deaf = False

    def publish(self, channel: str, message: bytes):
        self.sent.append(message)
        if self.hold_pings:
            self.held.append((channel, message))
            return 0
        return self.client.publish(channel, message)

    def release_pings(self) -> None:
        self.hold_pings = False
        for channel, message in self.held:
            self.client.publish(channel, message)
        self.held.clear()

    def connect(self):
        wire, conn = self, self.client.connection_pool.make_connection()

        class Conn:
            def __getattr__(self, name):
                return getattr(conn, name)

            def can_read(self, timeout=0):
                return False if wire.deaf else conn.can_read(timeout=timeout)

        return Conn()


def lagged_near(redis_url, channel, clock, max_lag_s=0.25):  # binary fractions: exact sums
    wire = Wire(redis_url)
    near = NearCache(
        wire.connect, channel, 30, 100, clock=clock, publish=wire.publish, max_lag_s=max_lag_s
    )
    assert near.wait_subscribed(5.0)
    return near, wire


def hold_copy(near, user="u", key="k"):
    """Store a copy and have it served once (its first ping read back)."""
    got, ticket = near.get(user, key)
    assert got is None  # no ping confirmed yet: nothing is served, a ping goes out
    assert near.put(ticket, user, key, b"t", b"raw")
    assert near.get(user, key)[0] == (b"t", b"raw")  # the ping came back with this poll


def test_a_copy_is_refused_once_the_last_ping_is_older_than_the_lag(redis_url, redis_prefix):
    clock = ManualClock()
    near, wire = lagged_near(redis_url, f"{redis_prefix}:near", clock)
    hold_copy(near)  # confirmed at 100.0
    wire.hold_pings = True  # the next pings are slow to come back
    clock.advance(0.25)
    assert near.get("u", "k")[0] == (b"t", b"raw")  # exactly at the bound: served
    assert len(wire.held) == 1  # ... and a ping went out (older than half the bound)
    clock.advance(2**-10)
    got, ticket = near.get("u", "k")
    assert got is None and ticket is not None  # read from Redis instead, may be stored again
    assert near.stats()["lagged"] == 1 and near.stats()["entries"] == 1
    wire.release_pings()  # the ping sent at 100.25 comes back
    assert near.get("u", "k")[0] == (b"t", b"raw")  # 1 ms after it was sent: served again
    near.close()


def test_a_late_invalidation_is_never_served_past_the_lag(redis_url, redis_prefix):
    clock = ManualClock()
    channel = f"{redis_prefix}:near"
    near, wire = lagged_near(redis_url, channel, clock)
    hold_copy(near)  # the last ping read back was sent at 100.0
    wire.deaf = True  # whatever is published now is still on its way to this process
    clock.advance(0.0625)
    redis.Redis.from_url(redis_url).publish(channel, b"u")  # an event, acknowledged at 100.0625
    # Within the bound the old copy may still be served: the residual window, now bounded.
    clock.advance(0.125)
    assert near.get("u", "k")[0] == (b"t", b"raw")
    # More than the bound after the last ping read back (sent before the event, so earlier
    # than its ack): never again, however long the message stays late.
    for step in (0.125, 1.0, 60.0):
        clock.advance(step)
        assert near.get("u", "k")[0] is None
    assert near.stats()["invalidations"] == 0  # it really was not read
    wire.deaf = False
    assert near.get("u", "k")[0] is None and near.stats()["invalidations"] == 1
    assert near.stats()["entries"] == 0
    near.close()


def test_other_processes_pings_are_not_invalidations(redis_url, redis_prefix):
    clock = ManualClock()
    channel = f"{redis_prefix}:near"
    a, _ = lagged_near(redis_url, channel, clock)
    b, b_wire = lagged_near(redis_url, channel, clock)
    hold_copy(b)  # b read a ping back: its own only
    _, ticket = b.get("v", "kv")
    before = b.stats()
    clock.advance(1.0)
    b_wire.hold_pings = True  # b's own pings do not come back
    a.get("x", "kx")  # a pings (its last one was long ago)
    assert a.stats()["pings"] == 1
    assert b.get("u", "k")[0] is None  # a's ping is read, and does not confirm b's lag
    after = b.stats()
    assert after["invalidations"] == before["invalidations"] and after["entries"] == 1
    assert b.put(ticket, "v", "kv", b"t", b"v")  # nor does it void b's tickets
    b_wire.release_pings()
    assert b.get("u", "k")[0] == (b"t", b"raw")
    # A user id that could read as a ping is published as "everyone".
    assert messages(["\x00ping:x:1"]) == [EVERYONE]
    assert messages(["u"]) == [b"u"]
    assert not b"u".startswith(PING_PREFIX) and not EVERYONE.startswith(PING_PREFIX)
    a.close()
    b.close()


def test_a_ping_is_published_at_most_once_per_half_lag(redis_url, redis_prefix):
    clock = ManualClock()
    near, wire = lagged_near(redis_url, f"{redis_prefix}:near", clock)
    wire.hold_pings = True
    for _ in range(5):
        near.get("u", "k")
    assert len(wire.sent) == 1
    clock.advance(0.125 - 2**-10)
    near.get("u", "k")
    assert len(wire.sent) == 1
    clock.advance(2**-10)
    for _ in range(5):
        near.get("u", "k")
    assert len(wire.sent) == 2
    wire.release_pings()  # both come back: confirmed at the second's send time
    near.get("u", "k")
    # None while the last ping read back is at most half the bound old, whatever the traffic.
    for _ in range(8):
        clock.advance(2**-6)
        near.get("u", "k")
    assert len(wire.sent) == 2
    clock.advance(2**-10)
    near.get("u", "k")
    assert len(wire.sent) == 3 and near.stats()["pings"] == 3
    near.close()
