"""The OpenAPI document and ``/docs``: what APIFlask generates, completed where it cannot know.

* ``/docs`` loads Swagger UI (5.x: OpenAPI 3.1) from the ``dist`` folder the installed
  ``flask-swagger-ui`` package ships (served under ``/docs/assets/``), never from a CDN, so it
  works on a machine without internet.
* The error schema is the body every error actually carries (``recsys.web.errors.ErrorOut``).
* Security schemes: the admin bearer token (``/v1/admin/*``) and an API key header
  (``X-API-Key``), so the page has an Authorize button.
* Responses of admin views that return plain dicts are typed by schemas kept here (the views'
  bodies are not re-serialised through them; ``tests/web/test_openapi.py`` validates real answers
  against the document, so the two cannot drift apart silently).
* ``POST /v1/events`` takes an object or a list; ``X-Priority`` and ``X-Request-ID`` are
  declared headers; tags come in the order a storefront developer reads them.
"""

from __future__ import annotations

import os
from typing import Any

from apiflask import Schema
from apiflask.fields import Boolean, Dict, Float, Integer, List, Nested, String
from apiflask.openapi_adapters import openapi_helper
from flask import Flask, send_from_directory

ADMIN_SCHEME = "AdminToken"
API_KEY_SCHEME = "ApiKey"
API_KEY_HEADER = "X-API-Key"
ASSETS = "/docs/assets"

TAGS = [
    {"name": "Recommendations", "description": "Lists for a user, a guest session, an item"},
    {"name": "Catalogue", "description": "Items and users"},
    {"name": "Events", "description": "What users do (views, clicks, purchases ...)"},
    {"name": "Experiments", "description": "A/B tests (admin) and a user's assignments"},
    {"name": "Admin", "description": "Live configuration and model versions (admin token)"},
    {"name": "Operations", "description": "Readiness and Prometheus metrics"},
    {"name": "Health", "description": "Liveness"},
]


# -- admin responses (documentation only) ---------------------------------------------------
class StrategiesOut(Schema):
    """Answer of ``/v1/admin/strategies``: effective settings per strategy (documentation only)."""

    strategies = Dict(
        keys=String(),
        values=Dict(),
        metadata={"description": "strategy -> {enabled, weight, overridden}"},
    )
    config_version = Integer()
    before = Dict(metadata={"description": "after a PATCH: the changed settings before"})
    after = Dict(metadata={"description": "after a PATCH: the changed settings after"})


class RoutingOut(Schema):
    """Answer of ``/v1/admin/routing``: effective routing, overridden keys (documentation only)."""

    routing = Dict(metadata={"description": "effective routing settings"})
    overridden = List(String())
    config_version = Integer()
    before = Dict()
    after = Dict()


class ApiKeyOut(Schema):
    """One API key as ``/v1/admin/keys`` shows it (documentation only); ``key`` only in the
    answer that created it."""

    id = String(metadata={"description": "12 hex characters of the key's SHA-256"})
    source = String(metadata={"description": "config (RECSYS_API_KEYS) or stored"})
    scopes = List(String())
    label = String()
    created_at = String(allow_none=True)
    key = String(metadata={"description": "the key itself: in the creating answer only"})


class ApiKeysOut(Schema):
    """Answer of ``GET /v1/admin/keys``: the keys in force (documentation only)."""

    keys = List(Nested(ApiKeyOut))


class AuditEntry(Schema):
    """One audit entry: who did what to which target, before / after, when (documentation only)."""

    id = Integer()
    actor = String()
    action = String()
    target = String()
    before = Dict(allow_none=True)
    after = Dict(allow_none=True)
    at = String()


class AuditOut(Schema):
    """Answer of ``/v1/admin/audit``: one page of entries and the total (documentation only)."""

    total = Integer()
    limit = Integer()
    offset = Integer()
    entries = List(Nested(AuditEntry))


