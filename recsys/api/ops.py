"""Operations endpoints: readiness and Prometheus metrics."""

from __future__ import annotations

from apiflask import APIBlueprint
from flask import Response

from recsys import metrics
from recsys.runtime import get_runtime

bp = APIBlueprint("ops", __name__, tag="Operations")


@bp.get("/readyz")
@bp.doc(
    summary="Readiness: every preload model is loaded and warmed",
    description="200 when ready; 503 with the pending models (and any load error) otherwise.",
)
def readyz():
    rt = get_runtime()
    ready = rt.ready()
    body = {
        "status": "ready" if ready else "loading",
        "pending": [] if ready else rt.pending(),
        "models": rt.active_versions(),
    }
    return body, 200 if ready else 503


@bp.get("/metrics")
@bp.doc(summary="Prometheus metrics (aggregated over every gunicorn worker)")
def metrics_view():
    data, content_type = metrics.exposition()
    return Response(data, content_type=content_type)
