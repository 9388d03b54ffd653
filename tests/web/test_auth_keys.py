"""API keys with scopes (recsys.web.auth), the items-from-events policy, and secrets taken from
the environment as strings."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from recsys.web.auth import parse_api_keys

KEYS = (
    "k-events=events:write;k-catalog=catalog:write;k-read=read;"
    "k-all=events:write,catalog:write,read"
)
EVENT = {"user_id": "u1", "item_id": "i1", "type": "view"}


def _h(key: str | None, header: str = "X-API-Key") -> dict:
    if key is None:
        return {}
    return {header: key} if header == "X-API-Key" else {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keyed(make_app):
    return make_app(API_KEYS=KEYS)


@pytest.mark.parametrize(
    "key,status",
    [
        (None, 401),
        ("nope", 401),
        ("k-catalog", 403),
        ("k-read", 403),
        ("k-events", 201),
        ("k-all", 201),
    ],
)
def test_events_write_scope(keyed, key, status):
    r = keyed.test_client().post("/v1/events", json=EVENT, headers=_h(key))
    assert r.status_code == status, r.get_json()
    if status >= 400:
        assert set(r.get_json()) >= {"code", "name", "description"}


@pytest.mark.parametrize(
    "key,status",
    [
        (None, 401),
        ("nope", 401),
        ("k-events", 403),
        ("k-read", 403),
        ("k-catalog", 201),
        ("k-all", 201),
    ],
)
@pytest.mark.parametrize("url", ["/v1/items/i9", "/v1/users/u9"])
def test_catalog_write_scope(keyed, key, status, url):
    body = {"title": "x"} if "items" in url else {"attributes": {}}
    r = keyed.test_client().put(url, json=body, headers=_h(key, "Authorization"))
    assert r.status_code == status, r.get_json()


def test_a_refused_write_changes_nothing(keyed):
    from recsys.store import session_scope
    from recsys.store.models import Event, Item

    client = keyed.test_client()
    assert client.put("/v1/items/i1", json={"available": False}).status_code == 401
    assert client.post("/v1/events", json=EVENT, headers=_h("k-read")).status_code == 403
    with session_scope(keyed) as s:
        assert s.scalar(select(func.count()).select_from(Event)) == 0
        assert s.scalar(select(func.count()).select_from(Item)) == 0


READS = ["/v1/users/u1/recommendations", "/v1/popular", "/v1/items/i1/similar"]


@pytest.mark.parametrize("url", READS)
def test_reads_stay_open_unless_configured(keyed, url):
    assert keyed.test_client().get(url).status_code in (200, 404)


@pytest.mark.parametrize(
    "url", [*READS, "/v1/users/u1/recommendations?n=3", "/v1/users/u1/experiments"]
)
def test_read_scope_with_api_keys_for_reads(make_app, redis_url, redis_prefix, url):
    # With Redis, so the plain recommendations request goes through the WSGI fast path too.
    app = make_app(
        API_KEYS=KEYS, API_KEYS_FOR_READS=True, REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix
    )
    client = app.test_client()
    assert client.get(url).status_code == 401
    assert client.get(url, headers=_h("bad")).status_code == 401
    assert client.get(url, headers=_h("k-events")).status_code == 403
    for key in ("k-read", "k-all"):
        r = client.get(url, headers=_h(key))
        assert r.status_code in (200, 404), r.get_json()  # 404: no item i1 (no models)
        # A list cached for one caller is not served to a caller without the scope.
        assert client.get(url).status_code == 401
    r = client.post("/v1/recommendations", json={"items": []}, headers=_h("k-read"))
    assert r.status_code == 200
    assert client.post("/v1/recommendations", json={"items": []}).status_code == 401


def test_admin_token_and_api_keys_are_separate(make_app):
    app = make_app(API_KEYS=KEYS, ADMIN_TOKEN="adm")
    client = app.test_client()
    assert (
        client.get("/v1/admin/strategies", headers=_h("k-all", "Authorization")).status_code == 401
    )
    assert (
        client.post("/v1/events", json=EVENT, headers=_h("adm", "Authorization")).status_code == 401
    )
    assert client.get("/v1/admin/strategies", headers=_h("adm", "Authorization")).status_code == 200


@pytest.mark.parametrize(
    "value,error",
    [
        ("k=events:write;k2=delete", "unknown scope"),
        ("justakey", "key=scope"),
        ("k=", "without scopes"),
        ("=read", "empty key"),
    ],
)
def test_bad_key_configuration_is_refused_at_start(value, error):
    with pytest.raises(ValueError, match=error):
        parse_api_keys(value)


def test_key_formats():
    a = parse_api_keys("a=read, events:write\nb=catalog:write")
    b = parse_api_keys({"a": ["read", "events:write"], "b": "catalog:write"})
    assert a == b and len(a) == 2 and "a" not in a  # stored as digests, not as given


# -- items created by events ---------------------------------------------------------------
def _items(app) -> int:
    from recsys.store import session_scope
    from recsys.store.models import Item

    with session_scope(app) as s:
        return s.scalar(select(func.count()).select_from(Item))


def test_events_create_at_most_max_new_items(make_app):
    app = make_app(EVENTS_MAX_NEW_ITEMS=3)
    client = app.test_client()
    batch = [{**EVENT, "item_id": f"new{k}"} for k in range(4)]
    r = client.post("/v1/events", json=batch)
    assert r.status_code == 422 and "EVENTS_MAX_NEW_ITEMS" in r.get_json()["description"]
    assert _items(app) == 0
    assert client.post("/v1/events", json=batch[:3]).status_code == 201
    assert _items(app) == 3
    # Known items do not count towards the limit.
    assert client.post("/v1/events", json=[*batch[:3], batch[3]]).status_code == 201
    assert _items(app) == 4


def test_events_never_create_items_when_off(make_app):
    app = make_app(EVENTS_CREATE_ITEMS=False)
    client = app.test_client()
    assert client.put("/v1/items/i1", json={"title": "I"}).status_code == 201
    r = client.post("/v1/events", json=[EVENT, {**EVENT, "item_id": "ghost"}])
    assert r.status_code == 422
    why = r.get_json()["description"]
    assert "'ghost'" in why and "index 1" in why and "'i1'" not in why
    assert _items(app) == 1
    assert client.put("/v1/items/ghost", json={"title": "G"}).status_code == 201
    assert client.post("/v1/events", json=[EVENT, {**EVENT, "item_id": "ghost"}]).status_code == 201


# -- secrets are strings ---------------------------------------------------------------------
@pytest.mark.parametrize("token", ["0", "true", "null", "[1]", " spaced "])
def test_admin_token_from_the_environment_is_a_string(monkeypatch, pg_schema_url, tmp_path, token):
    from recsys import create_app

    monkeypatch.setenv("RECSYS_ADMIN_TOKEN", token)
    monkeypatch.setenv("RECSYS_DEADLINE_MS", "100")  # other settings are still typed
    app = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": pg_schema_url,
            "MODEL_DIR": str(tmp_path),
            "PRELOAD_MODELS": False,
        }
    )
    assert app.config["ADMIN_TOKEN"] == token and app.config["DEADLINE_MS"] == 100
    client = app.test_client()
    if token == token.strip():  # a header value cannot carry the spaces around it
        ok = client.get("/v1/admin/strategies", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
    r = client.get("/v1/admin/strategies", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401  # admin is enabled ("0" is a token, not "off")
