"""Which version of a strategy is active: the SQL rows of activations, rollbacks and the gate.

Exactly one version per strategy is active (``model_versions.is_active``). Every activation and
rollback is appended to ``model_activations`` and to the audit log (``switch_active``, inside
the transaction that holds ``lock_strategy``'s row lock). Rollback walks that history as a stack
(``activation_stack``): an activation pushes, a rollback pops, so rolling back twice steps two
versions back. ``ModelRepository.activate`` / ``rollback`` and the serving profiles
(``recsys.models.profile``) build on these.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from recsys.errors import ModelError
from recsys.store.models import AuditLog, ModelActivation, ModelVersion

log = logging.getLogger(__name__)


class ActivationRecord(Protocol):
    """One step of an activation history: a ``ModelActivation`` row or alike."""

    kind: str
    version: str


def activation_stack(history: Sequence[ActivationRecord]) -> list[str]:
    """Replay an activation history: activations push, rollbacks pop.

    Parameters
    ----------
    history : sequence of ActivationRecord
        One strategy's records, oldest first, each with ``kind`` (``"activate"`` or
        ``"rollback"``) and ``version``.

    Returns
    -------
    list of str
        The stack: the top is the active version, the one below it what a rollback activates.
    """
    stack: list[str] = []
    for h in history:
        if h.kind == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != h.version:
                stack.append(h.version)  # history was edited by hand: trust the row
        else:
            stack.append(h.version)
    return stack


def activation_rows(s: Session, strategy: str) -> list[ModelActivation]:
    """A strategy's activation history.

    Parameters
    ----------
    s : Session
        An open session.
    strategy : str
        The strategy.

    Returns
    -------
    list of ModelActivation
        Oldest first.
    """
    return list(
        s.scalars(
            select(ModelActivation)
            .where(ModelActivation.strategy == strategy)
            .order_by(ModelActivation.id)
        ).all()
    )


def lock_strategy(s: Session, strategy: str) -> list[ModelVersion]:
    """Lock a strategy's version rows for the rest of the transaction.

    ``FOR UPDATE`` serialises concurrent activations of one strategy on PostgreSQL, which is
    what keeps "exactly one active version" true; SQLite serialises writers anyway.

    Parameters
    ----------
    s : Session
        A session inside a transaction.
    strategy : str
        The strategy.

    Returns
    -------
    list of ModelVersion
        Its rows, ordered by version.
    """
    return list(
        s.scalars(
            select(ModelVersion)
            .where(ModelVersion.strategy == strategy)
            .order_by(ModelVersion.version)
            .with_for_update()
        )
    )


def switch_active(
    s: Session,
    strategy: str,
    rows: list[ModelVersion],
    target: ModelVersion,
    previous: str | None,
    actor: str,
    kind: str,
) -> None:
    """Make ``target`` the active row and record the change in the history and the audit log.

    Call inside the transaction that holds ``lock_strategy``'s lock; tell the listeners
    (``ModelRepository.notify``) after it commits.

    Parameters
    ----------
    s : Session
        The session, inside the transaction.
    strategy : str
        The strategy.
    rows : list of ModelVersion
        Its rows, from ``lock_strategy``.
    target : ModelVersion
        The row to make active (one of ``rows``).
    previous : str or None
        The version active until now.
    actor : str
        Who, for the history and the audit log.
    kind : str
        ``"activate"`` (pushes onto the activation stack) or ``"rollback"`` (pops it).

    Returns
    -------
    None
    """
    for r in rows:
        if r.is_active and r is not target:
            r.is_active = False
    s.flush()  # deactivate first, in case a partial unique index ever guards is_active
    target.is_active = True
    s.add(
        ModelActivation(
            strategy=strategy,
            version=target.version,
            previous_version=previous,
            kind=kind,
            actor=actor,
        )
    )
    s.add(
        AuditLog(
            actor=actor,
            action=f"model.{kind}",
            target=strategy,
            before={"version": previous},
            after={"version": target.version},
        )
    )
    log.info("%s %s: %s -> %s (by %s)", kind, strategy, previous, target.version, actor)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and np.isfinite(x)


def check_gate(strategy: str, metric: str, new: ModelVersion, cur: ModelVersion) -> None:
    """The quality gate: refuse a version whose holdout ``metric`` is worse than the active's.

    Parameters
    ----------
    strategy : str
        The strategy, for the message.
    metric : str
        The holdout metric compared (e.g. ``"ndcg@10"``).
    new : ModelVersion
        The version to activate.
    cur : ModelVersion
        The active version.

    Returns
    -------
    None
        Raises ``ModelError`` (409) when ``new`` has a lower value or none while ``cur`` has
        one; passes when ``cur`` has no value to compare against.
    """
    cur_value = (cur.metrics or {}).get(metric)
    new_value = (new.metrics or {}).get(metric)
    if not _is_number(cur_value):
        return  # nothing to compare against: the gate cannot object
    if not _is_number(new_value):
        raise ModelError(
            f"gate refused {strategy}/{new.version}: it has no holdout {metric} "
            f"(active {cur.version} has {cur_value:.4f})",
            409,
        )
    if new_value < cur_value:
        raise ModelError(
            f"gate refused {strategy}/{new.version}: holdout {metric} {new_value:.4f} is "
            f"worse than active {cur.version}'s {cur_value:.4f}",
            409,
        )
