"""POST /v1/events on real PostgreSQL: durability, idempotency, validation, invalidation."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from recsys.store import Event, Item, User, session_scope

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def app(make_app, redis_url, redis_prefix):
    return make_app(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, EVENTS_MAX_BATCH=5)


@pytest.fixture
def client(app):
    return app.test_client()


def count(app, model) -> int:
    with session_scope(app) as s:
        return s.scalar(select(func.count()).select_from(model))


def test_single_event_creates_user_and_stub_item(app, client):
    r = client.post(
        "/v1/events",
        json={"user_id": "u1", "item_id": 42, "type": "purchase", "timestamp": 1_700_000_000},
    )
    assert r.status_code == 201
    assert r.get_json() == {"received": 1, "inserted": 1, "duplicates": 0}
    with session_scope(app) as s:
        ev = s.scalars(select(Event)).one()
        item = s.get(Item, ev.item_id)
        assert item.external_id == "42" and item.available and item.title == ""
        assert s.get(User, ev.user_id).external_id == "u1"
        assert ev.type == "purchase" and ev.value == 1.0
        assert ev.ts.year == 2023 and ev.idem_key is None


def test_batch_with_iso_timestamps_and_values(app, client):
    events = [
        {
            "user_id": "a",
            "item_id": "x",
            "type": "rating",
            "value": 4.5,
            "timestamp": "2024-01-02T03:04:05Z",
        },
        {"user_id": "a", "item_id": "y", "type": "view"},
        {"user_id": "b", "item_id": "x", "type": "cart", "timestamp": "2024-01-02T03:04:05+02:00"},
    ]
    r = client.post("/v1/events", json=events)
    assert r.status_code == 201 and r.get_json()["inserted"] == 3
    assert count(app, User) == 2 and count(app, Item) == 2
    with session_scope(app) as s:
        cart = s.scalars(select(Event).where(Event.type == "cart")).one()
        assert cart.ts.hour == 1  # converted to UTC


def test_idempotency_key(app, client):
    ev = {"user_id": "u", "item_id": "i", "type": "click", "id": "evt-1"}
    assert client.post("/v1/events", json=ev).status_code == 201
    r = client.post("/v1/events", json=[ev, {**ev, "id": "evt-2"}, {**ev, "id": "evt-2"}])
    assert r.status_code == 201
    assert r.get_json() == {"received": 3, "inserted": 1, "duplicates": 2}
    r = client.post("/v1/events", json=ev)
    assert r.status_code == 200 and r.get_json()["duplicates"] == 1
    assert count(app, Event) == 2
    with session_scope(app) as s:
        assert set(s.scalars(select(Event.idem_key))) == {"api:evt-1", "api:evt-2"}


@pytest.mark.parametrize(
    "payload, status",
    [
        ({"user_id": "u", "item_id": "i"}, 422),
        ({"user_id": "u", "item_id": "i", "type": "bought"}, 422),
        ({"user_id": "", "item_id": "i", "type": "view"}, 422),
        ({"user_id": "u" * 129, "item_id": "i", "type": "view"}, 422),
        ({"user_id": "u", "item_id": "i", "type": "view", "value": "x"}, 422),
        ({"user_id": "u", "item_id": "i", "type": "view", "timestamp": "yesterday"}, 422),
        ({"user_id": "u", "item_id": "i", "type": "view", "timestamp": 99999999999}, 422),
        ({"user_id": "u", "item_id": "i", "type": "view", "extra": 1}, 422),
        ({"user_id": True, "item_id": "i", "type": "view"}, 422),
        ([], 422),
        ("text", 422),
        ([{"user_id": "u", "item_id": "i", "type": "view"}] * 6, 413),
    ],
)
def test_invalid_events_are_4xx_and_store_nothing(app, client, payload, status):
    r = client.post("/v1/events", json=payload)
    assert r.status_code == status
    body = r.get_json()
    assert body["code"] == status and body["description"]
    assert count(app, Event) == 0


def test_one_bad_event_rejects_the_list_naming_the_index(app, client):
    good = {"user_id": "u", "item_id": "i", "type": "view"}
    r = client.post("/v1/events", json=[good, {**good, "type": "nope"}, good, 7])
    assert r.status_code == 422
    body = r.get_json()
    assert "index 1, 3" in body["description"]
    assert set(body["detail"]["json"]) == {"1", "3"}
    assert "type" in body["detail"]["json"]["1"]
    assert count(app, Event) == 0 and count(app, User) == 0


def test_not_json_is_400(client):
    r = client.post("/v1/events", data="user=u", content_type="text/plain")
    assert r.status_code == 400 and r.get_json()["code"] == 400


def test_events_change_the_users_history_token(app, client):
    from recsys.serving.cache import get_cache

    cache = get_cache(app)
    key = cache.token_key("u9")
    before = cache.backend.mget([key])[0]
    client.post("/v1/events", json={"user_id": "u9", "item_id": "i", "type": "view"})
    after = cache.backend.mget([key])[0]
    assert after is not None and after != before
