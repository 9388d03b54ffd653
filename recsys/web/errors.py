"""One JSON error shape for the whole API: ``{"code", "name", "description"}`` (+ ``detail``
for validation errors: location -> field -> messages).

Not RFC 9457 ``application/problem+json``: its ``detail`` member is a string, where ours is the
structured map clients already read to show which field is wrong; the keys stay as they are.
"""

from __future__ import annotations

import json
import logging

from apiflask import Schema
from apiflask.fields import Dict, Integer, String
from flask import Flask, jsonify, request
from werkzeug.exceptions import InternalServerError
from werkzeug.http import HTTP_STATUS_CODES as HTTP_STATUS_NAMES

try:  # the server's own parse errors; absent when another WSGI server runs the app
    from gunicorn.http.errors import LimitRequestHeaders, NoMoreData, ParseException
except ImportError:  # pragma: no cover - gunicorn is a dependency
    LimitRequestHeaders = NoMoreData = ParseException = None  # type: ignore[assignment,misc]

from recsys.errors import (  # noqa: F401  (re-exported for the web layer)
    DB_UNAVAILABLE,
    Conflict,
    DatabaseUnavailable,
    ModelError,
    NotFound,
    RateLimitedLog,
    RecsysError,
)

log = logging.getLogger(__name__)


_db_log = RateLimitedLog(log)
_framing_log = RateLimitedLog(log)

#: What the server raises from ``wsgi.input`` when the body's framing is broken (a bad chunk
#: size, a missing chunk terminator, a bad chunk extension or trailer) or the client stopped
#: sending before the body's end. A bad request, not a server error.
FRAMING_ERRORS: tuple[type[BaseException], ...] = (
    (ParseException, NoMoreData) if ParseException is not None else ()
)


class ErrorOut(Schema):
    """The body of every error (the OpenAPI document's HTTP and validation error schema)."""

    code = Integer(required=True, metadata={"description": "the HTTP status"})
    name = String(required=True, metadata={"description": "the status' name"})
    description = String(required=True, metadata={"description": "what went wrong"})
    detail = Dict(
        metadata={"description": "validation errors: location (json, query) -> field -> messages"}
    )


def error_body(code: int, name: str, description: str) -> dict:
    """The JSON body of an error answer (``ErrorOut``, without ``detail``).

    Parameters
    ----------
    code : int
        HTTP status.
    name : str
        The status' name (e.g. "Not Found").
    description : str
        What went wrong.

    Returns
    -------
    dict
        ``{"code", "name", "description"}``.
    """
    return {"code": code, "name": name, "description": description}


def malformed_json() -> str | None:
    """Why the request's body is not JSON (with line and column), or None when it parses or
    there is none. Only called on the error path (a 400), so a valid body is parsed once.

    Returns
    -------
    str or None
        ``"malformed JSON body: ..."``; None when the body parses, is empty, or is JSON that
        Python refuses for another reason.
    """
    try:
        data = request.get_data(cache=True)
    except FRAMING_ERRORS as e:  # a 400 answered before the view read a broken body
        return f"malformed request body: {framing_problem(e)}"
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


def framing_problem(e: BaseException) -> str:
    """What is wrong with a request body whose reading raised one of ``FRAMING_ERRORS``.

    Parameters
    ----------
    e : BaseException
        The exception ``wsgi.input`` raised.

    Returns
    -------
    str
        One line: the error's kind and gunicorn's message (at most 200 characters).
    """
    if NoMoreData is not None and isinstance(e, NoMoreData):
        return "the body ended before its declared end (the client stopped sending)"
    text = " ".join(str(e).split())[:200]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def register_error_handlers(app: Flask) -> None:
    """Make every error answer an ``ErrorOut`` JSON body: APIFlask's HTTP and validation errors
    (a 400 names the malformed JSON), ``RecsysError``, an unreachable database (503 with
    ``Retry-After``) and any unhandled exception (500, logged).

    Parameters
    ----------
    app : Flask
        The application (an APIFlask app).
    """
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

    def _framing_error(e: Exception):
        # A broken body (reading wsgi.input raised): the client's fault, one warning line.
        code, name = (
            (431, "Request Header Fields Too Large")
            if LimitRequestHeaders is not None and isinstance(e, LimitRequestHeaders)
            else (400, "Bad Request")
        )
        why = framing_problem(e)
        _framing_log.warning("malformed request body from %s: %s", request.remote_addr, why)
        body = error_body(code, name, f"malformed request body: {why}")
        # gunicorn closes the connection after it (the next request's start is unknown).
        return jsonify(body), code

    for cls in FRAMING_ERRORS:
        app.register_error_handler(cls, _framing_error)

    @app.errorhandler(Exception)
    def _unhandled(e: Exception):
        log.exception("unhandled error")
        ie = InternalServerError()
        return jsonify(error_body(500, ie.name, "internal error; see the server log")), 500
