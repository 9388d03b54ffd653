"""The WSGI fast path (recsys.web.fastpath) on real PostgreSQL + Redis: cache hits, and misses of
plain requests computed below Flask.

Every comparison is against the same app with ``FAST_CACHE_PATH`` switched off (the flag is read
per request), and "served by the fast path" is observed by counting the calls that reach the
wrapped Flask app.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

import pytest
from prometheus_client import REGISTRY

from recsys.config import update_config
from recsys.serving import admission
from recsys.web import fastpath
from recsys.web.fastpath import ENDPOINT, FastCachePath, parse_query, path_user
from recsys.web.schemas import RecQuery
from tests.servicekit import ADMIN_TOKEN
from tests.test_faults import _warm_app, private_redis  # noqa: F401 - a fixture

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def flask_calls(served_app):
    """PATH_INFOs of the requests that reached Flask (behind the fast path)."""
    return _spy(served_app)


def _spy(app) -> list[str]:
    from recsys.ops.logs import RequestContext

    outer = app.wsgi_app
    assert isinstance(outer, RequestContext)  # request ids and the access log, in front
    mw = outer.wsgi_app
    assert isinstance(mw, FastCachePath)
    inner, calls = mw.wsgi_app, []

    def counting(environ, start_response):
        calls.append(environ["PATH_INFO"])
        return inner(environ, start_response)

    mw.wsgi_app = counting
    return calls


@pytest.fixture
def client(served_app):
    client = served_app.test_client()
    # One request id for every call, so the two paths' headers compare equal.
    client.environ_base["HTTP_X_REQUEST_ID"] = "fastpath-test"
    return client


def _get(app, client, url, fast: bool, **kw):
    update_config(app, FAST_CACHE_PATH=fast)
    try:
        return client.get(url, **kw)
    finally:
        update_config(app, FAST_CACHE_PATH=True)


def _headers(response) -> list[tuple[str, str]]:
    """The response's headers but Server-Timing (stage times differ from call to call)."""
    return [(k, v) for k, v in response.headers.to_wsgi_list() if k != "Server-Timing"]


def _sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _ids(body) -> list[str]:
    return [i["item_id"] for i in body["items"]]


# -- hits ---------------------------------------------------------------------------------------
@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.parametrize(
    "user, query",
    [
        ("u6", "n=4"),
        ("u6", "n=4&explain=true"),
        ("u6", "explain=1&n=3&offset=2"),
        ("nobody", "n=5&category=music&explain=false"),
        ("u3", "exclude=i0,%20i3,,i9&n=6&explain=0"),
        ("u3", "n=3&offset=3&category=books&exclude=i2&explain=true"),
        ("u2", ""),
        ("caf\u00e9 \u00fc", "n=2"),  # percent-encoded UTF-8 in the path
    ],
)
def test_answers_are_byte_identical_to_the_flask_answers(
    served_app, client, flask_calls, user, query
):
    from recsys.serving.cache import get_cache

    url = f"/v1/users/{quote(user, safe='')}/recommendations" + (f"?{query}" if query else "")
    first = client.get(url)  # a miss: computed by the fast path and stored
    assert first.status_code == 200 and first.get_json()["cached"] is False
    assert len(flask_calls) == 0, "the miss went through Flask"
    # The same miss again (the user's token renewed), this time computed by the view.
    assert get_cache(served_app).invalidate_users([user])
    slow_miss = _get(served_app, client, url, fast=False)
    assert len(flask_calls) == 1 and slow_miss.get_json()["cached"] is False
    assert slow_miss.get_data() == first.get_data()
    assert _headers(slow_miss) == _headers(first)
    # Hits.
    slow = _get(served_app, client, url, fast=False)
    assert len(flask_calls) == 2
    fast = client.get(url)
    assert len(flask_calls) == 2, "the hit went through Flask"
    assert fast.status_code == slow.status_code == 200
    assert fast.get_data() == slow.get_data()
    assert _headers(fast) == _headers(slow)
    assert fast.get_json() == {**first.get_json(), "cached": True}
    assert fast.get_json()["user_id"] == user


@pytest.mark.postgres
@pytest.mark.redis
def test_normal_priority_is_served_and_anything_else_falls_through(client, flask_calls):
    url = "/v1/users/u6/recommendations?n=3"
    client.get(url)
    for value in ("", "normal"):
        r = client.get(url, headers={"X-Priority": value})
        assert r.get_json()["cached"] is True
    assert len(flask_calls) == 0
    for value in ("high", "LOW", " normal"):
        r = client.get(url, headers={"X-Priority": value})
        assert r.status_code == 200 and r.get_json()["cached"] is True
    assert len(flask_calls) == 3
    # Misses with a priority are Flask's too (the view decides their deadline and shedding).
    r = client.get(url + "&exclude=prio", headers={"X-Priority": "high"})
    assert r.status_code == 200 and r.get_json()["cached"] is False
    assert len(flask_calls) == 4


