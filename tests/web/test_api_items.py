"""Item data in every list (``fields=``), rendered after the cache, and the item/user endpoints
(GET one, GET a page, DELETE) on real PostgreSQL + Redis with real trained models."""

from __future__ import annotations

import json

import pytest

from recsys.config import update_config
from recsys.serving.catalog import Catalog, parse_fields
from tests.servicekit import CATS, ITEMS

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

LISTS = [
    "/v1/users/u6/recommendations?n=3",
    "/v1/users/nobody/recommendations?n=3",
    "/v1/items/i1/similar?n=3",
    "/v1/popular?n=3",
]


@pytest.fixture
def client(served_app):
    return served_app.test_client()


def _sep(url: str) -> str:
    return "&" if "?" in url else "?"


@pytest.mark.parametrize("url", LISTS)
def test_default_item_fields_in_every_list(client, url):
    body = client.get(url).get_json()
    assert body["items"]
    for it in body["items"]:
        k = ITEMS.index(it["item_id"])
        assert set(it) == {"item_id", "score", "title", "price", "image_url"}
        assert it["title"] == f"Item {k}" and it["price"] is None and it["image_url"] is None


@pytest.mark.parametrize("url", LISTS)
def test_fields_choose_the_item_data(client, url):
    body = client.get(url + _sep(url) + "fields=categories,attributes,title").get_json()
    for it in body["items"]:
        k = ITEMS.index(it["item_id"])
        assert set(it) == {"item_id", "score", "title", "categories", "attributes"}
        assert it["categories"] == CATS[k] and it["attributes"] == {}
    body = client.get(url + _sep(url) + "fields=").get_json()
    assert all(set(it) == {"item_id", "score"} for it in body["items"])
    r = client.get(url + _sep(url) + "fields=title,colour")
    assert r.status_code == 422 and "colour" in json.dumps(r.get_json())


@pytest.mark.parametrize("url", LISTS)
def test_sources_only_with_explain(client, url):
    assert all("sources" not in it for it in client.get(url).get_json()["items"])
    body = client.get(url + _sep(url) + "explain=true").get_json()
    assert all(it["sources"] for it in body["items"])


def test_popular_scores_are_relative_popularity(client):
    body = client.get("/v1/popular?n=5&explain=true").get_json()
    scores = [it["score"] for it in body["items"]]
    assert scores[0] == 1.0 and all(0 < s <= 1 for s in scores)
    assert scores == sorted(scores, reverse=True)
    assert all(it["sources"] == {"popular": it["score"]} for it in body["items"])
    page2 = client.get("/v1/popular?n=2&offset=2").get_json()["items"]
    assert [it["score"] for it in page2] == scores[2:4]  # relative to the top, not the page


def test_session_list_carries_item_fields(client):
    r = client.post("/v1/recommendations", json={"items": ["i0"], "n": 2, "fields": ["price"]})
    assert r.status_code == 200
    assert all(set(it) == {"item_id", "score", "price"} for it in r.get_json()["items"])
    r = client.post("/v1/recommendations", json={"items": ["i0"], "fields": ["nope"]})
    assert r.status_code == 422


@pytest.mark.parametrize("fast", [True, False])
def test_title_and_price_edit_shows_in_cached_lists_without_invalidating_them(
    served_app, client, fast
):
    update_config(served_app, FAST_CACHE_PATH=fast)
    url = "/v1/users/u6/recommendations?n=3&fields=title,price,image_url"
    first = client.get(url).get_json()
    assert client.get(url).get_json()["cached"] is True
    top = first["items"][0]["item_id"]
    r = client.put(
        f"/v1/items/{top}",
        json={"title": "Renamed", "price": 9.5, "image_url": "https://img.example/x.png"},
    )
    assert r.status_code == 200
    again = client.get(url).get_json()
    assert again["cached"] is True  # the list was not invalidated ...
    assert [i["item_id"] for i in again["items"]] == [i["item_id"] for i in first["items"]]
    edited = again["items"][0]  # ... yet it carries the new data
    assert (edited["title"], edited["price"], edited["image_url"]) == (
        "Renamed",
        9.5,
        "https://img.example/x.png",
    )


def test_get_item_and_404(client):
    r = client.get("/v1/items/i3")
    assert r.status_code == 200
    body = r.get_json()
    assert body["item_id"] == "i3" and body["title"] == "Item 3" and body["available"]
    r = client.get("/v1/items/nope")
    assert r.status_code == 404 and r.get_json()["code"] == 404


def test_item_list_pages_with_a_cursor_and_filters(client):
    seen, cursor = [], None
    while True:
        url = "/v1/items?limit=4" + (f"&cursor={cursor}" if cursor else "")
        body = client.get(url).get_json()
        assert len(body["items"]) <= 4
        seen += [i["item_id"] for i in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ITEMS)
    music = client.get("/v1/items?category=MUSIC&limit=100").get_json()["items"]
    assert {i["item_id"] for i in music} == {x for k, x in enumerate(ITEMS) if CATS[k] == ["music"]}
    client.delete("/v1/items/i3")
    off = client.get("/v1/items?available=false").get_json()["items"]
    assert [i["item_id"] for i in off] == ["i3"] and off[0]["available"] is False
    on = client.get("/v1/items?available=true&limit=500").get_json()["items"]
    assert "i3" not in {i["item_id"] for i in on}
    assert client.get("/v1/items?cursor=%25%25").status_code == 400
    assert client.get("/v1/items?limit=0").status_code == 422


