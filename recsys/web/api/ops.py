"""Operations endpoints: readiness and Prometheus metrics."""

from __future__ import annotations

import logging

from apiflask import APIBlueprint
from flask import Response
from sqlalchemy import text

from recsys.models.runtime import get_runtime
from recsys.ops import metrics
from recsys.web.auth import is_admin
from recsys.web.errors import RateLimitedLog

log = logging.getLogger(__name__)

bp = APIBlueprint("ops", __name__, tag="Operations")


_readiness_log = RateLimitedLog(log)


def _database_error() -> str | None:
    """Why the SQL store cannot be reached, or None (one ``SELECT 1``, bounded like every
    statement; nothing at all while the circuit breaker is open)."""
    from recsys.store import get_engine

    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as e:  # any failure means "not ready", with the reason
        why = (str(e).splitlines() or [type(e).__name__])[0][:300]
        _readiness_log.warning("readiness: database unreachable: %s", why)
        return why
    return None


@bp.get("/readyz")
@bp.doc(
    summary="Readiness: the database answers and every preload model is loaded and warmed",
    description="200 when ready; 503 with the pending models, or with `database: "
    '"unavailable"`, otherwise. The reasons (load errors, the driver\'s message naming the '
    "database host) only with the admin token (`Authorization: Bearer`).",
)
def readyz():
    """Readiness: the database answers and every preload model is loaded and warmed."""
    db_error = _database_error()
    rt = get_runtime()
    ready = rt.ready()
    details = is_admin()
    pending = [] if ready else rt.pending()
    body = {
        "status": "ready" if ready else "loading",
        "pending": pending
        if details
        else [{k: p[k] for k in ("strategy", "version")} for p in pending],
        "models": rt.active_versions(),
    }
    if db_error:
        body.update(status="database unavailable", database=db_error if details else "unavailable")
    if details:
        from recsys.store.db import get_breaker

        body["breaker"] = get_breaker().stats()
    return body, 200 if ready and not db_error else 503


@bp.get("/metrics", endpoint="metrics")  # recsys.ops.metrics skips timing "ops.metrics"
@bp.doc(summary="Prometheus metrics (aggregated over every gunicorn worker)")
def metrics_view():
    """Prometheus metrics (aggregated over every gunicorn worker).

    Answers the Prometheus text exposition of every worker's metrics plus the ones computed
    at scrape time (``ScrapeCollector``).
    """
    data, content_type = metrics.exposition(ScrapeCollector())
    return Response(data, content_type=content_type)


class ScrapeCollector:
    """Metrics computed when scraped, the same in every worker of every server:

    * ``recsys_ready``: 1 when ``/readyz`` would answer 200 (the database answers and every
      preload model is loaded), else 0.
    * ``recsys_model_active_info{strategy, version} 1``: the active version of each strategy
      (serving profiles included, as strategy "profile"), read from SQL.
    """

    def collect(self):
        """Compute the scrape-time metrics (the prometheus_client collector protocol).

        Returns
        -------
        Iterator[Metric]
            ``recsys_ready`` (a gauge) then ``recsys_model_active`` (an info family, one sample
            per strategy; empty when the model store cannot be read).
        """
        from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

        from recsys.models.repository import get_repository

        ready = get_runtime().ready() and _database_error() is None
        yield GaugeMetricFamily(
            "recsys_ready", "1 when /readyz answers 200 (database up, models loaded)", int(ready)
        )
        family = InfoMetricFamily(
            "recsys_model_active", "Active model version per strategy", labels=["strategy"]
        )
        try:
            active = get_repository().active_versions()
        except Exception as e:  # a scrape must still answer with the store down
            _readiness_log.warning("metrics: active versions unavailable: %s", e)
            active = {}
        for strategy, version in sorted(active.items()):
            family.add_metric([strategy], {"version": version})
        yield family
