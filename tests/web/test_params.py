"""Strict query parameters (STRICT_PARAMS) and JSON bodies, through Flask and the fast path;
similar items' category / offset / exclude."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.mark.parametrize(
    "url",
    [
        "/v1/items/i0/similar?categroy=books",
        "/v1/popular?n=2&foo=1",
        "/v1/latest?ofset=1",
        "/v1/users/u0/recommendations?categroy=books",  # through the fast path first
        "/v1/users/u0/events?x=1",
        "/v1/items?limt=2",
        "/healthz?verbose=1",
    ],
)
def test_unknown_query_parameters_are_refused_naming_them(served_app, url):
    r = served_app.test_client().get(url)
    assert r.status_code == 422, r.get_json()
    body = r.get_json()
    bad = url.split("?")[1].split("&")[-1].split("=")[0]
    assert bad in body["description"]
    assert body["detail"]["query"] == {bad: ["unknown parameter"]}


def test_declared_parameters_pass_and_lenient_mode_ignores_unknown_ones(served_app):
    from recsys.config import update_config

    client = served_app.test_client()
    assert client.get("/v1/users/u0/recommendations?n=2&offset=0&explain=true").status_code == 200
    auth = {"Authorization": "Bearer test-admin-token"}
    assert client.delete("/v1/admin/strategies/ease?field=weight", headers=auth).status_code == 200
    report = "/v1/admin/experiments/nope/report?window_hours=2"
    assert client.get(report, headers=auth).status_code == 404
    update_config(served_app, STRICT_PARAMS=False)
    r = client.get("/v1/items/i0/similar?categroy=books")
    assert r.status_code == 200
    assert client.get("/v1/users/u0/recommendations?categroy=books").status_code == 200


def test_fast_path_still_answers_plain_queries(served_app):
    """Strictness costs the fast path nothing: its plain queries are answered there."""
    from recsys.ops import metrics

    client = served_app.test_client()
    client.get("/v1/users/u1/recommendations?n=3")  # fills the cache
    before = metrics.CACHE_HITS._value.get()
    assert client.get("/v1/users/u1/recommendations?n=3").status_code == 200
    assert metrics.CACHE_HITS._value.get() == before + 1


def test_text_plain_body_is_a_clear_400(served_app):
    client = served_app.test_client()
    for path in ("/v1/recommendations", "/v1/events", "/v1/impressions"):
        r = client.post(path, data='{"items": ["i0"]}', content_type="text/plain")
        assert r.status_code == 400, (path, r.get_json())
        assert "body must be JSON" in r.get_json()["description"]


def _ids(r) -> list[str]:
    assert r.status_code == 200, r.get_json()
    return [it["item_id"] for it in r.get_json()["items"]]


def test_similar_items_take_category_offset_and_exclude(served_app):
    client = served_app.test_client()
    full = _ids(client.get("/v1/items/i0/similar?n=8"))
    assert len(full) >= 4 and "i0" not in full
    books = _ids(client.get("/v1/items/i0/similar?n=8&category=books"))
    assert books and all(int(i[1:]) % 2 == 0 for i in books)
    assert books == [i for i in full if int(i[1:]) % 2 == 0][: len(books)]
    assert _ids(client.get("/v1/items/i0/similar?n=2&offset=2")) == full[2:4]
    rest = _ids(client.get(f"/v1/items/i0/similar?n=8&exclude={full[0]},{full[1]}"))
    assert rest[:3] == full[2:5] and full[0] not in rest and full[1] not in rest


def test_a_cors_preflight_is_not_refused_the_call_is(make_app):
    app = make_app(CORS_ORIGINS=["http://shop.example"])
    client = app.test_client()
    pre = client.options(
        "/v1/popular?categroy=x",
        headers={"Origin": "http://shop.example", "Access-Control-Request-Method": "GET"},
    )
    assert pre.status_code in (200, 204)
    r = client.get("/v1/popular?categroy=x", headers={"Origin": "http://shop.example"})
    assert (
        r.status_code == 422 and r.headers["Access-Control-Allow-Origin"] == "http://shop.example"
    )
