"""Implicit-feedback matrix factorisation (Hu, Koren, Volinsky 2008) with ``implicit``'s ALS.

At request time a user's vector is recomputed from their current history against the fixed
item factors (the exact least-squares solve implicit's ``recalculate_user`` does, done here in
numpy with ``YtY`` precomputed at load: one k x k solve per user, microseconds), so new events
change the results without retraining. Confidence of a cell is ``alpha * weight`` (``binary``:
every positive cell weighs 1). Note the regularisation is not scaled by counts as in Spark, so
it needs to be much larger than Spark's (10-15 on ml-100k, see BENCHMARKS.md section F).

``engine="spark"`` fits the same model with ``pyspark.ml.recommendation.ALS(implicitPrefs=True)``
(``fit_spark``; ``recsys train als --engine spark`` feeds it the events table over JDBC). Only
the fit differs: the saved arrays, serving and evaluation are the same. Spark scales each
solve's regularisation by its number of cells (ALS-WR) and its confidence is ``1 + alpha * r``
where implicit's is ``alpha * r``, so ``spark_params`` maps ours: ``regParam = regularization /
(cells per user + cells per item)``, ``alpha - 1`` for binary input (the same confidence),
``alpha`` otherwise; ``spark_reg_param`` overrides the regParam.
Measured effect of the mapping: docs/scale.md.
"""

from __future__ import annotations

import logging
from typing import Any, Self

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from features.interactions import InteractionData
from strategies._ann import index_cost
from strategies._arrays import ItemFactors, load_arrays, untrained_rows
from strategies.base import SPARSE_OPS, Strategy, UserBatch, input_bytes

log = logging.getLogger(__name__)


def _input(m: sp.csr_matrix, binary: bool) -> sp.csr_matrix:
    m = sp.csr_matrix(m, dtype=np.float32)
    if binary:
        m = m.copy()
        m.data[:] = 1.0
    return m


