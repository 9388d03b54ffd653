"""A model version's files on disk: writing, checksums, verification, loading, sizes. No SQL.

Layout (``MODEL_DIR/<strategy>/<version>/``)::

    params.json      written by the strategy's save (name + hyperparameters)
    *.npz / *.pt     the strategy's arrays / torch state_dicts (whatever its save wrote)
    items.npz        the item IdMap (unicode array ``ids``)
    users.npz        the user IdMap
    snapshot.json    training data counts: users, items, events, events_by_type, time range
    metrics.json     holdout metrics
    manifest.json    every other file with its sha256 and size

The manifest's own sha256 is what the caller records (``recsys.models.repository`` keeps it in
the ``model_versions`` row, the root of trust): ``verify_version_dir`` checks the manifest
against it and every file against the manifest *before* anything is handed to ``np.load`` /
``torch.load``. A changed byte, a missing file or an unlisted extra file is refused with a
``ModelError`` naming the file. Nothing here is a pickle: arrays are read with
``allow_pickle=False``, everything else is JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import scipy.sparse as sp

from features.idmap import IdMap
from features.interactions import InteractionData
from recsys.errors import ModelError
from strategies.base import PARAMS_FILE, Strategy

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
ITEMS_FILE = "items.npz"
USERS_FILE = "users.npz"
SNAPSHOT_FILE = "snapshot.json"
METRICS_FILE = "metrics.json"
MANIFEST_FORMAT = 1
# Files the repository writes itself; a strategy's save must leave these names alone.
RESERVED_FILES = frozenset({ITEMS_FILE, USERS_FILE, SNAPSHOT_FILE, METRICS_FILE, MANIFEST})
# Names a strategy or version may have: they become directory names.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class WrittenVersion:
    """What ``write_version`` wrote, for the caller to record.

    Parameters
    ----------
    manifest_sha256 : str
        The sha256 of ``manifest.json``: the value that later verification checks against.
    params : dict
        The parsed ``params.json`` the strategy's save wrote.
    metrics : dict
        The holdout metrics written to ``metrics.json``.
    snapshot : dict
        The training data counts written to ``snapshot.json`` (empty without data).
    """

    manifest_sha256: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    snapshot: dict[str, Any]


# -- names and paths -----------------------------------------------------------------------------
def check_name(kind: str, value: str) -> None:
    """Refuse a strategy or version name that is not a safe directory name.

    Parameters
    ----------
    kind : str
        What the name is (``"strategy"``, ``"version"``), for the error message.
    value : str
        The name: a letter or digit, then up to 63 letters, digits, ``_``, ``.`` or ``-``.

    Returns
    -------
    None
        Raises ``ModelError`` (400) when the name is unsafe.
    """
    if not isinstance(value, str) or not _SAFE_NAME.match(value) or value in (".", ".."):
        raise ModelError(f"invalid {kind} name {value!r}", code=400)


def new_version_id(now: datetime | None = None) -> str:
    """A sortable version id from the UTC time.

    Parameters
    ----------
    now : datetime, optional
        The time to format (default: now, UTC).

    Returns
    -------
    str
        E.g. ``20261125T123456Z``.
    """
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


def claim_version_dir(
    root: str, strategy: str, version: str | None, taken: Callable[[str], bool]
) -> tuple[str, str]:
    """Create a new, empty version directory atomically (``mkdir``) and return it.

    Parameters
    ----------
    root : str
        The repository root (``MODEL_DIR``); ``<root>/<strategy>`` is created if missing.
    strategy : str
        The strategy name (a safe directory name).
    version : str or None
        The version id to claim; None allocates one from the clock (``new_version_id``), with
        ``-02``, ``-03``... appended for saves within the same second.
    taken : callable
        ``taken(version)`` is true when the version is already recorded elsewhere (the SQL row),
        so its id must not be reused even if its directory is gone.

    Returns
    -------
    tuple of (str, str)
        The absolute directory path and the version id. Raises ``ModelError`` (409) when an
        explicit ``version`` exists already.
    """
    check_name("strategy", strategy)
    base_dir = os.path.join(os.path.abspath(root), strategy)
    os.makedirs(base_dir, exist_ok=True)
    if version is not None:
        check_name("version", version)
        if taken(version):
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
        if taken(candidate):
            continue
        path = os.path.join(base_dir, candidate)
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        return path, candidate
    raise ModelError(f"could not allocate a version id for {strategy}")  # pragma: no cover


# -- checksums -----------------------------------------------------------------------------------
def sha256_file(path: str) -> str:
    """The sha256 of a file, read in chunks.

    Parameters
    ----------
    path : str
        The file.

    Returns
    -------
    str
        The hex digest.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def list_files(root: str) -> list[str]:
    """Every regular file under a directory.

    Parameters
    ----------
    root : str
        The directory.

    Returns
    -------
    list of str
        Sorted, ``/``-separated paths relative to ``root``.
    """
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            out.append(rel.replace(os.sep, "/"))
    return sorted(out)


def file_checksums(root: str) -> dict[str, dict[str, Any]]:
    """The checksum of a whole directory: every file's sha256 and size (the manifest's
    ``files``). It depends only on the files' relative paths and bytes.

    Parameters
    ----------
    root : str
        The directory.

    Returns
    -------
    dict
        ``{relative path: {"sha256": hex digest, "size": bytes}}``, in sorted path order.
    """
    out = {}
    for rel in list_files(root):
        full = os.path.join(root, rel)
        out[rel] = {"sha256": sha256_file(full), "size": os.path.getsize(full)}
    return out


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")


