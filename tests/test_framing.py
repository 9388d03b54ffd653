"""Every request-framing error gunicorn can raise is a 4xx in the API's JSON error shape, never
a 500 and never an ERROR traceback in the log (issue 30, item 3).

One real gunicorn (``gunicorn.conf.py``, the service's worker class, ``wsgi:app`` on the test
PostgreSQL) per module, spoken to over raw sockets. Two places fail:

* the request head (request line, headers, framing headers): gunicorn refuses it before the
  app runs, in the worker's ``handle_error`` (``recsys.ops.gworker``);
* the body, while a view reads ``wsgi.input`` (``POST /v1/events`` with a broken chunked body):
  the app's error handler (``recsys.web.errors``).

Not covered, because this configuration cannot raise them: the PROXY protocol's errors
(``InvalidProxyLine``, ``ForbiddenProxyRequest``: ``proxy_protocol`` is off), the HTTP/2 preface
(``InvalidH2CPreface``: HTTP/2 is off), and the server-side ``ConfigurationProblem`` and
``InvalidResponseHeader*`` (the app's fault: 500 is right).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.procs import free_port, stop_process
from tests.waiting import HANG_GUARD_S, wait_until

pytestmark = [pytest.mark.fault, pytest.mark.postgres, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVENTS = b"POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
CHUNKED = EVENTS + b"Transfer-Encoding: chunked\r\n\r\n"


class Gunicorn:
    """``gunicorn -c gunicorn.conf.py wsgi:app`` on a free port, its log in a file."""

    def __init__(self, env: dict, log_path: str):
        self.port = free_port()
        self.log_path = log_path
        self.log = open(log_path, "w")
        cmd = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"]
        cmd += ["--bind", f"127.0.0.1:{self.port}", "--workers", "1", "wsgi:app"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=self.log)

    def healthy(self) -> bool:
        assert self.proc.poll() is None, self.text()[-3000:]
        try:
            status, _, _ = exchange(self.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        except OSError:
            return False
        return status == 200

    def text(self) -> str:
        self.log.flush()
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()


@pytest.fixture(scope="module")
def server(pg_schema_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("framing")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        PYTHONPATH=ROOT,
        RECSYS_DATABASE_URL=pg_schema_url,
        RECSYS_MODEL_DIR=str(tmp / "models"),
        RECSYS_INSTANCE_PATH=str(tmp / "instance"),
        RECSYS_PRELOAD_MODELS="false",
    )
    srv = Gunicorn(env, str(tmp / "gunicorn.log"))
    try:
        wait_until(srv.healthy, "gunicorn answers /healthz", timeout=120)
        yield srv
    finally:
        stop_process(srv.proc, srv.log)


def exchange(port: int, request: bytes, half_close: bool = False) -> tuple[int, dict, bytes]:
    """Send ``request`` (then shut the sending side when ``half_close``) and read one
    response: status, headers, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD_S) as s:
        s.sendall(request)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = (x.partition(":") for x in lines[1:])
        headers = {k.strip().lower(): v.strip() for k, _, v in fields}
        want = int(headers.get("content-length", "0") or 0)
        while len(body) < want:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(lines[0].split()[1]), headers, body


def _json_error(status: int, headers: dict, body: bytes, code: int) -> dict:
    assert status == code, (status, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), headers
    doc = json.loads(body)
    assert doc["code"] == code and doc["name"] and doc["description"], doc
    assert set(doc) == {"code", "name", "description"}, doc
    return doc


def _no_error_lines(server, before: int) -> None:
    # Let the worker finish logging this request: the next request's answer comes after it.
    wait_until(server.healthy, "gunicorn still answers")
    new = server.text()[before:]
    assert "Traceback" not in new and "[ERROR]" not in new and " ERROR " not in new, new[-3000:]


