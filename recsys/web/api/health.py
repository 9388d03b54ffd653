"""Liveness and readiness."""

from __future__ import annotations

from apiflask import APIBlueprint

bp = APIBlueprint("health", __name__, tag="Health")


@bp.get("/healthz")
@bp.doc(summary="Liveness: the process answers")
def healthz():
    """Liveness: the process answers.

    Answers ``{"status": "ok"}`` whenever the process can serve a request at all.
    """
    return {"status": "ok"}
