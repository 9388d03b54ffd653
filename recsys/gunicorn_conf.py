"""gunicorn settings; every value can be overridden on the command line (recsys serve --bind).

``recsys serve`` runs ``gunicorn -c python:recsys.gunicorn_conf recsys.wsgi:app``, so an
installed wheel serves without the source checkout; ``gunicorn.conf.py`` at the checkout's root
re-exports this module for ``gunicorn -c gunicorn.conf.py wsgi:app``.

Order matters here: this module runs before the app is imported (``recsys/__init__.py`` imports
nothing heavy), so it is where the environment that must exist before ``import
numpy/torch/prometheus_client`` is set up.
"""

import gc
import glob
import os
import shutil
import tempfile

bind = os.environ.get("RECSYS_BIND", "127.0.0.1:8000")
# Without Redis the result cache is in-process, so one worker by default (a second worker
# would have to run uncached: see post_fork); with Redis, two.
workers = int(os.environ.get("RECSYS_WORKERS") or (2 if os.environ.get("RECSYS_REDIS_URL") else 1))
threads = int(os.environ.get("RECSYS_THREADS", "4"))
# gunicorn's gthread worker plus a rule that spreads accepted (keep-alive) connections evenly over
# the workers; RECSYS_BALANCE_ACCEPT=false gives plain gthread. See recsys/ops/gworker.py.
worker_class = "recsys.ops.gworker.BalancedThreadWorker"
# Open connections per worker. Each request is read whole on the worker's event loop before a
# thread takes it (recsys/ops/gworker.py, docs/slow-clients.md), so a slow or idle client costs a
# socket, not a thread: the limit is on sockets. gunicorn's default (1,000) let 2,000 slow
# connections fill both workers, which then stopped accepting until the client timeout closed some.
worker_connections = int(os.environ.get("RECSYS_WORKER_CONNECTIONS", "4000"))
# Every one of those is a file descriptor: raise the soft limit towards the hard one if needed.
try:
    import resource

    _soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    _want = worker_connections + 1024
    if _soft != resource.RLIM_INFINITY and _soft < _want:
        resource.setrlimit(
            resource.RLIMIT_NOFILE,
            (_want if _hard == resource.RLIM_INFINITY else min(_want, _hard), _hard),
        )
except (ImportError, ValueError, OSError):  # not POSIX, or not allowed: keep the limit
    pass
# Load the app (and its models) once in the master so workers share that memory copy-on-write.
preload_app = True
timeout = 60
# gunicorn >= 24 opens a control socket at one fixed path per user ($HOME/.gunicorn/gunicorn.ctl),
# so a second server on the box (tests, a canary, the CI wheel check) takes over the first one's,
# and the master runs one more thread. Off unless a path is given.
control_socket = os.environ.get("RECSYS_CONTROL_SOCKET", "")
control_socket_disable = not control_socket
graceful_timeout = 20
keepalive = 5

# One BLAS/OpenMP thread per worker: gunicorn's workers and threads are the parallelism, and
# N workers x M BLAS threads on a small box only thrash. Must be set before numpy is imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
# Let torch answer "is CUDA available?" through NVML without creating a CUDA context, which
# would not survive fork().
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

# Prometheus multiprocess mode: each worker writes its samples to mmap files in this folder and
# /metrics aggregates them. prometheus_client picks its storage at import, so this must happen
# before the app (and recsys.ops.metrics) is loaded. A fresh folder per server start; an externally
# given folder is emptied, as prometheus_client requires.
_OWN_PROM_DIR = None
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
    for _f in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.remove(_f)
else:
    _OWN_PROM_DIR = tempfile.mkdtemp(prefix="recsys-prom-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _OWN_PROM_DIR


def when_ready(server):
    # In the master, after the app is loaded and before any worker forks: load and warm the
    # preload models here so their memory is shared copy-on-write. CPU only: no CUDA context in
    # a process that forks (a worker with a GPU moves the deep model there on first use).
    if not server.cfg.preload_app:
        return  # each worker loads the app itself and preloads in the background
    app = server.app.wsgi()
    from recsys.config import get_config

    if get_config(app).preload_models:
        from recsys.models.runtime import get_runtime

        failed = get_runtime(app).preload(cpu_only=True)
        if failed:
            server.log.error("preload failed for %s; /readyz stays 503 until fixed", failed)
        else:
            server.log.info("preloaded models: %s", get_runtime(app).active_versions())
    # The catalogue snapshot and each model's filter of recommendable items, inherited by the
    # workers: otherwise a worker's first request reads the whole catalogue (issue 29: 4.3 s
    # for the first similar-items call at 50k items).
    from recsys.serving.catalog import preload as preload_catalog

    try:
        with app.app_context():
            server.log.info("preloaded catalogue: %d items", preload_catalog(app))
    except Exception as e:  # the database down at start: each worker reads it when it can
        server.log.warning("catalogue not preloaded (%s); workers load it on first use", e)
    # Sever the master's DB connections so no worker inherits a live socket.
    from recsys.store.db import dispose_engines

    dispose_engines(app)
    # Move everything loaded so far (app, libraries, models: ~270k objects) into the
    # interpreter's permanent generation. Workers' cyclic GC then never walks them: a full
    # collection over them took ~200 ms in a worker (a p99 spike for whichever request it hit)
    # and wrote to every object's GC header, un-sharing the copy-on-write pages.
    gc.collect()
    gc.freeze()


def post_fork(server, worker):
    # Fork safety: each worker makes its own DB pool, Redis client and threads, and limits
    # BLAS/torch threads so workers do not oversubscribe the cores.
    from recsys.ops.lifecycle import after_fork
    from recsys.serving.warm import warm_worker

    # The app gunicorn loaded (recsys.wsgi:app, or whatever APP_MODULE was given), not a fresh
    # import.
    app = server.app.wsgi()
    after_fork(app)
    # An in-process result cache per worker cannot be invalidated by an event another worker
    # handled: with several workers and no Redis, serve uncached rather than stale.
    from recsys.serving.cache import get_cache

    cache = get_cache(app)
    if server.cfg.workers > 1 and not cache.shared:
        cache.disable(f"{server.cfg.workers} workers share no cache (set RECSYS_REDIS_URL)")
    warm_worker(app)  # its settings and first SQL connection, before its first request


def child_exit(server, worker):
    # A dead worker's live gauges (models loaded, memory, in flight) must not be reported.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _OWN_PROM_DIR:
        shutil.rmtree(_OWN_PROM_DIR, ignore_errors=True)
