"""Implicit-feedback matrix factorisation (Hu, Koren, Volinsky 2008) with ``implicit``'s ALS.

At request time a user's vector is recomputed from their current history against the fixed
item factors (the exact least-squares solve implicit's ``recalculate_user`` does, done here in
numpy with ``YtY`` precomputed at load: one k x k solve per user, microseconds), so new events
change the results without retraining. Confidence of a cell is ``alpha * weight`` (``binary``:
every positive cell weighs 1). Note the regularisation is not scaled by counts as in Spark, so
it needs to be much larger than Spark's (10-15 on ml-100k, see BENCHMARKS.md section F).
"""

from __future__ import annotations

from typing import Self

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from features.interactions import InteractionData
from strategies._arrays import ItemFactors, load_arrays
from strategies.base import Strategy, UserBatch


def _input(m: sp.csr_matrix, binary: bool) -> sp.csr_matrix:
    m = sp.csr_matrix(m, dtype=np.float32)
    if binary:
        m = m.copy()
        m.data[:] = 1.0
    return m


class ALSStrategy(ItemFactors, Strategy):
    name = "als"

    def __init__(
        self,
        factors: int = 32,
        regularization: float = 15.0,
        alpha: float = 1.0,
        iterations: int = 15,
        binary: bool = True,
        weights: dict[str, float] | None = None,
        num_threads: int = 0,
        random_state: int = 42,
    ):
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.binary = binary
        self.weights = weights
        self.num_threads = num_threads
        self.random_state = random_state

    def _model(self):
        from implicit.cpu.als import AlternatingLeastSquares

        # The constructor checks the BLAS thread setting, so build it under the limit too.
        with threadpool_limits(1, "blas"):
            return AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=self.alpha,
                iterations=self.iterations,
                num_threads=self.num_threads,
                random_state=self.random_state,
            )

    def fit(self, data: InteractionData) -> Self:
        x = _input(data.matrix(self.weights), self.binary)
        model = self._model()
        # implicit parallelises itself; BLAS threads on top of that oversubscribe the cores.
        with threadpool_limits(1, "blas"):
            model.fit(x, show_progress=False)
        self._set(model, np.asarray(model.item_factors, dtype=np.float32))
        return self

    def _set(self, model, item_factors: np.ndarray) -> None:
        model.item_factors = item_factors
        self.model_ = model
        self.item_factors_ = item_factors
        self._unit = None
        # Request-time solve state, computed once (not per request): YtY + reg * I in float64.
        y = item_factors.astype(np.float64)
        self._y64 = y
        self._base = y.T @ y + self.regularization * np.eye(y.shape[1])

    def user_factors(self, users: UserBatch) -> np.ndarray:
        """Least-squares user vectors from the batch's current histories.

        Per user (implicit's equations): ``A = YtY + reg I + sum_i (|c_i| - 1) y_i y_i^T`` and
        ``b = sum_{c_i > 0} c_i y_i`` over the user's stored cells, ``c = alpha * weight``;
        ``x = A^-1 b``. No BLAS thread limit here: a k x k solve is too small to thread, and
        ``threadpool_limits`` itself costs about a millisecond per call.
        """
        x = _input(users.matrix, self.binary)
        k = self.item_factors_.shape[1]
        out = np.zeros((len(users), k), np.float32)
        y, base = self._y64, self._base
        for r in range(len(users)):
            lo, hi = x.indptr[r], x.indptr[r + 1]
            if hi == lo:
                continue  # b = 0, so x = 0 (as implicit returns)
            cols = x.indices[lo:hi]
            c = self.alpha * x.data[lo:hi].astype(np.float64)
            yp = y[cols]
            a = base + (yp.T * (np.abs(c) - 1.0)) @ yp
            b = np.where(c > 0, c, 0.0) @ yp
            out[r] = np.linalg.solve(a, b)
        return out

    def score(self, users: UserBatch) -> np.ndarray:
        return self.user_factors(users) @ self.item_factors_.T

    @classmethod
    def load(cls, path: str) -> Self:
        model = cls(**cls._load_params(path)["params"])
        model._set(model._model(), load_arrays(path)["item_factors"].astype(np.float32))
        return model
