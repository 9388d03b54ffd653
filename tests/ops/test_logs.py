"""Request ids (in, out, on every log line) and the one-line-per-request JSON access log, on
the WSGI fast path and through Flask alike."""

from __future__ import annotations

import io
import json
import logging

import pytest

from recsys.config import update_config
from recsys.ops import logs
from tests.servicekit import ADMIN_TOKEN

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
URL = "/v1/users/u6/recommendations?n=3"


@pytest.fixture
def lines():
    """JSON log lines the app writes while the test runs (logs.configure on a buffer)."""
    buf = io.StringIO()
    level = logging.getLogger().level
    handler = logs.configure("INFO", "json", stream=buf)
    try:
        yield lambda: [json.loads(x) for x in buf.getvalue().splitlines()]
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(level)


def _access(records):
    return [r for r in records if r["logger"] == "recsys.access"]


@pytest.mark.parametrize("fast", [True, False])
def test_request_id_is_echoed_or_made(served_app, fast):
    update_config(served_app, FAST_CACHE_PATH=fast)
    client = served_app.test_client()
    client.get(URL)
    r = client.get(URL, headers={"X-Request-ID": "shop-123"})
    assert r.get_json()["cached"] is True
    assert r.headers["X-Request-ID"] == "shop-123"
    made = client.get(URL).headers["X-Request-ID"]
    assert len(made) == 32 and made != client.get(URL).headers["X-Request-ID"]
    bad = client.get(URL, headers={"X-Request-ID": "a b\u00e9"}).headers["X-Request-ID"]
    assert bad != "a b\u00e9" and len(bad) == 32
    r = client.get("/v1/items/nope", headers={"X-Request-ID": "err-1"})
    assert r.status_code == 404 and r.headers["X-Request-ID"] == "err-1"


@pytest.mark.parametrize("fast", [True, False])
def test_one_access_line_per_request_with_its_fields(served_app, lines, fast):
    update_config(served_app, FAST_CACHE_PATH=fast)
    client = served_app.test_client()
    client.get(URL, headers={"X-Request-ID": "first"})
    client.get(URL, headers={"X-Request-ID": "second"})
    client.get("/healthz", headers={"X-Request-ID": "third"})
    access = _access(lines())
    assert [a["request_id"] for a in access] == ["first", "second", "third"]
    first, second, third = access
    for a in (first, second):
        assert a["method"] == "GET" and a["path"] == "/v1/users/u6/recommendations"
        assert a["status"] == 200 and a["latency_ms"] > 0
        assert a["endpoint"] == "/v1/users/<user_id>/recommendations"
        assert a["route"] == "warm" and a["degraded"] is False
        assert a["level"] == "INFO" and a["time"]
    assert (first["cached"], second["cached"]) == (False, True)
    assert third["path"] == "/healthz" and "cached" not in third


def test_every_line_of_a_request_carries_its_id(served_app, lines):
    client = served_app.test_client()
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Request-ID": "adm-7", "X-Actor": "ann"}
    r = client.patch("/v1/admin/routing", json={"cold_threshold": 4}, headers=auth)
    assert r.status_code == 200
    records = [x for x in lines() if x["request_id"] == "adm-7"]
    change = [x for x in records if x["logger"] == "recsys.ops.audit"]
    assert change and change[0]["actor"] == "ann" and change[0]["action"]
    assert len(_access(records)) == 1
    outside = [x for x in lines() if x["request_id"] == "-"]
    assert not [x for x in outside if x["logger"] == "recsys.access"]


def test_log_level_and_access_log_switch(served_app):
    buf = io.StringIO()
    level = logging.getLogger().level
    logs.configure("WARNING", "text", stream=buf)
    try:
        served_app.test_client().get("/healthz")
        assert buf.getvalue() == ""
        logs.configure("INFO", "text", stream=buf)
        served_app.test_client().get("/healthz", headers={"X-Request-ID": "t-1"})
        assert "[t-1] recsys.access: request" in buf.getvalue()
        update_config(served_app, ACCESS_LOG=False)
        before = buf.getvalue()
        served_app.test_client().get("/healthz")
        assert buf.getvalue() == before
    finally:
        for h in list(logging.getLogger().handlers):
            if getattr(h, "_recsys_handler", False):
                logging.getLogger().removeHandler(h)
        logging.getLogger().setLevel(level)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_fast_access_line_is_the_formatters_line(fmt):
    buf = io.StringIO()
    level = logging.getLogger().level
    handler = logs.configure("INFO", fmt, stream=buf)
    fields = {"status": 200, "path": "/v1/\u00e9", "cached": True, "latency_ms": 1.5}
    try:
        assert logs._ACCESS_LINE is not None and logs._ACCESS_LINE.usable()
        token = logs.REQUEST_ID.set("r-1")
        try:
            logs.access_log.info("request", extra=dict(fields))
        finally:
            logs.REQUEST_ID.reset(token)
        logs._ACCESS_LINE.write("r-1", dict(fields))
        slow, fast = buf.getvalue().splitlines()
        if fmt == "json":
            slow, fast = json.loads(slow), json.loads(fast)
            assert slow.pop("time")[:19] == fast.pop("time")[:19]
            assert slow == fast
        else:  # the same line but for the milliseconds
            assert slow[:19] == fast[:19] and slow[23:] == fast[23:]
        seen: list[logging.LogRecord] = []
        extra = logging.Handler()
        extra.emit = seen.append  # type: ignore[method-assign]
        logging.getLogger().addHandler(extra)
        try:  # another handler on the root logger still gets the record
            logs._ACCESS_LINE.write("r-2", dict(fields))
        finally:
            logging.getLogger().removeHandler(extra)
        assert [(r.request_id, r.status, r.getMessage()) for r in seen] == [("r-2", 200, "request")]
        logs.access_log.addHandler(extra)
        try:  # a handler of its own: logging must see the record
            assert not logs._ACCESS_LINE.usable()
        finally:
            logs.access_log.removeHandler(extra)
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(level)
