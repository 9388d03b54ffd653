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
"""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Register the console's two blueprints (``console`` and ``console_ui``) on ``app``.

    Parameters
    ----------
    app : Flask
        The application.
    """
    from recsys.web.console import views

    app.register_blueprint(views.bp)
    app.register_blueprint(views.ui)
