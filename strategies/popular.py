"""Time-decayed popularity: the cold-start fallback and the baseline every model must beat.

An item's popularity is the number of distinct users who engaged with it, each user counted
with the exponential decay of their newest event on it (``half_life_days``; None = no decay,
a plain user count). Per-category lists come from ``recommend(..., candidates=...)`` with the
category's items, or ``category_items``.
"""

from __future__ import annotations

from typing import Self

import numpy as np

from features.interactions import InteractionData
from strategies._arrays import check_items, load_arrays, save_arrays, top_similar
from strategies.base import Strategy, UserBatch


class PopularStrategy(Strategy):
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

    def score(self, users: UserBatch) -> np.ndarray:
        return np.broadcast_to(self.popularity_, (len(users), len(self.popularity_))).copy()

    def category_items(self, category_code: int) -> np.ndarray:
        """Item indices in category ``category_code`` (see ``item_categories_``)."""
        return np.flatnonzero(self.item_categories_ == category_code)

    def similar_items(self, items: np.ndarray, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The most popular items sharing the query item's first category (overall popularity
        when the item has no category)."""
        items = check_items(items, len(self.popularity_))
        scores = np.tile(self.popularity_, (len(items), 1))
        for row, it in enumerate(items):
            cat = self.item_categories_[it]
            if cat >= 0:
                scores[row, self.item_categories_ != cat] = -np.inf
        return top_similar(scores, items, n)

    def save(self, path: str) -> None:
        save_arrays(path, popularity=self.popularity_, item_categories=self.item_categories_)
        self._save_params(path)

    @classmethod
    def load(cls, path: str) -> Self:
        model = cls(**cls._load_params(path)["params"])
        arrays = load_arrays(path)
        model.popularity_ = arrays["popularity"]
        model.item_categories_ = arrays["item_categories"]
        return model


def _category_codes(data: InteractionData) -> np.ndarray:
    """Per item: the index of its first category in sorted category order, -1 without one."""
    meta = data.item_meta
    if meta is None:
        return np.full(data.n_items, -1, dtype=np.int32)
    names = sorted({cats[0] for cats in meta.categories if cats})
    pos = {c: j for j, c in enumerate(names)}
    return np.asarray([pos[cats[0]] if cats else -1 for cats in meta.categories], dtype=np.int32)
