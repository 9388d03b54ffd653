"""Array persistence shared by the strategies: one ``arrays.npz`` per model, no pickle."""

from __future__ import annotations

import os

import numpy as np
import scipy.sparse as sp

ARRAYS_FILE = "arrays.npz"


def save_arrays(path: str, **arrays: np.ndarray) -> None:
    os.makedirs(path, exist_ok=True)
    for name, a in arrays.items():
        if np.asarray(a).dtype == object:
            raise TypeError(f"array {name!r} has dtype object, which would need pickle")
    np.savez(os.path.join(path, ARRAYS_FILE), **arrays)


def load_arrays(path: str) -> dict[str, np.ndarray]:
    with np.load(os.path.join(path, ARRAYS_FILE), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def csr_arrays(prefix: str, m: sp.csr_matrix) -> dict[str, np.ndarray]:
    m = sp.csr_matrix(m)
    return {
        f"{prefix}_data": m.data,
        f"{prefix}_indices": m.indices,
        f"{prefix}_indptr": m.indptr,
        f"{prefix}_shape": np.asarray(m.shape, dtype=np.int64),
    }


def csr_from(arrays: dict[str, np.ndarray], prefix: str) -> sp.csr_matrix:
    return sp.csr_matrix(
        (arrays[f"{prefix}_data"], arrays[f"{prefix}_indices"], arrays[f"{prefix}_indptr"]),
        shape=tuple(int(x) for x in arrays[f"{prefix}_shape"]),
    )


def top_similar(scores: np.ndarray, items: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-n per row of an item-to-item score block, each query item dropped from its own row."""
    from strategies.base import top_n

    s = np.array(scores, dtype=np.float32, copy=True)
    s[np.arange(len(items)), items] = -np.inf
    return top_n(s, n)


def check_items(items: np.ndarray, n_items: int) -> np.ndarray:
    """Query item indices as int64; out-of-range indices are a clear error, not a crash."""
    items = np.asarray(items, dtype=np.int64).reshape(-1)
    bad = (items < 0) | (items >= n_items)
    if bad.any():
        raise IndexError(f"item indices out of range [0, {n_items}): {items[bad][:5].tolist()}")
    return items


def unit_rows(f: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows left as zeros): cosine similarity by dot product."""
    norms = np.linalg.norm(f, axis=1)
    norms[norms == 0] = 1.0
    return f / norms[:, None]


class ItemFactors:
    """For strategies that keep one ``item_factors_`` array (ALS, BPR): cosine similar items
    over ``_similarity_factors()`` (normalised once per model, not per query) and saving the
    array beside the parameters. Mix in before ``Strategy``; ``_set`` must reset ``_unit``."""

    item_factors_: np.ndarray
    _unit: np.ndarray | None = None

    def _similarity_factors(self) -> np.ndarray:
        return self.item_factors_

    def similar_items(self, items: np.ndarray, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarity of item factors."""
        items = check_items(items, self.item_factors_.shape[0])
        unit = self._unit
        if unit is None:
            unit = self._unit = unit_rows(self._similarity_factors())
        return top_similar(unit[items] @ unit.T, items, n)

    def save(self, path: str) -> None:
        save_arrays(path, item_factors=self.item_factors_)
        self._save_params(path)
