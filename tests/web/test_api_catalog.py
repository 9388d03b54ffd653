"""PUT /v1/items/<id> and PUT /v1/users/<id> on real PostgreSQL."""

from __future__ import annotations

import pytest

from recsys.serving.settings_store import get_settings

pytestmark = [pytest.mark.postgres]


def test_put_item_creates_then_updates(app, client):
    r = client.put(
        "/v1/items/sku-1", json={"title": "Mug", "categories": ["kitchen"], "price": 4.5}
    )
    assert r.status_code == 201
    body = r.get_json()
    assert body["created"] and body["available"] and body["categories"] == ["kitchen"]
    r = client.put("/v1/items/sku-1", json={"price": 5.0})
    assert r.status_code == 200
    body = r.get_json()
    assert body == {
        **body,
        "title": "Mug",
        "price": 5.0,
        "categories": ["kitchen"],
        "created": False,
    }


def test_catalog_version_moves_only_for_availability_or_categories(app, client):
    s = get_settings(app)
    client.put("/v1/items/a", json={"title": "A"})
    v = s.versions(force=True).catalog
    client.put("/v1/items/a", json={"title": "A2", "price": 1.0})
    assert s.versions(force=True).catalog == v
    client.put("/v1/items/a", json={"available": False})
    assert s.versions(force=True).catalog == v + 1
    client.put("/v1/items/a", json={"categories": ["x"]})
    assert s.versions(force=True).catalog == v + 2
    from recsys.serving.catalog import get_catalog_store

    cat = get_catalog_store(app).current(v + 2)
    assert not cat.is_available("a") and cat.categories("a") == ("x",)


@pytest.mark.parametrize(
    "payload",
    [
        {"available": "no"},
        {"price": "cheap"},
        {"categories": "books"},
        {"categories": [""]},
        {"colour": "red"},
        [],
    ],
)
def test_put_item_rejects_bad_input(client, payload):
    r = client.put("/v1/items/x", json=payload)
    assert r.status_code == 422 and r.get_json()["description"]


def test_put_item_id_too_long(client):
    assert client.put("/v1/items/" + "x" * 200, json={}).status_code == 400


def test_put_user(client):
    r = client.put("/v1/users/alice", json={"attributes": {"country": "FR"}})
    assert r.status_code == 201 and r.get_json()["attributes"] == {"country": "FR"}
    r = client.put("/v1/users/alice", json={"attributes": {"country": "DE"}})
    assert r.status_code == 200 and not r.get_json()["created"]
    assert client.put("/v1/users/alice", json={"attributes": []}).status_code == 422
