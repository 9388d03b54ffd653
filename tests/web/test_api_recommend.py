"""GET/POST recommendation endpoints on real PostgreSQL + Redis with real trained models."""

from __future__ import annotations

import json

import pytest

from recsys.config import update_config
from tests.servicekit import ADMIN_TOKEN, CATS
from tests.waiting import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def client(served_app):
    return served_app.test_client()


def ids(body):
    return [i["item_id"] for i in body["items"]]


def test_unknown_user_is_cold_and_gets_popular(client, served_app):
    r = client.get("/v1/users/nobody/recommendations?n=3&explain=true")
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["user_id"] == "nobody" and body["route"] == "cold"
    assert ids(body)[0] == "i0"  # bought by six of seven users
    assert all(set(i["sources"]) == {"popular"} for i in body["items"])
    versions = served_app.extensions["recsys.model_versions"]
    assert body["model_versions"] == {"popular": versions["popular"]}
    assert body["degraded"] is False and body["cached"] is False


def test_warm_user_blends_ease_and_popular_and_excludes_purchases(client):
    body = client.get("/v1/users/u6/recommendations?n=5&explain=true").get_json()
    assert body["route"] == "warm"
    assert set(body["model_versions"]) == {"ease", "popular"}
    assert not set(ids(body)) & {"i2", "i4", "i6", "i8", "i1"}
    assert any("ease" in i["sources"] for i in body["items"])
    for it in body["items"]:
        assert it["score"] == pytest.approx(sum(it["sources"].values()), abs=1e-5)
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)


def test_no_sources_without_explain(client):
    body = client.get("/v1/users/u6/recommendations?n=2").get_json()
    assert body["items"] and all("sources" not in i for i in body["items"])


def test_filters_category_exclude_paging(client):
    body = client.get("/v1/users/nobody/recommendations?n=10&category=music").get_json()
    assert ids(body) and all(CATS[int(i[1:])] == ["music"] for i in ids(body))
    body = client.get("/v1/users/nobody/recommendations?n=10&exclude=i0,i3").get_json()
    assert not {"i0", "i3"} & set(ids(body))
    full = ids(client.get("/v1/users/nobody/recommendations?n=6").get_json())
    page2 = ids(client.get("/v1/users/nobody/recommendations?n=3&offset=3").get_json())
    assert page2 == full[3:6]


def test_unavailable_item_disappears_at_once(client):
    assert "i0" in ids(client.get("/v1/users/nobody/recommendations?n=3").get_json())
    r = client.put("/v1/items/i0", json={"available": False})
    assert r.status_code == 200 and r.get_json()["available"] is False
    body = client.get("/v1/users/nobody/recommendations?n=3").get_json()
    assert "i0" not in ids(body) and body["cached"] is False
    assert "i0" not in ids(client.get("/v1/popular?n=10").get_json())
    assert "i0" not in ids(client.get("/v1/items/i1/similar?n=10").get_json())


def test_cache_hit_then_invalidated_by_event(client):
    first = client.get("/v1/users/u0/recommendations?n=3").get_json()
    assert first["cached"] is False and first["route"] == "cold"
    again = client.get("/v1/users/u0/recommendations?n=3").get_json()
    assert again["cached"] is True and ids(again) == ids(first)
    top = ids(first)[0]
    # Buying the top item and two more: it is excluded now and u0 has become warm (5 items).
    events = [
        {"user_id": "u0", "item_id": top, "type": "purchase"},
        {"user_id": "u0", "item_id": "i9", "type": "purchase"},
        {"user_id": "u0", "item_id": "i5", "type": "purchase"},
    ]
    assert client.post("/v1/events", json=events).status_code == 201
    after = client.get("/v1/users/u0/recommendations?n=3").get_json()
    assert after["cached"] is False
    assert top not in ids(after) and after["route"] == "warm"


def test_cache_invalidated_by_admin_change(client):
    client.get("/v1/users/u6/recommendations?n=3")
    assert client.get("/v1/users/u6/recommendations?n=3").get_json()["cached"] is True
    r = client.patch("/v1/admin/strategies", json={"ease": {"enabled": False}}, headers=AUTH)
    assert r.status_code == 200, r.get_json()
    body = client.get("/v1/users/u6/recommendations?n=3").get_json()
    assert body["cached"] is False and set(body["model_versions"]) == {"popular"}


def test_session_recommendations(client):
    r = client.post("/v1/recommendations", json={"items": ["i2", "i4"], "n": 4, "explain": True})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["user_id"] is None and body["route"] == "cold"
    assert not {"i2", "i4"} & set(ids(body)) and len(body["items"]) == 4
    r = client.post("/v1/recommendations", json={"items": ["i0", "i1", "i2", "i3", "i4"], "n": 4})
    assert r.get_json()["route"] == "warm"


def test_similar_and_popular(client):
    body = client.get("/v1/items/i1/similar?n=3").get_json()
    assert body["route"] == "similar" and ids(body) and "i1" not in ids(body)
    assert "ease" in body["model_versions"]
    assert client.get("/v1/items/nope/similar").status_code == 404
    body = client.get("/v1/popular?n=3").get_json()
    assert ids(body)[0] == "i0" and len(body["items"]) == 3
    body = client.get("/v1/popular?n=10&category=books").get_json()
    assert all(CATS[int(i[1:])] == ["books"] for i in ids(body))


