"""Plain ``GET /v1/users/<id>/recommendations`` answered below Flask (WSGI middleware).

A cached per-user list is one Redis ``MGET`` and a byte patch (``recsys.serving.pipeline``), yet
through Flask a hit also pays for routing, webargs/marshmallow query validation, the request
context and the before/after/teardown hooks: about twice the worker CPU of ``/healthz``. A miss
pays the same on top of computing the list (8-14 % of a miss's CPU: ``bench/inproc_ab.py``).
This middleware answers only what it is sure about, and hands everything else to Flask
untouched:

* ``GET`` of exactly ``/v1/users/<id>/recommendations`` (one path segment, decoded as werkzeug
  decodes ``PATH_INFO``; the id checked like the view checks it);
* a query string of only ``RecQuery``'s keys, each at most once, in a plain form whose value is
  certain (ints as ASCII digits, ``explain`` as ``true|false|1|0``, strings through the schema's
  own field), read with the same ``parse_qsl`` call as werkzeug;
* no ``X-Priority`` header other than empty or ``normal``;
* the user in no running experiment (the view records exposures);
* the cache reachable.

A fresh entry in the cache (under the same key the view builds,
``RecommendationPipeline.cache_context``) is sent as it is. A miss is computed here by
``RecommendationPipeline.user_list`` (``recsys.serving.pipeline``), what the view calls, with
the deadline ``admission`` gives a normal-priority request, reusing this lookup
(``FAST_MISS_PATH = False`` leaves misses to the view, which looks the entry up again: nothing
passes from this middleware to the view). Anything else (any doubt, or any exception, even
halfway through a miss) falls through to Flask, which validates, answers errors and computes:
the fast path never answers anything but a 200. It sends the bytes and headers the view would
send and records the same metrics (cache hit or miss, request count and latency under the view's
endpoint name and route, the in-flight count that overload shedding reads). ``FAST_CACHE_PATH =
False`` turns it off altogether.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

from flask import Flask
from marshmallow import ValidationError

from recsys.config import get_config
from recsys.ops import metrics
from recsys.ops.logs import note
from recsys.serving import admission
from recsys.serving.pipeline import get_pipeline
from recsys.serving.request import UserAsk, is_degraded, mark_cached, user_request
from recsys.web.auth import given_key, key_allows, keys_required
from recsys.web.cors import fast_cors
from recsys.web.httpcache import list_headers, not_modified
from recsys.web.schemas import RecQuery, id_problem, item_fields, split_exclude

log = logging.getLogger(__name__)

ENDPOINT = "recommend.user_recommendations"
RULE = "/v1/users/<user_id>/recommendations"
# The rule's one ``<user_id>`` segment as werkzeug's default converter matches it ([^/]+).
_PATH = re.compile(r"/v1/users/([^/]+)/recommendations")
_DIGITS = re.compile(r"[0-9]{1,9}")
LOG_EVERY_S = 60.0
# /healthz as its view answers it (tests/web/test_fastpath.py compares the two).
HEALTHZ_ENDPOINT = "health.healthz"
HEALTHZ_RULE = "/healthz"

_FIELDS = RecQuery().fields
# The query keys this module knows how to read (and ``user_cache_context`` keys on): a new
# RecQuery field disables the fast path (init_app) until it is taught here.
_INTS = ("n", "offset")
_STRINGS = ("category", "exclude", "fields")
_BOOL = "explain"
# The explain spellings taken here, mapped as the schema's Boolean maps them.
_BOOLS = {
    s: s in _FIELDS["explain"].truthy
    for s in ("true", "false", "1", "0")
    if s in _FIELDS["explain"].truthy or s in _FIELDS["explain"].falsy
}
_DEFAULTS = {
    name: field.load_default() if callable(field.load_default) else field.load_default
    for name, field in _FIELDS.items()
}
_PRIORITY_OK = (None, "", "normal")

StartResponse = Callable[..., Any]


def parse_query(qs: str) -> dict[str, Any] | None:
    """``QUERY_STRING`` -> RecQuery's values, or None when not certain to be valid.

    Parameters
    ----------
    qs : str
        The raw ``QUERY_STRING`` (percent-encoded ASCII).

    Returns
    -------
    dict[str, Any] or None
        RecQuery's field -> value, its defaults filled in; None when the query has an unknown
        or repeated key, non-ASCII or invalid bytes, or a value RecQuery might read otherwise
        (Flask then validates it and answers).
    """
    out = dict(_DEFAULTS)
    if not qs:
        return out
    if not qs.isascii():
        return None  # werkzeug decodes raw non-ASCII bytes its own way: let it
    try:
        pairs = parse_qsl(qs, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        return None  # werkzeug keeps invalid bytes percent-encoded: let it
    seen = set()
    for key, value in pairs:
        if key in seen or key not in _FIELDS:
            return None
        seen.add(key)
        if key in _INTS:
            if not _DIGITS.fullmatch(value):
                return None
            num = int(value)
            try:
                for validate in _FIELDS[key].validators:
                    validate(num)
            except ValidationError:
                return None
            out[key] = num
        elif key in _STRINGS:
            try:
                out[key] = _FIELDS[key].deserialize(value)
            except ValidationError:
                return None
        else:  # _BOOL
            flag = _BOOLS.get(value)
            if flag is None:
                return None
            out[key] = flag
    return out


def path_user(path_info: str) -> str | None:
    """The user id of a ``/v1/users/<id>/recommendations`` PATH_INFO, or None.

    Parameters
    ----------
    path_info : str
        The WSGI ``PATH_INFO`` (latin-1-decoded bytes, PEP 3333).

    Returns
    -------
    str or None
        The user id (UTF-8 decoded); None when the path is another one or the id is invalid.
    """
    m = _PATH.fullmatch(path_info)
    if m is None:
        return None
    raw = m.group(1)
    # PATH_INFO is latin-1-decoded bytes (PEP 3333); werkzeug re-decodes it as UTF-8
    # (errors replaced: an id with invalid UTF-8 is left to it).
    if raw.isascii():
        user_id = raw
    else:
        try:
            user_id = raw.encode("latin-1").decode("utf-8")
        except UnicodeError:
            return None
    return None if id_problem(user_id) else user_id


class FastCachePath:
    """WSGI middleware in front of ``app.wsgi_app``; see the module docstring.

    Parameters
    ----------
    app : Flask
        The application (its settings, pipeline and JSON mimetype).
    wsgi_app : Callable[[dict, StartResponse], Iterable[bytes]]
        The WSGI callable it wraps, which answers every request it does not.
    """

    def __init__(self, app: Flask, wsgi_app: Callable[[dict, StartResponse], Iterable[bytes]]):
        self.app = app
        self.wsgi_app = wsgi_app
        self.mimetype = app.json.mimetype
        self.cors = fast_cors(app)
        self._logged_at = -LOG_EVERY_S
        self._healthz_routed = any(
            r.rule == HEALTHZ_RULE and r.endpoint == HEALTHZ_ENDPOINT
            for r in app.url_map.iter_rules()
        )
        with app.app_context():  # the view's body, as Flask's JSON provider writes it
            self._healthz_body = app.json.response({"status": "ok"}).get_data()
        self._healthz_headers = [
            ("Content-Type", self.mimetype),
            ("Content-Length", str(len(self._healthz_body))),
        ]

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == HEALTHZ_RULE and self.plain_healthz(environ):
            return self.healthz(environ, start_response)
        if (
            environ.get("REQUEST_METHOD") == "GET"
            and environ.get("PATH_INFO", "").endswith("/recommendations")
            and get_config(self.app).fast_cache_path
        ):
            body = self.hit(environ)
            if body is not None:
                tag, headers = list_headers(body, get_config(self.app).cache_ttl)
                if self.cors is not None:
                    headers += self.cors(environ.get("HTTP_ORIGIN"))
                if not_modified(environ.get("HTTP_IF_NONE_MATCH"), tag):
                    start_response("304 Not Modified", headers)
                    return []
                headers += [("Content-Type", self.mimetype), ("Content-Length", str(len(body)))]
                start_response("200 OK", headers)
                return [body]
        return self.wsgi_app(environ, start_response)

    def plain_healthz(self, environ: dict) -> bool:
        """Whether a ``/healthz`` request is one this layer answers as the view would: a
        ``GET`` without a query string or a body, CORS off or no ``Origin``, no
        ``TRUSTED_HOSTS`` to check.

        Parameters
        ----------
        environ : dict
            The WSGI environ of a ``/healthz`` request.

        Returns
        -------
        bool
            True to answer here (``healthz``); False: Flask answers.
        """
        return (
            self._healthz_routed
            and environ.get("REQUEST_METHOD") == "GET"
            and not environ.get("QUERY_STRING")  # a parameter: Flask checks (422) it
            and environ.get("CONTENT_LENGTH") in (None, "", "0")
            and "HTTP_TRANSFER_ENCODING" not in environ
            and (self.cors is None or environ.get("HTTP_ORIGIN") is None)
            and self.app.config.get("TRUSTED_HOSTS") is None
            and get_config(self.app).fast_cache_path
        )

    def healthz(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        """The liveness answer, as ``recsys.web.api.health.healthz`` sends it through Flask
        (the same bytes, headers, metrics and access-log fields), without Flask's routing,
        request context and hooks: the floor every request pays is then this layer's.

        Parameters
        ----------
        environ : dict
            The WSGI environ (the access log's fields).
        start_response : callable
            The WSGI ``start_response``.

        Returns
        -------
        list of bytes
            The body.
        """
        t0 = time.perf_counter()
        admission.request_started()
        try:
            note(environ, endpoint=HEALTHZ_RULE)
            start_response("200 OK", list(self._healthz_headers))
        finally:
            admission.request_finished()
        admission.observe_request(HEALTHZ_ENDPOINT, "none", "200", time.perf_counter() - t0)
        return [self._healthz_body]

    def hit(self, environ: dict) -> bytes | None:
        """The response body of a certain plain request (cached or computed), else None
        (Flask answers).

        Parameters
        ----------
        environ : dict
            The WSGI environ of a ``GET .../recommendations`` request; on a miss that Flask
            computes, the cache read is left in it (``PEEK_ENVIRON_KEY``).

        Returns
        -------
        bytes or None
            The JSON body to answer with; None when Flask must answer (any doubt, or any error,
            which is logged at most every ``LOG_EVERY_S`` seconds).
        """
        t0 = time.perf_counter()
        admission.request_started()
        try:
            return self._hit(environ, t0)
        except Exception:
            # Never an error from here: Flask serves the request (and reports what fails).
            now = time.monotonic()
            if now - self._logged_at >= LOG_EVERY_S:
                self._logged_at = now
                log.exception("cache fast path failed; served through Flask")
            return None
        finally:
            admission.request_finished()

    def _hit(self, environ: dict, t0: float) -> bytes | None:
        app = self.app
        if environ.get("HTTP_X_PRIORITY") not in _PRIORITY_OK:
            return None
        if app.config.get("TRUSTED_HOSTS") is not None:
            return None  # Flask checks the Host header against it
        if keys_required(app, "read") and not key_allows(
            app, given_key(environ.get("HTTP_X_API_KEY"), environ.get("HTTP_AUTHORIZATION")), "read"
        ):
            return None  # Flask answers 401/403
        user_id = path_user(environ.get("PATH_INFO", ""))
        if user_id is None:
            return None
        q = parse_query(environ.get("QUERY_STRING", ""))
        if q is None:
            return None
        exclude = split_exclude(q["exclude"])
        if exclude is None:
            return None
        pipeline = get_pipeline(app)
        if pipeline.resolve_assignment(user_id) is not None:
            return None  # in an experiment: the view records the exposure
        snap = pipeline.snapshot()
        context = pipeline.cache_context(
            snap, q["n"], q["offset"], q["category"], exclude, q["explain"], None
        )
        peeked = pipeline.lookup(user_id, context)
        if peeked is None:
            return None  # cache unavailable
        payload = peeked.payload
        if payload is not None:
            route, _, body = payload.partition(b"\n")
            body = mark_cached(body)
            metrics.CACHE_HITS.inc()
            route = route.decode()
        elif get_config(app).fast_miss_path:
            # A miss: computed here by the pipeline, as for the view (reusing this lookup and
            # its snapshot), without Flask's routing, validation and hooks. The user is in no
            # experiment (checked above): no second resolution.
            with app.app_context():
                adm = admission.admission("normal")
                answer = pipeline.user_list(
                    UserAsk(
                        user_id=user_id,
                        req=user_request(q, exclude, adm),
                        explain=q["explain"],
                        shed=adm.shed,
                        assignment=None,
                        peeked=peeked,
                        snapshot=snap,
                    )
                )
                route, body = answer.route, answer.body
        else:
            return None  # misses are the view's (it looks the entry up itself)
        body = pipeline.fields(snap, body, item_fields(q["fields"]))
        note(
            environ,
            endpoint=RULE,
            route=route,
            cached=payload is not None,
            degraded=is_degraded(body),
        )
        admission.observe_request(ENDPOINT, route, "200", time.perf_counter() - t0)
        return body


def schema_as_expected() -> bool:
    """Whether RecQuery has exactly the fields ``parse_query`` knows, of the types it expects.

    Returns
    -------
    bool
        False when the schema changed: the fast path must then not be installed.
    """
    from marshmallow import fields

    return (
        set(_FIELDS) == {*_INTS, *_STRINGS, _BOOL}
        and all(type(_FIELDS[k]) is fields.Integer for k in _INTS)
        and all(isinstance(_FIELDS[k], fields.String) for k in _STRINGS)
        and isinstance(_FIELDS[_BOOL], fields.Boolean)
    )


def init_app(app: Flask) -> None:
    """Wrap ``app.wsgi_app`` (after the blueprints are registered: the rule is checked).

    Parameters
    ----------
    app : Flask
        The application, with its blueprints registered. The fast path is not installed (a
        warning is logged) when the recommendations rule or RecQuery is not as expected.
    """
    rules = [(r.rule, r.methods) for r in app.url_map.iter_rules() if r.endpoint == ENDPOINT]
    if (
        len(rules) != 1
        or rules[0][0] != RULE
        or "GET" not in (rules[0][1] or ())
        or app.url_map.host_matching
        or app.subdomain_matching
    ):
        log.warning("cache fast path not installed: %s is not routed as expected", ENDPOINT)
        return
    if not schema_as_expected():
        log.warning("cache fast path not installed: RecQuery has fields it does not know")
        return
    app.wsgi_app = FastCachePath(app, app.wsgi_app)  # type: ignore[method-assign]
