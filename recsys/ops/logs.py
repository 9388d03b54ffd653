"""Request ids and structured logs.

``RequestContext`` is the outermost WSGI layer (in front of the cache fast path and Flask): it
takes the client's ``X-Request-ID`` (printable ASCII, at most 128 characters) or makes one,
echoes it on the response, keeps it in a context variable that every log record of the request
carries (``request_id``), and writes at most one access-log line per request (method, path,
status, latency, endpoint, route, cached, degraded: what the fast path or the view noted in
``environ[ACCESS_KEY]``).

It also sends ``Server-Timing``: the stages the request recorded with ``stage`` (cache lookup,
history, scoring, item rendering) and the total up to the response's start.

``configure`` sets up the process's logging: JSON lines through python-json-logger
(``LOG_FORMAT=json``, the default) or plain text, at ``LOG_LEVEL``. The served app does it
(``wsgi.py``); the CLI and tests keep Python's defaults.

The access line is the one record of every request, so it is written without the ``logging``
machinery when it can be (``AccessLine``): while the handler ``configure`` installed is on the
root logger and ``recsys.access`` has no handler or filter of its own, the line is built from
a pre-formatted prefix (the time string is made once per second) and the fields'
``json.dumps``, and written under the handler's lock: the same JSON object (or text line) as
the formatter makes, in about a third of the CPU (47 against 15 microseconds a line on the
2-core benchmark VM). Other handlers on the root logger (a test's capture) still get the
record ``logging`` would have made; any other set-up takes ``logging`` as before.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask

from recsys.config import get_config

log = logging.getLogger(__name__)
access_log = logging.getLogger("recsys.access")

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# (stage, seconds) of the current request, for its Server-Timing header.
STAGES: contextvars.ContextVar[list[tuple[str, float]] | None] = contextvars.ContextVar(
    "stages", default=None
)
REQUEST_ID_KEY = "recsys.request_id"
ACCESS_KEY = "recsys.access"
_VALID_ID = re.compile(r"[\x21-\x7e]{1,128}")
_CONFIGURED = "_recsys_handler"


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """See ``logging.Filter.filter``: sets ``record.request_id`` and keeps every record."""
        record.request_id = REQUEST_ID.get()
        return True


class AccessLine:
    """Writes the access line straight to ``configure``'s handler (see the module docstring).

    Parameters
    ----------
    handler : logging.StreamHandler
        The handler ``configure`` installed (its stream and lock).
    fmt : str
        ``"json"`` or ``"text"``, as the handler's formatter.
    """

    def __init__(self, handler: logging.StreamHandler, fmt: str):
        self.handler = handler
        self.json = fmt == "json"
        self._second = -1
        self._stamp = ""

    def usable(self) -> bool:
        """True while the handler is still on the root logger and ``recsys.access`` neither
        handles nor filters by itself (else ``logging`` must see the record).

        Returns
        -------
        bool
            Whether ``write`` may stand in for ``access_log.info``.
        """
        return (
            self.handler in logging.root.handlers
            and not access_log.handlers
            and not access_log.filters
            and access_log.propagate
        )

    def _time(self) -> str:
        # logging.Formatter.formatTime's default: local time, "%Y-%m-%d %H:%M:%S,mmm".
        now = time.time()
        second = int(now)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._second = second
        return f"{self._stamp},{int((now - second) * 1000):03d}"

    def write(self, rid: str, fields: dict[str, Any]) -> None:
        """Write one access line for request ``rid`` with ``fields``.

        Parameters
        ----------
        rid : str
            The request id.
        fields : dict
            The line's fields (JSON-serialisable).

        Returns
        -------
        None
        """
        if self.json:
            extra = json.dumps(fields, default=str)
            # A made id is hex; a client's is printable ASCII: quoted as is unless it holds
            # what JSON escapes (the same text json.dumps makes, without its call).
            plain = rid.isascii() and rid.isprintable() and '"' not in rid and "\\" not in rid
            quoted = f'"{rid}"' if plain else json.dumps(rid)
            line = (
                f'{{"time": "{self._time()}", "level": "INFO", "logger": "recsys.access", '
                f'"message": "request", "request_id": {quoted}'
                + (", " + extra[1:] if len(extra) > 2 else "}")
                + "\n"
            )
        else:
            line = f"{self._time()} INFO [{rid}] recsys.access: request\n"
        h = self.handler
        h.acquire()
        try:
            h.stream.write(line)
            h.flush()
        except Exception:  # as logging.Handler.handleError: a log line never fails a request
            h.handleError(logging.makeLogRecord({"msg": "request"}))
        finally:
            h.release()
        others = logging.root.handlers
        if len(others) > 1:  # e.g. pytest's capture: they get the record logging would make
            record = access_log.makeRecord(
                access_log.name, logging.INFO, __file__, 0, "request", (), None, extra=fields
            )
            record.request_id = rid
            for other in others:
                if other is not h and record.levelno >= other.level:
                    other.handle(record)


_ACCESS_LINE: AccessLine | None = None


def configure(level: str = "INFO", fmt: str = "json", stream=None) -> logging.Handler:
    """Route the root logger to one handler on ``stream`` in ``fmt``.

    Idempotent: a second call replaces the handler it installed.

    Parameters
    ----------
    level : str, optional
        Root logger level name (``"INFO"``, ``"DEBUG"`` ...).
    fmt : str, optional
        ``"json"`` (one JSON object a line) or plain text.
    stream : file-like or None, optional
        Where records go; None: stderr.

    Returns
    -------
    logging.Handler
        The handler installed.
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _CONFIGURED, False):
            root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    setattr(handler, _CONFIGURED, True)
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s")
        )
    root.addHandler(handler)
    root.setLevel(str(level).upper())
    global _ACCESS_LINE
    _ACCESS_LINE = AccessLine(handler, fmt)
    return handler


