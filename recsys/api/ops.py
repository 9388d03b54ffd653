"""Operations endpoints: readiness and Prometheus metrics."""

from __future__ import annotations

import logging

from apiflask import APIBlueprint
from flask import Response
from sqlalchemy import text

from recsys import metrics
from recsys.runtime import get_runtime

log = logging.getLogger(__name__)

bp = APIBlueprint("ops", __name__, tag="Operations")


def _database_error() -> str | None:
    """Why the SQL store cannot be reached, or None (one ``SELECT 1``)."""
    from recsys.store import get_engine

    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as e:  # any failure means "not ready", with the reason
        log.warning("readiness: database unreachable: %s", str(e).splitlines()[0])
        return str(e).splitlines()[0][:300]
    return None


@bp.get("/readyz")
@bp.doc(
    summary="Readiness: the database answers and every preload model is loaded and warmed",
    description="200 when ready; 503 with the pending models (and any load error), or with "
    "`database` saying why the SQL store cannot be reached, otherwise.",
)
def readyz():
    db_error = _database_error()
    rt = get_runtime()
    ready = rt.ready()
    body = {
        "status": "ready" if ready else "loading",
        "pending": [] if ready else rt.pending(),
        "models": rt.active_versions(),
    }
    if db_error:
        body.update(status="database unavailable", database=db_error)
    return body, 200 if ready and not db_error else 503


@bp.get("/metrics", endpoint="metrics")  # recsys.metrics skips timing "ops.metrics"
@bp.doc(summary="Prometheus metrics (aggregated over every gunicorn worker)")
def metrics_view():
    data, content_type = metrics.exposition()
    return Response(data, content_type=content_type)
