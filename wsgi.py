"""The only module-level app: ``gunicorn -c gunicorn.conf.py wsgi:app``."""

from recsys import create_app

app = create_app()
