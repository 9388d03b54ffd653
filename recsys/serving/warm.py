"""Warming a gunicorn worker before it serves (``recsys.gunicorn_conf.post_fork``): what a
request's first snapshot would otherwise read. The master's part, the catalogue, is
``recsys.serving.catalog.preload``."""

from __future__ import annotations

import logging

from flask import Flask

log = logging.getLogger(__name__)


def warm_worker(app: Flask) -> bool:
    """In a new worker, before it serves: read the settings and versions (the worker's first
    SQL connection) the way a request's snapshot does, so the first request does not pay for
    them (~70 ms of a 150 ms first similar-items call at 50k items under load, issue 29).
    The database down: nothing is read and the first request does it.

    Parameters
    ----------
    app : Flask
        The app (after ``after_fork``).

    Returns
    -------
    bool
        True when the snapshot was read.
    """
    from recsys.serving.pipeline import get_pipeline

    try:
        with app.app_context():
            get_pipeline(app).snapshot()
    except Exception as e:  # noqa: BLE001 - a worker must start with the database down
        log.warning("worker not warmed (%s); its first request reads the settings", e)
        return False
    return True
