"""CORS: off by default; with CORS_ORIGINS, preflights and actual requests (through Flask and
the WSGI fast path alike) carry the headers a browser needs, for allowed origins only."""

from __future__ import annotations

import pytest

from recsys.config import update_config

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

SHOP = "https://shop.example"
URL = "/v1/users/u6/recommendations?n=3"


def _cors(r) -> dict[str, str]:
    return {k: v for k, v in r.headers.items() if k.lower().startswith("access-control-")}


def test_cors_is_off_by_default(served_app):
    client = served_app.test_client()
    r = client.get(URL, headers={"Origin": SHOP})
    assert r.status_code == 200 and _cors(r) == {}
    r = client.options(URL, headers={"Origin": SHOP, "Access-Control-Request-Method": "GET"})
    assert _cors(r) == {}


def _app_beside(make_app, served_app, **config):
    """A second app on the same seeded store, cache and models, with ``config``."""
    from recsys.models.runtime import get_runtime

    cfg = {k: served_app.config[k] for k in ("REDIS_URL", "REDIS_PREFIX", "MODEL_DIR")}
    app = make_app(**cfg, DEADLINE_MS=5000, **config)
    for name in served_app.extensions["recsys.model_versions"]:
        assert get_runtime(app).get(name) is not None  # loaded, as served_app's are
    return app


@pytest.fixture
def cors_app(make_app, served_app):
    """A second app on the same seeded store, cache and models, with CORS on."""
    return _app_beside(make_app, served_app, CORS_ORIGINS=[SHOP, "https://other.example"])


def test_preflight_allows_the_configured_origin_and_headers(cors_app):
    client = cors_app.test_client()
    r = client.options(
        URL,
        headers={
            "Origin": SHOP,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "X-Request-ID, X-Priority",
        },
    )
    assert r.status_code == 200
    h = _cors(r)
    assert h["Access-Control-Allow-Origin"] == SHOP
    assert "GET" in h["Access-Control-Allow-Methods"]
    allowed = h["Access-Control-Allow-Headers"].lower()
    assert "x-request-id" in allowed and "x-priority" in allowed
    assert int(h["Access-Control-Max-Age"]) > 0
    r = client.options(
        URL, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    )
    assert "Access-Control-Allow-Origin" not in r.headers


@pytest.mark.parametrize("fast", [True, False])
def test_actual_request_gets_the_same_headers_on_both_paths(cors_app, fast):
    update_config(cors_app, FAST_CACHE_PATH=fast)
    client = cors_app.test_client()
    client.get(URL)  # fill the cache: the next request is a hit (the fast path's case)
    r = client.get(URL, headers={"Origin": SHOP})
    assert r.status_code == 200 and r.get_json()["cached"] is True
    h = _cors(r)
    assert h["Access-Control-Allow-Origin"] == SHOP
    assert "X-Request-ID" in h["Access-Control-Expose-Headers"]
    assert "Origin" in r.headers.get("Vary", "")
    r = client.get(URL, headers={"Origin": "https://evil.example"})
    assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers


def test_fast_path_headers_equal_flask_cors_headers(cors_app):
    client = cors_app.test_client()
    client.get(URL)
    fast = client.get(URL, headers={"Origin": SHOP})
    update_config(cors_app, FAST_CACHE_PATH=False)
    slow = client.get(URL, headers={"Origin": SHOP})
    assert _cors(fast) == _cors(slow) and fast.headers.get("Vary") == slow.headers.get("Vary")
    assert fast.data == slow.data


def test_cors_origins_must_be_a_list(make_app):
    with pytest.raises(ValueError):
        make_app(CORS_ORIGINS={"origin": SHOP})


def _vary(r) -> list[str]:
    return [v.strip().lower() for h in r.headers.get_all("Vary") for v in h.split(",")]


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("origin", [SHOP, "https://evil.example", None])
def test_every_answer_varies_on_origin(make_app, served_app, fast, origin):
    # One allowed origin (flask-cors itself says Vary only for several), each kind of request:
    # the answer depends on Origin whether it is allowed, another or absent, so a shared cache
    # must key on it; on both paths, on a 304 too, exactly once.
    app = _app_beside(make_app, served_app, CORS_ORIGINS=[SHOP], FAST_CACHE_PATH=fast)
    client = app.test_client()
    headers = {"Origin": origin} if origin else {}
    client.get(URL)  # a hit next: the fast path's case
    r = client.get(URL, headers=headers)
    assert r.status_code == 200 and r.get_json()["cached"] is True
    assert _vary(r).count("origin") == 1, r.headers
    again = client.get(URL, headers={**headers, "If-None-Match": r.headers["ETag"]})
    assert again.status_code == 304 and _vary(again).count("origin") == 1, again.headers
    missing = client.get("/v1/users/u6/recommendations?n=0", headers=headers)  # a 4xx
    assert missing.status_code >= 400 and _vary(missing).count("origin") == 1
    pre = client.options(URL, headers={**headers, "Access-Control-Request-Method": "GET"})
    assert {"origin", "access-control-request-method"} <= set(_vary(pre))


def test_no_vary_on_origin_when_cors_is_off(served_app):
    r = served_app.test_client().get(URL, headers={"Origin": SHOP})
    assert r.status_code == 200 and "origin" not in _vary(r)