# -- the request head: refused by gunicorn before the app runs ---------------------------------
HEAD_ERRORS = {
    # InvalidRequestLine
    "request-line": (b"NOT A REQUEST\r\n\r\n", 400),
    "request-line-extra-field": (b"GET / HTTP/1.1 extra\r\nHost: t\r\n\r\n", 400),
    # InvalidRequestMethod
    "method": (b"G@T / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    # InvalidHTTPVersion
    "http-version": (b"GET / HTTP/9.9\r\nHost: t\r\n\r\n", 400),
    # InvalidHeaderName
    "header-name": (b"GET / HTTP/1.1\r\nHost: t\r\nBad(Name): v\r\n\r\n", 400),
    # InvalidHeader: a control character in a value; a line with no colon
    "header-value": (b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x01b\r\n\r\n", 400),
    "header-no-colon": (b"GET / HTTP/1.1\r\nHost: t\r\nno colon here\r\n\r\n", 400),
    # ObsoleteFolding
    "obsolete-folding": (b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\r\n folded\r\n\r\n", 400),
    # InvalidHeader(CONTENT-LENGTH / TRANSFER-ENCODING): the framing headers themselves
    "content-length-and-chunked": (
        EVENTS + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "content-length-not-a-number": (EVENTS + b"Content-Length: 1x\r\n\r\n[", 400),
    "content-length-negative": (EVENTS + b"Content-Length: -1\r\n\r\n", 400),
    "content-length-twice": (EVENTS + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n[]", 400),
    "chunked-twice": (EVENTS + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
    "chunked-not-last": (EVENTS + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
    "not-chunked": (EVENTS + b"Transfer-Encoding: gzip\r\n\r\n", 400),
    "chunked-http-1.0": (
        b"POST /v1/events HTTP/1.0\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    # UnsupportedTransferCoding (gunicorn's own answer is 501)
    "unsupported-transfer-coding": (EVENTS + b"Transfer-Encoding: br, chunked\r\n\r\n", 400),
    # InvalidSchemeHeaders: a trusted peer (127.0.0.1) says both https and http
    "scheme-headers": (
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Forwarded-Proto: https\r\n"
        b"X-Forwarded-SSL: off\r\n\r\n",
        400,
    ),
    # ExpectationFailed: an expectation other than 100-continue
    "expectation": (EVENTS + b"Expect: 200-ok\r\nContent-Length: 2\r\n\r\n[]", 417),
    # LimitRequestLine, LimitRequestHeaders: the limits keep their own 4xx (what to shorten)
    "request-line-too-long": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
    "too-many-headers": (b"GET / HTTP/1.1\r\nHost: t\r\n" + b"X-H: v\r\n" * 200 + b"\r\n", 431),
    "header-too-large": (b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n", 431),
}


@pytest.mark.parametrize("name", list(HEAD_ERRORS))
def test_a_malformed_request_head_is_a_json_4xx(server, name):
    request, code = HEAD_ERRORS[name]
    before = len(server.text())
    status, headers, body = exchange(server.port, request)
    _json_error(status, headers, body, code)
    assert int(headers["content-length"]) == len(body)
    _no_error_lines(server, before)


# -- the body: a view reads wsgi.input and it raises --------------------------------------------
BODY_ERRORS = {
    # InvalidChunkSize: not hex; signed; empty; a size line with no end
    "chunk-size": (CHUNKED + b"zz\r\n[]\r\n0\r\n\r\n", False),
    "chunk-size-signed": (CHUNKED + b"+2\r\n[]\r\n0\r\n\r\n", False),
    "chunk-size-empty": (CHUNKED + b"\r\n[]\r\n0\r\n\r\n", False),
    "chunk-size-line-endless": (CHUNKED + b"0" * 8300, False),
    # ChunkMissingTerminator: the chunk's data is not followed by CRLF
    "chunk-terminator": (CHUNKED + b"2\r\n[]XX0\r\n\r\n", False),
    # InvalidChunkExtension: a bare CR in an extension; not token[=value]
    "chunk-extension": (CHUNKED + b"2;a\rb\r\n[]\r\n0\r\n\r\n", False),
    "chunk-extension-malformed": (CHUNKED + b"2;=\r\n[]\r\n0\r\n\r\n", False),
    # InvalidHeader in the trailer: a bare LF ends a trailer line
    "trailer-bare-lf": (CHUNKED + b"2\r\n[]\r\n0\r\nX-T: v\n\r\n", False),
    # NoMoreData: the client stops sending halfway through a chunk
    "chunked-body-cut-short": (CHUNKED + b"10\r\n[", True),
    # Not JSON either: refused before a view reads it, then the body is read for the message
    "chunk-size-not-json": (
        CHUNKED.replace(b"application/json", b"text/plain") + b"zz\r\n[]\r\n0\r\n\r\n",
        False,
    ),
    # werkzeug's ClientDisconnected: fewer bytes than Content-Length, then end of input
    "length-body-cut-short": (EVENTS + b"Content-Length: 100\r\n\r\n[", True),
}


@pytest.mark.parametrize("name", list(BODY_ERRORS))
def test_a_malformed_body_is_a_json_400_and_a_warning(server, name):
    request, half_close = BODY_ERRORS[name]
    before = len(server.text())
    status, headers, body = exchange(server.port, request, half_close=half_close)
    doc = _json_error(status, headers, body, 400)
    assert "internal" not in doc["description"].lower()
    _no_error_lines(server, before)


def test_a_trailer_over_the_header_limit_is_431(server):
    # LimitRequestHeaders raised from wsgi.input (the trailer section, read with the body).
    trailer = b"".join(b"X-T%d: v\r\n" % i for i in range(200))
    before = len(server.text())
    status, headers, body = exchange(server.port, CHUNKED + b"2\r\n[]\r\n0\r\n" + trailer + b"\r\n")
    _json_error(status, headers, body, 431)
    _no_error_lines(server, before)


def test_malformed_bodies_are_logged_as_warnings(server):
    # Once, rate-limited (a hostile client must not flood the log); never a traceback.
    exchange(server.port, CHUNKED + b"zz\r\n[]\r\n0\r\n\r\n")
    wait_until(lambda: "malformed request body" in server.text(), "the warning line")
    line = next(x for x in server.text().splitlines() if "malformed request body" in x)
    assert "WARNING" in line and ("InvalidChunkSize" in line or "ended before" in line), line


def test_a_well_framed_chunked_body_still_works(server):
    # The control: the same request, framed right, reaches the view (its answer depends on the
    # events, not on the framing), so the errors above are the framing's.
    status, headers, body = exchange(server.port, CHUNKED + b"2\r\n[]\r\n0\r\n\r\n")
    assert status != 500 and status < 600
    assert status not in (400, 431) or b"malformed request body" not in body, body
