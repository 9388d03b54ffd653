"""The model repository: model versions as SQL rows, their activation, rollback and audit.

The files of a version (``MODEL_DIR/<strategy>/<version>/``: the strategy's arrays, the id maps,
the manifest of sha256 checksums) are ``recsys.models.artifacts``; this module records each
version in ``model_versions``. The manifest's own sha256 is stored in that row, so the SQL store
is the root of trust: ``load_version`` verifies the manifest against it and every file against
the manifest *before* anything is loaded.

Exactly one version per strategy is active (``model_versions.is_active``). Every activation and
rollback is appended to ``model_activations`` and to the audit log (``recsys.models.activation``).
Rollback walks that history as a stack (``activation_stack``): an activation pushes, a rollback
pops, so rolling back twice steps two versions back. Listeners (``add_listener``) hear of every
change after it commits.

Over 500 lines only through the numpy-style docstrings of its public API (about 340
lines without them): the code is one unit, not split for length.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from features.idmap import IdMap
from features.interactions import InteractionData
from recsys.config import get_config
from recsys.errors import ModelError
from recsys.models import artifacts, runtime_store
from recsys.models.activation import (
    activation_rows,
    activation_stack,
    check_gate,
    lock_strategy,
    switch_active,
)
from recsys.store.models import ModelVersion, utcnow
from strategies.base import Strategy

log = logging.getLogger(__name__)

# Serving profiles (recsys.models.profile) live in the repository beside the models.
PROFILE_KIND = "profile"
_EXTENSION = "recsys.models"

# on_change listeners receive (strategy, active version or None).
ChangeListener = Callable[[str, str | None], None]


@dataclass
class LoadedModel:
    """A verified, loaded model version and everything needed to serve it."""

    strategy: str
    version: str
    model: Strategy
    items: IdMap
    users: IdMap
    meta: dict[str, Any]  # params, metrics, data_snapshot, created_at, manifest_sha256
    path: str
    nbytes: int


def _default_resolver(name: str) -> type[Strategy]:
    from recsys.core.ranker import RANKER_KIND, Ranker

    if name == RANKER_KIND:  # the learned second stage: loaded, activated, rolled back alike
        return Ranker  # type: ignore[return-value]
    from strategies import get_strategy_class

    return get_strategy_class(name)


@dataclass
class ModelRepository:
    """Model versions on disk under ``root``, recorded in the SQL store."""

    root: str
    sessionmaker: sessionmaker[Session]
    # name -> Strategy class; default strategies.get_strategy_class. Tests register their own.
    resolver: Callable[[str], type[Strategy]] = _default_resolver
    # Called after every activation / rollback with (strategy, new active version).
    listeners: list[ChangeListener] = field(default_factory=list)

    def add_listener(self, fn: ChangeListener) -> ChangeListener:
        """Register ``fn(strategy, version)``, called after each activation change commits.

        The hook for the shared config version / cache invalidation / worker notification.

        Parameters
        ----------
        fn : ChangeListener
            Called with the strategy and its new active version (None: none); an exception it
            raises is logged, not propagated.

        Returns
        -------
        ChangeListener
            ``fn`` itself (usable as a decorator).
        """
        self.listeners.append(fn)
        return fn

    def notify(self, strategy: str, version: str | None) -> None:
        """Tell every listener that ``strategy``'s active version is now ``version``.

        A listener that raises is logged; the others are still called.

        Parameters
        ----------
        strategy : str
            The strategy whose activation changed.
        version : str or None
            Its active version now; None: none.

        Returns
        -------
        None
        """
        for fn in list(self.listeners):
            try:
                fn(strategy, version)
            except Exception:
                log.exception("model change listener %r failed for %s", fn, strategy)

    # -- paths ------------------------------------------------------------------------------
    def version_path(self, strategy: str, version: str) -> str:
        """The artifact folder of a version under the repository root (absolute).

        Parameters
        ----------
        strategy : str
            The strategy name (a safe directory name).
        version : str
            The version id (a safe directory name).

        Returns
        -------
        str
            ``<root>/<strategy>/<version>``, absolute.

        Raises
        ------
        ModelError
            A name that is not a safe directory name (``artifacts.check_name``).
        """
        artifacts.check_name("strategy", strategy)
        artifacts.check_name("version", version)
        return os.path.join(os.path.abspath(self.root), strategy, version)

    def _resolve_path(self, stored: str) -> str:
        # Rows store paths relative to root so servers may mount the repository anywhere.
        return stored if os.path.isabs(stored) else os.path.join(os.path.abspath(self.root), stored)

    # -- saving -----------------------------------------------------------------------------
    def save_version(
        self,
        model: Strategy,
        data: InteractionData | None,
        metrics: dict[str, Any] | None = None,
        version: str | None = None,
        activate: bool = False,
        actor: str = "cli",
    ) -> str:
        """Write a fitted model as a new version and record it.

        The directory is claimed atomically (``mkdir``), written completely, and only then
        recorded in SQL, so a crash leaves at most an unrecorded directory that is never loaded.

        Parameters
        ----------
        model : Strategy
            The fitted model (or another artifact with ``name`` and ``save``: a serving profile).
        data : InteractionData or None
            The training data (id maps and counts); None for an artifact that is no model.
        metrics : dict, optional
            Holdout metrics (what the quality gate of ``activate`` compares).
        version : str, optional
            The version id (default: allocated from the clock).
        activate : bool
            Also make it the active version (through ``activate``).
        actor : str
            Who activates, for the audit log.

        Returns
        -------
        str
            The version id.
        """
        strategy = model.name

        def taken(candidate: str) -> bool:
            return self._row(strategy, candidate) is not None

        path, version = artifacts.claim_version_dir(self.root, strategy, version, taken)
        try:
            created = utcnow()
            written = artifacts.write_version(path, model, data, metrics, version, created)
            with self.sessionmaker() as s, s.begin():
                s.add(
                    ModelVersion(
                        strategy=strategy,
                        version=version,
                        path=os.path.relpath(path, os.path.abspath(self.root)),
                        manifest_sha256=written.manifest_sha256,
                        params=written.params,
                        metrics=written.metrics,
                        data_snapshot=written.snapshot,
                        is_active=False,
                        created_at=created,
                    )
                )
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        log.info("saved %s version %s at %s", strategy, version, path)
        if activate:
            self.activate(strategy, version, actor=actor)
        return version

    # -- reading ----------------------------------------------------------------------------
    def _row(self, strategy: str, version: str) -> ModelVersion | None:
        with self.sessionmaker() as s:
            return s.scalars(
                select(ModelVersion).where(
                    ModelVersion.strategy == strategy, ModelVersion.version == version
                )
            ).one_or_none()

    def _require_row(self, strategy: str, version: str) -> ModelVersion:
        artifacts.check_name("strategy", strategy)
        artifacts.check_name("version", version)
        row = self._row(strategy, version)
        if row is None:
            known = [v["version"] for v in self.list_versions(strategy)]
            hint = f"; known: {', '.join(known[-5:])}" if known else "; it has no versions"
            raise ModelError(f"unknown version {version!r} of strategy {strategy!r}{hint}", 404)
        return row

    def list_versions(self, strategy: str | None = None) -> list[dict[str, Any]]:
        """Versions (oldest first per strategy) with activity, metrics and paths.

        Parameters
        ----------
        strategy : str or None, optional
            Only this strategy's versions; None: every strategy's.

        Returns
        -------
        list of dict
            ``strategy``, ``version``, ``active``, ``created_at`` (ISO 8601 UTC with ``Z``, or
            None), ``metrics``, ``params``, ``data_snapshot``, ``path``, ``manifest_sha256``.
        """
        stmt = select(ModelVersion).order_by(ModelVersion.strategy, ModelVersion.version)
        if strategy is not None:
            stmt = stmt.where(ModelVersion.strategy == strategy)
        with self.sessionmaker() as s:
            rows = s.scalars(stmt).all()
        return [self._describe(r) for r in rows]

    def _describe(self, r: ModelVersion) -> dict[str, Any]:
        return {
            "strategy": r.strategy,
            "version": r.version,
            "active": bool(r.is_active),
            "created_at": r.created_at.isoformat() + "Z" if r.created_at else None,
            "metrics": dict(r.metrics or {}),
            "params": dict(r.params or {}),
            "data_snapshot": dict(r.data_snapshot or {}),
            "path": self._resolve_path(r.path),
            "manifest_sha256": r.manifest_sha256,
        }

    def get_version(self, strategy: str, version: str) -> dict[str, Any]:
        """One version's description (as ``list_versions`` gives it).

        Parameters
        ----------
        strategy : str
            The strategy name.
        version : str
            The version id.

        Returns
        -------
        dict
            The version's description.

        Raises
        ------
        ModelError
            404 for an unknown version.
        """
        return self._describe(self._require_row(strategy, version))

    # -- what the runtime reads and writes besides versions (recsys.models.runtime_store) ----
    def load_modes(self) -> dict[str, str]:
        """``{strategy: "preload" | "lazy"}`` as an admin set them: ``runtime_store.load_modes``.

        Returns
        -------
        dict of str to str
            Strategy -> load mode, only for strategies an admin set.
        """
        return runtime_store.load_modes(self.sessionmaker)

    def set_load_mode(self, strategy: str, mode: str) -> None:
        """Store a strategy's load mode: ``runtime_store.set_load_mode``.

        Parameters
        ----------
        strategy : str
            The strategy name.
        mode : str
            ``"preload"`` or ``"lazy"``.

        Returns
        -------
        None
        """
        runtime_store.set_load_mode(self.sessionmaker, strategy, mode)

    def recent_events(self, limit: int) -> list[tuple[Any, str, str, float | None, Any]]:
        """The newest events, to warm a loaded model up with: ``runtime_store.recent_events``.

        Parameters
        ----------
        limit : int
            How many events at most.

        Returns
        -------
        list of tuple
            ``(user row id, item external id, event type, value, ts)``, newest first.
        """
        return runtime_store.recent_events(self.sessionmaker, limit)

    def active_versions(self, models_only: bool = False) -> dict[str, str]:
        """The active version of every strategy.

        Parameters
        ----------
        models_only : bool, optional
            Leave out serving profiles (a kind of artifact the runtime does not load as a model).

        Returns
        -------
        dict of str to str
            ``{strategy: active version}``.
        """
        with self.sessionmaker() as s:
            rows = s.execute(
                select(ModelVersion.strategy, ModelVersion.version).where(
                    ModelVersion.is_active.is_(True)
                )
            ).all()
        out = {strategy: version for strategy, version in rows}
        if models_only:
            out.pop(PROFILE_KIND, None)
        return out

    def active_version(self, strategy: str) -> str | None:
        """The active version of ``strategy``.

        Parameters
        ----------
        strategy : str
            The strategy name.

        Returns
        -------
        str or None
            Its active version; None: none active.
        """
        return self.active_versions().get(strategy)

    def strategies(self) -> list[str]:
        """Every strategy with at least one stored version, sorted.

        Returns
        -------
        list of str
            The strategy names (serving profiles included).
        """
        with self.sessionmaker() as s:
            return list(
                s.scalars(select(ModelVersion.strategy).distinct().order_by(ModelVersion.strategy))
            )

    def verify_version(self, strategy: str, version: str) -> dict[str, Any]:
        """Check a version's manifest and every file against the recorded checksum.

        Parameters
        ----------
        strategy, version : str
            The strategy name and the version id.

        Returns
        -------
        dict
            The manifest; a ``ModelError`` naming the file when anything does not match.
        """
        row = self._require_row(strategy, version)
        return self._verify(row)

    def verified_path(self, strategy: str, version: str) -> str:
        """A version's directory, verified like ``verify_version`` (for serving profiles,
        which load themselves from it).

        Parameters
        ----------
        strategy, version : str
            The strategy name and the version id.

        Returns
        -------
        str
            The absolute path; a ``ModelError`` when it does not verify.
        """
        row = self._require_row(strategy, version)
        self._verify(row)
        return self._resolve_path(row.path)

    def _verify(self, row: ModelVersion) -> dict[str, Any]:
        path = self._resolve_path(row.path)
        return artifacts.verify_version_dir(path, row.strategy, row.version, row.manifest_sha256)

    def load_version(self, strategy: str, version: str | None = None) -> LoadedModel:
        """Verify then load a version.

        Parameters
        ----------
        strategy : str
            The strategy name.
        version : str, optional
            Default: the active one.

        Returns
        -------
        LoadedModel
            The model with its id maps and recorded metadata. ``ModelError`` when the version is
            unknown, fails verification, has no strategy class or fails to load.
        """
        artifacts.check_name("strategy", strategy)
        if version is None:
            version = self.active_version(strategy)
            if version is None:
                raise ModelError(f"strategy {strategy!r} has no active version", 404)
        row = self._require_row(strategy, version)
        path = self._resolve_path(row.path)
        self._verify(row)
        try:
            cls = self.resolver(strategy)
        except (KeyError, ValueError) as e:
            raise ModelError(f"{strategy}/{version}: no strategy class: {e}") from e
        model, items, users = artifacts.load_strategy(path, cls, f"{strategy}/{version}")
        meta = {
            "params": dict(row.params or {}),
            "metrics": dict(row.metrics or {}),
            "data_snapshot": dict(row.data_snapshot or {}),
            "created_at": row.created_at.isoformat() + "Z" if row.created_at else None,
            "manifest_sha256": row.manifest_sha256,
        }
        return LoadedModel(
            strategy=strategy,
            version=version,
            model=model,
            items=items,
            users=users,
            meta=meta,
            path=path,
            nbytes=artifacts.model_nbytes(model),
        )

    # -- activation -------------------------------------------------------------------------
    def activate(
        self,
        strategy: str,
        version: str,
        actor: str = "cli",
        gate_metric: str | None = None,
        verify: bool = True,
    ) -> str | None:
        """Make ``version`` the one active version of ``strategy``.

        Parameters
        ----------
        strategy, version : str
            The strategy name and the version id.
        actor : str
            Who, for the activation history and the audit log.
        gate_metric : str, optional
            A holdout metric (e.g. ``"ndcg@10"``): refuse (``ModelError`` 409) a version whose
            value is lower than the active version's, or missing while the active one has it.
        verify : bool
            Check the checksums first, so a corrupt version is never made active.

        Returns
        -------
        str or None
            The version that was active before (``version`` itself when it already was).
        """
        row = self._require_row(strategy, version)
        if verify:
            self._verify(row)
        with self.sessionmaker() as s, s.begin():
            rows = lock_strategy(s, strategy)
            current = next((r for r in rows if r.is_active), None)
            target = next(r for r in rows if r.version == version)
            if current is not None and current.version == version:
                log.info("%s version %s is already active", strategy, version)
                return version
            if gate_metric and current is not None:
                check_gate(strategy, gate_metric, target, current)
            previous = current.version if current is not None else None
            switch_active(s, strategy, rows, target, previous, actor, "activate")
        self.notify(strategy, version)
        return previous

    def rollback(self, strategy: str, actor: str = "cli") -> str:
        """Re-activate the version that was active before the current one.

        Parameters
        ----------
        strategy : str
            The strategy name.
        actor : str
            Who, for the activation history and the audit log.

        Returns
        -------
        str
            The version now active. ``ModelError`` 409 when there is nothing to roll back to
            or that version is gone or fails verification.
        """
        artifacts.check_name("strategy", strategy)
        with self.sessionmaker() as s, s.begin():
            rows = lock_strategy(s, strategy)
            if not rows:
                raise ModelError(f"strategy {strategy!r} has no versions", 404)
            current = next((r for r in rows if r.is_active), None)
            stack = activation_stack(activation_rows(s, strategy))
            if current is None or len(stack) < 2 or stack[-1] != current.version:
                raise ModelError(
                    f"nothing to roll back to for {strategy!r}: "
                    + (
                        "no version is active"
                        if current is None
                        else f"no version was active before {current.version}"
                    ),
                    409,
                )
            by_version = {r.version: r for r in rows}
            target = by_version.get(stack[-2])
            if target is None:
                raise ModelError(f"{strategy}: previous version {stack[-2]} no longer exists", 409)
            self._verify(target)
            switch_active(s, strategy, rows, target, current.version, actor, "rollback")
            version = target.version
        self.notify(strategy, version)
        return version

    def rollback_target(self, strategy: str) -> str | None:
        """The version ``rollback(strategy)`` would activate now (the runtime loads and warms
        it before the switch; retention keeps it).

        Parameters
        ----------
        strategy : str
            The strategy name.

        Returns
        -------
        str or None
            None when there is nothing to roll back to.
        """
        with self.sessionmaker() as s:
            history = activation_rows(s, strategy)
        stack = activation_stack(history)
        return stack[-2] if len(stack) >= 2 else None

    def activation_history(self, strategy: str) -> list[dict[str, Any]]:
        """The activations and rollbacks of ``strategy``, oldest first.

        Parameters
        ----------
        strategy : str
            The strategy name.

        Returns
        -------
        list of dict
            ``version``, ``previous_version`` (None: none before), ``kind`` (``"activate"`` or
            ``"rollback"``), ``actor``, ``at`` (ISO 8601 UTC with ``Z``, or None).
        """
        with self.sessionmaker() as s:
            rows = activation_rows(s, strategy)
        return [
            {
                "version": r.version,
                "previous_version": r.previous_version,
                "kind": r.kind,
                "actor": r.actor,
                "at": r.at.isoformat() + "Z" if r.at else None,
            }
            for r in rows
        ]


def get_repository(app=None) -> ModelRepository:
    """The app's repository (one per app, cached in ``app.extensions``).

    Parameters
    ----------
    app : Flask, optional
        Default: the current app.

    Returns
    -------
    ModelRepository
        On ``MODEL_DIR`` and the app's SQL store, unless ``use_repository`` set another.
    """
    from flask import current_app

    app = app or current_app._get_current_object()
    repo = app.extensions.get(_EXTENSION)
    if repo is None:
        repo = ModelRepository(get_config(app).model_dir, app.extensions["recsys.sessionmaker"])
        app.extensions[_EXTENSION] = repo
    return repo


def use_repository(app, repo: ModelRepository) -> ModelRepository:
    """Make ``repo`` (e.g. with its own ``resolver``) what ``get_repository(app)`` returns.

    Parameters
    ----------
    app : Flask
        The app.
    repo : ModelRepository
        The repository to use.

    Returns
    -------
    ModelRepository
        ``repo``.
    """
    app.extensions[_EXTENSION] = repo
    return repo
