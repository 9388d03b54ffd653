"""Liveness and readiness."""

from __future__ import annotations

from apiflask import APIBlueprint

bp = APIBlueprint("health", __name__, tag="Health")


@bp.get("/healthz")
@bp.doc(summary="Liveness: the process answers")
def healthz():
    return {"status": "ok"}