@pytest.mark.parametrize(
    "url",
    [
        "/v1/users/u0/recommendations?n=0",
        "/v1/users/u0/recommendations?n=101",
        "/v1/users/u0/recommendations?n=abc",
        "/v1/users/u0/recommendations?offset=-1",
        "/v1/users/u0/recommendations?explain=maybe",
        "/v1/users/" + "x" * 200 + "/recommendations",
        "/v1/items/i1/similar?n=0",
        "/v1/popular?n=1000",
    ],
)
def test_bad_query_is_4xx_json(client, url):
    r = client.get(url)
    assert 400 <= r.status_code < 500
    body = r.get_json()
    assert body["code"] == r.status_code and body["name"] and body["description"]


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"items": "i1"},
        {"items": [""]},
        {"items": ["i1"], "n": 0},
        {"items": ["i1"], "extra": 1},
        [1, 2],
    ],
)
def test_bad_session_body_is_4xx_json(client, payload):
    r = client.post("/v1/recommendations", json=payload)
    assert 400 <= r.status_code < 500 and r.get_json()["description"]


def test_openapi_lists_endpoints(client):
    paths = client.get("/openapi.json").get_json()["paths"]
    for p in (
        "/v1/users/{user_id}/recommendations",
        "/v1/recommendations",
        "/v1/items/{item_id}/similar",
        "/v1/popular",
        "/v1/events",
        "/v1/items/{item_id}",
        "/v1/users/{user_id}",
        "/v1/admin/strategies",
        "/v1/admin/routing",
        "/v1/admin/audit",
    ):
        assert p in paths, p


def test_cached_answer_is_the_computed_one_with_the_flag_set(client):
    first = client.get("/v1/users/u7/recommendations?n=4&explain=true")
    second = client.get("/v1/users/u7/recommendations?n=4&explain=true")
    a, b = first.get_json(), second.get_json()
    assert a["cached"] is False and b["cached"] is True
    assert {**a, "cached": True} == b
    assert second.mimetype == "application/json"


def test_similar_answer_is_kept_until_an_admin_change(client):
    first = client.get("/v1/items/i1/similar?n=3").get_json()
    again = client.get("/v1/items/i1/similar?n=3").get_json()
    assert again == first and "ease" in first["model_versions"]
    r = client.patch("/v1/admin/strategies", json={"ease": {"enabled": False}}, headers=AUTH)
    assert r.status_code == 200, r.get_json()
    after = client.get("/v1/items/i1/similar?n=3").get_json()
    assert "ease" not in after["model_versions"]


def test_inline_strategy_runner_keeps_deadline_rules():
    from recsys.core.runners import run_inline as _inline_runner
    from tests.clocks import ManualClock

    clock = ManualClock()

    def boom():
        clock.advance(0.01)
        raise RuntimeError("broken strategy")

    def slow():
        clock.advance(0.15)  # takes 150 ms of the 100 ms deadline
        return 2

    tasks = {"a": lambda: 1, "bad": boom, "slow": slow, "late": lambda: 3}
    results, missed = _inline_runner(tasks, 0.1, clock=clock)
    # "slow" finished after the deadline and "late" would start after it: both dropped.
    assert results == {"a": 1} and missed == ["bad", "slow", "late"]
    assert _inline_runner({"a": lambda: 1, "b": lambda: 2}, 1.0) == ({"a": 1, "b": 2}, [])


def test_inline_mode_serves_the_same_lists(served_app, client):
    url = "/v1/users/u8/recommendations?n=5&exclude=x-{}"
    assert served_app.config["STRATEGY_PARALLEL"] is False  # the default
    inline = client.get(url.format(1)).get_json()
    update_config(served_app, STRATEGY_PARALLEL=True)
    try:
        pooled = client.get(url.format(2)).get_json()
    finally:
        update_config(served_app, STRATEGY_PARALLEL=False)
    assert not inline["cached"] and not inline["degraded"] and not pooled["cached"]
    assert inline["items"] == pooled["items"]


def test_lists_are_exactly_what_the_recout_schema_would_emit(client, served_app):
    """The per-user and similar-items bodies skip the marshmallow dump (recommend._render);
    real answers must be fixed points of RecOut's dump: nothing outside the schema, JSON
    types only."""
    from recsys.web.schemas import RecOut

    schema = RecOut()
    urls = [
        "/v1/users/u6/recommendations?n=5&explain=true",
        "/v1/users/u6/recommendations?n=3",
        "/v1/users/nobody/recommendations?n=4&category=music",
        "/v1/users/u8/recommendations?n=2&offset=1&exclude=i0",
        "/v1/items/i1/similar?n=4",
    ]
    for url in urls:
        r = client.get(url)
        assert r.status_code == 200, (url, r.get_json())
        body = r.get_json()
        assert schema.dump(body) == body, url
        again = client.get(url).get_json()  # the cached form too
        assert schema.dump(again) == again, url


