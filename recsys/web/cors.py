"""Cross-origin requests from browsers (a storefront on another origin calling the API).

Off unless ``CORS_ORIGINS`` lists the allowed origins (``RECSYS_CORS_ORIGINS='["https://shop.
example"]'``; ``["*"]`` for any). flask-cors answers preflights and adds the headers to every
Flask response; the WSGI fast path (``recsys.web.fastpath``), which answers cached lists before
Flask, adds the very headers flask-cors computes, from the same options (``FastCors``).

With CORS on, every answer depends on the request's ``Origin`` (an allowed origin gets
``Access-Control-Allow-Origin``, another origin or none does not), so every answer says
``Vary: Origin``, from both paths, whatever the origin (also when it is absent): else a shared
cache could hand one origin's answer (or a same-origin answer, without the header) to
another. flask-cors adds it only when several origins are allowed and one matched, so its own
``vary_header`` is off and ``add_vary`` adds it instead, once, next to any other ``Vary``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Flask, Response, request
from flask_cors import CORS
from flask_cors.core import get_cors_headers, get_cors_options
from werkzeug.datastructures import Headers

from recsys.config import get_config

log = logging.getLogger(__name__)

# What a browser may send and read beyond the CORS-safelisted headers.
ALLOW_HEADERS = [
    "Authorization",
    "Content-Type",
    "If-None-Match",
    "X-API-Key",
    "X-Priority",
    "X-Request-ID",
]
EXPOSE_HEADERS = ["ETag", "Retry-After", "Server-Timing", "X-Request-ID"]
MAX_AGE_S = 600
_MEMO_MAX = 256
# What a preflight's answer depends on (a GET's: the origin only).
PREFLIGHT_VARY = ("Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers")


class FastCors:
    """The headers flask-cors would add to a ``GET`` from an origin, memoised per origin.

    Parameters
    ----------
    options : dict
        flask-cors options as ``flask_cors.core.get_cors_options`` resolves them.
    """

    def __init__(self, options):
        self.options = options
        self._memo: dict[str, list[tuple[str, str]]] = {}

    def headers(self, origin: str | None) -> list[tuple[str, str]]:
        """The CORS response headers for a ``GET`` from ``origin`` (memoised for a bounded number
        of origins).

        Parameters
        ----------
        origin : str or None
            The request's ``Origin`` header; None for a same-origin or non-browser request.

        Returns
        -------
        list[tuple[str, str]]
            (header, value) pairs as flask-cors computes them, and ``Vary: Origin`` (alone
            when ``origin`` is None).
        """
        if origin is None:
            return [("Vary", "Origin")]
        out = self._memo.get(origin)
        if out is None:
            computed = get_cors_headers(self.options, Headers({"Origin": origin}), "GET")
            out = [(k, str(v)) for k, v in computed.items(multi=True) if v and k != "Vary"]
            out.append(("Vary", "Origin"))
            if len(self._memo) < _MEMO_MAX:
                self._memo[origin] = out
        return out


def origins(app: Flask) -> list[str]:
    """``CORS_ORIGINS`` (validated with the settings): the origins, empty when CORS is off.

    Parameters
    ----------
    app : Flask
        The app (its settings: ``recsys.config.get_config``).

    Returns
    -------
    list of str
        The allowed origins.
    """
    return list(get_config(app).cors_origins or [])


def add_vary(response: Response) -> Response:
    """Say that ``response`` depends on the request's origin (``Vary: Origin``; a preflight's
    also on what it asks for), keeping any other ``Vary`` value, each name once.

    Parameters
    ----------
    response : Response
        A Flask response of a CORS-enabled app.

    Returns
    -------
    Response
        The same response.
    """
    names = PREFLIGHT_VARY if request.method == "OPTIONS" else PREFLIGHT_VARY[:1]
    for name in names:
        response.vary.add(name)
    return response


def init_app(app: Flask) -> None:
    """Enable CORS on ``app`` when ``CORS_ORIGINS`` lists origins (flask-cors for Flask's
    responses, a ``FastCors`` in ``app.extensions`` for the fast path); else do nothing.

    Parameters
    ----------
    app : Flask
        The application.
    """
    allowed = origins(app)
    if not allowed:
        return
    options = {
        "origins": allowed,
        "allow_headers": ALLOW_HEADERS,
        "expose_headers": EXPOSE_HEADERS,
        "max_age": MAX_AGE_S,
        "vary_header": False,  # add_vary says it on every answer instead
    }
    CORS(app, **options)
    app.after_request(add_vary)
    app.extensions["recsys.cors"] = FastCors(get_cors_options(app, options))
    log.info("CORS enabled for %s", ", ".join(allowed))


def fast_cors(app: Flask) -> Callable[[str | None], list[tuple[str, str]]] | None:
    """The fast path's CORS header function.

    Parameters
    ----------
    app : Flask
        The application, after ``init_app``.

    Returns
    -------
    Callable[[str | None], list[tuple[str, str]]] or None
        ``FastCors.headers`` of the app; None when CORS is off.
    """
    cors = app.extensions.get("recsys.cors")
    return cors.headers if cors is not None else None
