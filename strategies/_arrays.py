"""Array persistence shared by the strategies: one ``arrays.npz`` per model, no pickle."""

from __future__ import annotations

import os
from typing import Any

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


def untrained_rows(factors: np.ndarray) -> np.ndarray:
    """Indices of the all-zero rows of an item factor table: the items without a training
    event, which implicit's ALS and BPR leave at exactly zero (BPR's bias column too).

    Their scores are 0 for every user (BPR: above every item its biases push below zero),
    a number the model never learnt: the scoring and similarity paths rank them never
    (``-inf``), as the candidate index never finds them.

    Parameters
    ----------
    factors : np.ndarray, shape (n_items, k)

    Returns
    -------
    np.ndarray of int64
    """
    return np.flatnonzero(~factors.any(axis=1)).astype(np.int64)


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
    over ``_similarity_factors()`` (normalised once per model, not per query), saving the
    array beside the parameters and, past ``ann_min_items`` items, approximate candidate
    retrieval (``strategies._ann``: indexes built by ``_build_ann`` at the end of ``fit``, saved
    and loaded with the model). Mix in before ``Strategy``; ``_set`` must reset ``_unit``."""

    item_factors_: np.ndarray
    _unit: np.ndarray | None = None
    ann_min_items: int | None
    # The two indexes (inner product: users' top items; cosine: similar items), or None.
    ann_ip_: Any = None
    ann_cos_: Any = None
    # Items without a training event (``untrained_rows``), set by ``_set``: never returned.
    untrained_: np.ndarray = np.zeros(0, np.int64)

    def _similarity_factors(self) -> np.ndarray:
        return self.item_factors_

    def _unit_factors(self) -> np.ndarray:
        unit = self._unit
        if unit is None:
            unit = self._unit = unit_rows(self._similarity_factors()).astype(np.float32)
        return unit

    def _query_vectors(self, users) -> np.ndarray:
        """The users' vectors whose dot products with ``item_factors_`` are their scores."""
        return self.user_factors(users)  # type: ignore[attr-defined]

    def _build_ann(self) -> None:
        """Build the two indexes when the catalogue has ``ann_min_items`` items or more."""
        from strategies._ann import DEFAULT_MIN_ITEMS, AnnIndex

        self.ann_ip_ = self.ann_cos_ = None
        threshold = self.ann_min_items if self.ann_min_items is not None else DEFAULT_MIN_ITEMS
        if threshold <= 0 or self.item_factors_.shape[0] < threshold:
            return
        self.ann_ip_ = AnnIndex.build(self.item_factors_, "ip", skip=self.untrained_)
        self.ann_cos_ = AnnIndex.build(self._unit_factors(), "cosine", skip=self.untrained_)

    def recommend(
        self,
        users,
        n: int = 10,
        exclude: list[np.ndarray] | None = None,
        candidates: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """With an index: the approximate top candidates (``n`` plus the most any user
        excludes), scored exactly; exact search without one, or when ``candidates`` restricts
        the items (a category). See ``Strategy.recommend``."""
        ann = self.ann_ip_
        extra = max((len(e) for e in exclude if e is not None), default=0) if exclude else 0
        if ann is None or candidates is not None or 2 * (n + extra) > ann.n:
            return super().recommend(users, n, exclude, candidates)  # type: ignore[misc]
        from strategies._ann import top_candidates

        return top_candidates(
            ann, self._query_vectors(users), self.item_factors_, n, exclude, self.untrained_
        )

    def similar_items(self, items: np.ndarray, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarity of item factors (approximate candidates, exact scores, past
        ``ann_min_items`` items). See ``Strategy.similar_items``."""
        items = check_items(items, self.item_factors_.shape[0])
        unit = self._unit_factors()
        ann = self.ann_cos_
        dead = self.untrained_
        if ann is not None and 2 * (n + 1) <= ann.n:
            from strategies._ann import top_candidates

            ids, scores = top_candidates(
                ann, unit[items], unit, n, [np.asarray([i]) for i in items], dead
            )
        else:
            sims = unit[items] @ unit.T
            if len(dead):
                sims[:, dead] = -np.inf
            ids, scores = top_similar(sims, items, n)
        if len(dead):  # an item the model never saw has no neighbours in it
            q = np.isin(items, dead)
            ids[q], scores[q] = -1, -np.inf
        return ids, scores

    def save(self, path: str) -> None:
        """Save ``item_factors_``, the parameters and the indexes. See ``Strategy.save``."""
        save_arrays(path, item_factors=self.item_factors_)
        self._save_params(path, save_ann(path, ip=self.ann_ip_, cos=self.ann_cos_))  # type: ignore[attr-defined]

    def _load_ann(self, path: str) -> None:
        """Read the indexes ``save`` wrote (none: exact search)."""
        params = self._load_params(path)  # type: ignore[attr-defined]
        found = load_ann(path, params, ip=self.item_factors_, cos=self._unit_factors())
        self.ann_ip_, self.ann_cos_ = found.get("ip"), found.get("cos")


ANN_FILES = {"ip": "ann_ip.hnsw", "cos": "ann_cos.hnsw"}


def save_ann(path: str, **indexes: Any) -> dict[str, Any]:
    """Write the indexes given (None ones skipped) and return what ``params.json`` records.

    Parameters
    ----------
    path : str
        Model directory.
    **indexes : AnnIndex or None
        By key of ``ANN_FILES``.

    Returns
    -------
    dict of str to Any
        ``{"ann": {"format", "library", "version", "indexes": {key: meta}}}``, or ``{}``
        when there is no index.
    """
    from strategies._ann import ANN_FORMAT, library_version

    metas = {}
    for key, index in indexes.items():
        if index is not None:
            metas[key] = {"file": ANN_FILES[key], **index.save(os.path.join(path, ANN_FILES[key]))}
    if not metas:
        return {}
    return {
        "ann": {
            "format": ANN_FORMAT,
            "library": "hnswlib",
            "version": library_version(),
            "indexes": metas,
        }
    }


def load_ann(path: str, params: dict[str, Any], **vectors: np.ndarray) -> dict[str, Any]:
    """The indexes ``save_ann`` recorded in ``params`` (the parsed ``params.json``).

    Parameters
    ----------
    path : str
        Model directory (already verified against its manifest).
    params : dict of str to Any
        The parsed ``params.json``.
    **vectors : np.ndarray
        By key, the vectors each index was built over (checked against its size).

    Returns
    -------
    dict of str to AnnIndex
        By key; empty when none was saved.

    Raises
    ------
    ValueError
        For an index saved in another format (retrain the model).
    """
    from strategies._ann import ANN_FORMAT, READABLE_FORMATS, AnnIndex

    ann = params.get("ann")
    if not ann:
        return {}
    if ann.get("format") not in READABLE_FORMATS or ann.get("library") != "hnswlib":
        raise ValueError(
            f"candidate index format {ann.get('library')}/{ann.get('format')} is not "
            f"hnswlib/{ANN_FORMAT}; retrain the model"
        )
    return {
        key: AnnIndex.load(os.path.join(path, meta["file"]), meta, vectors.get(key))
        for key, meta in ann["indexes"].items()
    }


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