# -- anything doubtful goes to Flask ------------------------------------------------------------
BAD = [
    "/v1/users/u6/recommendations?n=0",
    "/v1/users/u6/recommendations?n=101",
    "/v1/users/u6/recommendations?n=abc",
    "/v1/users/u6/recommendations?n=",
    "/v1/users/u6/recommendations?n=3.0",
    "/v1/users/u6/recommendations?offset=-1",
    "/v1/users/u6/recommendations?offset=1001",
    "/v1/users/u6/recommendations?explain=maybe",
    "/v1/users/u6/recommendations?category=",
    "/v1/users/u6/recommendations?category=" + "c" * 129,
    "/v1/users/u6/recommendations?category=a%00b",
    "/v1/users/u6/recommendations?exclude=" + ",".join(f"x{k}" for k in range(501)),
    "/v1/users/u6/recommendations?exclude=" + "x" * 129,
    "/v1/users/" + "x" * 200 + "/recommendations",
    "/v1/users/%20/recommendations",
    "/v1/users/a%00b/recommendations",
]
# Valid for Flask (or not an error at all), but not in a form the fast path is sure about.
ODD = [
    "/v1/users/u6/recommendations?n=3&n=4",
    "/v1/users/u6/recommendations?n=3&zzz=1",
    "/v1/users/u6/recommendations?n=%2B3",
    "/v1/users/u6/recommendations?n=%203",
    "/v1/users/u6/recommendations?n=3&explain=yes",
    "/v1/users/u6/recommendations?n=3&explain=True",
    "/v1/users/u6/recommendations?n=3&category=%FF",
    "/v1/users/u6/recommendations/",
    "/v1/users/u6%2Fx/recommendations",
    "/v1/users//recommendations",
]


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.parametrize("url", BAD + ODD)
def test_doubtful_requests_get_the_flask_answer(served_app, client, flask_calls, url):
    # Cache the plain list first, so a misread query would find a hit to serve.
    client.get("/v1/users/u6/recommendations?n=3")
    client.get("/v1/users/u6/recommendations")
    _get(served_app, client, url, fast=False)  # whatever it computes is cached now
    slow = _get(served_app, client, url, fast=False)
    before = len(flask_calls)
    fast = client.get(url)
    assert len(flask_calls) == before + 1, "answered by the fast path"
    assert fast.status_code == slow.status_code
    assert fast.get_data() == slow.get_data()
    assert _headers(fast) == _headers(slow)
    if url in BAD:
        assert 400 <= fast.status_code < 500
        body = fast.get_json()
        assert body["code"] == fast.status_code and body["description"]


@pytest.mark.postgres
@pytest.mark.redis
def test_bad_priority_header_and_other_methods_get_the_flask_answer(served_app, client):
    url = "/v1/users/u6/recommendations?n=3"
    client.get(url)
    calls = _spy(served_app)
    hdr = {"X-Priority": "urgent"}
    slow = _get(served_app, client, url, fast=False, headers=hdr)
    fast = client.get(url, headers=hdr)
    assert fast.status_code == slow.status_code == 400
    assert fast.get_json() == slow.get_json() and "X-Priority" in fast.get_json()["description"]
    head = client.head(url)
    assert head.status_code == 200 and head.headers["Content-Length"]
    assert client.post(url).status_code == 405
    assert len(calls) == 4


def test_parse_query_agrees_with_the_schema():
    schema = RecQuery()
    cases = [
        "",
        "n=1",
        "n=100",
        "n=007",
        "n=%31",
        "offset=0&n=10",
        "offset=1000",
        "explain=true",
        "explain=false",
        "explain=1",
        "explain=0",
        "category=music",
        "category=%C3%A9t%C3%A9",
        "category=a+b",
        "exclude=",
        "exclude=a,b,%20c",
        "exclude=a%2Cb",
        "n=5&offset=5&category=books&exclude=i1&explain=true",
    ]
    for qs in cases:
        got = parse_query(qs)
        assert got is not None, qs
        from urllib.parse import parse_qsl

        assert got == schema.load(dict(parse_qsl(qs, keep_blank_values=True))), qs
    for qs in [
        "n=0",
        "n=101",
        "n=-1",
        "n=+1",
        "n= 1",
        "n=1_0",
        "n=1e1",
        "n=\u0661",
        "n=12345678901234567890",
        "n",
        "n=1&n=1",
        "N=1",
        "offset=1001",
        "explain=yes",
        "explain=",
        "category=",
        "category=%00",
        "category=%ED%A0%80",
        "category=%FF",
        "foo=bar",
        "q=\u00e9",
    ]:
        assert parse_query(qs) is None, qs


