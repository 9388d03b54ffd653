"""Limits on what a request may send: body size and JSON shape.

* Body size (``MAX_BODY_BYTES``, default 1 MiB): a declared ``Content-Length`` over the limit is
  refused by WSGI middleware in front of Flask, before a byte of the body is read (the cache
  fast path in front of it answers plain GETs and never reads a body). A streamed (chunked)
  body has no length to check up front: its input stream is capped, and reading past the
  limit raises 413 (werkzeug's own
  ``MAX_CONTENT_LENGTH`` would silently cut such a body at the limit instead). Both answer 413
  in the error shape of ``recsys.web.errors``. (Without the cap the whole body was read to
  parse it: docs/design-notes.md.)
* JSON shape: bodies are parsed once, before the view, with two limits the standard parser
  turns into crashes rather than errors: integers longer than Python's 4,300-digit conversion
  limit (``ValueError`` outside the parser's own error type) and nesting deep enough to exhaust
  the interpreter's stack (``RecursionError``). Both are a 400 here, so neither the views nor
  the schemas (webargs parses with the standard parser) ever meet them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from typing import Any

from apiflask import abort
from flask import Flask, request
from werkzeug.exceptions import RequestEntityTooLarge

from recsys.config import get_config
from recsys.web.errors import error_body

StartResponse = Callable[..., Any]
# Python refuses to convert longer digit strings (sys.get_int_max_str_digits; 4300 by default).
MAX_INT_DIGITS = sys.get_int_max_str_digits() or 4300


def _parse_int(text: str) -> int:
    if len(text) - (text[0] == "-") > MAX_INT_DIGITS:
        raise ValueError(f"an integer longer than {MAX_INT_DIGITS} digits")
    return int(text)


def loads(data: str | bytes) -> Any:
    """``json.loads`` whose every failure is a ``ValueError`` (see the module docstring).

    Parameters
    ----------
    data : str or bytes
        JSON text.

    Returns
    -------
    Any
        The decoded value.

    Raises
    ------
    ValueError
        Invalid JSON, an integer longer than ``MAX_INT_DIGITS`` digits, or nesting too deep.
    """
    try:
        return json.loads(data, parse_int=_parse_int)
    except RecursionError as e:
        raise ValueError("JSON nested too deeply") from e


class CappedInput:
    """A ``wsgi.input`` that raises ``RequestEntityTooLarge`` once more than ``limit`` bytes
    have been read from it (it reads at most one byte past the limit).

    Parameters
    ----------
    stream : Any
        The original ``wsgi.input`` (a binary file-like object).
    limit : int
        Most bytes that may be read, in bytes (``MAX_BODY_BYTES``).
    """

    def __init__(self, stream: Any, limit: int):
        self.stream = stream
        self.limit = limit
        self.count = 0

    def _take(self, data: bytes) -> bytes:
        self.count += len(data)
        if self.count > self.limit:
            raise RequestEntityTooLarge(f"request body larger than {self.limit} bytes (the limit)")
        return data

    def _size(self, size: int | None) -> int:
        left = self.limit + 1 - self.count
        return left if size is None or size < 0 else min(size, left)

    def read(self, size: int | None = -1) -> bytes:
        """Read like ``io.RawIOBase.read``, counting against the limit.

        Parameters
        ----------
        size : int or None
            Most bytes to read; None or negative reads to the end.

        Returns
        -------
        bytes
            The data read (empty at the end of the stream).

        Raises
        ------
        RequestEntityTooLarge
            More than ``limit`` bytes have been read in all.
        """
        if size is not None and size >= 0:
            return self._take(self.stream.read(self._size(size)))
        parts = []  # everything: until the end, or one byte past the limit
        while chunk := self._take(self.stream.read(self._size(65536))):
            parts.append(chunk)
        return b"".join(parts)

    def readline(self, size: int | None = -1) -> bytes:
        """Read one line like ``io.IOBase.readline``, counting against the limit.

        Parameters
        ----------
        size : int or None
            Most bytes to read; None or negative: up to the end of the line.

        Returns
        -------
        bytes
            The line, with its line end (empty at the end of the stream).

        Raises
        ------
        RequestEntityTooLarge
            More than ``limit`` bytes have been read in all.
        """
        return self._take(self.stream.readline(self._size(size)))

    def __iter__(self):
        while line := self.readline():
            yield line


class BodyLimit:
    """WSGI middleware: 413 for a declared body over ``MAX_BODY_BYTES``, unread; a capped
    input stream for a body of no declared length.

    Parameters
    ----------
    app : Flask
        The application (its settings and JSON provider).
    wsgi_app : Callable[[dict, StartResponse], Iterable[bytes]]
        The WSGI callable it wraps.
    """

    def __init__(self, app: Flask, wsgi_app: Callable[[dict, StartResponse], Iterable[bytes]]):
        self.app = app
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        limit = get_config(self.app).max_body_bytes
        declared = environ.get("CONTENT_LENGTH")
        if limit and declared:
            try:
                size = int(declared)
            except ValueError:
                size = None  # werkzeug treats it as no length; the stream limit applies
            if size is not None and size > int(limit):
                return self.refuse(int(limit), start_response)
        elif limit and "wsgi.input" in environ:
            environ["wsgi.input"] = CappedInput(environ["wsgi.input"], int(limit))
        return self.wsgi_app(environ, start_response)

    def refuse(self, limit: int, start_response: StartResponse) -> list[bytes]:
        """Answer 413 without reading the body.

        Parameters
        ----------
        limit : int
            The body limit, in bytes.
        start_response : StartResponse
            The WSGI ``start_response`` callable.

        Returns
        -------
        list[bytes]
            The JSON error body (``too_large``), as one chunk.
        """
        body = self.app.json.dumps(too_large(limit)).encode()
        start_response(
            "413 Request Entity Too Large",
            [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
        )
        return [body]


def too_large(limit: int) -> dict:
    """The error body of a 413.

    Parameters
    ----------
    limit : int
        The body limit, in bytes.

    Returns
    -------
    dict
        ``error_body(413, ...)`` naming the limit.
    """
    return error_body(
        413, "Request Entity Too Large", f"request body larger than {limit} bytes (the limit)"
    )


def _check_json_body() -> None:
    """Before every view: a JSON body must parse with ``loads`` (else 400)."""
    if not request.is_json:
        return
    data = request.get_data(cache=True)  # a stream over MAX_BODY_BYTES: 413 here
    if data:
        try:
            loads(data)
        except ValueError as e:
            abort(400, message=f"body is not valid JSON: {str(e)[:200]}")


def init_app(app: Flask) -> None:
    """Install the body limit (WSGI middleware around ``app.wsgi_app``, ``MAX_BODY_BYTES`` read
    per request) and the JSON check.

    Parameters
    ----------
    app : Flask
        The app (its settings: ``recsys.config.get_config``).

    Returns
    -------
    None
    """
    app.before_request(_check_json_body)
    app.wsgi_app = BodyLimit(app, app.wsgi_app)  # type: ignore[method-assign]
