"""The model repository: versioned, checksummed model artifacts plus their record in SQL.

Layout (``MODEL_DIR/<strategy>/<version>/``)::

    params.json      written by the strategy's save (name + hyperparameters)
    *.npz / *.pt     the strategy's arrays / torch state_dicts (whatever its save wrote)
    items.npz        the item IdMap (unicode array ``ids``)
    users.npz        the user IdMap
    snapshot.json    training data counts: users, items, events, events_by_type, time range
    metrics.json     holdout metrics
    manifest.json    every other file with its sha256 and size

The manifest's own sha256 is recorded in the ``model_versions`` row, so the SQL store is the
root of trust: ``load_version`` checks the manifest against it and every file against the
manifest *before* anything is handed to ``np.load`` / ``torch.load``. A changed byte, a missing
file or an unlisted extra file is refused with a ``ModelError`` naming the file.

Exactly one version per strategy is active (``model_versions.is_active``). Every activation and
rollback is appended to ``model_activations`` and to the audit log. Rollback walks that history
as a stack: an activation pushes, a rollback pops, so rolling back twice steps two versions back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import scipy.sparse as sp
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from features.idmap import IdMap
from features.interactions import InteractionData
from recsys.config import get_config
from recsys.errors import ModelError
from recsys.store.models import (
    AuditLog,
    Event,
    Item,
    ModelActivation,
    ModelVersion,
    StrategySetting,
    utcnow,
)
from strategies.base import PARAMS_FILE, Strategy

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
ITEMS_FILE = "items.npz"
USERS_FILE = "users.npz"
SNAPSHOT_FILE = "snapshot.json"
METRICS_FILE = "metrics.json"
MANIFEST_FORMAT = 1
# Serving profiles (recsys.models.profile) live in the repository beside the models.
PROFILE_KIND = "profile"
# Names a strategy or version may have: they become directory names.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CHUNK = 1 << 20

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


def new_version_id(now: datetime | None = None) -> str:
    """A sortable version id from the UTC time, e.g. ``20261125T123456Z``."""
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check_name(kind: str, value: str) -> None:
    if not isinstance(value, str) or not _SAFE_NAME.match(value) or value in (".", ".."):
        raise ModelError(f"invalid {kind} name {value!r}", code=400)


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")


def _list_files(root: str) -> list[str]:
    """Every regular file under root, as sorted '/'-separated relative paths."""
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            out.append(rel.replace(os.sep, "/"))
    return sorted(out)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and np.isfinite(x)


def model_nbytes(obj: Any, _depth: int = 0) -> int:
    """Bytes held in a model's arrays (numpy, scipy.sparse, torch), found in its attributes."""
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if sp.issparse(obj):
        return sum(
            int(getattr(obj, a).nbytes) for a in ("data", "indices", "indptr") if hasattr(obj, a)
        )
    try:  # torch is optional for non-deep strategies; import only if already loaded
        import sys

        torch = sys.modules.get("torch")
        if torch is not None:
            if isinstance(obj, torch.Tensor):
                return int(obj.element_size() * obj.nelement())
            if isinstance(obj, torch.nn.Module):
                tensors = list(obj.parameters()) + list(obj.buffers())
                return sum(int(t.element_size() * t.nelement()) for t in tensors)
    except Exception:  # pragma: no cover - defensive: size is informational
        log.debug("could not size a torch object", exc_info=True)
    if _depth > 2:
        return 0
    if isinstance(obj, dict):
        return sum(model_nbytes(v, _depth + 1) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(model_nbytes(v, _depth + 1) for v in obj)
    if isinstance(obj, Strategy) or (_depth == 0 and hasattr(obj, "__dict__")):
        return sum(model_nbytes(v, _depth + 1) for v in vars(obj).values())
    return 0


def _default_resolver(name: str) -> type[Strategy]:
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
        """
        self.listeners.append(fn)
        return fn

    def _notify(self, strategy: str, version: str | None) -> None:
        for fn in list(self.listeners):
            try:
                fn(strategy, version)
            except Exception:
                log.exception("model change listener %r failed for %s", fn, strategy)

    # -- paths ------------------------------------------------------------------------------
    def version_path(self, strategy: str, version: str) -> str:
        _check_name("strategy", strategy)
        _check_name("version", version)
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
        """Write a fitted model as a new version and record it; returns the version id.

        The directory is claimed atomically (``mkdir``), written completely, and only then
        recorded in SQL, so a crash leaves at most an unrecorded directory that is never loaded.
        ``data`` (the training data: id maps and counts) is None for artifacts that are not
        fitted models (serving profiles, ``recsys.models.profile``).
        """
        strategy = model.name
        _check_name("strategy", strategy)
        base_dir = os.path.join(os.path.abspath(self.root), strategy)
        os.makedirs(base_dir, exist_ok=True)
        path, version = self._claim_dir(base_dir, strategy, version)
        try:
            model.save(path)
            if not os.path.exists(os.path.join(path, PARAMS_FILE)):
                raise ModelError(f"{strategy}.save() wrote no {PARAMS_FILE}")
            reserved = {ITEMS_FILE, USERS_FILE, SNAPSHOT_FILE, METRICS_FILE, MANIFEST}
            clash = reserved.intersection(_list_files(path))
            if clash:
                raise ModelError(f"{strategy}.save() wrote reserved file(s) {sorted(clash)}")
            snapshot: dict[str, Any] = {}
            if data is not None:
                np.savez(os.path.join(path, ITEMS_FILE), ids=data.items.to_array())
                np.savez(os.path.join(path, USERS_FILE), ids=data.users.to_array())
                snapshot = dict(data.info) if data.info else {}
                snapshot.setdefault("users", int(data.n_users))
                snapshot.setdefault("items", int(data.n_items))
                snapshot.setdefault("events", int(len(data)))
            _write_json(os.path.join(path, SNAPSHOT_FILE), snapshot)
            metrics = dict(metrics or {})
            _write_json(os.path.join(path, METRICS_FILE), metrics)
            with open(os.path.join(path, PARAMS_FILE)) as f:
                params = json.load(f)
            created = utcnow()
            files = {}
            for rel in _list_files(path):
                full = os.path.join(path, rel)
                files[rel] = {"sha256": sha256_file(full), "size": os.path.getsize(full)}
            manifest = {
                "format": MANIFEST_FORMAT,
                "strategy": strategy,
                "version": version,
                "created_at": created.isoformat() + "Z",
                "files": files,
            }
            _write_json(os.path.join(path, MANIFEST), manifest)
            manifest_sha = sha256_file(os.path.join(path, MANIFEST))
            with self.sessionmaker() as s, s.begin():
                s.add(
                    ModelVersion(
                        strategy=strategy,
                        version=version,
                        path=os.path.relpath(path, os.path.abspath(self.root)),
                        manifest_sha256=manifest_sha,
                        params=params,
                        metrics=metrics,
                        data_snapshot=snapshot,
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

    def _claim_dir(self, base_dir: str, strategy: str, version: str | None) -> tuple[str, str]:
        if version is not None:
            _check_name("version", version)
            if self._row(strategy, version) is not None:
                raise ModelError(f"{strategy} version {version} already exists", code=409)
            path = os.path.join(base_dir, version)
            try:
                os.mkdir(path)
            except FileExistsError:
                raise ModelError(f"{path} already exists", code=409) from None
            return path, version
        stem = new_version_id()
        for i in range(1, 1000):
            # Same-second saves get -02, -03...: still unique and still sorting by creation.
            candidate = stem if i == 1 else f"{stem}-{i:02d}"
            if self._row(strategy, candidate) is not None:
                continue
            path = os.path.join(base_dir, candidate)
            try:
                os.mkdir(path)
            except FileExistsError:
                continue
            return path, candidate
        raise ModelError(f"could not allocate a version id for {strategy}")  # pragma: no cover

    # -- reading ----------------------------------------------------------------------------
    def _row(self, strategy: str, version: str) -> ModelVersion | None:
        with self.sessionmaker() as s:
            return s.scalars(
                select(ModelVersion).where(
                    ModelVersion.strategy == strategy, ModelVersion.version == version
                )
            ).one_or_none()

    def _require_row(self, strategy: str, version: str) -> ModelVersion:
        _check_name("strategy", strategy)
        _check_name("version", version)
        row = self._row(strategy, version)
        if row is None:
            known = [v["version"] for v in self.list_versions(strategy)]
            hint = f"; known: {', '.join(known[-5:])}" if known else "; it has no versions"
            raise ModelError(f"unknown version {version!r} of strategy {strategy!r}{hint}", 404)
        return row

    def list_versions(self, strategy: str | None = None) -> list[dict[str, Any]]:
        """Versions (oldest first per strategy) with activity, metrics and paths."""
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
        return self._describe(self._require_row(strategy, version))

    # -- what the runtime reads and writes besides versions ---------------------------------
    def load_modes(self) -> dict[str, str]:
        """``{strategy: "preload" | "lazy"}`` as an admin set them (absent: the default)."""
        with self.sessionmaker() as s:
            rows = s.execute(select(StrategySetting.name, StrategySetting.load_mode)).all()
        return {name: mode for name, mode in rows}

    def set_load_mode(self, strategy: str, mode: str) -> None:
        with self.sessionmaker() as s, s.begin():
            row = s.get(StrategySetting, strategy)
            if row is None:
                s.add(StrategySetting(name=strategy, load_mode=mode))
            else:
                row.load_mode = mode

    def recent_events(self, limit: int) -> list[tuple[Any, str, str, float | None, Any]]:
        """The newest ``limit`` events as ``(user row id, item id, type, value, ts)``, newest
        first: real histories to warm a freshly loaded model up with."""
        with self.sessionmaker() as s:
            return [
                tuple(r)
                for r in s.execute(
                    select(Event.user_id, Item.external_id, Event.type, Event.value, Event.ts)
                    .join(Item, Item.id == Event.item_id)
                    .order_by(Event.id.desc())
                    .limit(limit)
                ).all()
            ]

    def active_versions(self, models_only: bool = False) -> dict[str, str]:
        """``{strategy: active version}``; ``models_only`` leaves out serving profiles (a kind
        of artifact the runtime does not load as a model)."""
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
        return self.active_versions().get(strategy)

    def strategies(self) -> list[str]:
        with self.sessionmaker() as s:
            return list(
                s.scalars(select(ModelVersion.strategy).distinct().order_by(ModelVersion.strategy))
            )

    def verify_version(self, strategy: str, version: str) -> dict[str, Any]:
        """Check the manifest and every file; returns the manifest or raises ModelError."""
        row = self._require_row(strategy, version)
        return self._verify(row, self._resolve_path(row.path))

    def _verify(self, row: ModelVersion, path: str) -> dict[str, Any]:
        label = f"{row.strategy}/{row.version}"
        manifest_path = os.path.join(path, MANIFEST)
        if not os.path.isdir(path):
            raise ModelError(f"{label}: version directory {path} is missing")
        if not os.path.isfile(manifest_path):
            raise ModelError(f"{label}: {MANIFEST} is missing")
        # Hash exactly the bytes we then parse, so the manifest cannot change in between.
        with open(manifest_path, "rb") as f:
            raw = f.read()
        digest = hashlib.sha256(raw).hexdigest()
        if digest != row.manifest_sha256:
            raise ModelError(
                f"{label}: {MANIFEST} checksum mismatch (recorded {row.manifest_sha256[:12]}..., "
                f"found {digest[:12]}...): the version was modified after it was saved"
            )
        manifest = json.loads(raw)
        files: dict[str, dict[str, Any]] = manifest.get("files", {})
        if manifest.get("strategy") != row.strategy or manifest.get("version") != row.version:
            raise ModelError(f"{label}: {MANIFEST} describes a different version")
        root = os.path.realpath(path)
        for rel, entry in sorted(files.items()):
            full = os.path.realpath(os.path.join(path, rel))
            if not full.startswith(root + os.sep):
                raise ModelError(f"{label}: {MANIFEST} lists a path outside the version: {rel}")
            if not os.path.isfile(full):
                raise ModelError(f"{label}: {rel} is missing")
            size = os.path.getsize(full)
            if size != entry["size"]:
                raise ModelError(
                    f"{label}: {rel} has the wrong size ({size} bytes, manifest says "
                    f"{entry['size']}): file is corrupt or was modified"
                )
            if sha256_file(full) != entry["sha256"]:
                raise ModelError(
                    f"{label}: {rel} checksum mismatch (sha256 differs from the manifest): "
                    "file is corrupt or was modified"
                )
        extra = sorted(set(_list_files(path)) - set(files) - {MANIFEST})
        if extra:
            raise ModelError(f"{label}: unexpected file(s) not in the manifest: {extra}")
        return manifest

    def load_version(self, strategy: str, version: str | None = None) -> LoadedModel:
        """Verify then load a version (default: the active one)."""
        _check_name("strategy", strategy)
        if version is None:
            version = self.active_version(strategy)
            if version is None:
                raise ModelError(f"strategy {strategy!r} has no active version", 404)
        row = self._require_row(strategy, version)
        path = self._resolve_path(row.path)
        self._verify(row, path)
        try:
            cls = self.resolver(strategy)
        except (KeyError, ValueError) as e:
            raise ModelError(f"{strategy}/{version}: no strategy class: {e}") from e
        try:
            model = cls.load(path)
            items = _load_ids(os.path.join(path, ITEMS_FILE))
            users = _load_ids(os.path.join(path, USERS_FILE))
        except ModelError:
            raise
        except Exception as e:
            raise ModelError(f"{strategy}/{version}: load failed: {type(e).__name__}: {e}") from e
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
            nbytes=model_nbytes(model),
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
        """Make ``version`` the one active version of ``strategy``; returns the previous one.

        ``gate_metric`` (e.g. ``"ndcg@10"``) refuses a version whose holdout value is lower than
        the active version's. ``verify`` checks the checksums first, so a corrupt version is
        never made active.
        """
        row = self._require_row(strategy, version)
        if verify:
            self._verify(row, self._resolve_path(row.path))
        with self.sessionmaker() as s, s.begin():
            rows = self._lock_strategy(s, strategy)
            current = next((r for r in rows if r.is_active), None)
            target = next(r for r in rows if r.version == version)
            if current is not None and current.version == version:
                log.info("%s version %s is already active", strategy, version)
                return version
            if gate_metric and current is not None:
                self._gate(strategy, gate_metric, target, current)
            previous = current.version if current is not None else None
            self._switch(s, strategy, rows, target, previous, actor, "activate")
        self._notify(strategy, version)
        return previous

    def _gate(self, strategy: str, metric: str, new: ModelVersion, cur: ModelVersion) -> None:
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

    def rollback(self, strategy: str, actor: str = "cli") -> str:
        """Re-activate the version that was active before the current one; returns it."""
        _check_name("strategy", strategy)
        with self.sessionmaker() as s, s.begin():
            rows = self._lock_strategy(s, strategy)
            if not rows:
                raise ModelError(f"strategy {strategy!r} has no versions", 404)
            current = next((r for r in rows if r.is_active), None)
            history = s.scalars(
                select(ModelActivation)
                .where(ModelActivation.strategy == strategy)
                .order_by(ModelActivation.id)
            ).all()
            stack = _activation_stack(history)
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
            self._verify(target, self._resolve_path(target.path))
            self._switch(s, strategy, rows, target, current.version, actor, "rollback")
            version = target.version
        self._notify(strategy, version)
        return version

    @staticmethod
    def _lock_strategy(s: Session, strategy: str) -> list[ModelVersion]:
        # FOR UPDATE serialises concurrent activations of one strategy on PostgreSQL, which is
        # what keeps "exactly one active version" true; SQLite serialises writers anyway.
        return list(
            s.scalars(
                select(ModelVersion)
                .where(ModelVersion.strategy == strategy)
                .order_by(ModelVersion.version)
                .with_for_update()
            )
        )

    @staticmethod
    def _switch(
        s: Session,
        strategy: str,
        rows: list[ModelVersion],
        target: ModelVersion,
        previous: str | None,
        actor: str,
        kind: str,
    ) -> None:
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

    def rollback_target(self, strategy: str) -> str | None:
        """The version ``rollback(strategy)`` would activate now, or None (nothing to roll back
        to). Lets the runtime load and warm it before the switch."""
        with self.sessionmaker() as s:
            history = s.scalars(
                select(ModelActivation)
                .where(ModelActivation.strategy == strategy)
                .order_by(ModelActivation.id)
            ).all()
        stack = _activation_stack(list(history))
        return stack[-2] if len(stack) >= 2 else None

    def activation_history(self, strategy: str) -> list[dict[str, Any]]:
        with self.sessionmaker() as s:
            rows = s.scalars(
                select(ModelActivation)
                .where(ModelActivation.strategy == strategy)
                .order_by(ModelActivation.id)
            ).all()
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


def _activation_stack(history: list[ModelActivation]) -> list[str]:
    """Replay the history: activations push, rollbacks pop. The top is the active version."""
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


def _load_ids(path: str) -> IdMap:
    with np.load(path, allow_pickle=False) as z:
        return IdMap.from_array(z["ids"])


def get_repository(app=None) -> ModelRepository:
    """The app's repository (one per app, cached in ``app.extensions``)."""
    from flask import current_app

    app = app or current_app._get_current_object()
    repo = app.extensions.get("recsys.models")
    if repo is None:
        repo = ModelRepository(get_config(app).model_dir, app.extensions["recsys.sessionmaker"])
        app.extensions["recsys.models"] = repo
    return repo
