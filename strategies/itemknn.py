"""Item-kNN: a sparse item-item model that scales where EASE (dense, quadratic in items) stops.

Similarity over the binary user-item matrix X (users x items), from the co-occurrence counts
C = XᵀX and the item counts n:

* ``cosine``: C_ij / (sqrt(n_i n_j) + shrinkage);
* ``jaccard``: C_ij / (n_i + n_j - C_ij + shrinkage).

C is computed sparsely, one block of source items at a time (``Xᵀ[block] @ X``, densified per
block only), and only the ``k`` most similar items of each source item are kept. Peak memory is
O(items * k + block * items) and never a dense items x items matrix. A user's scores are
x_u W, with W the sparse (items x items) neighbour matrix, as EASE's.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from features.interactions import InteractionData
from strategies._arrays import ItemWeights
from strategies.base import SPARSE_OPS, Strategy, UserBatch, input_bytes

SIMILARITIES = ("cosine", "jaccard")
# Bytes of one dense similarity block (block rows x items, float32): bounds the block size.
BLOCK_BYTES = 64 * 2**20


class ItemKNNStrategy(ItemWeights, Strategy):
    """Item-item nearest neighbours, top-``k`` per item, stored as a sparse matrix.

    Parameters
    ----------
    k : int
        Neighbours kept per item (the most similar ones, similarity > 0).
    shrinkage : float
        Added to the similarity's denominator: damps similarities resting on few co-occurrences.
    similarity : str
        ``"cosine"`` or ``"jaccard"``.
    weights : dict of str to float, optional
        Event-type weights deciding which events count as positive (cells are binary);
        ``None``: ``DEFAULT_WEIGHTS``.
    """

    name = "itemknn"
    # Below EASE on both usual data sets (docs/scale.md): trained and tuned only when named,
    # e.g. where the training budget leaves EASE out.
    opt_in = True

    def __init__(
        self,
        k: int = 20,
        shrinkage: float = 10.0,
        similarity: str = "cosine",
        weights: dict[str, float] | None = None,
    ):
        self.k = k
        self.shrinkage = shrinkage
        self.similarity = similarity
        self.weights = weights

    @staticmethod
    def _binary(m: sp.spmatrix) -> sp.csr_matrix:
        m = sp.csr_matrix(m, dtype=np.float32, copy=True)
        m.data[:] = 1.0
        m.eliminate_zeros()
        return m

    def fit(self, data: InteractionData) -> Self:
        """See ``Strategy.fit``.

        Raises
        ------
        ValueError
            For an unknown ``similarity`` or ``k`` < 1.
        """
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, not {self.similarity!r}")
        if int(self.k) < 1:
            raise ValueError(f"k must be at least 1, not {self.k}")
        self.weights_ = neighbours(
            self._binary(data.matrix(self.weights)),
            int(self.k),
            float(self.shrinkage),
            self.similarity,
        )
        return self

    def score(self, users: UserBatch) -> np.ndarray:
        """See ``Strategy.score``."""
        x = self._binary(users.matrix)
        return np.asarray((x @ self.weights_).toarray(), dtype=np.float32)

    @classmethod
    def estimate_cost(
        cls, n_users: int, n_items: int, n_events: int, params: dict[str, Any] | None = None
    ) -> tuple[float, float | None]:
        """Memory: the input, the kept lists (12 bytes a neighbour) and one dense block with its
        sparse product and selection (~30 bytes a cell); time: the sparse products (the sum over
        users of their history length squared, at least E^2 / U, more with skewed activity)
        plus ~30 operations per block cell (I^2 cells in all: densify, divide, select).
        See ``Strategy.estimate_cost``.
        """
        p = cls._params_with(params)
        k = min(int(p["k"]), max(n_items - 1, 1))
        block = block_rows(n_items)
        memory = input_bytes(n_users, n_items, n_events) + 12 * n_items * k
        memory += 30 * block * n_items
        pairs = n_events * n_events / max(n_users, 1)
        return float(memory), (4.0 * pairs + 30.0 * n_items * n_items) / SPARSE_OPS


def block_rows(n_items: int) -> int:
    """Source items per dense similarity block (``BLOCK_BYTES`` of float32, at least one).

    Parameters
    ----------
    n_items : int
        Catalogue size.

    Returns
    -------
    int
        Rows per block, in [1, max(n_items, 1)].
    """
    return int(max(1, min(max(n_items, 1), BLOCK_BYTES // (4 * max(n_items, 1)))))


def neighbours(x: sp.csr_matrix, k: int, shrinkage: float, similarity: str) -> sp.csr_matrix:
    """The top-``k`` similarity matrix of the binary user-item matrix ``x``, blockwise.

    Parameters
    ----------
    x : scipy.sparse.csr_matrix, shape (n_users, n_items)
        Binary (0/1) interactions.
    k : int
        Neighbours kept per item.
    shrinkage : float
        Added to each similarity's denominator.
    similarity : str
        ``"cosine"`` or ``"jaccard"``.

    Returns
    -------
    scipy.sparse.csr_matrix of float32, shape (n_items, n_items)
        Row i holds item i's at most ``k`` most similar other items (similarity > 0); the
        diagonal is empty.
    """
    n = x.shape[1]
    xt = sp.csr_matrix(x.T)  # items x users
    counts = np.diff(xt.indptr).astype(np.float32)
    root = np.sqrt(counts)
    k = min(k, max(n - 1, 1))
    step = block_rows(n)
    data, cols, sizes = [], [], []
    for start in range(0, n, step):
        stop = min(start + step, n)
        c = (xt[start:stop] @ x).toarray()  # co-occurrence counts, (block, n_items)
        if similarity == "cosine":
            denom = root[start:stop, None] * root[None, :] + shrinkage
        else:
            denom = counts[start:stop, None] + counts[None, :] - c + shrinkage
        sim = np.divide(c, denom, out=np.zeros_like(c), where=denom > 0)
        sim[np.arange(stop - start), np.arange(start, stop)] = 0.0
        if k < n:
            keep = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        else:
            keep = np.broadcast_to(np.arange(n), sim.shape)
        vals = np.take_along_axis(sim, keep, axis=1)
        pos = vals > 0  # row-major: the kept cells of each row in turn
        data.append(vals[pos])
        cols.append(keep[pos])
        sizes.append(pos.sum(axis=1))
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(sizes))]) if sizes else np.zeros(1)
    w = sp.csr_matrix(
        (
            np.concatenate(data) if data else np.zeros(0, np.float32),
            np.concatenate(cols) if cols else np.zeros(0, np.int64),
            indptr.astype(np.int64),
        ),
        shape=(n, n),
        dtype=np.float32,
    )
    w.sort_indices()
    return w
