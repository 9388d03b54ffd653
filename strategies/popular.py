"""Time-decayed popularity: the cold-start fallback and the baseline every model must beat.

An item's popularity is the number of distinct users who engaged with it, each user counted
with the exponential decay of their newest event on it (``half_life_days``; None = no decay,
a plain user count). Per-category lists come from ``recommend(..., candidates=...)`` with the
category's items, or ``category_items``.
"""

from __future__ import annotations

import math
from typing import Any, Self

import numpy as np

from features.interactions import InteractionData
from strategies._arrays import check_items, load_arrays, save_arrays, top_similar
from strategies.base import SPARSE_OPS, Strategy, UserBatch, input_bytes


class PopularStrategy(Strategy):
    """Time-decayed count of distinct engaged users per item; the same scores for every user.

    Parameters
    ----------
    half_life_days : float or None
        Half-life of a user's contribution, in days before the newest event; ``None`` or 0:
        no decay (a plain user count).
    weights : dict of str to float, optional
        Event-type weights overriding ``DEFAULT_WEIGHTS`` (events of weight 0 do not count);
        ``None``: the defaults.
    """

    name = "popular"
    scores_empty_history = True
    serves_cold = True

    def __init__(
        self,
        half_life_days: float | None = 7.0,
        weights: dict[str, float] | None = None,
    ):
        self.half_life_days = half_life_days
        self.weights = weights

    def fit(self, data: InteractionData) -> Self:
        """See ``Strategy.fit``."""
        w = data.weights(self.weights)
        pos = w > 0
        u, i, ts = data.user_idx[pos], data.item_idx[pos], data.ts[pos]
        # Newest event per (user, item) pair: each user counts once per item.
        key = u.astype(np.int64) * max(data.n_items, 1) + i
        order = np.lexsort((ts, key))
        last = np.r_[key[order][1:] != key[order][:-1], True] if len(key) else np.zeros(0, bool)
        pair_items, pair_ts = i[order][last], ts[order][last]
        if self.half_life_days and len(pair_ts):
            age_days = (int(pair_ts.max()) - pair_ts).clip(min=0) / 86400.0
            strength = np.power(0.5, age_days / float(self.half_life_days))
        else:
            strength = np.ones(len(pair_items))
        pop = np.bincount(pair_items, weights=strength, minlength=data.n_items)
        self.popularity_ = pop.astype(np.float32)
        self.item_categories_ = _category_codes(data)
        return self

    def fit_spark(self, events, item_row_ids: np.ndarray, item_meta=None) -> Self:
        """The same popularity as ``fit``, aggregated by Spark SQL from an event frame.

        Parameters
        ----------
        events : pyspark.sql.DataFrame
            Event frame (``features.spark``: user_id, item_id, type, value, ts).
        item_row_ids : np.ndarray of int, shape (n_items,)
            The item ids in the item IdMap's order, sorted; events on other ids are ignored.
        item_meta : ItemMeta, optional
            The items' categories; ``None``: no item has a category.

        Returns
        -------
        Self
            ``self``, fitted.
        """
        from pyspark.sql import functions as F

        from features.spark import weight_sql

        w = F.expr(weight_sql(self.weights))
        pairs = (
            events.where(w > 0)
            .groupBy("user_id", "item_id")
            .agg(F.max("ts").alias("ts"))  # each user counts once per item, at its newest event
        )
        newest = pairs.agg(F.max("ts")).collect()[0][0] if self.half_life_days else None
        if newest is not None:
            age_days = F.greatest(F.lit(int(newest)) - F.col("ts"), F.lit(0)) / 86400.0
            strength = F.pow(F.lit(0.5), age_days / float(self.half_life_days))
        else:
            strength = F.lit(1.0)
        rows = (
            pairs.select("item_id", strength.alias("s"))
            .groupBy("item_id")
            .agg(F.sum("s").alias("pop"))
            .collect()
        )
        item_row_ids = np.asarray(item_row_ids, dtype=np.int64)
        pop = np.zeros(len(item_row_ids), np.float64)
        ids = np.fromiter((r["item_id"] for r in rows), dtype=np.int64, count=len(rows))
        pos = np.searchsorted(item_row_ids, ids)
        ok = pos < len(item_row_ids)
        ok[ok] = item_row_ids[pos[ok]] == ids[ok]
        pop[pos[ok]] = [r["pop"] for r, keep in zip(rows, ok, strict=True) if keep]
        self.popularity_ = pop.astype(np.float32)
        n = len(item_row_ids)
        if item_meta is None:
            self.item_categories_ = np.full(n, -1, dtype=np.int32)
        else:
            self.item_categories_ = _category_codes_of(item_meta, n)
        return self

    @classmethod
    def estimate_cost(
        cls, n_users: int, n_items: int, n_events: int, params: dict[str, Any] | None = None
    ) -> tuple[float, float | None]:
        """Memory: the event arrays and a sort over them (~48 bytes an event); time: the sort,
        E log2 E. See ``Strategy.estimate_cost``.
        """
        memory = input_bytes(n_users, n_items, n_events) + 48.0 * n_events
        return memory, n_events * math.log2(n_events + 2) / SPARSE_OPS

    def score(self, users: UserBatch) -> np.ndarray:
        """See ``Strategy.score``; every row is ``popularity_``."""
        return np.broadcast_to(self.popularity_, (len(users), len(self.popularity_))).copy()

    def category_items(self, category_code: int) -> np.ndarray:
        """Item indices in category ``category_code`` (see ``item_categories_``).

        Parameters
        ----------
        category_code : int
            Index of a category in the sorted list of first categories.

        Returns
        -------
        np.ndarray of int64
            Item indices whose first category has that code, ascending.
        """
        return np.flatnonzero(self.item_categories_ == category_code)

    def similar_items(self, items: np.ndarray, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The most popular items sharing the query item's first category (overall popularity
        when the item has no category).

        See ``Strategy.similar_items``.
        """
        items = check_items(items, len(self.popularity_))
        scores = np.tile(self.popularity_, (len(items), 1))
        for row, it in enumerate(items):
            cat = self.item_categories_[it]
            if cat >= 0:
                scores[row, self.item_categories_ != cat] = -np.inf
        return top_similar(scores, items, n)

    def save(self, path: str) -> None:
        """See ``Strategy.save``."""
        save_arrays(path, popularity=self.popularity_, item_categories=self.item_categories_)
        self._save_params(path)

    @classmethod
    def load(cls, path: str) -> Self:
        """See ``Strategy.load``."""
        model = cls(**cls._load_params(path)["params"])
        arrays = load_arrays(path)
        model.popularity_ = arrays["popularity"]
        model.item_categories_ = arrays["item_categories"]
        return model


def _category_codes(data: InteractionData) -> np.ndarray:
    """Per item: the index of its first category in sorted category order, -1 without one."""
    return _category_codes_of(data.item_meta, data.n_items)


def _category_codes_of(meta, n_items: int) -> np.ndarray:
    if meta is None:
        return np.full(n_items, -1, dtype=np.int32)
    names = sorted({cats[0] for cats in meta.categories if cats})
    pos = {c: j for j, c in enumerate(names)}
    return np.asarray([pos[cats[0]] if cats else -1 for cats in meta.categories], dtype=np.int32)
