"""The WSGI entry of a source checkout, ``gunicorn -c gunicorn.conf.py wsgi:app``: the app of
``recsys.wsgi`` (the one module-level app; ``recsys serve`` runs ``recsys.wsgi:app`` itself)."""

from recsys.wsgi import app

__all__ = ["app"]