def test_no_scoring_turn_within_the_deadline_gives_degraded_popularity(served_app, client):
    """SCORING_SLOTS=1: while another request holds this worker's only scoring turn, a request
    waits at most its deadline, then gets popularity, marked degraded and not cached; the
    wait metric and the timeout counter see it."""
    from prometheus_client import REGISTRY

    from recsys.serving.gate import scoring_gate

    update_config(served_app, SCORING_SLOTS=1, DEADLINE_MS=60)
    url = "/v1/users/u6/recommendations?n=3&explain=true"
    before = REGISTRY.get_sample_value("recsys_scoring_timeouts_total", {"priority": "normal"})
    gate = scoring_gate(1)
    assert gate.acquire()
    try:
        body = client.get(url).get_json()
    finally:
        gate.release()
    assert body["route"] == "warm" and body["degraded"] is True and body["cached"] is False
    assert all(set(i["sources"]) == {"popular"} for i in body["items"])
    after = REGISTRY.get_sample_value("recsys_scoring_timeouts_total", {"priority": "normal"})
    assert after == (before or 0) + 1
    # The turn is free again: the full blend, cached as usual (the degraded answer was not).
    body = client.get(url).get_json()
    assert body["degraded"] is False and body["cached"] is False
    assert any("ease" in i["sources"] for i in body["items"])
    assert client.get(url).get_json()["cached"] is True
    # Guest sessions take turns too.
    assert gate.acquire()
    try:
        r = client.post("/v1/recommendations", json={"items": ["i1"], "n": 3})
    finally:
        gate.release()
    assert r.status_code == 200 and r.get_json()["degraded"] is True


def test_wait_for_a_turn_is_taken_off_the_deadline(served_app, client, monkeypatch):
    """A request that waited for its turn gives its strategies only what is left of the
    deadline (it would otherwise answer late with a full list)."""
    import threading

    from recsys.core import recommender as service
    from recsys.serving.gate import scoring_gate

    update_config(served_app, SCORING_SLOTS=1, DEADLINE_MS=10_000)
    seen = []
    real = service.Recommender.recommend_batch

    def spy(self, histories, requests=None):
        seen.extend(r.deadline_s for r in requests)
        return real(self, histories, requests)

    monkeypatch.setattr(service.Recommender, "recommend_batch", spy)
    gate = scoring_gate(1)
    assert gate.acquire()
    out = {}
    asker = threading.Thread(
        target=lambda: out.update(
            body=client.get("/v1/users/u6/recommendations?n=3&exclude=wait-test").get_json()
        )
    )
    asker.start()
    # Hold the turn until the request is queued for it, then for `hold` more: it waited at
    # least that long (a slower machine only makes the wait longer, never the check fail).
    waiting = threading.Event()
    while not waiting.wait(0.005):
        if gate.stats()["waiting"] == 1:
            waiting.set()
    hold = 0.2
    threading.Event().wait(hold)
    gate.release()
    asker.join()
    assert out["body"]["degraded"] is False
    assert len(seen) == 1 and 0 < seen[0] <= 10.0 - hold  # the wait came off the deadline


def test_waiting_requests_are_scored_together_and_answered_as_alone(served_app):
    """Requests that queue for the scoring turn are scored in one batch by the next holder of
    the turn, and each gets exactly the bytes it gets when scored alone."""
    import threading

    from prometheus_client import REGISTRY

    from recsys.serving.cache import get_cache
    from recsys.serving.gate import scoring_gate

    update_config(served_app, SCORING_SLOTS=1, DEADLINE_MS=5000)
    users = ["u6", "u1", "u3", "nobody"]  # warm, then cold ones (u1, u3: short histories)
    urls = [f"/v1/users/{u}/recommendations?n=4&explain=true" for u in users]
    batches0 = REGISTRY.get_sample_value("recsys_scoring_batch_size_count") or 0.0
    sum0 = REGISTRY.get_sample_value("recsys_scoring_batch_size_sum") or 0.0
    gate = scoring_gate(1)
    together: dict[str, bytes] = {}

    def get(url):
        r = served_app.test_client().get(url)
        assert r.status_code == 200
        together[url] = r.get_data()

    assert gate.acquire()
    threads = [threading.Thread(target=get, args=(u,)) for u in urls]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: gate.stats()["waiting"] == len(urls), "the requests all queueing")
    finally:
        gate.release()
    for t in threads:
        t.join(10)
    # One batch of four (the holder of the turn took the other three).
    assert REGISTRY.get_sample_value("recsys_scoring_batch_size_count") == batches0 + 1
    assert REGISTRY.get_sample_value("recsys_scoring_batch_size_sum") == sum0 + 4
    assert get_cache(served_app).invalidate_users(users)
    client = served_app.test_client()
    for url in urls:
        alone = client.get(url)
        assert alone.get_json()["cached"] is False
        assert alone.get_data() == together[url], url
    assert json.loads(together[urls[0]])["route"] == "warm"
    assert json.loads(together[urls[-1]])["route"] == "cold"