# -- writing -------------------------------------------------------------------------------------
def write_version(
    path: str,
    model: Strategy,
    data: InteractionData | None,
    metrics: dict[str, Any] | None,
    version: str,
    created: datetime,
) -> WrittenVersion:
    """Write a fitted model and its manifest into a claimed, empty version directory.

    The caller removes the directory if this raises (see ``ModelRepository.save_version``).

    Parameters
    ----------
    path : str
        The directory from ``claim_version_dir``.
    model : Strategy
        The fitted model (or any artifact with ``name`` and ``save(path)``, e.g. a serving
        profile); its save must write ``params.json`` and none of ``RESERVED_FILES``.
    data : InteractionData or None
        The training data: its id maps go to ``items.npz`` / ``users.npz`` and its counts to
        ``snapshot.json``. None for artifacts that are not fitted models.
    metrics : dict or None
        Holdout metrics for ``metrics.json``.
    version : str
        The version id, recorded in the manifest.
    created : datetime
        The creation time (naive UTC), recorded in the manifest.

    Returns
    -------
    WrittenVersion
        The manifest's sha256 and the params, metrics and snapshot written.
    """
    strategy = model.name
    model.save(path)
    if not os.path.exists(os.path.join(path, PARAMS_FILE)):
        raise ModelError(f"{strategy}.save() wrote no {PARAMS_FILE}")
    clash = RESERVED_FILES.intersection(list_files(path))
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
    manifest = {
        "format": MANIFEST_FORMAT,
        "strategy": strategy,
        "version": version,
        "created_at": created.isoformat() + "Z",
        "files": file_checksums(path),
    }
    _write_json(os.path.join(path, MANIFEST), manifest)
    return WrittenVersion(
        manifest_sha256=sha256_file(os.path.join(path, MANIFEST)),
        params=params,
        metrics=metrics,
        snapshot=snapshot,
    )


# -- verifying and loading -----------------------------------------------------------------------
def verify_version_dir(
    path: str, strategy: str, version: str, manifest_sha256: str
) -> dict[str, Any]:
    """Check a version directory against its recorded manifest checksum.

    Parameters
    ----------
    path : str
        The version directory.
    strategy, version : str
        What the directory must hold (the manifest must name the same).
    manifest_sha256 : str
        The recorded sha256 of ``manifest.json``.

    Returns
    -------
    dict
        The parsed manifest. Raises ``ModelError`` naming the file when the directory or the
        manifest is missing, the manifest differs from the recorded checksum or describes
        another version, a listed file is missing, has another size or checksum, or lies
        outside the directory, or a file is not listed.
    """
    label = f"{strategy}/{version}"
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isdir(path):
        raise ModelError(f"{label}: version directory {path} is missing")
    if not os.path.isfile(manifest_path):
        raise ModelError(f"{label}: {MANIFEST} is missing")
    # Hash exactly the bytes we then parse, so the manifest cannot change in between.
    with open(manifest_path, "rb") as f:
        raw = f.read()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != manifest_sha256:
        raise ModelError(
            f"{label}: {MANIFEST} checksum mismatch (recorded {manifest_sha256[:12]}..., "
            f"found {digest[:12]}...): the version was modified after it was saved"
        )
    manifest = json.loads(raw)
    files: dict[str, dict[str, Any]] = manifest.get("files", {})
    if manifest.get("strategy") != strategy or manifest.get("version") != version:
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
    extra = sorted(set(list_files(path)) - set(files) - {MANIFEST})
    if extra:
        raise ModelError(f"{label}: unexpected file(s) not in the manifest: {extra}")
    return manifest


def load_ids(path: str) -> IdMap:
    """Read an id map written by ``write_version`` (no pickle).

    Parameters
    ----------
    path : str
        ``items.npz`` or ``users.npz``.

    Returns
    -------
    IdMap
        The ids in index order.
    """
    with np.load(path, allow_pickle=False) as z:
        return IdMap.from_array(z["ids"])


def load_strategy(path: str, cls: type[Strategy], label: str) -> tuple[Strategy, IdMap, IdMap]:
    """Load a model and its id maps from a directory that ``verify_version_dir`` passed.

    Parameters
    ----------
    path : str
        The verified version directory.
    cls : type of Strategy
        The strategy class whose ``load`` reads its own files.
    label : str
        ``strategy/version``, for error messages.

    Returns
    -------
    tuple of (Strategy, IdMap, IdMap)
        The model, the item ids and the user ids. Any failure is a ``ModelError``.
    """
    try:
        model = cls.load(path)
        items = load_ids(os.path.join(path, ITEMS_FILE))
        users = load_ids(os.path.join(path, USERS_FILE))
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"{label}: load failed: {type(e).__name__}: {e}") from e
    return model, items, users


# -- sizes ---------------------------------------------------------------------------------------
def dir_bytes(path: str) -> int:
    """Bytes the files under a directory take on disk (unreadable files count 0).

    Parameters
    ----------
    path : str
        The directory (a missing one is 0 bytes).

    Returns
    -------
    int
        The sum of the file sizes.
    """
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def model_nbytes(obj: Any, _depth: int = 0) -> int:
    """Bytes a loaded model holds in memory in its arrays (numpy, scipy.sparse, torch).

    Parameters
    ----------
    obj : object
        A model (its attributes are searched a few levels deep), or an array or tensor.
    _depth : int, optional
        Recursion depth (internal: callers leave it at 0).

    Returns
    -------
    int
        The sum of the arrays' buffer sizes; informational, never raises.
    """
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if sp.issparse(obj):
        return sum(
            int(getattr(obj, a).nbytes) for a in ("data", "indices", "indptr") if hasattr(obj, a)
        )
    try:  # torch is optional for non-deep strategies; import only if already loaded
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
