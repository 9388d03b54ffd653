"""Application factory. Only wires things together; nothing reads config at import time."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from apiflask import APIFlask

from recsys.config import DEFAULTS, STRING_KEYS, instance_defaults
from recsys.version import __version__

log = logging.getLogger(__name__)


def _json_loads_or_str(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def create_app(test_config: Mapping[str, Any] | None = None) -> APIFlask:
    app = APIFlask(
        __name__,
        title="recsys",
        version=__version__,
        instance_path=os.environ.get("RECSYS_INSTANCE_PATH") or None,
        instance_relative_config=True,
    )
    app.config["SPEC_FORMAT"] = "json"
    app.config["DOCS_PATH"] = "/docs"
    app.config.update(DEFAULTS)
    app.config.from_prefixed_env("RECSYS", loads=_json_loads_or_str)
    for key in STRING_KEYS:  # secrets and URLs are strings: "0" and "true" stay as given
        if (raw := os.environ.get(f"RECSYS_{key}")) is not None:
            app.config[key] = raw
    if test_config:
        app.config.update(test_config)
    for key, value in instance_defaults(app.instance_path).items():
        if not app.config.get(key):
            app.config[key] = value
    os.makedirs(app.instance_path, exist_ok=True)

    from recsys.store import db
    from recsys.web import errors

    errors.register_error_handlers(app)
    db.init_db(app)
    from recsys.web import auth

    auth.init_app(app)

    from recsys.models import runtime
    from recsys.serving import admission
    from recsys.web.api import admin_models, health, ops

    admission.init_app(app)
    runtime.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(admin_models.bp)

    from recsys.serving import cache, catalog
    from recsys.serving import settings_store as settings
    from recsys.web.api import admin, events, recommend
    from recsys.web.api import catalog as catalog_api

    settings.init_app(app)
    catalog.init_app(app)
    cache.init_app(app)
    for module in (recommend, events, catalog_api, admin):
        app.register_blueprint(module.bp)

    from recsys.serving import experiments
    from recsys.web.api import experiments as experiments_api

    # Variant resolver + exposure hook for the request path, and the experiments endpoints.
    experiments.init_app(app)
    app.register_blueprint(experiments_api.bp)

    from recsys.web import console

    console.init_app(app)  # the operator console at /admin/

    from recsys.serving import pipeline

    # The request path of the recommendation endpoints, over the stores set up above.
    pipeline.init_app(app)

    from recsys.web import cors, fastpath, limits, openapi

    cors.init_app(app)
    openapi.init_app(app)

    # Body size and JSON shape limits, in front of Flask; then the cache hits of GET
    # /v1/users/<id>/recommendations answered in front of both (FAST_CACHE_PATH: plain GETs
    # only, it never reads a body); last, so the route it serves is registered and checked.
    limits.init_app(app)
    fastpath.init_app(app)

    from recsys.ops import logs

    # Outermost: request ids and the access log cover the fast path too.
    logs.init_app(app)
    return app
