"""Slow and idle clients against real gunicorn (our worker class, 2 workers x 4 threads): they
hold sockets, never request threads, and one that sends nothing for ``RECSYS_CLIENT_TIMEOUT`` is
closed. Plus the framing rules the worker's reading stage uses to find where a request ends.

The server is the three-line pid app of ``test_gworker`` (no database, no models); waits are
bounded by a generous hang guard, never a latency window.
"""

from __future__ import annotations

import http.client
import socket
import time

import pytest

from recsys.ops.framing import request_ready
from recsys.ops.gworker import DEFAULT_BUFFERED_BODY, client_limits
from tests.ops.test_gworker import PidServer
from tests.waiting import HANG_GUARD_S

SLOW_HEAD = b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: "
SLOW_BODY = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n["


@pytest.fixture
def server(tmp_path):
    servers = []

    def start(client_timeout: float) -> PidServer:
        s = PidServer(
            tmp_path,
            "recsys.ops.gworker.BalancedThreadWorker",
            env={"RECSYS_CLIENT_TIMEOUT": str(client_timeout)},
        )
        servers.append(s)
        s.wait_workers()
        return s

    yield start
    for s in servers:
        s.stop()


def _open(port: int, first: bytes, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD_S)
        if first:
            s.sendall(first)
        socks.append(s)
    return socks


def _still_open(s: socket.socket) -> bool:
    """True while the server has neither answered nor closed ``s`` (nothing to read)."""
    s.setblocking(False)
    try:
        s.recv(1)  # an answer or the end of stream: not held
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        s.settimeout(HANG_GUARD_S)


def _legit_get(port: int) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_GUARD_S)
    try:
        c.request("GET", "/", headers={"Connection": "close"})
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


@pytest.mark.fault
@pytest.mark.slow
def test_slow_and_idle_connections_hold_no_request_thread(server):
    s = server(client_timeout=600)  # nothing is timed out during the test
    held = []
    try:
        for first in (SLOW_HEAD, SLOW_BODY, b""):  # slow headers, slow body, idle
            held += _open(s.port, first, 200)
        # 600 connections open, far more than the 2 x 4 threads: requests still get answered.
        # (Each wait is bounded by the hang guard: with threads held it times out and fails.)
        assert [_legit_get(s.port) for _ in range(20)] == [200] * 20
        # ... with the slow ones still held, not merely closed to make room.
        assert all(_still_open(h) for h in held)
        # A slow request that completes is served normally.
        slow = held[0]
        slow.sendall(b"1\r\nConnection: close\r\n\r\n")
        assert slow.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        for h in held:
            h.close()


@pytest.mark.fault
@pytest.mark.slow
@pytest.mark.parametrize("first", [b"", SLOW_HEAD, SLOW_BODY], ids=["idle", "head", "body"])
def test_a_silent_connection_is_closed_after_the_client_timeout(server, first):
    timeout = 1.0
    s = server(client_timeout=timeout)
    (conn,) = _open(s.port, first, 1)
    started = time.monotonic()
    try:
        conn.settimeout(HANG_GUARD_S)  # a hang guard: the close is expected after ~1 s
        try:
            data = conn.recv(4096)
        except ConnectionResetError:
            data = b""
        except TimeoutError:
            pytest.fail(f"connection still open after {HANG_GUARD_S:.0f} s")
        assert data == b""  # closed, with no response
        assert time.monotonic() - started >= timeout * 0.9  # not before the timeout
        # the server is still fine
        assert _legit_get(s.port) == 200
    finally:
        conn.close()


@pytest.mark.slow
def test_pipelined_and_split_requests_are_served_in_order(server):
    s = server(client_timeout=600)
    with socket.create_connection(("127.0.0.1", s.port), timeout=HANG_GUARD_S) as conn:
        # two requests in one packet, then one split across three sends with its body
        conn.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n")
        for part in (b"POST / HTTP/1.1\r\nHo", b"st: t\r\nContent-Length: 3\r\n\r\na", b"bc"):
            conn.sendall(part)
        conn.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := conn.recv(65536):  # the server closes after the last one
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 4


def test_client_limits_come_from_the_app_configuration(make_app):
    app = make_app(CLIENT_TIMEOUT=2.5, MAX_BODY_BYTES=1000)
    assert client_limits(app) == (2.5, 1000)
    assert client_limits(make_app(MAX_BODY_BYTES=0))[1] == DEFAULT_BUFFERED_BODY


def test_client_limits_of_a_bare_wsgi_app_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("RECSYS_CLIENT_TIMEOUT", "3")
    assert client_limits(lambda environ, start_response: []) == (3.0, DEFAULT_BUFFERED_BODY)


HEAD = b"POST / HTTP/1.1\r\nHost: t\r\n"


@pytest.mark.parametrize(
    ("buf", "ready"),
    [
        (b"GET / HTTP/1.1\r\nHost: t", False),  # headers not finished
        (b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", True),  # no body
        (HEAD + b"Content-Length: 5\r\n\r\nabc", False),
        (HEAD + b"Content-Length: 5\r\n\r\nabcde", True),
        (HEAD + b"Content-Length: 99999\r\n\r\n", True),  # over the body limit: 413 unread
        (HEAD + b"Content-Length: x\r\n\r\n", True),  # malformed: gunicorn's 400
        (HEAD + b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n", True),  # int() would refuse it
        (HEAD + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n", True),
        (HEAD + b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n", True),
        (HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", True),
        (HEAD + b"Transfer-Encoding: gzip\r\n\r\n", True),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nabc", False),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n", False),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n", True),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n", False),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n\r\n", True),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", True),  # bad size: gunicorn's 400
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"f" * 2000, True),  # no size line end
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n9999\r\n", True),  # over the body limit
    ],
)
def test_request_ready(buf, ready):
    assert request_ready(buf, max_head=1000, max_body=1000) is ready


def test_a_head_over_the_limit_is_handed_over():
    assert request_ready(b"GET / HTTP/1.1\r\nX: " + b"a" * 2000, max_head=1000, max_body=10)
