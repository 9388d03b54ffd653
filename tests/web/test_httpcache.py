"""HTTP caching of lists (ETag, If-None-Match -> 304, Cache-Control) and Server-Timing, on the
WSGI fast path and through Flask."""

from __future__ import annotations

import pytest

from recsys.config import update_config
from recsys.web.httpcache import etag, list_headers, not_modified

URL = "/v1/users/u6/recommendations?n=3"


def test_etag_ignores_only_the_cached_flag():
    a = b'{"cached":false,"degraded":false,"items":[]}'
    assert etag(a) == etag(a.replace(b"false", b"true", 1)) and etag(a).startswith('W/"')
    assert etag(a) != etag(a.replace(b"[]", b'[{"item_id":"x","score":1}]'))
    assert list_headers(a, 60)[1][1] == ("Cache-Control", "private, max-age=60")
    degraded = a.replace(b'"degraded":false', b'"degraded":true')
    assert list_headers(degraded, 60)[1][1] == ("Cache-Control", "no-cache")
    tag = etag(a)
    assert not_modified(tag, tag) and not_modified(f'"x", {tag}', tag)
    assert not_modified(tag.removeprefix("W/"), tag) and not_modified("*", tag)
    assert not not_modified('"other"', tag) and not not_modified(None, tag)


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.parametrize("fast", [True, False])
def test_if_none_match_gets_304_until_the_list_changes(served_app, fast):
    update_config(served_app, FAST_CACHE_PATH=fast)
    client = served_app.test_client()
    first = client.get(URL)
    tag = first.headers["ETag"]
    assert first.headers["Cache-Control"] == f"private, max-age={served_app.config['CACHE_TTL']}"
    hit = client.get(URL, headers={"If-None-Match": tag})  # the cached copy: same ETag
    assert hit.status_code == 304 and hit.data == b"" and hit.headers["ETag"] == tag
    assert client.get(URL, headers={"If-None-Match": '"nope"'}).status_code == 200
    other = client.get(URL + "&fields=price", headers={"If-None-Match": tag})
    assert other.status_code == 200 and other.headers["ETag"] != tag  # another representation
    client.post("/v1/events", json={"user_id": "u6", "item_id": "i5", "type": "purchase"})
    changed = client.get(URL, headers={"If-None-Match": tag})
    assert changed.status_code == 200 and changed.headers["ETag"] != tag


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.parametrize("url", ["/v1/items/i1/similar?n=3", "/v1/popular?n=3"])
def test_other_lists_are_conditional_too(served_app, url):
    client = served_app.test_client()
    r = client.get(url)
    assert r.headers["Cache-Control"].startswith("private, max-age=")
    assert client.get(url, headers={"If-None-Match": r.headers["ETag"]}).status_code == 304


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.parametrize("fast", [True, False])
def test_server_timing_names_the_stages(served_app, fast):
    update_config(served_app, FAST_CACHE_PATH=fast)
    client = served_app.test_client()
    miss = client.get(URL + "&exclude=timing").headers["Server-Timing"]
    hit = client.get(URL + "&exclude=timing").headers["Server-Timing"]

    def stages(header):
        return [p.split(";")[0].strip() for p in header.split(",")]

    # The pipeline's stages (recsys.serving.pipeline), in the order they ran.
    ran = stages(miss)
    want = ["snapshot", "cache_lookup", "history", "turn_wait", "render", "cache_store", "fields"]
    assert [s for s in ran if s in want] == want, ran
    assert {"route", "candidates", "blend", "rules", "total"} <= set(ran)
    assert "history" not in stages(hit) and {"cache_lookup", "fields", "total"} <= set(stages(hit))
    durations = [float(p.split("dur=")[1]) for p in miss.split(",")]
    assert all(d >= 0 for d in durations)
    assert "total" in stages(client.get("/healthz").headers["Server-Timing"])
