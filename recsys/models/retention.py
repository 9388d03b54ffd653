"""Model retention: delete old model versions, files and SQL rows (``recsys models prune``).

Per strategy the ``keep`` newest versions stay, and whatever the count, so do the versions
serving may need again:

* the active version and the rollback target (what ``rollback`` would activate now);
* the model versions the active serving profile pins, and those of the profile its rollback
  would bring back (activating a profile activates its models).

The SQL row goes first, in one transaction with its audit row; the folder is removed after the
commit, so a crash in between leaves an unlisted folder (harmless), never a listed version
without files. ``MODEL_KEEP_VERSIONS`` (config) applies the same after every ``recsys train``.
"""

from __future__ import annotations

import logging
import shutil
from typing import Any

from sqlalchemy import delete, select

from recsys.errors import ModelError
from recsys.models.activation import lock_strategy
from recsys.models.artifacts import dir_bytes
from recsys.models.repository import PROFILE_KIND, ModelRepository
from recsys.store.models import ModelVersion

log = logging.getLogger(__name__)


def protected(repo: ModelRepository) -> dict[str, set[str]]:
    """The versions pruning must keep (see the module docstring).

    Parameters
    ----------
    repo : ModelRepository
        The repository to look at.

    Returns
    -------
    dict of str to set of str
        ``{strategy: versions that must stay}``: the active one, the rollback target, and
        the models every kept serving profile names.

    Raises
    ------
    ModelError
        409 when a kept serving profile cannot be read (nothing is pruned).
    """
    from recsys.models.profile import load_profile

    out: dict[str, set[str]] = {}
    for strategy in repo.strategies():
        keep = out.setdefault(strategy, set())
        if active := repo.active_version(strategy):
            keep.add(active)
        if target := repo.rollback_target(strategy):
            keep.add(target)
    for version in out.get(PROFILE_KIND, set()):
        try:
            profile = load_profile(repo, version)
        except ModelError as e:
            # Which models it pins is unknown: pruning could break it. Refuse, say why.
            raise ModelError(
                f"cannot read serving profile {version} to see which models it needs "
                f"({e.description}); nothing was pruned",
                409,
            ) from e
        for strategy, model_version in profile.models.items():
            out.setdefault(strategy, set()).add(model_version)
    return out


def plan(repo: ModelRepository, keep: int, strategy: str | None = None) -> list[dict[str, Any]]:
    """The versions ``prune`` would delete: per strategy all but the ``keep`` newest (by
    creation time, then id), less the protected ones.

    Parameters
    ----------
    repo : ModelRepository
        The repository to look at.
    keep : int
        How many newest versions of each strategy to keep (at least 1).
    strategy : str or None, optional
        Only this strategy; None: every strategy.

    Returns
    -------
    list of dict
        The doomed versions, as ``ModelRepository.list_versions`` describes them.

    Raises
    ------
    ValueError
        ``keep`` below 1.
    ModelError
        See ``protected``.
    """
    if keep < 1:
        raise ValueError("keep must be at least 1")
    safe = protected(repo)
    victims = []
    by_strategy: dict[str, list[dict[str, Any]]] = {}
    for v in repo.list_versions(strategy):
        by_strategy.setdefault(v["strategy"], []).append(v)
    for name, versions in sorted(by_strategy.items()):
        newest_first = sorted(
            versions, key=lambda v: (v["created_at"] or "", v["version"]), reverse=True
        )
        for v in newest_first[keep:]:
            if v["version"] not in safe.get(name, set()):
                victims.append(v)
    return victims


def prune(
    repo: ModelRepository,
    keep: int,
    strategy: str | None = None,
    dry_run: bool = False,
    actor: str = "cli",
) -> list[dict[str, Any]]:
    """Delete what ``plan`` names: the SQL rows (one transaction, audited), then the folders.

    Parameters
    ----------
    repo : ModelRepository
        The repository to prune.
    keep : int
        Versions to keep per strategy (at least 1), besides the protected ones.
    strategy : str, optional
        Only this strategy (default: all).
    dry_run : bool
        Only say what would go.
    actor : str
        Who, for the audit log.

    Returns
    -------
    list of dict
        The versions deleted (or that would be), as ``ModelRepository.list_versions`` describes
        them, each with ``bytes`` (their size on disk, ``artifacts.dir_bytes``).
    """
    from recsys.ops import audit

    victims = plan(repo, keep, strategy)
    for v in victims:
        v["bytes"] = dir_bytes(v["path"])
    if dry_run or not victims:
        return victims
    with repo.sessionmaker() as s, s.begin():
        for name in sorted({v["strategy"] for v in victims}):
            lock_strategy(s, name)  # no activation of a victim meanwhile
            names = [v["version"] for v in victims if v["strategy"] == name]
            # Re-check under the lock: an activation may have landed since the plan.
            still_active = s.scalars(
                select(ModelVersion.version).where(
                    ModelVersion.strategy == name,
                    ModelVersion.version.in_(names),
                    ModelVersion.is_active.is_(True),
                )
            ).all()
            if still_active:
                raise ModelError(
                    f"{name} {still_active[0]} became active while pruning; nothing was pruned",
                    409,
                )
            s.execute(
                delete(ModelVersion).where(
                    ModelVersion.strategy == name, ModelVersion.version.in_(names)
                )
            )
            audit.record(s, actor, "model.prune", name, {"versions": names}, {"keep": keep})
    for v in victims:
        shutil.rmtree(v["path"], ignore_errors=True)
        log.info("pruned %s/%s (%s bytes)", v["strategy"], v["version"], v["bytes"])
    return victims
