"""The result cache on a real Redis Cluster (three local nodes, tests/rediscluster.py): per-user
hash tags, single-slot commands, the stampede lock, and a node killed under load."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from flask import Flask

from recsys.config import init_config
from recsys.serving.cache import RedisClusterBackend, ResultCache, cluster_nodes, is_cluster_url

pytestmark = pytest.mark.redis


def make_cache(url: str, **config) -> ResultCache:
    app = Flask(__name__)
    init_config(app, {"REDIS_URL": url, "REDIS_PREFIX": "cl", "CACHE_TTL": 60, **config})
    return ResultCache(app)


def serving_app(make_app, url: str, prefix: str):
    """A wired app on the real store with real popular + EASE models, preloaded."""
    from recsys.models.runtime import get_runtime
    from tests.servicekit import seed_store, train_and_register

    app = make_app(REDIS_URL=url, REDIS_PREFIX=prefix, DEADLINE_MS=5000)
    seed_store(app.test_client())
    for name in train_and_register(app):
        assert get_runtime(app).get(name) is not None
    return app


def slot(cluster, key: str) -> int:
    return int(cluster._client(cluster.ports[0]).execute_command("CLUSTER KEYSLOT", key))


def test_cluster_urls_are_parsed_or_refused_clearly():
    assert cluster_nodes("redis+cluster://a:7000,b.example:7001") == (
        [("a", 7000), ("b.example", 7001)],
        {"ssl": False},
    )
    nodes, opts = cluster_nodes("rediss+cluster://:s%40cret@h:1/0")
    assert nodes == [("h", 1)] and opts == {"ssl": True, "password": "s@cret"}
    assert is_cluster_url("redis+cluster://h:1") and not is_cluster_url("redis://h:1/0")
    for bad, why in [
        ("redis+cluster://", "names no node"),
        ("redis+cluster://h", "not host:port"),
        ("redis+cluster://h:1/3", "only database 0"),
    ]:
        with pytest.raises(ValueError, match=why):
            cluster_nodes(bad)
    with pytest.raises(ValueError, match="braces"):
        make_cache("redis+cluster://h:1", REDIS_PREFIX="a{b}")


def test_a_users_keys_share_one_slot_and_users_spread(redis_cluster):
    c = make_cache(redis_cluster.url)
    assert isinstance(c.backend, RedisClusterBackend) and c.shared
    nodes = set()
    for u in ["u0", "u1", "user:with spaces", "{braces}", "", "ü"]:
        keys = [c.token_key(u), c.result_key(u, {"n": 1}), c.result_key(u, {"n": 2}) + ":lock"]
        assert len({slot(redis_cluster, k) for k in keys}) == 1, keys
    for i in range(30):
        nodes.add(redis_cluster.node_of(c.token_key(f"u{i}")))
    assert len(nodes) == 3  # the test really spans every node
    assert c.token_key("") != c.token_key("%")


def test_hit_miss_invalidation_across_slots(redis_cluster):
    c = make_cache(redis_cluster.url)
    calls = []

    def compute():
        calls.append(1)
        return {"n": len(calls)}

    users = [f"inv{i}" for i in range(20)]  # keys on every node
    for u in users:
        assert c.get_or_compute(u, {"k": 1}, compute) == ({"n": len(calls)}, False)
    for u in users:
        assert c.get_or_compute(u, {"k": 1}, compute)[1] is True
    assert len(calls) == 20
    # One call, many slots: a pipeline the cluster client splits by node, no cross-slot error.
    assert c.invalidate_users(users[:10])
    cached = [c.get_or_compute(u, {"k": 1}, compute)[1] for u in users]
    assert cached == [False] * 10 + [True] * 10
    assert c.ping()


def test_stampede_lock_on_the_cluster(redis_cluster):
    """Eight workers miss the same entry at once: one computes, seven wait for its value."""
    caches = [make_cache(redis_cluster.url, CACHE_LOCK_WAIT_MS=60_000) for _ in range(8)]
    refused = threading.Semaphore(0)
    for c in caches:
        real = c.backend.set_nx

        def counting(key, value, ttl_ms, real=real):
            got = real(key, value, ttl_ms)
            if not got:
                refused.release()
            return got

        c.backend.set_nx = counting
    calls = []

    def compute():
        calls.append(1)
        # Hold the lock until every other worker has been refused it (so they must wait).
        for _ in range(len(caches) - 1):
            assert refused.acquire(timeout=60)
        return {"n": len(calls)}

    start = threading.Barrier(len(caches))
    results = []

    def worker(c):
        start.wait()
        results.append(c.get_or_compute("hot", {"n": 10}, compute))

    threads = [threading.Thread(target=worker, args=(c,)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(cached for _, cached in results) == [False] + [True] * 7
    assert {v["n"] for v, _ in results} == {1}
    lock = caches[0].result_key("hot", {"n": 10}) + ":lock"
    assert caches[0].backend.mget([lock]) == [None]  # released with the store


@pytest.mark.postgres
def test_the_app_serves_from_the_cluster(make_app, redis_cluster):
    app = serving_app(make_app, redis_cluster.url, "clapp")
    client = app.test_client()
    first = client.get("/v1/users/u0/recommendations")
    assert first.status_code == 200, first.get_json()
    assert first.get_json()["cached"] is False and not first.get_json()["degraded"]
    again = client.get("/v1/users/u0/recommendations").get_json()
    assert again["cached"] is True and again["items"] == first.get_json()["items"]
    top = again["items"][0]["item_id"]
    r = client.post("/v1/events", json={"user_id": "u0", "item_id": top, "type": "purchase"})
    assert r.status_code == 201
    after = client.get("/v1/users/u0/recommendations").get_json()
    assert after["cached"] is False and top not in [it["item_id"] for it in after["items"]]


@pytest.mark.postgres
def test_a_node_killed_mid_load_means_uncached_answers_never_5xx(make_app, tmp_path):
    from tests.rediscluster import LocalCluster
    from tests.servicekit import BASKETS

    cluster = LocalCluster(str(tmp_path / "cluster")).start()
    try:
        app = serving_app(make_app, cluster.url, "clkill")
        cache = app.extensions["recsys.cache"]
        users = list(BASKETS)
        victim = cluster.node_of(cache.token_key(users[0]))
        on_victim = {u for u in users if cluster.node_of(cache.token_key(u)) == victim}
        # Warm every user's entry while the whole cluster is up.
        warm = app.test_client()
        for u in users:
            warm.get(f"/v1/users/{u}/recommendations")
        assert all(warm.get(f"/v1/users/{u}/recommendations").get_json()["cached"] for u in users)

        n_requests, kill_at = 240, 60
        done = threading.Semaphore(0)
        killed = threading.Event()

        def killer():
            for _ in range(kill_at):
                done.acquire()
            cluster.kill(victim)
            killed.set()

        def one(i: int):
            u = users[i % len(users)]
            after_kill = killed.is_set()
            r = app.test_client().get(f"/v1/users/{u}/recommendations")
            done.release()
            return u, after_kill, r.status_code, r.get_json()

        k = threading.Thread(target=killer)
        k.start()
        with ThreadPoolExecutor(4) as pool:
            out = list(pool.map(one, range(n_requests)))
        k.join()
        assert killed.is_set()
        statuses = {status for _, _, status, _ in out}
        assert statuses == {200}, statuses
        assert all(body["items"] for *_, body in out)
        # Once the node is gone its users' answers are computed, honestly marked uncached.
        late = [body for u, after, _, body in out if after and u in on_victim]
        assert late and not any(body["cached"] for body in late)
        # Writes still work: an event is stored and acknowledged with the node down.
        r = app.test_client().post(
            "/v1/events", json={"user_id": users[0], "item_id": "i1", "type": "click"}
        )
        assert r.status_code == 201
        assert app.test_client().get("/healthz").status_code == 200
    finally:
        cluster.stop()