def test_path_user():
    assert path_user("/v1/users/u1/recommendations") == "u1"
    assert path_user("/v1/users/caf\u00c3\u00a9/recommendations") == "caf\u00e9"
    for path in [
        "/v1/users/u1/recommendations/",
        "/v1/users//recommendations",
        "/v1/users/a/b/recommendations",  # %2F arrives decoded
        "/v1/users/ /recommendations",
        "/v1/users/a\x00/recommendations",
        "/v1/users/\xff/recommendations",
        "/v1/users/" + "x" * 129 + "/recommendations",
        "/v1/users/u1/recommendations\n",
        "/v2/users/u1/recommendations",
    ]:
        assert path_user(path) is None, path


# -- freshness ----------------------------------------------------------------------------------
@pytest.mark.postgres
@pytest.mark.redis
def test_event_makes_the_next_answer_fresh(client, flask_calls):
    url = "/v1/users/u0/recommendations?n=3"
    first = client.get(url).get_json()
    assert client.get(url).get_json()["cached"] is True
    assert len(flask_calls) == 0
    top = _ids(first)[0]
    events = [
        {"user_id": "u0", "item_id": top, "type": "purchase"},
        {"user_id": "u0", "item_id": "i9", "type": "purchase"},
        {"user_id": "u0", "item_id": "i5", "type": "purchase"},
    ]
    assert client.post("/v1/events", json=events).status_code == 201
    after = client.get(url).get_json()
    assert after["cached"] is False and top not in _ids(after) and after["route"] == "warm"
    assert client.get(url).get_json() == {**after, "cached": True}
    assert flask_calls.count("/v1/users/u0/recommendations") == 0


@pytest.mark.postgres
@pytest.mark.redis
def test_admin_change_makes_the_next_answer_fresh(client, flask_calls):
    url = "/v1/users/u6/recommendations?n=3"
    client.get(url)
    assert client.get(url).get_json()["cached"] is True
    assert len(flask_calls) == 0
    r = client.patch("/v1/admin/strategies", json={"ease": {"enabled": False}}, headers=AUTH)
    assert r.status_code == 200, r.get_json()
    body = client.get(url).get_json()
    assert body["cached"] is False and set(body["model_versions"]) == {"popular"}
    assert flask_calls.count("/v1/users/u6/recommendations") == 0


@pytest.mark.postgres
@pytest.mark.redis
def test_users_in_an_experiment_go_through_flask(served_app, client, flask_calls):
    from sqlalchemy import func, select

    from recsys.store import session_scope
    from recsys.store.models import Exposure

    variants = [{"name": v, "weight": 0.5, "config": {}} for v in ("a", "b")]
    body = {"name": "fp1", "variants": variants}
    assert client.post("/v1/admin/experiments", json=body, headers=AUTH).status_code == 201
    url = "/v1/users/u6/recommendations?n=3"
    first = client.get(url).get_json()
    again = client.get(url).get_json()
    assert again["cached"] is True and again["experiment"]["name"] == "fp1"
    assert first["experiment"] == again["experiment"]
    assert flask_calls.count("/v1/users/u6/recommendations") == 2
    with session_scope(served_app) as s:
        assert s.scalar(select(func.count()).select_from(Exposure)) == 2


# -- metrics and accounting ---------------------------------------------------------------------
@pytest.mark.postgres
@pytest.mark.redis
def test_metrics_count_each_fast_hit_once(served_app, client, flask_calls):
    url = "/v1/users/u6/recommendations?n=2&explain=true"
    hits0 = _sample("recsys_cache_hits_total")
    misses0 = _sample("recsys_cache_misses_total")
    ok0 = _sample("recsys_requests_total", endpoint=ENDPOINT, status="200")
    lat0 = _sample("recsys_request_latency_seconds_count", endpoint=ENDPOINT, route="warm")
    assert client.get(url).get_json()["route"] == "warm"  # the miss
    assert _sample("recsys_cache_misses_total") == misses0 + 1
    assert _sample("recsys_cache_hits_total") == hits0

    seen_in_flight = []
    resolver = served_app.extensions["recsys.variant_resolver"]

    def watching(user_id):
        seen_in_flight.append(admission.in_flight())
        return resolver(user_id)

    served_app.extensions["recsys.variant_resolver"] = watching
    n = 7
    for _ in range(n):
        assert client.get(url).get_json()["cached"] is True
    assert len(flask_calls) == 0
    assert _sample("recsys_cache_hits_total") == hits0 + n
    assert _sample("recsys_cache_misses_total") == misses0 + 1
    assert _sample("recsys_requests_total", endpoint=ENDPOINT, status="200") == ok0 + n + 1
    lat = _sample("recsys_request_latency_seconds_count", endpoint=ENDPOINT, route="warm")
    assert lat == lat0 + n + 1
    # Each hit counted itself in flight (overload shedding sees it), and finished.
    assert seen_in_flight == [1] * n and admission.in_flight() == 0