class ALSStrategy(ItemFactors, Strategy):
    """Implicit-feedback ALS; user vectors are solved at request time from the current history.

    Parameters
    ----------
    factors : int
        Latent dimensions.
    regularization : float
        L2 penalty (implicit's scale, not scaled by counts).
    alpha : float
        Confidence per unit of cell weight (``c = alpha * weight``).
    iterations : int
        ALS sweeps.
    binary : bool
        Every positive cell weighs 1 (else the event weights summed per cell).
    weights : dict of str to float, optional
        Event-type weights overriding ``DEFAULT_WEIGHTS``; ``None``: the defaults.
    num_threads : int
        implicit's fit threads; 0: all cores.
    random_state : int
        Seed of the factor initialisation.
    engine : {"implicit", "spark"}
        Fit in process (implicit) or with Spark's ALS (``fit_spark``).
    spark_reg_param : float, optional
        Spark's ``regParam`` as given; ``None``: derived by ``spark_params``.
    ann_min_items : int, optional
        Catalogue size from which the fit builds approximate-nearest-neighbour indexes for
        candidate retrieval (``strategies._ann``); ``None``: its default; 0: never.
    """

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
        engine: str = "implicit",
        spark_reg_param: float | None = None,
        ann_min_items: int | None = None,
    ):
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.binary = binary
        self.weights = weights
        self.num_threads = num_threads
        self.random_state = random_state
        self.engine = engine
        self.spark_reg_param = spark_reg_param
        self.ann_min_items = ann_min_items

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
        """See ``Strategy.fit``; ``engine="spark"`` fits through ``fit_spark``.

        Raises
        ------
        ValueError
            For an ``engine`` other than "implicit" or "spark".
        """
        if self.engine == "spark":
            from features.spark import events_from_data, get_session

            items = np.arange(data.n_items, dtype=np.int64)
            return self.fit_spark(events_from_data(get_session(), data), items)
        if self.engine != "implicit":
            raise ValueError(f"ALS engine must be 'implicit' or 'spark', not {self.engine!r}")
        x = _input(data.matrix(self.weights), self.binary)
        model = self._model()
        # implicit parallelises itself; BLAS threads on top of that oversubscribe the cores.
        with threadpool_limits(1, "blas"):
            model.fit(x, show_progress=False)
        self._set(model, np.asarray(model.item_factors, dtype=np.float32))
        self._build_ann()
        return self

    def fit_spark(self, events, item_row_ids: np.ndarray) -> Self:
        """Fit with Spark's ALS on an event frame.

        Items without events keep a zero vector, as implicit leaves them. ``spark_`` records what
        Spark fitted (its regParam and alpha, cell and user counts).

        Parameters
        ----------
        events : pyspark.sql.DataFrame
            Event frame (``features.spark``: user_id, item_id, type, value, ts), ids being integers
            below 2**31.
        item_row_ids : np.ndarray of int, shape (n_items,)
            The item ids in IdMap order, sorted: row j of ``item_factors_`` belongs to
            ``item_row_ids[j]``.

        Returns
        -------
        Self
            ``self``, fitted.

        Raises
        ------
        ValueError
            If an id is 2**31 or more.
        """
        from features.spark import weighted_cells

        cells = weighted_cells(events, self.weights, self.binary)
        factors, self.spark_ = _spark_item_factors(cells, self, np.asarray(item_row_ids))
        self._set(self._model(), factors)
        self._build_ann()
        return self

    def _set(self, model, item_factors: np.ndarray) -> None:
        model.item_factors = item_factors
        self.model_ = model
        self.item_factors_ = item_factors
        self._unit = None
        self.untrained_ = untrained_rows(item_factors)  # scored -inf: never returned
        # Request-time solve state, computed once (not per request): YtY + reg * I in float64.
        y = item_factors.astype(np.float64)
        self._y64 = y
        self._base = y.T @ y + self.regularization * np.eye(y.shape[1])

    def user_factors(self, users: UserBatch) -> np.ndarray:
        """Least-squares user vectors from the batch's current histories.

        Per user (implicit's equations): ``A = YtY + reg I + sum_i (|c_i| - 1) y_i y_i^T`` and
        ``b = sum_{c_i > 0} c_i y_i`` over the user's stored cells, ``c = alpha * weight``;
        ``x = A^-1 b``. No BLAS thread limit here: a k x k solve is too small to thread.

        Parameters
        ----------
        users : UserBatch
            b users.

        Returns
        -------
        np.ndarray of float32, shape (b, factors)
            Zero rows for users without history.
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

    @classmethod
    def estimate_cost(
        cls, n_users: int, n_items: int, n_events: int, params: dict[str, Any] | None = None
    ) -> tuple[float, float | None]:
        """Memory: implicit's copies of the matrix (user-item and item-user) and the two factor
        tables (float32, f = ``factors``); time per iteration: conjugate-gradient steps over the
        cells, ~16 E f, plus (U + I) f^2 for the Gram terms; past ``ann_min_items`` the
        candidate indexes (``strategies._ann.index_cost``). See ``Strategy.estimate_cost``.
        """
        p = cls._params_with(params)
        f, iters = int(p["factors"]), int(p["iterations"])
        memory = 2 * input_bytes(n_users, n_items, n_events) + 8.0 * f * (n_users + n_items)
        ops = iters * (16.0 * n_events * f + 2.0 * (n_users + n_items) * f * f)
        ann_bytes, ann_s = index_cost(n_items, f, p["ann_min_items"])
        return memory + ann_bytes, ops / SPARSE_OPS + ann_s

    def score(self, users: UserBatch) -> np.ndarray:
        """See ``Strategy.score``; items without a training event score -inf."""
        scores = self.user_factors(users) @ self.item_factors_.T
        if len(self.untrained_):
            scores[:, self.untrained_] = -np.inf
        return scores

    @classmethod
    def load(cls, path: str) -> Self:
        """See ``Strategy.load``."""
        model = cls(**cls._load_params(path)["params"])
        model._set(model._model(), load_arrays(path)["item_factors"].astype(np.float32))
        model._load_ann(path)
        return model


_INT_MAX = 2**31 - 1


def spark_params(model: ALSStrategy, n_cells: int, n_users: int, n_items: int) -> dict[str, float]:
    """Spark's ``regParam`` and ``alpha`` for an ``ALSStrategy``'s implicit-scale ones.

    ``regParam = regularization / (cells per user + cells per item)`` (users and items with any
    cell): Spark's penalty on a cell's user and item vectors grows with their counts, and this
    divides implicit's constant by the counts an average cell sits between. An empirical
    choice: on ml-100k it lands in Spark's flat optimum (0.05-0.15), where one side's mean alone
    over-regularises (docs/scale.md, "ALS on Spark").

    Parameters
    ----------
    model : ALSStrategy
        Its ``regularization``, ``alpha``, ``binary`` and ``spark_reg_param`` are read.
    n_cells : int
        Non-zero user-item cells.
    n_users : int
        Users with any cell.
    n_items : int
        Items with any cell.

    Returns
    -------
    dict of str to float
        ``{"regParam": ..., "alpha": ...}``; ``spark_reg_param`` when set; alpha is
        ``max(alpha - 1, 0)`` for binary input, ``alpha`` otherwise.
    """
    if model.spark_reg_param is not None:
        reg = float(model.spark_reg_param)
    else:
        per_cell = n_cells / max(n_users, 1) + n_cells / max(n_items, 1)
        reg = float(model.regularization) / max(per_cell, 1.0)
    alpha = max(float(model.alpha) - 1.0, 0.0) if model.binary else float(model.alpha)
    return {"regParam": reg, "alpha": alpha}


def _spark_item_factors(
    cells, model: ALSStrategy, item_row_ids: np.ndarray
) -> tuple[np.ndarray, dict[str, Any]]:
    """Spark ALS on ``cells`` (user_id, item_id, w) with ``model``'s hyperparameters: the
    ``(len(item_row_ids), factors)`` float32 item factors and what was fitted."""
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import functions as F

    cells = cells.cache()
    stats = cells.agg(
        F.count(F.lit(1)).alias("cells"),
        F.countDistinct("item_id").alias("items"),
        F.countDistinct("user_id").alias("users"),
        F.max("user_id").alias("max_user"),
        F.max("item_id").alias("max_item"),
    ).collect()[0]
    k = int(model.factors)
    out = np.zeros((len(item_row_ids), k), np.float32)
    info: dict[str, Any] = {"cells": int(stats["cells"]), "users": int(stats["users"])}
    if not stats["cells"]:
        cells.unpersist()
        return out, info
    if max(stats["max_user"], stats["max_item"]) > _INT_MAX:
        raise ValueError("Spark ALS needs user and item row ids below 2**31")
    params = spark_params(model, int(stats["cells"]), int(stats["users"]), int(stats["items"]))
    info.update(params)
    als = ALS(
        rank=k,
        maxIter=int(model.iterations),
        regParam=params["regParam"],
        alpha=params["alpha"],
        implicitPrefs=True,
        userCol="user_id",
        itemCol="item_id",
        ratingCol="w",
        seed=int(model.random_state),
        coldStartStrategy="drop",
    )
    data = cells.select(
        F.col("user_id").cast("int"), F.col("item_id").cast("int"), F.col("w").cast("float")
    )
    fitted = als.fit(data)
    rows = fitted.itemFactors.collect()
    cells.unpersist()
    ids = np.fromiter((r["id"] for r in rows), dtype=np.int64, count=len(rows))
    pos = np.searchsorted(item_row_ids, ids)
    ok = (pos < len(item_row_ids)) & (item_row_ids[np.minimum(pos, len(item_row_ids) - 1)] == ids)
    if not ok.all():
        log.warning("%d item factors for items not in the catalogue dropped", int((~ok).sum()))
    feats = np.asarray([r["features"] for r in rows], dtype=np.float32).reshape(len(rows), k)
    out[pos[ok]] = feats[ok]
    return out, info
