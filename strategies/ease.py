"""EASE (Steck 2019, "Embarrassingly Shallow Autoencoders"): closed-form item-item model.

B = I - P / diag(P) with P = (X^T X + l2 I)^-1 and diag(B) = 0; a user's scores are x_u B.
Only the ``topk`` largest weights of each item's row are kept (sparse), which bounds the saved
model and scoring cost; ``max_items`` bounds the dense fit (the most popular items are
modelled, the rest only receive no scores).
"""

from __future__ import annotations

import logging
from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from features.interactions import InteractionData
from strategies._arrays import ItemWeights
from strategies.base import DENSE_FLOPS, SPARSE_OPS, Strategy, UserBatch, input_bytes

log = logging.getLogger(__name__)


class EASEStrategy(ItemWeights, Strategy):
    """EASE item-item model with sparse (top-k per item) weights.

    Parameters
    ----------
    l2 : float
        L2 penalty added to the Gram matrix's diagonal.
    topk : int or None
        Weights kept per item row (largest absolute values); ``None``: all (dense).
    binary : bool
        Every positive cell weighs 1 (else the event weights summed per cell).
    max_items : int
        Most popular items modelled; the others get no weights (and so no scores).
    weights : dict of str to float, optional
        Event-type weights overriding ``DEFAULT_WEIGHTS``; ``None``: the defaults.
    """

    name = "ease"

    def __init__(
        self,
        l2: float = 500.0,
        topk: int | None = 512,
        binary: bool = True,
        max_items: int = 20_000,
        weights: dict[str, float] | None = None,
    ):
        self.l2 = l2
        self.topk = topk
        self.binary = binary
        self.max_items = max_items
        self.weights = weights

    def _input(self, m: sp.csr_matrix) -> sp.csr_matrix:
        m = sp.csr_matrix(m, dtype=np.float32)
        if self.binary:
            m = m.copy()
            m.data[:] = 1.0
        return m

    def fit(self, data: InteractionData) -> Self:
        """See ``Strategy.fit``."""
        x = self._input(data.matrix(self.weights))
        n = data.n_items
        counts = np.diff(x.tocsc().indptr)
        if n > self.max_items:
            keep = np.sort(np.argsort(-counts, kind="stable")[: self.max_items])
            log.info("ease: modelling the %d most popular of %d items", len(keep), n)
        else:
            keep = np.arange(n)
        xs = x[:, keep]
        g = (xs.T @ xs).toarray().astype(np.float64)
        g[np.diag_indices_from(g)] += self.l2
        p = np.linalg.inv(g)
        b = -p / np.diag(p)[None, :]
        np.fill_diagonal(b, 0.0)
        b = b.astype(np.float32)
        if self.topk is not None and self.topk < b.shape[1]:
            # Keep each source item's strongest outgoing weights, negative ones included
            # (they push down items that co-occur less than popularity predicts).
            cut = np.argpartition(-np.abs(b), self.topk - 1, axis=1)[:, : self.topk]
            vals = np.take_along_axis(b, cut, axis=1)
            rows = np.repeat(np.arange(b.shape[0]), self.topk)
            bs = sp.csr_matrix((vals.ravel(), (rows, cut.ravel())), shape=b.shape)
        else:
            bs = sp.csr_matrix(b)
        bs.eliminate_zeros()
        # Back to the full catalogue's indices.
        coo = bs.tocoo()
        self.weights_ = sp.csr_matrix(
            (coo.data, (keep[coo.row], keep[coo.col])), shape=(n, n), dtype=np.float32
        )
        return self

    @classmethod
    def estimate_cost(
        cls, n_users: int, n_items: int, n_events: int, params: dict[str, Any] | None = None
    ) -> tuple[float, float | None]:
        """Memory: ~33 bytes per cell of the m x m Gram matrix, m = min(I, max_items) (float64
        Gram, inverse and weights, the float32 copy and the top-k selection; 13.1 GB measured
        at m = 20k); time: the inverse, 2 m^3 flops. See ``Strategy.estimate_cost``.
        """
        m = min(n_items, int(cls._params_with(params)["max_items"]))
        memory = input_bytes(n_users, n_items, n_events) + 33.0 * m * m
        gram = n_events * n_events / max(n_users, 1)  # sparse XᵀX: ~ E x mean history
        return memory, 2.0 * m**3 / DENSE_FLOPS + gram / SPARSE_OPS

    def score(self, users: UserBatch) -> np.ndarray:
        """See ``Strategy.score``."""
        x = self._input(users.matrix)
        return np.asarray((x @ self.weights_).toarray(), dtype=np.float32)
