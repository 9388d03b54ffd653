"""Process lifecycle hooks: what must be re-created in each gunicorn worker after fork."""

from __future__ import annotations

import logging
import os
import sys

from flask import Flask

from recsys.config import get_config

log = logging.getLogger(__name__)

# Hooks registered by subsystems (cache client, model runtime, batcher threads).
_after_fork_hooks: list = []


def on_after_fork(fn):
    """Register ``fn(app)`` to run in each worker right after fork.

    Parameters
    ----------
    fn : callable
        Called with the Flask app (or None) in each worker after fork.

    Returns
    -------
    callable
        ``fn`` itself, so this can be used as a decorator.
    """
    _after_fork_hooks.append(fn)
    return fn


def run_after_fork_hooks(app: Flask | None = None) -> None:
    """Run the registered hooks (``after_fork`` does, after the store's own reset).

    Parameters
    ----------
    app : Flask or None, optional
        Passed to each hook; None outside an app.

    Returns
    -------
    None
    """
    for hook in list(_after_fork_hooks):
        hook(app)


def limit_threads(n: int = 1) -> None:
    """BLAS and torch use one thread per worker: gunicorn already gives us parallelism.

    Parameters
    ----------
    n : int, optional
        Threads per process for BLAS, OpenMP and torch.

    Returns
    -------
    None
    """
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(n))
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except Exception:  # pragma: no cover - threadpoolctl missing a backend is harmless
        log.debug("threadpoolctl could not limit threads", exc_info=True)
    # Only if torch is already loaded (the deep model was preloaded): importing it here would
    # cost every worker seconds of start-up, and a later import reads OMP_NUM_THREADS anyway.
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            torch.set_num_threads(n)
        except Exception:  # pragma: no cover
            log.debug("torch thread limit not applied", exc_info=True)


def after_fork(app: Flask) -> None:
    """In a new worker process: fresh SQL connections, its thread limits, the fork hooks.

    Parameters
    ----------
    app : Flask
        The app (its settings: ``recsys.config.get_config``).

    Returns
    -------
    None
    """
    from recsys.store.db import dispose_after_fork

    dispose_after_fork(app)
    limit_threads(get_config(app).worker_threads_blas)
    run_after_fork_hooks(app)