def test_delete_item_retires_it_and_keeps_history(served_app, client):
    from sqlalchemy import func, select

    from recsys.store import session_scope
    from recsys.store.models import Event, Item

    assert client.get("/v1/popular?n=1").get_json()["items"][0]["item_id"] == "i0"
    r = client.delete("/v1/items/i0")
    assert r.status_code == 200 and r.get_json()["available"] is False
    assert "i0" not in [i["item_id"] for i in client.get("/v1/popular?n=5").get_json()["items"]]
    recs = client.get("/v1/users/nobody/recommendations?n=5").get_json()
    assert "i0" not in [i["item_id"] for i in recs["items"]]
    with session_scope(served_app) as s:
        item_id = s.scalar(select(Item.id).where(Item.external_id == "i0"))
        assert s.scalar(select(func.count()).where(Event.item_id == item_id)) > 0
    assert client.get("/v1/items/i0").get_json()["available"] is False
    assert client.delete("/v1/items/nope").status_code == 404


def test_users_get_list_delete(served_app, client):
    r = client.get("/v1/users/u6")
    assert r.status_code == 200
    assert r.get_json()["user_id"] == "u6" and r.get_json()["events"] > 0
    assert client.get("/v1/users/ghost").status_code == 404
    first = client.get("/v1/users?limit=2").get_json()
    assert len(first["users"]) == 2 and first["next_cursor"]
    rest = client.get(f"/v1/users?limit=500&cursor={first['next_cursor']}").get_json()
    names = [u["user_id"] for u in first["users"] + rest["users"]]
    assert names == sorted(names) and rest["next_cursor"] is None and "u6" in names
    url = "/v1/users/u6/recommendations?n=3"
    assert client.get(url).get_json()["route"] == "warm"
    assert client.get(url).get_json()["cached"] is True
    r = client.delete("/v1/users/u6")
    assert r.status_code == 200 and r.get_json()["events_deleted"] > 0
    assert client.get("/v1/users/u6").status_code == 404
    after = client.get(url).get_json()  # erased: no history, so a cold list, not the cached one
    assert after["route"] == "cold" and after["cached"] is False
    assert client.delete("/v1/users/u6").status_code == 404


def test_render_items_splices_fragments_only_at_item_objects():
    odd = 'x"{"item_id":"y'
    slash = "back\\slash\\"
    cat = Catalog(
        {"a": (True, ("c1",)), odd: (True, ()), slash: (True, ("s",))},
        data={"a": {"title": "Ä", "price": 2.0, "image_url": None, "attributes": {}}},
    )
    body = json.dumps(
        {
            "items": [
                {"item_id": "a", "score": 1.0},
                {"item_id": odd, "score": 0.5},
                {"item_id": slash, "score": 0.2},
            ],
            "user_id": '{"item_id":"a"',
            "z": [{"item_id": "unknown", "score": 0}],
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    out = json.loads(cat.render_items(body, parse_fields("title,price,categories")))
    assert out["items"][0] == {
        "item_id": "a",
        "score": 1.0,
        "title": "Ä",
        "price": 2.0,
        "categories": ["c1"],
    }
    assert out["items"][1] == {
        "item_id": odd,
        "score": 0.5,
        "title": None,
        "price": None,
        "categories": [],
    }
    assert out["items"][2]["categories"] == ["s"] and out["items"][2]["item_id"] == slash
    assert out["user_id"] == '{"item_id":"a"'
    assert out["z"][0]["title"] is None
    assert cat.render_items(body, ()) == body


@pytest.mark.parametrize(
    "method, url, scope",
    [
        ("get", "/v1/items", "read"),
        ("get", "/v1/items/i1", "read"),
        ("delete", "/v1/items/i1", "catalog:write"),
        ("get", "/v1/users", "catalog:write"),
        ("get", "/v1/users/u1", "catalog:write"),
        ("delete", "/v1/users/u1", "catalog:write"),
    ],
)
def test_item_and_user_endpoints_need_their_scope(make_app, method, url, scope):
    app = make_app(API_KEYS="k-read=read;k-cat=catalog:write", API_KEYS_FOR_READS=True)
    client = app.test_client()
    client.put("/v1/items/i1", json={"title": "x"}, headers={"X-API-Key": "k-cat"})
    client.put("/v1/users/u1", json={"attributes": {}}, headers={"X-API-Key": "k-cat"})
    assert getattr(client, method)(url).status_code == 401
    other = "k-cat" if scope == "read" else "k-read"
    assert getattr(client, method)(url, headers={"X-API-Key": other}).status_code == 403
    right = "k-read" if scope == "read" else "k-cat"
    assert getattr(client, method)(url, headers={"X-API-Key": right}).status_code == 200
