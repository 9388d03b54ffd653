"""The admin audit log: who changed what, from what, to what, and when (``audit_log`` table).

Changes are recorded inside the same transaction as the change itself, so an audited change
and its audit row commit (or roll back) together. Every audit row, whichever code wrote it
(settings, model activations, profiles, experiments), is also written to the application log
(logger ``recsys.ops.audit``) once its transaction commits: a session hook, not each caller.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import event, func, select
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
    """Add one audit row to ``s`` (committed, and then logged, with the caller's transaction).

    Parameters
    ----------
    s : Session
        The SQLAlchemy session the row is added to; the caller commits.
    actor : str
        Who acted (truncated to 128 characters; empty means ``"admin"``).
    action : str
        What was done, dotted (``"model.activate"``); truncated to 64 characters.
    target : str, optional
        What it was done to (a strategy, a version, a setting); truncated to 256 characters.
    before, after : dict or None, optional
        JSON-serialisable state before and after the change (None: not recorded).

    Returns
    -------
    None
    """
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
    # Logged once committed, by the session hook below (as every other audit row).


def page(
    s: Session,
    limit: int = 50,
    offset: int = 0,
    action: str | None = None,
    actor: str | None = None,
    target: str | None = None,
) -> dict[str, Any]:
    """Newest first: ``{"total", "limit", "offset", "entries": [...]}``.

    Parameters
    ----------
    s : Session
        The SQLAlchemy session read from.
    limit : int, optional
        At most this many entries.
    offset : int, optional
        Entries skipped (newest first) before the first one returned.
    action : str or None, optional
        Exact action, or a prefix ending in ``.`` (``"model."``); None: any.
    actor : str or None, optional
        Exact actor; None: any.
    target : str or None, optional
        A substring of the target; None: any.

    Returns
    -------
    dict
        ``total`` (matching rows), ``limit``, ``offset`` and ``entries`` (one dict per row).
    """
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


_PENDING = "recsys.ops.audit.pending"


@event.listens_for(Session, "after_flush")
def _collect(session: Session, _flush_context) -> None:
    rows = [o for o in session.new if isinstance(o, AuditLog)]
    if rows:
        session.info.setdefault(_PENDING, []).extend(
            (r.actor, r.action, r.target, r.before, r.after) for r in rows
        )


@event.listens_for(Session, "after_commit")
def _log_committed(session: Session) -> None:
    for actor, action, target, before, after in session.info.pop(_PENDING, ()):
        log.info(
            "admin change %s %s by %s",
            action,
            target,
            actor,
            extra={
                "actor": actor,
                "action": action,
                "target": target,
                "before": before,
                "after": after,
            },
        )


@event.listens_for(Session, "after_rollback")
def _forget(session: Session) -> None:
    session.info.pop(_PENDING, None)
