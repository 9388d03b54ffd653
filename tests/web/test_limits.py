"""Request body limit (recsys.web.limits) through WSGI; the memory check with real gunicorn and
300 MB bodies is in tests/test_gunicorn.py."""

from __future__ import annotations

import io
import json

import pytest
from werkzeug.test import EnvironBuilder, run_wsgi_app


def _call(app, method: str, url: str, stream, length: str | None, chunked: bool = False):
    """The app's answer to a request whose body is ``stream`` (status, JSON body)."""
    environ = EnvironBuilder(
        path=url, method=method, headers={"Content-Type": "application/json"}
    ).get_environ()
    environ["wsgi.input"] = stream
    environ.pop("CONTENT_LENGTH", None)
    if length is not None:
        environ["CONTENT_LENGTH"] = length
    if chunked:  # as gunicorn passes a chunked body: no length, a terminated stream
        environ["HTTP_TRANSFER_ENCODING"] = "chunked"
        environ["wsgi.input_terminated"] = True
    body, status, _ = run_wsgi_app(app, environ)
    return int(status.split()[0]), json.loads(b"".join(body))


class _Unread(io.RawIOBase):
    """A body stream that fails the test if anything reads it."""

    def readable(self):
        return True

    def readinto(self, b):
        pytest.fail("the body was read although its declared length is over the limit")


@pytest.mark.parametrize("url", ["/v1/events", "/v1/items/i1", "/healthz", "/nowhere"])
def test_declared_length_over_the_limit_is_413_unread(make_app, url):
    app = make_app(MAX_BODY_BYTES=1000)
    method = "PUT" if "items" in url else "POST"
    status, body = _call(app, method, url, _Unread(), "300000000")
    assert status == 413
    assert body == {
        "code": 413,
        "name": "Request Entity Too Large",
        "description": "request body larger than 1000 bytes (the limit)",
    }


def test_streamed_body_is_cut_at_the_limit(make_app):
    app = make_app(MAX_BODY_BYTES=1000)
    read = []

    class Stream(io.RawIOBase):
        def readable(self):
            return True

        def readinto(self, b):
            n = min(len(b), 100)
            b[:n] = b"1" * n
            read.append(n)
            return n

    status, body = _call(app, "POST", "/v1/events", Stream(), None, chunked=True)
    assert status == 413 and body["code"] == 413
    assert sum(read) <= 1000 + 100 * 2  # stopped at the limit, not read to the end


def test_a_body_within_the_limit_is_served(make_app):
    app = make_app(MAX_BODY_BYTES=1000)
    event = {"user_id": "u", "item_id": "i1", "type": "view"}
    assert app.test_client().post("/v1/events", json=event).status_code == 201
