"""What an API request may send besides what its view reads: strict query parameters and JSON
bodies.

* Unknown query parameters: ``?categroy=kitchen`` used to be ignored, so a typo answered 200
  with an unfiltered list. Before every view of the API (``/v1/...``, ``/healthz``, ``/readyz``,
  ``/metrics``), the query's keys are compared with the parameters the view declares (its
  ``@bp.input(..., location="query")`` schemas, which the OpenAPI document lists too); any other
  key is a 422 naming it, in the shape of every validation error (``detail.query.<key>``).
  ``STRICT_PARAMS=false`` ignores unknown keys again, for lenient clients. The WSGI fast path
  (``recsys.web.fastpath``) never answers a query with a key it does not know: it hands such a
  request to Flask, so this check covers it at no cost to its plain requests.
* A view that declares a JSON body gets a 400 "body must be JSON" for a body sent with another
  content type (``text/plain`` ...), as ``POST /v1/events`` always answered, rather than a 422
  about missing fields that were in fact sent.
"""

from __future__ import annotations

from collections.abc import Callable

from apiflask import abort
from flask import Flask, current_app, request

from recsys.config import get_config

# Paths of the API whose queries are checked (the docs, the console and static files are not).
_API_PREFIX = "/v1/"
_API_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def declared_query(view: Callable) -> frozenset[str] | None:
    """The query parameters ``view`` declares, or None when it is not an APIFlask view.

    Parameters
    ----------
    view : Callable
        A Flask view function, as registered (APIFlask keeps its inputs in ``_spec``).

    Returns
    -------
    frozenset[str] or None
        The names a client may send (each field's ``data_key`` or name); empty when the view
        declares no query schema; None when it is not an APIFlask view (nothing is checked).
    """
    spec = getattr(view, "_spec", None)
    if spec is None:
        return None
    names: set[str] = set()
    for schema, location in spec.get("args") or ():
        if location == "query":
            names.update(f.data_key or name for name, f in schema.fields.items())
    return frozenset(names)


def _declares_json_body(view: Callable) -> bool:
    spec = getattr(view, "_spec", None) or {}
    return spec.get("body") is not None and "json" in str(spec.get("content_type", "json"))


def _known(app: Flask, endpoint: str) -> tuple[frozenset[str] | None, bool]:
    """``(declared query names, declares a JSON body)`` of an endpoint, computed once."""
    cache = app.extensions.setdefault("recsys.declared_params", {})
    if endpoint not in cache:
        view = app.view_functions[endpoint]
        cache[endpoint] = (declared_query(view), _declares_json_body(view))
    return cache[endpoint]


def check_request() -> None:
    """Before every view: unknown query parameters (422) and a non-JSON body where JSON is
    declared (400) on the API's paths; see the module docstring.

    Returns
    -------
    None
        Aborts with the JSON error instead of returning when the request is refused.
    """
    rule = request.url_rule
    if rule is None or request.endpoint is None or request.method == "OPTIONS":
        return  # a CORS preflight carries the query of the call it asks about: the call answers
    path = rule.rule
    if not (path.startswith(_API_PREFIX) or path in _API_PATHS):
        return
    app = current_app
    allowed, json_body = _known(app, request.endpoint)
    if allowed is None:
        return
    if request.args and get_config(app).strict_params:
        unknown = sorted(set(request.args) - allowed)
        if unknown:
            known = ", ".join(sorted(allowed)) or "none"
            abort(
                422,
                message=f"unknown query parameter(s): {', '.join(unknown)[:300]} "
                f"(this endpoint takes: {known})",
                detail={"query": {k[:128]: ["unknown parameter"] for k in unknown[:20]}},
            )
    if json_body and request.method in ("POST", "PUT", "PATCH") and not request.is_json:
        if request.get_data(cache=True):
            abort(400, message="body must be JSON (send Content-Type: application/json)")


def init_app(app: Flask) -> None:
    """Install ``check_request`` before every view.

    Parameters
    ----------
    app : Flask
        The app, with its API blueprints registered or not (endpoints are looked up per
        request, their parameters computed once each).

    Returns
    -------
    None
    """
    app.before_request(check_request)
