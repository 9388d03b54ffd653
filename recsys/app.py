"""Application factory. Only wires things together; nothing reads config at import time."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from apiflask import APIFlask
from flask import Config, Request
from werkzeug.routing import RequestRedirect

from recsys.config import (
    ENV_PREFIX,
    ConfigError,
    Settings,
    get_config,
    install_config,
    instance_defaults,
    load_settings,
)
from recsys.version import __version__

log = logging.getLogger(__name__)


def _json_loads_or_str(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


class AppConfig(Config):
    """``app.config`` of a recsys app: our keys are mirrored from the settings and read-only
    once ``init_config`` has run (change them with ``update_config``); Flask's keys as usual."""

    locked: frozenset[str] = frozenset()

    def _check(self, keys: Any) -> None:
        if hit := sorted(self.locked.intersection(keys)):
            raise ConfigError(
                f"{', '.join(hit)}: set at start from the settings; change at run time with "
                "recsys.config.update_config(app, KEY=value)"
            )

    def __setitem__(self, key: str, value: Any) -> None:
        self._check([key])
        super().__setitem__(key, value)

    def update(self, *args: Any, **kw: Any) -> None:  # type: ignore[override]
        """``dict.update``, refusing our keys once locked.

        Parameters
        ----------
        *args, **kw
            As ``dict.update``.

        Returns
        -------
        None
        """
        new = dict(*args, **kw)
        self._check(new)
        super().update(new)

    def setdefault(self, key: str, default: Any = None) -> Any:
        """``dict.setdefault``, refusing to add one of our keys once locked.

        Parameters
        ----------
        key : str
            The key.
        default : Any
            Its value when missing.

        Returns
        -------
        Any
            The key's value.
        """
        if key not in self:
            self._check([key])
        return super().setdefault(key, default)

    def mirror(self, values: Mapping[str, Any]) -> None:
        """Write the settings' values (the only way to write our keys once locked).

        Parameters
        ----------
        values : Mapping
            Values by key.

        Returns
        -------
        None
        """
        dict.update(self, values)
        self.locked = self.locked | frozenset(values)


def relative_location(url: str) -> str:
    """``url`` without its scheme and host: the path (and query) alone.

    Parameters
    ----------
    url : str
        An absolute URL that werkzeug built from the request's ``Host`` header.

    Returns
    -------
    str
        ``/path?query``; never ``//...``, which a browser would read as another host.
    """
    parts = urlsplit(url)
    return urlunsplit(("", "", "/" + parts.path.lstrip("/"), parts.query, ""))


class RecsysFlask(APIFlask):
    """The service's app class: ``APIFlask`` with ``AppConfig`` as ``app.config``."""

    config_class = AppConfig

    def raise_routing_exception(self, request: Request) -> None:
        """See ``Flask.raise_routing_exception``: a redirect of the router's own (``/admin`` to
        ``/admin/``) goes to a relative ``Location``, not one built from the ``Host`` header,
        which the client chooses (``Host: evil.example`` must not send it elsewhere).

        Parameters
        ----------
        request : Request
            The request whose URL did not match as sent.
        """
        exc = request.routing_exception
        if isinstance(exc, RequestRedirect):
            exc.new_url = relative_location(exc.new_url)
        super().raise_routing_exception(request)


def create_app(test_config: Mapping[str, Any] | None = None) -> APIFlask:
    """The service's app, configured and wired.

    Parameters
    ----------
    test_config : Mapping, optional
        Settings by key (``{"CACHE_TTL": 60}``) over the ``RECSYS_*`` environment, and Flask's
        own keys (``TESTING``). Any other key is an error.

    Returns
    -------
    APIFlask
        The app (a ``RecsysFlask``); its settings are ``recsys.config.get_config(app)``.

    Raises
    ------
    ConfigError
        A bad value (named ``RECSYS_KEY`` or ``KEY``) or an unknown key.
    """
    app = RecsysFlask(
        __name__,
        title="recsys",
        version=__version__,
        instance_path=os.environ.get("RECSYS_INSTANCE_PATH") or None,
        instance_relative_config=True,
    )
    app.config["SPEC_FORMAT"] = "json"
    app.config["DOCS_PATH"] = "/docs"
    # Flask's own keys (TESTING, TRUSTED_HOSTS, ...) from RECSYS_* and the mapping, as before;
    # ours are the settings (recsys.config): environment, then the mapping, validated once.
    flask_keys = set(app.config) - set(Settings.keys())
    for name, raw in os.environ.items():
        if name.startswith(ENV_PREFIX) and name[len(ENV_PREFIX) :] in flask_keys:
            app.config[name[len(ENV_PREFIX) :]] = _json_loads_or_str(raw)
    given = dict(test_config or {})
    app.config.update({k: v for k, v in given.items() if k in flask_keys})
    settings = load_settings({k: v for k, v in given.items() if k not in flask_keys})
    if unset := {
        key.lower(): value
        for key, value in instance_defaults(app.instance_path).items()
        if not getattr(settings, key.lower())
    }:
        settings = settings.model_copy(update=unset)
    install_config(app, settings)
    os.makedirs(app.instance_path, exist_ok=True)

    from recsys.store import db
    from recsys.web import errors

    errors.register_error_handlers(app)
    db.init_db(app)
    from recsys.web import auth

    auth.init_app(app)

    from recsys.models import runtime
    from recsys.serving import admission
    from recsys.web.api import admin_jobs, admin_models, admin_overview, health, ops

    admission.init_app(app)
    runtime.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(admin_models.bp)
    app.register_blueprint(admin_jobs.bp)
    app.register_blueprint(admin_overview.bp)

    from recsys.serving import cache, catalog
    from recsys.serving import settings_store as settings
    from recsys.web.api import admin, events, history, recommend
    from recsys.web.api import catalog as catalog_api

    settings.init_app(app)
    catalog.init_app(app)
    cache.init_app(app)
    for module in (recommend, events, history, catalog_api, admin):
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

    from recsys.web import cors, fastpath, limits, openapi, params

    cors.init_app(app)
    openapi.init_app(app)
    params.init_app(app)  # unknown query parameters, non-JSON bodies

    # Body size and JSON shape limits, in front of Flask; then the cache hits of GET
    # /v1/users/<id>/recommendations answered in front of both (FAST_CACHE_PATH: plain GETs
    # only, it never reads a body); last, so the route it serves is registered and checked.
    limits.init_app(app)
    fastpath.init_app(app)

    from recsys.ops import logs

    # Outermost: request ids and the access log cover the fast path too.
    logs.init_app(app)
    if proxies := get_config(app).trusted_proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        # Before everything else: the access log sees the client's address, and url_for the
        # prefix a proxy mounts the service under (X-Forwarded-Prefix -> SCRIPT_NAME).
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies, x_prefix=proxies
        )
    return app