class ModelsOut(Schema):
    """Answer of ``GET /v1/admin/models``: runtime rows, readiness, versions (docs only)."""

    runtime = List(Dict(), metadata={"description": "what this process holds, per strategy"})
    ready = Boolean()
    budget_bytes = Integer()
    versions = List(Dict(), metadata={"description": "stored versions, every strategy"})


class ModelChangeOut(Schema):
    """Answer of an activation or rollback: the versions, the runtime after (documentation only)."""

    strategy = String()
    version = String()
    previous_version = String(allow_none=True)
    models = List(Dict(), metadata={"description": "this process's runtime after the change"})


class ModelModeOut(Schema):
    """Answer of a model load or unload: the strategy's load mode and state (documentation only)."""

    strategy = String()
    load_mode = String()
    state = String()
    loaded_version = String(allow_none=True)


class ModelStrategyOut(Schema):
    """Answer of ``GET /v1/admin/models/<strategy>``: versions, runtime row, stats (documentation
    only).
    """

    strategy = String()
    active_version = String(allow_none=True)
    rollback_target = String(allow_none=True)
    versions = List(Dict(), metadata={"description": "stored versions of this strategy"})
    runtime = Dict(allow_none=True, metadata={"description": "what this process holds"})
    stats = Dict(
        metadata={
            "description": "loads, load_failures, load_seconds_mean, scored, "
            "latency_ms {p50, p95, p99}, deadline_misses (since start, every worker)"
        }
    )


class ServingProfileOut(Schema):
    """Answer of ``/v1/admin/models/profile/active``: the active serving profile (documentation
    only).
    """

    format = String()
    routes = List(Dict(), metadata={"description": "[{max_history, weights, blend?, ...}]"})
    blend = String()
    params = Dict(metadata={"description": "strategy hyperparameters"})


class ExperimentOut(Schema):
    """One experiment: name, variants, status and times (documentation only)."""

    name = String()
    variants = List(Dict(), metadata={"description": "[{name, weight, config}]"})
    status = String()
    active = Boolean()
    start_at = String(allow_none=True)
    stop_at = String(allow_none=True)
    created_at = String(allow_none=True)


class ExperimentsOut(Schema):
    """Answer of ``GET /v1/admin/experiments``: every experiment (documentation only)."""

    experiments = List(Nested(ExperimentOut))


class ExperimentReportOut(Schema):
    """An experiment's report: per-variant figures and comparisons (documentation only)."""

    experiment = Nested(ExperimentOut)
    window_s = Float()
    variants = Dict(metadata={"description": "per variant: exposures, rates, 95% intervals"})
    comparisons = Dict()
    events = Dict()
    definitions = Dict(keys=String(), values=String())


class UserExperimentsOut(Schema):
    """Answer of ``/v1/users/<id>/experiments``: assignments and the serving one (documentation
    only).
    """

    user_id = String()
    assignments = List(
        Dict(), metadata={"description": "[{name, variant}] per running experiment (null: out)"}
    )
    serving = Dict(allow_none=True, metadata={"description": "{name, variant} or null"})


ADMIN_RESPONSES: dict[tuple[str, str], type[Schema]] = {
    ("/v1/admin/strategies", "get"): StrategiesOut,
    ("/v1/admin/strategies", "patch"): StrategiesOut,
    ("/v1/admin/routing", "get"): RoutingOut,
    ("/v1/admin/routing", "patch"): RoutingOut,
    ("/v1/admin/strategies/{name}", "delete"): StrategiesOut,
    ("/v1/admin/routing/{key}", "delete"): RoutingOut,
    ("/v1/admin/audit", "get"): AuditOut,
    ("/v1/admin/keys", "get"): ApiKeysOut,
    ("/v1/admin/keys", "post"): ApiKeyOut,
    ("/v1/admin/keys/{ident}", "delete"): ApiKeyOut,
    ("/v1/admin/models", "get"): ModelsOut,
    ("/v1/admin/models/{strategy}", "get"): ModelStrategyOut,
    ("/v1/admin/models/{strategy}/activate", "post"): ModelChangeOut,
    ("/v1/admin/models/{strategy}/rollback", "post"): ModelChangeOut,
    ("/v1/admin/models/{strategy}/load", "post"): ModelModeOut,
    ("/v1/admin/models/{strategy}/unload", "post"): ModelModeOut,
    ("/v1/admin/models/profile/active", "get"): ServingProfileOut,
    ("/v1/admin/experiments", "get"): ExperimentsOut,
    ("/v1/admin/experiments", "post"): ExperimentOut,
    ("/v1/admin/experiments/{name}", "get"): ExperimentOut,
    ("/v1/admin/experiments/{name}/stop", "post"): ExperimentOut,
    ("/v1/admin/experiments/{name}/report", "get"): ExperimentReportOut,
    ("/v1/users/{user_id}/experiments", "get"): UserExperimentsOut,
}