def stage(name: str, seconds: float) -> None:
    """Record a stage time of the current request (sent in ``Server-Timing``).

    Parameters
    ----------
    name : str
        The stage name (``Server-Timing`` metric name).
    seconds : float
        Its duration, in seconds.

    Returns
    -------
    None
    """
    stages = STAGES.get()
    if stages is not None:
        stages.append((name, seconds))


def server_timing(stages: list[tuple[str, float]], total_s: float) -> str:
    """The ``Server-Timing`` header value of a request.

    Parameters
    ----------
    stages : list of (str, float)
        ``(name, seconds)`` of each recorded stage, in order.
    total_s : float
        The whole request's duration, in seconds.

    Returns
    -------
    str
        ``"name;dur=<milliseconds>, ..., total;dur=<milliseconds>"``.
    """
    parts = [f"{name};dur={seconds * 1e3:.2f}" for name, seconds in stages]
    parts.append(f"total;dur={total_s * 1e3:.2f}")
    return ", ".join(parts)


def note(environ: dict, **fields: Any) -> None:
    """Add ``fields`` (route, cached, degraded ...) to this request's access-log line.

    Parameters
    ----------
    environ : dict
        The WSGI environ of the request; nothing happens outside the access log's request.
    **fields : Any
        Field names and JSON-serialisable values added to the line.

    Returns
    -------
    None
    """
    access = environ.get(ACCESS_KEY)
    if access is not None:
        access.update(fields)


StartResponse = Callable[..., Any]


class RequestContext:
    """WSGI middleware: request id in and out, one access-log line; see the module docstring."""

    def __init__(self, app: Flask, wsgi_app: Callable[[dict, StartResponse], Iterable[bytes]]):
        self.app = app
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        t0 = time.perf_counter()
        rid = environ.get("HTTP_X_REQUEST_ID")
        if rid is None or not _VALID_ID.fullmatch(rid):
            rid = os.urandom(16).hex()
        token = REQUEST_ID.set(rid)
        stages: list[tuple[str, float]] = []
        stages_token = STAGES.set(stages)
        environ[REQUEST_ID_KEY] = rid
        access: dict[str, Any] = {}
        environ[ACCESS_KEY] = access
        header = ("X-Request-ID", rid)

        def start(status: str, headers: list, exc_info=None):
            headers.append(header)
            headers.append(("Server-Timing", server_timing(stages, time.perf_counter() - t0)))
            access["status"] = int(status[:3])
            return start_response(status, headers, exc_info)

        try:
            return self.wsgi_app(environ, start)
        finally:
            if get_config(self.app).access_log and access_log.isEnabledFor(logging.INFO):
                access["method"] = environ.get("REQUEST_METHOD")
                access["path"] = environ.get("PATH_INFO")
                access["latency_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
                line = _ACCESS_LINE
                if line is not None and line.usable():
                    line.write(rid, access)
                else:
                    access_log.info("request", extra=access)
            REQUEST_ID.reset(token)
            STAGES.reset(stages_token)


def configure_for(app: Flask) -> logging.Handler:
    """``configure`` with the app's ``LOG_LEVEL`` and ``LOG_FORMAT`` (the served app,
    ``wsgi.py``).

    Parameters
    ----------
    app : Flask
        The app (its settings: ``recsys.config.get_config``).

    Returns
    -------
    logging.Handler
        The handler installed on the root logger.
    """
    config = get_config(app)
    return configure(config.log_level, config.log_format)


def init_app(app: Flask) -> None:
    """The Flask side of the access log: the endpoint's rule and the recommendation route of
    each request. Call last: ``RequestContext`` wraps everything else.

    Parameters
    ----------
    app : Flask
        The application to instrument.

    Returns
    -------
    None
    """

    @app.after_request
    def _note(response):
        from flask import g, request

        fields: dict[str, Any] = {"endpoint": request.url_rule.rule if request.url_rule else None}
        route = g.get("recsys_route")
        if route is not None:
            fields["route"] = route
        note(request.environ, **fields)
        return response

    app.wsgi_app = RequestContext(app, app.wsgi_app)  # type: ignore[method-assign]
