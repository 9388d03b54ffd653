"""Latest items, popular without a user's items, a user's events (list, delete, forget an item:
audited, cached lists dropped) and impressions (idempotent; shown but not clicked)."""

from __future__ import annotations

import pytest

from tests.servicekit import ADMIN_TOKEN, BASKETS

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _ids(r) -> list[str]:
    assert r.status_code == 200, r.get_json()
    return [it["item_id"] for it in r.get_json()["items"]]


def test_latest_items_newest_first_by_category_and_paged(served_app):
    client = served_app.test_client()
    assert (
        client.put("/v1/items/new1", json={"title": "N1", "categories": ["books"]}).status_code
        == 201
    )
    assert (
        client.put("/v1/items/new2", json={"title": "N2", "categories": ["music"]}).status_code
        == 201
    )
    from recsys.serving.settings_store import get_settings

    get_settings(served_app).versions(force=True)
    r = client.get("/v1/latest?n=3&fields=title")
    assert _ids(r) == ["new2", "new1", "i9"]
    body = r.get_json()
    assert body["route"] == "latest" and body["items"][0]["title"] == "N2"
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True) and scores[0] > 1.7e9
    assert _ids(client.get("/v1/latest?n=2&category=books")) == ["new1", "i8"]
    assert _ids(client.get("/v1/latest?n=2&offset=1")) == ["new1", "i9"]
    client.delete("/v1/items/new2")
    assert _ids(client.get("/v1/latest?n=1")) == ["new1"]


def test_popular_without_what_the_user_has(served_app):
    client = served_app.test_client()
    everyone = _ids(client.get("/v1/popular?n=10"))
    mine = set(BASKETS["u1"])
    r = client.get("/v1/popular?n=10&user_id=u1")
    left = _ids(r)
    # The same items (ties may come in another order), most popular first.
    assert sorted(left) == sorted(i for i in everyone if i not in mine)
    scores = [it["score"] for it in r.get_json()["items"]]
    assert scores == sorted(scores, reverse=True)
    assert r.get_json()["degraded"] is False
    assert _ids(client.get("/v1/popular?n=10&user_id=stranger")) == everyone
    assert client.get("/v1/popular?user_id=%20").status_code in (400, 422)


