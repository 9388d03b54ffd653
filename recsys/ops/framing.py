"""Whether the bytes read so far hold a whole HTTP/1.1 request (head and body).

Used by the worker's reading stage (``recsys.ops.gworker``): a connection is read on the event
loop until :func:`request_ready` says a request thread can take it without waiting on the
client. It only finds where a request ends; parsing, validation and error answers stay with
gunicorn's parser in the thread, so anything malformed is handed over as soon as it is seen
(gunicorn then answers 400 without reading more).
"""

from __future__ import annotations

#: A chunk-size line longer than this is malformed: hand it over for gunicorn to refuse.
MAX_CHUNK_LINE = 1024


def _body_ready(buf: bytes, start: int, headers: list[tuple[bytes, bytes]], max_body: int) -> bool:
    lengths = [v for n, v in headers if n == b"content-length"]
    codings = [v for n, v in headers if n == b"transfer-encoding"]
    if any(b"100-continue" in v.lower() for n, v in headers if n == b"expect"):
        return True  # the client waits for "100 Continue", which the thread sends
    if codings:
        parts = [p.strip().lower() for v in codings for p in v.split(b",")]
        if lengths or parts != [b"chunked"]:
            return True  # any other coding, or chunked with a length: gunicorn refuses it
        return _chunked_ready(buf, start, max_body)
    if not lengths:
        return True  # no body
    if len(lengths) > 1 or not lengths[0].strip().isdigit() or len(lengths[0].strip()) > 18:
        return True  # malformed, or far over any limit: gunicorn or the app refuses it
    length = int(lengths[0])
    if length > max_body:
        return True  # refused with 413 unread
    return len(buf) - start >= length


def _chunked_ready(buf: bytes, pos: int, max_body: int) -> bool:
    total = 0
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return len(buf) - pos > MAX_CHUNK_LINE
        size_text = buf[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return True  # a bad chunk size: gunicorn refuses it (400)
        if size == 0:  # the last chunk, then trailers up to an empty line
            tail = bytes(buf[eol + 2 :])
            if tail.startswith(b"\r\n") or b"\r\n\r\n" in tail:
                return True
            # A bare LF in the trailers is malformed: gunicorn refuses it without more bytes.
            return b"\n" in tail.replace(b"\r\n", b"")
        total += size
        if total > max_body:
            return True  # over the body limit: the app refuses it (413)
        pos = eol + 2 + size + 2
        if pos > len(buf):
            return False


def request_ready(buf: bytes, max_head: int, max_body: int) -> bool:
    """Whether a request thread can take ``buf`` without waiting for the client.

    Parameters
    ----------
    buf : bytes
        Everything read from the connection since the last request.
    max_head : int
        Request line plus headers larger than this (with no end yet) are handed over for
        gunicorn to refuse (414/431).
    max_body : int
        A body declared or streamed past this many bytes is handed over at once: the
        application refuses it (413) without reading it all.

    Returns
    -------
    bool
        True when the head and the whole body are here, or when what is here is already
        malformed or over a limit (gunicorn or the app answers it without reading more).
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return len(buf) > max_head
    head = bytes(buf[:end]).lower()
    if b"content-length" not in head and b"transfer-encoding" not in head and b"expect" not in head:
        return True  # no body and nothing to wait for (most GETs): no need to split the head
    headers = []
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower(), value.strip()))
    return _body_ready(buf, end + 4, headers, max_body)
