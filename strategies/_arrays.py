"""Array persistence shared by the strategies: one ``arrays.npz`` per model, no pickle."""

from __future__ import annotations

import os

import numpy as np
import scipy.sparse as sp

ARRAYS_FILE = "arrays.npz"


def save_arrays(path: str, **arrays: np.ndarray) -> None:
    """Write named arrays as ``ARRAYS_FILE`` (``np.savez``) in directory ``path``.

    Parameters
    ----------
    path : str
        Model directory (created if needed).
    **arrays : np.ndarray
        Arrays by name; none may have dtype object.

    Raises
    ------
    TypeError
        For an array of dtype object (it would need pickle to load).
    """
    os.makedirs(path, exist_ok=True)
    for name, a in arrays.items():
        if np.asarray(a).dtype == object:
            raise TypeError(f"array {name!r} has dtype object, which would need pickle")
    np.savez(os.path.join(path, ARRAYS_FILE), **arrays)


def load_arrays(path: str) -> dict[str, np.ndarray]:
    """Read the arrays ``save_arrays`` wrote, with ``allow_pickle=False``.

    Parameters
    ----------
    path : str
        Model directory.

    Returns
    -------
    dict of str to np.ndarray
        The arrays by name, loaded into memory.
    """
    with np.load(os.path.join(path, ARRAYS_FILE), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def csr_arrays(prefix: str, m: sp.csr_matrix) -> dict[str, np.ndarray]:
    """A sparse matrix as four plain arrays for ``save_arrays``.

    Parameters
    ----------
    prefix : str
        Name prefix of the arrays.
    m : scipy.sparse matrix
        Any sparse (or dense) 2-D matrix; converted to CSR.

    Returns
    -------
    dict of str to np.ndarray
        ``{prefix}_data``, ``{prefix}_indices``, ``{prefix}_indptr`` and ``{prefix}_shape``
        (int64, shape (2,)).
    """
    m = sp.csr_matrix(m)
    return {
        f"{prefix}_data": m.data,
        f"{prefix}_indices": m.indices,
        f"{prefix}_indptr": m.indptr,
        f"{prefix}_shape": np.asarray(m.shape, dtype=np.int64),
    }


def csr_from(arrays: dict[str, np.ndarray], prefix: str) -> sp.csr_matrix:
    """The CSR matrix ``csr_arrays`` stored under ``prefix``.

    Parameters
    ----------
    arrays : dict of str to np.ndarray
        Arrays as ``load_arrays`` returns them.
    prefix : str
        Name prefix given to ``csr_arrays``.

    Returns
    -------
    scipy.sparse.csr_matrix
    """
    return sp.csr_matrix(
        (arrays[f"{prefix}_data"], arrays[f"{prefix}_indices"], arrays[f"{prefix}_indptr"]),
        shape=tuple(int(x) for x in arrays[f"{prefix}_shape"]),
    )


def top_similar(scores: np.ndarray, items: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-n per row of an item-to-item score block, each query item dropped from its own row.

    Parameters
    ----------
    scores : np.ndarray, shape (len(items), n_items)
        Similarity of each query item to every item (not modified).
    items : np.ndarray of int64, shape (len(items),)
        Query item indices.
    n : int
        Results per query item.

    Returns
    -------
    ids : np.ndarray of int64, shape (len(items), n)
    scores : np.ndarray of float32, shape (len(items), n)
        As ``top_n``: padded with -1 / -inf.
    """
    from strategies.base import top_n

    s = np.array(scores, dtype=np.float32, copy=True)
    s[np.arange(len(items)), items] = -np.inf
    return top_n(s, n)


def check_items(items: np.ndarray, n_items: int) -> np.ndarray:
    """Query item indices as int64; out-of-range indices are a clear error, not a crash.

    Parameters
    ----------
    items : array-like of int
        Item indices, any shape.
    n_items : int
        Number of items of the model.

    Returns
    -------
    np.ndarray of int64, shape (n_queries,)
        ``items`` flattened.

    Raises
    ------
    IndexError
        If an index is outside ``[0, n_items)``.
    """
    items = np.asarray(items, dtype=np.int64).reshape(-1)
    bad = (items < 0) | (items >= n_items)
    if bad.any():
        raise IndexError(f"item indices out of range [0, {n_items}): {items[bad][:5].tolist()}")
    return items


def unit_rows(f: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows left as zeros): cosine similarity by dot product.

    Parameters
    ----------
    f : np.ndarray of float, shape (n, d)

    Returns
    -------
    np.ndarray, shape (n, d)
        A new array.
    """
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
        """Cosine similarity of item factors. See ``Strategy.similar_items``."""
        items = check_items(items, self.item_factors_.shape[0])
        unit = self._unit
        if unit is None:
            unit = self._unit = unit_rows(self._similarity_factors())
        return top_similar(unit[items] @ unit.T, items, n)

    def save(self, path: str) -> None:
        """Save ``item_factors_`` and the parameters. See ``Strategy.save``."""
        save_arrays(path, item_factors=self.item_factors_)
        self._save_params(path)


class ItemWeights:
    """For item-item strategies that keep one sparse ``weights_`` matrix (items x items; EASE,
    item-kNN): similar items from a row's kept weights, and saving and loading the matrix beside
    the parameters. Mix in before ``Strategy``."""

    weights_: sp.csr_matrix

    def similar_items(self, items: np.ndarray, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Items with the largest kept (nonzero) weight from the query item, the item itself
        excluded. See ``Strategy.similar_items``."""
        from strategies.base import top_n

        items = check_items(items, self.weights_.shape[0])
        scores = self.weights_[items].toarray()
        scores[scores == 0] = -np.inf
        scores[np.arange(len(items)), items] = -np.inf
        return top_n(scores.astype(np.float32, copy=False), n)

    def save(self, path: str) -> None:
        """Save ``weights_`` and the parameters. See ``Strategy.save``."""
        save_arrays(path, **csr_arrays("weights", self.weights_))
        self._save_params(path)  # type: ignore[attr-defined]

    @classmethod
    def load(cls, path: str):
        """Read a model ``save`` wrote. See ``Strategy.load``.

        Parameters
        ----------
        path : str
            Model directory.

        Returns
        -------
        Strategy
            A fitted instance with the saved parameters.
        """
        model = cls(**cls._load_params(path)["params"])  # type: ignore[attr-defined]
        model.weights_ = csr_from(load_arrays(path), "weights")
        return model
