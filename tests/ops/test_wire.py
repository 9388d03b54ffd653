"""recsys.ops.wire: the worker's response sends gunicorn's bytes, header block and body together."""

from __future__ import annotations

import pytest
from gunicorn import util
from gunicorn.config import Config
from gunicorn.http.body import Body, ChunkedReader, LengthReader
from gunicorn.http.wsgi import Response

from recsys.ops import wire


class _Sock:
    def __init__(self):
        self.writes: list[bytes] = []

    def sendall(self, data):
        self.writes.append(bytes(data))


class _Req:
    def __init__(self, method="GET", version=(1, 1), close=False):
        self.method = method
        self.version = version
        self._close = close

    def should_close(self):
        return self._close


def _serve(cls, req, status, headers, chunks):
    sock = _Sock()
    resp = Response(req, sock, Config())
    if cls is not Response:
        resp.__class__ = cls  # as the worker does
    resp.start_response(status, list(headers))
    for chunk in chunks:
        resp.write(chunk)
    resp.close()
    return sock.writes, resp


CASES = {
    "200 with length": (_Req(), "200 OK", [("Content-Length", "2")], [b"ok"]),
    "two chunks": (_Req(), "200 OK", [("Content-Length", "4")], [b"ab", b"cd"]),
    "no length (chunked)": (_Req(), "200 OK", [("Content-Type", "text/plain")], [b"ab", b"c"]),
    "HEAD": (_Req("HEAD"), "200 OK", [("Content-Length", "2")], [b"ok"]),
    "304": (_Req(), "304 Not Modified", [("ETag", 'W/"1"')], []),
    "no body bytes": (_Req(), "200 OK", [("Content-Length", "0")], []),
    "HTTP/1.0 close": (_Req(version=(1, 0), close=True), "200 OK", [], [b"x"]),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_same_bytes_as_gunicorn(case, monkeypatch):
    monkeypatch.setattr(util, "http_date", lambda timestamp=None: "Mon, 07 Dec 2026 22:00:00 GMT")
    monkeypatch.setattr(wire, "http_date", lambda: "Mon, 07 Dec 2026 22:00:00 GMT")
    req, status, headers, chunks = CASES[case]
    theirs, r1 = _serve(Response, req, status, headers, chunks)
    ours, r2 = _serve(wire.OneWriteResponse, req, status, headers, chunks)
    assert b"".join(ours) == b"".join(theirs)
    assert r1.should_close() == r2.should_close() and r2.headers_sent
    if case == "200 with length":
        assert len(ours) == 1 and len(theirs) == 2  # the point: one write, not two


def test_started_response_counts_as_sent_before_any_write():
    # gunicorn closes the connection on an error after headers_sent (no 500 written after it).
    sock = _Sock()
    resp = Response(_Req(), sock, Config())
    resp.__class__ = wire.OneWriteResponse
    resp.start_response("200 OK", [("Content-Length", "2")])
    resp.send_headers()
    assert resp.headers_sent and sock.writes == []
    resp.write(b"ok")
    assert len(sock.writes) == 1 and sock.writes[0].endswith(b"\r\n\r\nok")


def test_http_date_is_gunicorns(monkeypatch):
    for now in (1_796_680_800.25, 1_796_680_800.75, 1_796_680_801.0):
        monkeypatch.setattr(wire.time, "time", lambda now=now: now)
        assert wire.http_date() == util.http_date(now)


def test_body_left():
    class _Unreader:
        def read(self, size=None, read_ahead=None):
            return b""

    class _M:
        def __init__(self, body):
            self.body = body

    assert not wire.body_left(_M(Body(LengthReader(_Unreader(), 0))))
    assert wire.body_left(_M(Body(LengthReader(_Unreader(), 5))))
    assert wire.body_left(_M(Body(ChunkedReader(_M(None), _Unreader()))))
    failed = Body(LengthReader(_Unreader(), 0))
    failed.failed = True
    assert wire.body_left(_M(failed))
    assert wire.body_left(None) and wire.body_left(_M(None))
