"""The operator console: a dashboard at ``/admin/`` served by the service itself.

Server-rendered HTML (Jinja templates in ``templates/``) with htmx and uPlot vendored in
``static/vendor/`` (no CDN: it works offline). Two blueprints:

* ``console`` (``/admin/...``): the page shells and static files. They hold no data, so they
  need no token; with no ``ADMIN_TOKEN`` configured they say admin is disabled.
* ``console_ui`` (``/admin/ui/...``): the HTML fragments and actions the shells load with htmx.
  Each needs the admin bearer token, exactly like ``/v1/admin`` (``recsys.web.auth.check_admin``):
  the operator enters it once, the page keeps it in ``sessionStorage`` (this browser tab's
  session) and sends it as ``Authorization: Bearer`` on every fragment request. A header, not a
  cookie, so no other site can make the browser send it (no CSRF surface).

Actions call the same functions as the admin API (``recsys.serving.settings_store``, the model
runtime, ``recsys.serving.experiments``), so they are validated and audited the same way.

Every console answer (pages, fragments, static files) carries ``SECURITY_HEADERS``: a strict
``Content-Security-Policy`` (scripts, styles, fetches and images from this origin only; no
inline script or style, no eval, no plugins; forms post here only), ``X-Frame-Options: DENY``
with ``frame-ancestors 'none'`` (no other page may frame the console to click through it) and
``X-Content-Type-Options: nosniff``. The console's own assets satisfy the policy: its scripts
and styles are files, htmx is told not to inject its indicator ``<style>`` nor eval attribute
code (``htmx-config`` in the shell), and uPlot styles its elements through the DOM, which a
CSP allows.
"""

from __future__ import annotations

from flask import Flask, Response, request

#: What the console allows a page to load and run (see the module docstring).
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


BLUEPRINTS = ("console", "console_ui")


def add_security_headers(response: Response) -> Response:
    """Put ``SECURITY_HEADERS`` on a console answer (a page, fragment, action or static file:
    whatever the console's blueprints answer, errors included); leave others alone.

    Parameters
    ----------
    response : Response
        An answer of the app.

    Returns
    -------
    Response
        The same response.
    """
    if request.blueprint in BLUEPRINTS:
        response.headers.update(SECURITY_HEADERS)
    return response


def init_app(app: Flask) -> None:
    """Register the console's two blueprints (``console`` and ``console_ui``) on ``app``.

    Parameters
    ----------
    app : Flask
        The application.
    """
    # ops_views adds routes to ui; live registers its history sampler for gunicorn's workers.
    from recsys.web.console import live, ops_views, views  # noqa: F401

    app.register_blueprint(views.bp)
    app.register_blueprint(views.ui)
    app.after_request(add_security_headers)
