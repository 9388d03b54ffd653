"""The only module-level app: ``gunicorn -c python:recsys.gunicorn_conf recsys.wsgi:app``
(what ``recsys serve`` runs; ``wsgi.py`` at the checkout's root re-exports it as ``wsgi:app``)."""

from recsys import create_app
from recsys.ops.logs import configure_for

app = create_app()
# Serving logs: JSON lines (or text) at RECSYS_LOG_LEVEL; the CLI keeps Python's defaults.
configure_for(app)
