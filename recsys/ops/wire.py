"""What the worker writes per request, in fewer system calls (``recsys.ops.gworker``).

gunicorn's ``Response`` sends the status line and headers with one ``sendall`` and each body
chunk with another, so the usual answer (headers and one body, ``Content-Length`` known) costs
two system calls and two TCP segments, and the client wakes up twice. :class:`OneWriteResponse`
holds the header block until the first body bytes and sends both together; what it sends, and
when the response counts as started (``headers_sent``: an error after it closes the connection
instead of answering 500), are gunicorn's. Its ``Date`` is formatted once a second, not per
response (``email.utils.formatdate`` was as costly as our whole access line).

:func:`body_left` says whether a request may still have body bytes on the socket: a keep-alive
connection whose request had none skips gunicorn's drain (``Parser.finish_body`` sets a socket
timeout, reads nothing and restores it: three system calls per request for nothing).
"""

from __future__ import annotations

import time
from email.utils import formatdate

from gunicorn import util
from gunicorn.http.body import LengthReader
from gunicorn.http.wsgi import Response


class OneWriteResponse(Response):
    """gunicorn's ``Response``, its header block sent with the first body bytes."""

    #: The header block not yet written (bytes), or None.
    _held: bytes | None = None

    def default_headers(self):
        """See ``Response.default_headers``: the same lines, the ``Date`` made once a second."""
        if self.upgrade:
            connection = "upgrade"
        elif self.should_close():
            connection = "close"
        else:
            connection = "keep-alive"
        version = self.req.version
        headers = [
            f"HTTP/{version[0]}.{version[1]} {self.status}\r\n",
            f"Server: {self.version}\r\n",
            f"Date: {http_date()}\r\n",
            f"Connection: {connection}\r\n",
        ]
        if self.chunked:
            headers.append("Transfer-Encoding: chunked\r\n")
        return headers

    def send_headers(self):
        """See ``Response.send_headers``: the block is held until ``_flush`` or the body."""
        if self.headers_sent:
            return
        tosend = self.default_headers()
        tosend.extend([f"{k}: {v}\r\n" for k, v in self.headers])
        tosend.append("\r\n")
        self._held = "".join(tosend).encode("latin-1")
        self.headers_sent = True

    def _flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            util.write(self.sock, held)

    def _emit_body(self, data):
        held = self._held
        if held is not None and not self.chunked:
            self._held = None
            util.write(self.sock, held + data)
            return
        self._flush()
        super()._emit_body(data)

    def write(self, arg):
        """See ``Response.write``; the header block goes out even when no body bytes do (a
        HEAD, a 304, an empty chunk)."""
        super().write(arg)
        self._flush()

    def sendfile(self, respiter):
        """See ``Response.sendfile``: the header block first."""
        self.send_headers()
        self._flush()
        return super().sendfile(respiter)

    def close(self):
        """See ``Response.close``: the header block of an answer without body bytes."""
        if not self.headers_sent:
            self.send_headers()
        self._flush()
        super().close()


_date: tuple[int, str] = (-1, "")


def http_date() -> str:
    """``gunicorn.util.http_date()``: now, as an HTTP date, made at most once a second.

    Returns
    -------
    str
        The IMF-fixdate of the current second (``Sun, 06 Nov 1994 08:49:37 GMT``).
    """
    global _date
    second = int(time.time())
    cached = _date  # one tuple, replaced whole: safe across threads
    if cached[0] != second:
        cached = _date = (second, formatdate(second, localtime=False, usegmt=True))
    return cached[1]


def body_left(req) -> bool:
    """Whether ``req`` may have body bytes still unread (gunicorn must drain them).

    Parameters
    ----------
    req : gunicorn.http.message.Request
        The request just answered.

    Returns
    -------
    bool
        False only for a body of known length that is all read (most often none at all).
    """
    body = getattr(req, "body", None)
    if body is None or getattr(body, "failed", False) is True:
        return True
    reader = getattr(body, "reader", None)
    return type(reader) is not LengthReader or reader.length != 0