@pytest.mark.postgres
@pytest.mark.redis
def test_a_miss_through_the_fast_path_counts_one_miss(client, flask_calls):
    hits0 = _sample("recsys_cache_hits_total")
    misses0 = _sample("recsys_cache_misses_total")
    for k in range(3):
        body = client.get(f"/v1/users/u1/recommendations?n={k + 1}").get_json()
        assert body["cached"] is False
    assert _sample("recsys_cache_misses_total") == misses0 + 3
    assert _sample("recsys_cache_hits_total") == hits0
    assert len(flask_calls) == 0 and admission.in_flight() == 0


@pytest.mark.postgres
@pytest.mark.redis
def test_a_miss_reads_redis_once(served_app, client, flask_calls, monkeypatch):
    """A miss the fast path computes reuses its lookup instead of a second MGET; with
    ``FAST_MISS_PATH`` off the view computes it from its own lookup (nothing passes from the
    middleware to the view through the WSGI environ)."""
    from recsys.serving.cache import get_cache

    backend = get_cache(served_app).backend
    real, reads = backend.mget, []

    def counting(keys):
        reads.append(list(keys))
        return real(keys)

    monkeypatch.setattr(backend, "mget", counting)
    body = client.get("/v1/users/u1/recommendations?n=4&exclude=once").get_json()
    assert body["cached"] is False and len(flask_calls) == 0
    assert len(reads) == 1  # the peek, reused
    body = client.get("/v1/users/u1/recommendations?n=4&exclude=once").get_json()
    assert body["cached"] is True and len(reads) == 2 and len(flask_calls) == 0
    update_config(served_app, FAST_MISS_PATH=False)
    body = client.get("/v1/users/u1/recommendations?n=4&exclude=twice").get_json()
    assert body["cached"] is False and len(flask_calls) == 1
    assert len(reads) == 4  # the middleware's peek, then the view's own lookup


# -- failures -----------------------------------------------------------------------------------
@pytest.mark.postgres
@pytest.mark.redis
def test_an_exception_falls_through_and_is_logged_once(
    served_app, client, flask_calls, monkeypatch, caplog
):
    from recsys.serving.cache import get_cache

    url = "/v1/users/u6/recommendations?n=3"
    client.get(url)
    cache = get_cache(served_app)

    def broken(*a, **kw):
        raise RuntimeError("peek broke")

    monkeypatch.setattr(cache, "peek", broken)
    with caplog.at_level(logging.WARNING, logger=fastpath.__name__):
        for _ in range(3):
            r = client.get(url)
            assert r.status_code == 200 and r.get_json()["cached"] is True
    assert len(flask_calls) == 3
    assert [r.getMessage() for r in caplog.records if r.name == fastpath.__name__] == [
        "cache fast path failed; served through Flask"
    ]
    assert admission.in_flight() == 0