def test_user_events_listed_newest_first_with_a_cursor(served_app):
    client = served_app.test_client()
    seen, cursor = [], None
    while True:
        q = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        r = client.get("/v1/users/u6/events", query_string=q)
        assert r.status_code == 200, r.get_json()
        page = r.get_json()
        assert len(page["events"]) <= 2
        seen += page["events"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [e["item_id"] for e in seen] == list(reversed(BASKETS["u6"]))
    assert {e["type"] for e in seen} == {"purchase"} and seen[0]["timestamp"].endswith("Z")
    assert len({e["event_id"] for e in seen}) == len(seen)
    assert client.get("/v1/users/u6/events?type=view").get_json()["events"] == []
    assert client.get("/v1/users/nobody/events").status_code == 404
    assert client.get("/v1/users/u6/events?cursor=%21%21").status_code == 400


def test_forget_an_item_deletes_events_drops_cached_lists_and_is_audited(served_app):
    client = served_app.test_client()
    client.post("/v1/impressions", json={"user_id": "u2", "items": ["i3", "i4"]})
    first = client.get("/v1/users/u2/recommendations?n=5").get_json()
    assert client.get("/v1/users/u2/recommendations?n=5").get_json()["cached"] is True
    assert "i4" not in [it["item_id"] for it in first["items"]]  # bought: excluded
    r = client.delete("/v1/users/u2/events?item_id=i4")
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {
        "user_id": "u2",
        "item_id": "i4",
        "event_id": None,
        "events_deleted": 1,
        "impressions_deleted": 1,
    }
    events = client.get("/v1/users/u2/events").get_json()["events"]
    assert "i4" not in [e["item_id"] for e in events]
    after = client.get("/v1/users/u2/recommendations?n=5").get_json()
    assert after["cached"] is False  # the cached list went with the events
    audit = client.get("/v1/admin/audit?action=events.delete", headers=AUTH).get_json()
    entry = audit["entries"][0]
    assert entry["target"] == "user:u2" and entry["after"]["events_deleted"] == 1
    assert "i4" not in str(entry)  # what was forgotten is not written down again
    # Forgetting an item with no events is not an error.
    r = client.delete("/v1/users/u2/events?item_id=never-seen")
    assert r.status_code == 200 and r.get_json()["events_deleted"] == 0
    assert client.delete("/v1/users/u2/events").status_code == 422  # item_id required


def test_delete_one_event(served_app):
    client = served_app.test_client()
    events = client.get("/v1/users/u0/events").get_json()["events"]
    target = events[0]
    r = client.delete(f"/v1/users/u0/events/{target['event_id']}")
    assert r.status_code == 200 and r.get_json()["events_deleted"] == 1
    left = client.get("/v1/users/u0/events").get_json()["events"]
    assert [e["event_id"] for e in left] == [e["event_id"] for e in events[1:]]
    assert client.delete(f"/v1/users/u0/events/{target['event_id']}").status_code == 404
    other = client.get("/v1/users/u1/events").get_json()["events"][0]["event_id"]
    assert client.delete(f"/v1/users/u0/events/{other}").status_code == 404  # not u0's
    assert client.delete("/v1/users/nobody/events/1").status_code == 404


def test_impressions_are_stored_idempotently_and_read_as_shown_not_clicked(served_app):
    from recsys.store import session_scope
    from recsys.store.impressions import shown_not_clicked

    client = served_app.test_client()
    shown = {"user_id": "u7", "items": ["i1", "i2", "i3"], "context": "home", "id": "l-1"}
    r = client.post("/v1/impressions", json=shown)
    assert r.status_code == 201 and r.get_json() == {"received": 1, "inserted": 1, "duplicates": 0}
    r = client.post("/v1/impressions", json=[shown, {**shown, "id": "l-2", "items": ["i5"]}])
    assert r.status_code == 201 and r.get_json() == {"received": 2, "inserted": 1, "duplicates": 1}
    assert client.post("/v1/impressions", json=shown).status_code == 200  # all duplicates
    ev = {"user_id": "u7", "item_id": "i2", "type": "click"}
    assert client.post("/v1/events", json=ev).status_code == 201
    with session_scope(served_app) as s:
        rows = shown_not_clicked(s, user_id="u7")
    assert [(u, i, p) for u, i, p, _ in rows] == [("u7", "i1", 0), ("u7", "i3", 2), ("u7", "i5", 0)]
    bad = client.post("/v1/impressions", json=[shown, {"user_id": "u7", "items": []}])
    assert bad.status_code == 422 and "index 1" in bad.get_json()["description"]


def test_new_endpoints_need_the_right_key(make_app, redis_url, redis_prefix):
    app = make_app(
        REDIS_URL=redis_url,
        REDIS_PREFIX=redis_prefix,
        API_KEYS={"rk": ["read"], "wk": ["events:write"]},
        API_KEYS_FOR_READS=True,
    )
    client = app.test_client()
    assert client.get("/v1/latest").status_code == 401
    assert client.get("/v1/latest", headers={"X-API-Key": "rk"}).status_code == 200
    assert client.get("/v1/popular?user_id=u1", headers={"X-API-Key": "rk"}).status_code == 200
    shown = {"user_id": "u1", "items": ["i1"]}
    assert (
        client.post("/v1/impressions", json=shown, headers={"X-API-Key": "rk"}).status_code == 403
    )
    assert (
        client.post("/v1/impressions", json=shown, headers={"X-API-Key": "wk"}).status_code == 201
    )
    assert client.get("/v1/users/u1/events", headers={"X-API-Key": "rk"}).status_code == 403
    r = client.get("/v1/users/u1/events", headers={"X-API-Key": "wk"})
    assert r.status_code == 200 and r.get_json()["events"] == []
    r = client.delete("/v1/users/u1/events?item_id=i1", headers={"X-API-Key": "wk"})
    assert r.status_code == 200 and r.get_json()["impressions_deleted"] == 1


def test_user_neighbors_by_items_in_common(served_app):
    client = served_app.test_client()
    r = client.get("/v1/users/u0/neighbors?n=4")
    assert r.status_code == 200, r.get_json()
    got = r.get_json()["neighbors"]
    assert [(x["user_id"], x["shared_items"]) for x in got] == [
        ("u1", 3),
        ("u2", 2),
        ("u6", 2),
        ("u3", 1),
    ]
    assert got[0]["score"] == pytest.approx(3 / 12**0.5, abs=1e-6)
    client.put("/v1/users/lonely", json={"attributes": {}})
    assert client.get("/v1/users/lonely/neighbors").get_json()["neighbors"] == []
    assert client.get("/v1/users/nobody/neighbors").status_code == 404
