"""One JSON error shape for the whole API: ``{"code", "name", "description"}`` (+ ``detail``
for validation errors: location -> field -> messages).

Not RFC 9457 ``application/problem+json``: its ``detail`` member is a string, where ours is the
structured map clients already read to show which field is wrong; the keys stay as they are.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from apiflask import Schema
from apiflask.fields import Dict, Integer, String
from flask import Flask, jsonify, request
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import InternalServerError
from werkzeug.http import HTTP_STATUS_CODES as HTTP_STATUS_NAMES

log = logging.getLogger(__name__)


class RecsysError(Exception):
    """Base for errors that map to an HTTP status (and a clean CLI message)."""

    code = 400
    name = "Bad Request"

    def __init__(self, description: str, code: int | None = None):
        super().__init__(description)
        self.description = description
        if code is not None:
            self.code = code
            if self.name == RecsysError.name:  # e.g. 422 should not be named "Bad Request"
                self.name = HTTP_STATUS_NAMES.get(code, self.name)


class NotFound(RecsysError):
    code = 404
    name = "Not Found"


class Conflict(RecsysError):
    code = 409
    name = "Conflict"


class ModelError(RecsysError):
    """A model version could not be loaded (missing, tampered, incompatible)."""

    code = 409
    name = "Model Error"


class DatabaseUnavailable(Exception):
    """The SQL store is not tried (circuit open, ``recsys.store.guard``) or did not answer in
    time (socket cut by the watchdog)."""

    def __init__(self, description: str = "", retry_after: int = 5):
        super().__init__(description or "the database is unavailable (circuit open)")
        self.retry_after = int(retry_after)


# The SQL store cannot be reached (down, hung, connection cut, pool exhausted, statement
# timeout): answered 503 + Retry-After, never acknowledged as done.
DB_UNAVAILABLE = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    DatabaseUnavailable,
)


class RateLimitedLog:
    """At most one line per ``every_s`` for a recurring condition (an outage refuses every
    request; one line each would flood the log): the first at once, later ones with the count
    of lines left out since."""

    def __init__(self, logger: logging.Logger, every_s: float = 10.0, clock=time.monotonic):
        self.logger = logger
        self.every_s = every_s
        self.clock = clock
        self._lock = threading.Lock()
        self._last = -float("inf")
        self._suppressed = 0

    def warning(self, msg: str, *args) -> bool:
        """Log ``msg % args`` unless one was logged within ``every_s``; True if logged."""
        with self._lock:
            now = self.clock()
            if now - self._last < self.every_s:
                self._suppressed += 1
                return False
            self._last, left_out = now, self._suppressed
            self._suppressed = 0
        if left_out:
            msg += " (%d more like this in the last %.0f s)"
            args = (*args, left_out, self.every_s)
        self.logger.warning(msg, *args)
        return True


_db_log = RateLimitedLog(log)


class ErrorOut(Schema):
    """The body of every error (the OpenAPI document's HTTP and validation error schema)."""

    code = Integer(required=True, metadata={"description": "the HTTP status"})
    name = String(required=True, metadata={"description": "the status' name"})
    description = String(required=True, metadata={"description": "what went wrong"})
    detail = Dict(
        metadata={"description": "validation errors: location (json, query) -> field -> messages"}
    )


def error_body(code: int, name: str, description: str) -> dict:
    return {"code": code, "name": name, "description": description}


def malformed_json() -> str | None:
    """Why the request's body is not JSON (with line and column), or None when it parses or
    there is none. Only called on the error path (a 400), so a valid body is parsed once."""
    data = request.get_data(cache=True)
    if not data:
        return None
    try:
        json.loads(data)
    except UnicodeDecodeError:
        return "malformed JSON body: not UTF-8"
    except json.JSONDecodeError as e:
        return f"malformed JSON body: {e.msg} at line {e.lineno}, column {e.colno}"
    except (ValueError, RecursionError):
        return None  # valid JSON Python refuses (huge integers, deep nesting): said elsewhere
    return None


def register_error_handlers(app: Flask) -> None:
    # APIFlask routes every HTTPException and validation error through this processor.
    app.config["HTTP_ERROR_SCHEMA"] = ErrorOut
    app.config["VALIDATION_ERROR_SCHEMA"] = ErrorOut

    @app.error_processor
    def _apiflask_error(e):
        message = e.message
        if e.status_code == 400 and request and (why := malformed_json()):
            message = why
        body = error_body(e.status_code, HTTP_STATUS_NAMES.get(e.status_code, "Error"), message)
        if e.detail:
            body["detail"] = e.detail
        return body, e.status_code, e.headers

    @app.errorhandler(RecsysError)
    def _recsys_error(e: RecsysError):
        return jsonify(error_body(e.code, e.name, e.description)), e.code

    def _db_unavailable(e: Exception):
        _db_log.warning("database unavailable: %s", (str(e).splitlines() or [""])[0][:300])
        body = error_body(
            503,
            "Service Unavailable",
            "the database is unreachable; nothing was acknowledged, retry later "
            "(events with an id are safe to re-send)",
        )
        retry_after = getattr(e, "retry_after", 5)
        return jsonify(body), 503, {"Retry-After": str(retry_after)}

    for cls in DB_UNAVAILABLE:
        app.register_error_handler(cls, _db_unavailable)

    @app.errorhandler(Exception)
    def _unhandled(e: Exception):
        log.exception("unhandled error")
        ie = InternalServerError()
        return jsonify(error_body(500, ie.name, "internal error; see the server log")), 500
