"""gunicorn settings of a source checkout (``gunicorn -c gunicorn.conf.py wsgi:app``): those of
``recsys.gunicorn_conf``, the module an installed wheel's ``recsys serve`` uses."""

from recsys.gunicorn_conf import *  # noqa: F403  (settings and server hooks, by name)