PRIORITY_HEADER = {
    "name": "X-Priority",
    "in": "header",
    "required": False,
    "description": "low | normal | high: the deadline multiplier; low-priority requests are "
    "answered from the cache or from popularity when the worker is overloaded",
    "schema": {"type": "string", "enum": ["low", "normal", "high"], "default": "normal"},
}
REQUEST_ID_HEADER = {
    "name": "X-Request-ID",
    "in": "header",
    "required": False,
    "description": "your id for this request (echoed, and in every log line); made up when absent",
    "schema": {"type": "string", "maxLength": 128},
}
# Views that answer 201 where APIFlask, without an output schema, assumes 200.
_CREATED = {("/v1/admin/experiments", "post"), ("/v1/admin/keys", "post")}
# Stable operationIds (client generators name their functions after them): one per operation,
# unique; a test fails when an operation lacks one. Never rename one: clients call them.
OPERATION_IDS: dict[tuple[str, str], str] = {
    ("/healthz", "get"): "getHealth",
    ("/readyz", "get"): "getReadiness",
    ("/metrics", "get"): "getMetrics",
    ("/v1/users/{user_id}/recommendations", "get"): "getUserRecommendations",
    ("/v1/recommendations", "post"): "getSessionRecommendations",
    ("/v1/items/{item_id}/similar", "get"): "getSimilarItems",
    ("/v1/popular", "get"): "getPopularItems",
    ("/v1/latest", "get"): "getLatestItems",
    ("/v1/events", "post"): "postEvents",
    ("/v1/impressions", "post"): "postImpressions",
    ("/v1/users/{user_id}/events", "get"): "listUserEvents",
    ("/v1/users/{user_id}/events", "delete"): "deleteUserItemEvents",
    ("/v1/users/{user_id}/events/{event_id}", "delete"): "deleteUserEvent",
    ("/v1/items", "get"): "listItems",
    ("/v1/items/{item_id}", "get"): "getItem",
    ("/v1/items/{item_id}", "put"): "putItem",
    ("/v1/items/{item_id}", "delete"): "deleteItem",
    ("/v1/users", "get"): "listUsers",
    ("/v1/users/{user_id}", "get"): "getUser",
    ("/v1/users/{user_id}", "put"): "putUser",
    ("/v1/users/{user_id}", "delete"): "deleteUser",
    ("/v1/users/{user_id}/experiments", "get"): "getUserExperiments",
    ("/v1/users/{user_id}/neighbors", "get"): "getUserNeighbors",
    ("/v1/admin/strategies", "get"): "getStrategies",
    ("/v1/admin/strategies", "patch"): "patchStrategies",
    ("/v1/admin/strategies/{name}", "delete"): "resetStrategy",
    ("/v1/admin/routing", "get"): "getRouting",
    ("/v1/admin/routing", "patch"): "patchRouting",
    ("/v1/admin/routing/{key}", "delete"): "resetRouting",
    ("/v1/admin/audit", "get"): "listAuditEntries",
    ("/v1/admin/keys", "get"): "listApiKeys",
    ("/v1/admin/keys", "post"): "createApiKey",
    ("/v1/admin/keys/{ident}", "delete"): "revokeApiKey",
    ("/v1/admin/models", "get"): "listModels",
    ("/v1/admin/models/{strategy}", "get"): "getModelStrategy",
    ("/v1/admin/models/{strategy}/activate", "post"): "activateModel",
    ("/v1/admin/models/{strategy}/rollback", "post"): "rollbackModel",
    ("/v1/admin/models/{strategy}/load", "post"): "loadModel",
    ("/v1/admin/models/{strategy}/unload", "post"): "unloadModel",
    ("/v1/admin/models/profile/active", "get"): "getActiveServingProfile",
    ("/v1/admin/experiments", "get"): "listExperiments",
    ("/v1/admin/experiments", "post"): "createExperiment",
    ("/v1/admin/experiments/{name}", "get"): "getExperiment",
    ("/v1/admin/experiments/{name}/stop", "post"): "stopExperiment",
    ("/v1/admin/experiments/{name}/report", "get"): "getExperimentReport",
}
# Relative to the document's own URL: "Try it out" and generated clients call the host (and
# path prefix) the document was fetched from, whatever it is; never built from a request.
SERVERS = [{"url": ".", "description": "where this document is served"}]
_PRIORITY_OPS = {
    ("/v1/users/{user_id}/recommendations", "get"),
    ("/v1/recommendations", "post"),
}


