"""gunicorn's C request parser (gunicorn-h1c, a dependency) gives the same answers as its Python
parser through our worker: the same status for good and malformed requests, the same environ.

The worker's ``handle`` runs in this thread on a real loopback connection (as
``bench/worker_cpu.py`` drives it), once per parser.
"""

from __future__ import annotations

import os
import socket

import pytest
from gunicorn import glogging
from gunicorn.config import Config
from gunicorn.workers.gthread import TConn

from recsys.ops.gworker import BalancedThreadWorker

pytest.importorskip("gunicorn_h1c")

SEEN: list[dict] = []


def _app(environ, start_response):
    keep = ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "RAW_URI", "SERVER_PROTOCOL")
    SEEN.append(
        {k: v for k, v in environ.items() if k in keep or k.startswith("HTTP_")}
        | {"body": environ["wsgi.input"].read()}
    )
    body = b"ok"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [body]


class _App:
    def wsgi(self):
        return _app


def _answer(parser: str, raw: bytes) -> tuple[int, dict | None]:
    """(status, environ the app saw or None) of ``raw`` through the worker with ``parser``."""
    cfg = Config()
    cfg.set("http_parser", parser)
    worker = BalancedThreadWorker(0, os.getppid(), [], _App(), 30, cfg, glogging.Logger(cfg))
    worker.wsgi = _app
    worker.alive = True
    worker._start_reading_stage()  # noqa: SLF001 - as its run() does
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server_sock, addr = listener.accept()
    listener.close()
    SEEN.clear()
    try:
        client.sendall(raw)
        client.shutdown(socket.SHUT_WR)  # nothing more comes: a short request is answered
        worker.handle(TConn(cfg, server_sock, addr, ("127.0.0.1", 8000)))
        server_sock.close()
        data = b""
        while chunk := client.recv(65536):
            data += chunk
    finally:
        client.close()
    status = int(data.split(b" ", 2)[1]) if data else 0
    return status, (SEEN[0] if SEEN else None)


REQUESTS = {
    "plain": b"GET /a/b?x=1&y=%20 HTTP/1.1\r\nHost: t\r\nX-Request-ID: abc\r\n\r\n",
    "body": b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
    "chunked": (
        b"POST /e HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    ),
    "http/1.0": b"GET / HTTP/1.0\r\n\r\n",
    "repeated headers": b"GET / HTTP/1.1\r\nHost: t\r\nAccept: a\r\nAccept: b\r\n\r\n",
    "underscore header": b"GET / HTTP/1.1\r\nHost: t\r\nX_Forwarded_For: 1.2.3.4\r\n\r\n",
    "not a request": b"NOT A REQUEST\r\n\r\n",
    "bad version": b"GET / HTTP/9.9\r\nHost: t\r\n\r\n",
    "bad method": b"G(T / HTTP/1.1\r\nHost: t\r\n\r\n",
    "space in name": b"GET / HTTP/1.1\r\nHost: t\r\nBad Name: v\r\n\r\n",
    "ctl in value": b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x01b\r\n\r\n",
    "no colon": b"GET / HTTP/1.1\r\nHost: t\r\nnocolon\r\n\r\n",
    "bare LF": b"GET / HTTP/1.1\nHost: t\n\n",
    "two lengths": (
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
    ),
    "bad length": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n",
    "length and chunked": (
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "unknown coding": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
    "uri too long": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n",
    "too many headers": b"GET / HTTP/1.1\r\nHost: t\r\n" + b"X-H: v\r\n" * 200 + b"\r\n",
    "header too large": b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n",
    "fragment": b"GET /a#frag HTTP/1.1\r\nHost: t\r\n\r\n",
    "absolute uri": b"GET http://t/a?b=1 HTTP/1.1\r\nHost: t\r\n\r\n",
    "obs fold": b"GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n",
    "truncated head": b"GET / HTTP/1.1\r\nHost: t\r\n",
}


@pytest.mark.parametrize("name", REQUESTS, ids=list(REQUESTS))
def test_same_answer_from_both_parsers(name):
    slow = _answer("python", REQUESTS[name])
    fast = _answer("fast", REQUESTS[name])
    assert fast == slow
    if name in ("plain", "body", "chunked", "http/1.0"):
        assert slow[0] == 200 and slow[1] is not None
    if name in ("not a request", "bad method", "uri too long", "too many headers"):
        assert 400 <= slow[0] < 500