@pytest.mark.postgres
@pytest.mark.redis
def test_a_failing_miss_falls_through_to_flask(
    served_app, client, flask_calls, monkeypatch, caplog
):
    """An exception while the fast path computes a miss: Flask serves the request, computing
    at once (the stampede lock was released, not left to expire)."""
    from recsys.serving.cache import get_cache
    from recsys.serving.pipeline import get_pipeline

    pipeline = get_pipeline(served_app)
    real, calls = pipeline.history, []

    def once_broken(*a, **kw):
        calls.append(a)
        if len(calls) == 1:
            raise RuntimeError("history broke")
        return real(*a, **kw)

    monkeypatch.setattr(pipeline, "history", once_broken)
    cache = get_cache(served_app)
    # Whether each attempt to take the entry's stampede lock got it: Flask's must, or it
    # would wait (lock_wait_ms) for a lock nobody holds any more.
    # (A miss takes it with ``set_nx_get``, which also reads the user's kept history.)
    real_set_nx, real_set_nx_get, took_lock = cache.backend.set_nx, cache.backend.set_nx_get, []

    def set_nx(*a, **kw):
        took_lock.append(real_set_nx(*a, **kw))
        return took_lock[-1]

    def set_nx_get(*a, **kw):
        got = real_set_nx_get(*a, **kw)
        took_lock.append(got[0])
        return got

    monkeypatch.setattr(cache.backend, "set_nx", set_nx)
    monkeypatch.setattr(cache.backend, "set_nx_get", set_nx_get)
    url = "/v1/users/u6/recommendations?n=3&exclude=fails-once"
    with caplog.at_level(logging.WARNING, logger=fastpath.__name__):
        r = client.get(url)
    assert r.status_code == 200 and r.get_json()["cached"] is False and r.get_json()["items"]
    assert len(calls) == 2 and len(flask_calls) == 1
    assert took_lock == [True, True], "Flask found the lock still held"
    assert [r.getMessage() for r in caplog.records if r.name == fastpath.__name__] == [
        "cache fast path failed; served through Flask"
    ]
    assert client.get(url).get_json()["cached"] is True and len(flask_calls) == 1
    assert admission.in_flight() == 0


@pytest.mark.postgres
def test_redis_down_falls_through(make_app, private_redis):  # noqa: F811
    proc, url = private_redis
    app = _warm_app(make_app, REDIS_URL=url, REDIS_PREFIX="fastpath")
    client = app.test_client()
    calls = _spy(app)
    first = client.get("/v1/users/u0/recommendations?n=3").get_json()
    assert client.get("/v1/users/u0/recommendations?n=3").get_json()["cached"] is True
    assert len(calls) == 0
    proc.kill()
    proc.wait()
    for _ in range(2):
        r = client.get("/v1/users/u0/recommendations?n=3")
        assert r.status_code == 200
        body = r.get_json()
        assert body["cached"] is False and body["items"] == first["items"]
    assert len(calls) == 2


@pytest.mark.postgres
def test_switched_off_by_config(make_app, redis_url, redis_prefix):
    app = _warm_app(make_app, REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, FAST_CACHE_PATH=False)
    client = app.test_client()
    calls = _spy(app)
    client.get("/v1/users/u6/recommendations")
    assert client.get("/v1/users/u6/recommendations").get_json()["cached"] is True
    assert len(calls) == 2


def test_not_installed_unless_route_and_schema_are_the_known_ones(monkeypatch):
    from apiflask import APIFlask
    from apiflask.fields import String

    bare = APIFlask(__name__)
    before = bare.wsgi_app
    fastpath.init_app(bare)  # no such route
    assert bare.wsgi_app == before
    assert fastpath.schema_as_expected()
    monkeypatch.setattr(fastpath, "_FIELDS", {**fastpath._FIELDS, "strategy": String()})
    assert not fastpath.schema_as_expected()


@pytest.mark.postgres
@pytest.mark.redis
def test_healthz_is_answered_here_as_the_view_answers_it(served_app, client, flask_calls):
    import io
    import json

    from recsys.ops import logs

    buf = io.StringIO()
    level = logging.getLogger().level
    handler = logs.configure("INFO", "json", stream=buf)
    try:
        ok0 = _sample("recsys_requests_total", endpoint="health.healthz", status="200")
        lat0 = _sample(
            "recsys_request_latency_seconds_count", endpoint="health.healthz", route="none"
        )
        slow = _get(served_app, client, "/healthz", fast=False)
        assert flask_calls == ["/healthz"]
        fast = client.get("/healthz")
        assert flask_calls == ["/healthz"], "the fast /healthz went through Flask"
        assert fast.status_code == slow.status_code == 200
        assert fast.get_data() == slow.get_data()
        assert _headers(fast) == _headers(slow)
        assert _sample("recsys_requests_total", endpoint="health.healthz", status="200") == ok0 + 2
        lat = _sample(
            "recsys_request_latency_seconds_count", endpoint="health.healthz", route="none"
        )
        assert lat == lat0 + 2 and admission.in_flight() == 0
        access = [json.loads(x) for x in buf.getvalue().splitlines()]
        access = [a for a in access if a["logger"] == "recsys.access"]
        for a in access:
            a.pop("time"), a.pop("latency_ms")
        assert len(access) == 2 and access[0] == access[1]
        assert access[0]["endpoint"] == "/healthz" and access[0]["status"] == 200
        # Anything else about it goes to Flask: another method, a body.
        assert client.post("/healthz").status_code == 405
        assert client.get("/healthz", data=b"x").status_code == 200
        assert flask_calls == ["/healthz"] * 3
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(level)