def _schema(spec: dict, schema: type[Schema]) -> dict[str, str]:
    """Register ``schema`` (and the schemas it nests) as components; its ``$ref``."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    name = schema.__name__
    if name not in schemas:
        body = openapi_helper.schema_to_json_schema(schema)
        # Documents the keys clients rely on; more may come (a list of fields is not a promise
        # that nothing is ever added).
        body.pop("additionalProperties", None)
        schemas[name] = _nullable_31(body)
        for field in schema._declared_fields.values():
            inner = getattr(field, "inner", field)
            if isinstance(inner, Nested) and isinstance(inner.nested, type):
                _schema(spec, inner.nested)
    return {"$ref": f"#/components/schemas/{name}"}


ERROR_REF = {"$ref": "#/components/schemas/ErrorOut"}


def _nullable_31(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable: true`` (what the schema converter writes) as 3.1 spells it,
    ``type: [..., "null"]`` (the document is 3.1)."""
    if isinstance(node, dict):
        if node.pop("nullable", False) and isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
        for value in node.values():
            _nullable_31(value)
    elif isinstance(node, list):
        for value in node:
            _nullable_31(value)
    return node


def _json_schema(response: dict) -> Any:
    return response.get("content", {}).get("application/json", {}).get("schema")


def _share_success_schema(responses: dict) -> None:
    """A success status documented by description only (``201: "created"``) has the body of
    the operation's typed success status."""
    typed = [r for code, r in responses.items() if code.startswith("2") and _json_schema(r)]
    if not typed:
        return
    for code, r in responses.items():
        if code.startswith("2") and code != "204" and not _json_schema(r):
            r["content"] = {"application/json": {"schema": _json_schema(typed[0])}}


