"""The admin audit log: who changed what, from what, to what, and when (``audit_log`` table).

Changes are recorded inside the same transaction as the change itself, so an audited change
and its audit row commit (or roll back) together.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from recsys.store.models import AuditLog, utcnow

log = logging.getLogger(__name__)


def record(
    s: Session,
    actor: str,
    action: str,
    target: str = "",
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    s.add(
        AuditLog(
            actor=(actor or "admin")[:128],
            action=action[:64],
            target=target[:256],
            before=before,
            after=after,
            at=utcnow(),
        )
    )
    log.info(
        "admin change %s %s by %s",
        action,
        target,
        actor,
        extra={"actor": actor, "action": action, "target": target, "after": after},
    )


def page(
    s: Session,
    limit: int = 50,
    offset: int = 0,
    action: str | None = None,
    actor: str | None = None,
    target: str | None = None,
) -> dict[str, Any]:
    """Newest first: ``{"total", "limit", "offset", "entries": [...]}``. ``action``: exact, or
    a prefix ending in ``.`` (``"model."``); ``actor``: exact; ``target``: a substring."""
    q = select(AuditLog)
    count = select(func.count()).select_from(AuditLog)
    conds = []
    if action:
        conds.append(
            AuditLog.action.startswith(action, autoescape=True)
            if action.endswith(".")
            else AuditLog.action == action
        )
    if actor:
        conds.append(AuditLog.actor == actor)
    if target:
        conds.append(AuditLog.target.contains(target, autoescape=True))
    if conds:
        q = q.where(*conds)
        count = count.where(*conds)
    rows = s.scalars(q.order_by(AuditLog.id.desc()).limit(limit).offset(offset)).all()
    return {
        "total": s.scalar(count) or 0,
        "limit": limit,
        "offset": offset,
        "entries": [
            {
                "id": r.id,
                "actor": r.actor,
                "action": r.action,
                "target": r.target,
                "before": r.before,
                "after": r.after,
                "at": r.at.isoformat() + "Z",
            }
            for r in rows
        ],
    }
