"""Bayesian Personalized Ranking (Rendle et al. 2009) with ``implicit``'s BPR.

Item factors are learnt by BPR; at request time a user is *folded in* against the fixed item
factors (the item biases stay as learnt), so new events change the results without
retraining. The fold-in is a regularised least-squares fit of the user's positives against all
items (positives target 1 with weight 1, every other item target 0 with weight ``fold_in_w0``),
followed by ``fold_in_steps`` full-gradient ascent steps on the user's BPR objective against
every non-positive item, which keeps the folded-in vector close to what BPR itself would
learn. Everything is deterministic (no sampling), so the same history gives the same scores.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from features.interactions import InteractionData
from strategies._ann import index_cost
from strategies._arrays import ItemFactors, load_arrays, untrained_rows
from strategies.base import SPARSE_OPS, Strategy, UserBatch, input_bytes


class BPRStrategy(ItemFactors, Strategy):
    """BPR item factors with request-time fold-in of the user from the current history.

    Parameters
    ----------
    factors : int
        Latent dimensions (the item bias is stored as one more column).
    learning_rate : float
        BPR SGD learning rate.
    regularization : float
        BPR L2 penalty (also used by the fold-in gradient steps).
    iterations : int
        BPR epochs.
    fold_in_reg : float
        L2 penalty of the fold-in least-squares fit.
    fold_in_w0 : float
        Weight of the non-positive items (target 0) in the fold-in fit.
    fold_in_steps : int
        Full-gradient BPR ascent steps after the fit; 0: none.
    fold_in_lr : float
        Step size of those steps.
    weights : dict of str to float, optional
        Event-type weights overriding ``DEFAULT_WEIGHTS``; ``None``: the defaults.
    num_threads : int
        implicit's fit threads; 0: all cores.
    random_state : int
        Seed of the fit.
    ann_min_items : int, optional
        Catalogue size from which the fit builds approximate-nearest-neighbour indexes for
        candidate retrieval (``strategies._ann``); ``None``: its default; 0: never.
    """

    name = "bpr"
    # An empty history folds in to a zero vector: item biases alone, BPR's popularity prior.
    scores_empty_history = True

    def __init__(
        self,
        factors: int = 64,
        learning_rate: float = 0.01,
        regularization: float = 0.01,
        iterations: int = 60,
        fold_in_reg: float = 5.0,
        fold_in_w0: float = 0.01,
        fold_in_steps: int = 0,
        fold_in_lr: float = 0.5,
        weights: dict[str, float] | None = None,
        num_threads: int = 0,
        random_state: int = 42,
        ann_min_items: int | None = None,
    ):
        self.factors = factors
        self.learning_rate = learning_rate
        self.regularization = regularization
        self.iterations = iterations
        self.fold_in_reg = fold_in_reg
        self.fold_in_w0 = fold_in_w0
        self.fold_in_steps = fold_in_steps
        self.fold_in_lr = fold_in_lr
        self.weights = weights
        self.num_threads = num_threads
        self.random_state = random_state
        self.ann_min_items = ann_min_items

    def fit(self, data: InteractionData) -> Self:
        """See ``Strategy.fit``."""
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        x = sp.csr_matrix(data.matrix(self.weights), dtype=np.float32)
        model = BayesianPersonalizedRanking(
            factors=self.factors,
            learning_rate=self.learning_rate,
            regularization=self.regularization,
            iterations=self.iterations,
            num_threads=self.num_threads,
            random_state=self.random_state,
        )
        with threadpool_limits(1, "blas"):
            model.fit(x, show_progress=False)
        # implicit appends the item bias as the last factor (users have a constant 1 there).
        self._set(np.asarray(model.item_factors, dtype=np.float32))
        # Kept for diagnostics only (training users' own BPR vectors); not saved.
        self.train_user_factors_ = np.asarray(model.user_factors, dtype=np.float32)
        self._build_ann()
        return self

    def _set(self, item_factors: np.ndarray) -> None:
        self.item_factors_ = item_factors
        self._unit = None
        # Everything a request needs that does not depend on the user, computed once here
        # rather than per request (the float64 copy alone is n_items x factors).
        v = item_factors[:, :-1].astype(np.float64)
        self._v64 = v
        self._bias64 = item_factors[:, -1].astype(np.float64)
        self._gram = v.T @ v
        self._base = self.fold_in_w0 * self._gram + self.fold_in_reg * np.eye(v.shape[1])
        self._v32 = np.ascontiguousarray(item_factors[:, :-1])
        # Scoring's biases: an item without a training event (a zero row, its bias included)
        # would score 0, above every item whose learnt bias is negative: -inf never returns it.
        self.untrained_ = untrained_rows(item_factors)
        self._bias32 = np.array(item_factors[:, -1], dtype=np.float32)
        self._bias32[self.untrained_] = -np.inf

    def user_factors(self, users: UserBatch) -> np.ndarray:
        """Folded-in user vectors (without the constant bias coordinate).

        One k x k solve per user against the precomputed Gram matrix; no BLAS thread limit
        (too small to thread).

        Parameters
        ----------
        users : UserBatch
            b users.

        Returns
        -------
        np.ndarray of float32, shape (b, factors)
            Zero rows for users without history.
        """
        v, bias, base = self._v64, self._bias64, self._base
        m = sp.csr_matrix(users.matrix)
        out = np.zeros((len(users), v.shape[1]), dtype=np.float64)
        for r in range(len(users)):
            pos = m.indices[m.indptr[r] : m.indptr[r + 1]]
            if len(pos) == 0:
                continue
            vp = v[pos]
            a = base + (1.0 - self.fold_in_w0) * (vp.T @ vp)
            u = np.linalg.solve(a, vp.sum(axis=0))
            if self.fold_in_steps:
                u = self._bpr_steps(u, pos, v, bias)
            out[r] = u
        return out.astype(np.float32)

    def _bpr_steps(self, u: np.ndarray, pos: np.ndarray, v: np.ndarray, bias: np.ndarray):
        """Full-gradient ascent on sum_{i in pos, j not in pos} log sigmoid(s_i - s_j)."""
        neg = np.ones(len(v), dtype=bool)
        neg[pos] = False
        vn, bn = v[neg], bias[neg]
        vp, bp = v[pos], bias[pos]
        scale = 1.0 / (len(pos) * max(len(vn), 1))
        for _ in range(self.fold_in_steps):
            sp_ = vp @ u + bp
            sn = vn @ u + bn
            # d/dx log sigmoid(x) = sigmoid(-x); pairwise matrix (pos x neg).
            g = 1.0 / (1.0 + np.exp(np.clip(sp_[:, None] - sn[None, :], -30, 30)))
            grad = (g.sum(axis=1) @ vp - g.sum(axis=0) @ vn) * scale
            u = u + self.fold_in_lr * (grad - self.regularization * u)
        return u

    @classmethod
    def estimate_cost(
        cls, n_users: int, n_items: int, n_events: int, params: dict[str, Any] | None = None
    ) -> tuple[float, float | None]:
        """Memory: the matrix, float32 factor tables (f + 1 with the bias) for users and items,
        and the float64 serving copies of the item table; time: ``iterations`` SGD passes over
        the cells, ~6 f operations each; past ``ann_min_items`` the candidate indexes
        (``strategies._ann.index_cost``). See ``Strategy.estimate_cost``.
        """
        p = cls._params_with(params)
        f, iters = int(p["factors"]) + 1, int(p["iterations"])
        memory = input_bytes(n_users, n_items, n_events) + 4.0 * f * (n_users + n_items)
        memory += 24.0 * f * n_items + 8.0 * f * f
        ann_bytes, ann_s = index_cost(n_items, f, p["ann_min_items"])
        return memory + ann_bytes, iters * 6.0 * n_events * f / SPARSE_OPS + ann_s

    def score(self, users: UserBatch) -> np.ndarray:
        """See ``Strategy.score``; users without history get item-bias-only scores."""
        u = self.user_factors(users)
        # Users without history get item-bias-only scores (BPR's popularity prior).
        return (u @ self._v32.T + self._bias32).astype(np.float32)

    def _query_vectors(self, users: UserBatch) -> np.ndarray:
        """Folded-in vectors with the constant 1 of the bias column (scores = dot products
        with ``item_factors_``)."""
        u = self.user_factors(users)
        return np.hstack([u, np.ones((len(u), 1), np.float32)])

    def _similarity_factors(self) -> np.ndarray:
        return self.item_factors_[:, :-1]  # cosine of item factors, bias excluded

    @classmethod
    def load(cls, path: str) -> Self:
        """See ``Strategy.load``."""
        model = cls(**cls._load_params(path)["params"])
        model._set(load_arrays(path)["item_factors"].astype(np.float32))
        model._load_ann(path)
        return model