def complete_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """APIFlask's spec processor: see the module docstring.

    Parameters
    ----------
    spec : dict[str, Any]
        The OpenAPI document APIFlask generated; changed in place.

    Returns
    -------
    dict[str, Any]
        ``spec``, with security schemes, tags, the shared headers, error responses and the
        typed admin answers added.
    """
    components = spec.setdefault("components", {})
    components["securitySchemes"] = {
        ADMIN_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": "Authorization: Bearer $RECSYS_ADMIN_TOKEN",
        },
        API_KEY_SCHEME: {"type": "apiKey", "in": "header", "name": API_KEY_HEADER},
    }
    spec["tags"] = TAGS
    spec["servers"] = SERVERS
    for path, ops in spec.get("paths", {}).items():
        for method, op in ops.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            if (path, method) in OPERATION_IDS:
                op["operationId"] = OPERATION_IDS[(path, method)]
            params = op.setdefault("parameters", [])
            for p in params:
                # An absent optional parameter is absent, not null.
                if p.get("schema", {}).get("default", 0) is None:
                    del p["schema"]["default"]
            params.append(REQUEST_ID_HEADER)
            if (path, method) in _PRIORITY_OPS:
                params.append(PRIORITY_HEADER)
            if path.startswith("/v1/admin"):
                op["security"] = [{ADMIN_SCHEME: []}]
            elif path.startswith("/v1/"):
                # An API key when the deployment requires one; nothing otherwise.
                op["security"] = [{API_KEY_SCHEME: []}, {}]
            if (path, method) in _CREATED and "200" in op["responses"]:
                op["responses"]["201"] = {**op["responses"].pop("200"), "description": "created"}
            _share_success_schema(op["responses"])
            errors = {}
            if "requestBody" in op or "{" in path:
                errors["400"] = "malformed JSON body, or an unusable id in the path"
            if path.startswith("/v1/admin"):
                errors["401"] = "missing or wrong admin token"
                errors["403"] = "admin is disabled (no RECSYS_ADMIN_TOKEN)"
            elif path.startswith("/v1/"):
                errors["401"] = "an API key is required here (RECSYS_API_KEYS) or invalid"
                errors["403"] = "the API key lacks the scope this operation needs"
            if path.startswith("/v1/") or path in ("/healthz", "/readyz", "/metrics"):
                errors["422"] = "invalid parameters, or an unknown query parameter (named)"
            if path.startswith("/v1/"):
                errors["503"] = "the database is unreachable (Retry-After)"
            for status, why in errors.items():
                op["responses"].setdefault(
                    status,
                    {"description": why, "content": {"application/json": {"schema": ERROR_REF}}},
                )
            typed = ADMIN_RESPONSES.get((path, method))
            if typed is not None:
                for status in ("200", "201"):
                    if status in op["responses"]:
                        content = op["responses"][status].setdefault("content", {})
                        content["application/json"] = {"schema": _schema(spec, typed)}
    patch = spec.get("paths", {}).get("/v1/admin/strategies", {}).get("patch")
    if patch and "requestBody" in patch:
        from recsys.web.schemas import StrategyPatch

        patch["requestBody"]["content"]["application/json"]["schema"] = {
            "type": "object",
            "description": "strategy name -> the settings to change",
            "additionalProperties": _schema(spec, StrategyPatch),
            "minProperties": 1,
        }
    for path in ("/v1/events", "/v1/impressions"):  # one object, or a list of them
        post = spec.get("paths", {}).get(path, {}).get("post")
        if post and "requestBody" in post:
            content = post["requestBody"]["content"]["application/json"]
            one = content["schema"]
            content["schema"] = {"oneOf": [one, {"type": "array", "items": one, "minItems": 1}]}
    return spec


def init_app(app: Flask) -> None:
    """Local Swagger UI assets and the spec processor (call before the first request).

    Parameters
    ----------
    app : Flask
        The application (an APIFlask app): Swagger UI is served from the local
        ``flask_swagger_ui`` assets and ``complete_spec`` processes its spec.
    """
    import flask_swagger_ui

    assets = os.path.join(os.path.dirname(flask_swagger_ui.__file__), "dist")
    # Relative URLs (to ``/docs``): the page works at any host and under any path prefix a
    # proxy adds, with nothing taken from the request's headers.
    rel = ASSETS.lstrip("/")
    app.config.update(
        SWAGGER_UI_CSS=f"{rel}/swagger-ui.css",
        SWAGGER_UI_BUNDLE_JS=f"{rel}/swagger-ui-bundle.js",
        SWAGGER_UI_STANDALONE_PRESET_JS=f"{rel}/swagger-ui-standalone-preset.js",
        DOCS_FAVICON=f"{rel}/favicon-32x32.png",
        SWAGGER_UI_CONFIG={"url": "openapi.json"},
        AUTO_SERVERS=False,
        SERVERS=SERVERS,
    )

    @app.get(f"{ASSETS}/<path:filename>")
    @app.doc(hide=True)
    def docs_asset(filename: str):
        return send_from_directory(assets, filename, max_age=86400)

    app.spec_processor(complete_spec)
