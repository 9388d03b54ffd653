"""gunicorn settings; every value can be overridden on the command line (recsys serve --bind)."""

import os

bind = os.environ.get("RECSYS_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("RECSYS_WORKERS", "2"))
threads = int(os.environ.get("RECSYS_THREADS", "4"))
worker_class = "gthread"
# Load the app (and its models) once in the master so workers share that memory copy-on-write.
preload_app = True
timeout = 60
graceful_timeout = 20
keepalive = 5


def post_fork(server, worker):
    # Fork safety: each worker makes its own DB pool, Redis client and threads, and limits
    # BLAS/torch threads so workers do not oversubscribe the cores.
    from recsys.lifecycle import after_fork
    from wsgi import app

    after_fork(app)
