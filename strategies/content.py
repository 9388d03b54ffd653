"""Content-based cold-start model: TF-IDF of item title + description + categories.

A user's profile is the weighted mean of the (L2-normalised) vectors of whatever history
exists, even one item, with newer items weighing more (``recency_half_life`` in events). Scores
are profile . item (cosine up to the profile's norm), so it serves users collaborative models
know nothing about. Users with no history get all-zero scores; the caller blends with
popularity. Only the sparse item matrix is saved (no vectoriser, no pickle).
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from features.interactions import InteractionData
from features.text import item_texts, tfidf_matrix
from strategies._arrays import check_items, csr_arrays, csr_from, load_arrays, save_arrays
from strategies.base import Strategy, UserBatch, input_bytes, top_n

# A typical item text's distinct terms (title, description, categories): estimate_cost only.
TERMS_PER_ITEM = 64


class ContentStrategy(Strategy):
    """TF-IDF content model: a user's profile is a recency-weighted mean of their items' vectors.

    Parameters
    ----------
    recency_half_life : float or None
        Half-life of a history item's profile weight, in events (0 = the latest event);
        ``None`` or 0: no recency weighting.
    min_df : int
        Minimum document frequency of a term (``features.text.tfidf_matrix``).
    max_df : float
        Maximum document frequency of a term, as a share of items.
    ngram_max : int
        Longest word n-gram.
    category_repeat : int
        Times each category's words are repeated in an item's text.
    use_event_weights : bool
        Weigh history items by their event weights (else each history item weighs 1).
    weights : dict of str to float, optional
        Event-type weights overriding ``DEFAULT_WEIGHTS``; ``None``: the defaults.
    """

    name = "content"
    serves_cold = True

    def __init__(
        self,
        recency_half_life: float | None = 10.0,
        min_df: int = 2,
        max_df: float = 0.5,
        ngram_max: int = 1,
        category_repeat: int = 2,
        use_event_weights: bool = False,
        weights: dict[str, float] | None = None,
    ):
        self.recency_half_life = recency_half_life
        self.min_df = min_df
        self.max_df = max_df
        self.ngram_max = ngram_max
        self.category_repeat = category_repeat
        self.use_event_weights = use_event_weights
        self.weights = weights

    def fit(self, data: InteractionData) -> Self:
        """See ``Strategy.fit``; only the item texts of ``data.item_meta`` are used.

        Raises
        ------
        ValueError
            If ``data.item_meta`` is None.
        """
        if data.item_meta is None:
            raise ValueError("the content strategy needs item metadata (titles, categories)")
        texts = item_texts(data.item_meta, self.category_repeat)
        self.item_vectors_ = tfidf_matrix(
            texts, min_df=self.min_df, max_df=self.max_df, ngram_max=self.ngram_max
        )
        return self

    def profile_weights(self, users: UserBatch) -> sp.csr_matrix:
        """Weights of each history item in the user's profile, rows summing to 1.

        Parameters
        ----------
        users : UserBatch
            b users; ``users.sequences`` gives the recency order (no recency weighting without it).

        Returns
        -------
        scipy.sparse.csr_matrix of float32, shape (b, n_items)
            All-zero rows for users without history.
        """
        m = sp.csr_matrix(users.matrix, dtype=np.float32, copy=True)
        if not self.use_event_weights:
            m.data[:] = 1.0
        if self.recency_half_life and users.sequences:
            for r, seq in enumerate(users.sequences[: m.shape[0]]):
                lo, hi = m.indptr[r], m.indptr[r + 1]
                if hi == lo or len(seq) == 0:
                    continue
                # Age of an item = events since its newest occurrence (0 = the latest event).
                rev = np.asarray(seq, dtype=np.int64)[::-1]
                uniq, first = np.unique(rev, return_index=True)
                cols = m.indices[lo:hi]
                at = np.searchsorted(uniq, cols).clip(max=len(uniq) - 1)
                ages = np.where(uniq[at] == cols, first[at], len(rev)).astype(np.float64)
                m.data[lo:hi] *= np.power(0.5, ages / self.recency_half_life).astype(np.float32)
        totals = np.asarray(m.sum(axis=1)).ravel()
        scale = np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0)
        return sp.csr_matrix(sp.diags(scale) @ m, dtype=np.float32)

    @classmethod
    def estimate_cost(
        cls, n_users: int, n_items: int, n_events: int, params: dict[str, Any] | None = None
    ) -> tuple[float, float | None]:
        """Memory: the item-term TF-IDF matrix and its building (~3 x 12 bytes for each of
        ``TERMS_PER_ITEM`` terms an item); time: tokenising, ~1e6 terms a second. Events are not
        read. See ``Strategy.estimate_cost``.
        """
        terms = TERMS_PER_ITEM * n_items
        return input_bytes(n_users, n_items, n_events) + 36.0 * terms, terms / 1e6

    def score(self, users: UserBatch) -> np.ndarray:
        """See ``Strategy.score``; users with no history get all-zero scores."""
        profile = self.profile_weights(users) @ self.item_vectors_
        return np.asarray((profile @ self.item_vectors_.T).toarray(), dtype=np.float32)

    def similar_items(self, items: np.ndarray, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarity of item text vectors (items sharing no term are not returned).

        See ``Strategy.similar_items``.
        """
        items = check_items(items, self.item_vectors_.shape[0])
        scores = np.asarray((self.item_vectors_[items] @ self.item_vectors_.T).toarray())
        scores[scores <= 0] = -np.inf
        scores[np.arange(len(items)), items] = -np.inf
        return top_n(scores.astype(np.float32), n)

    def save(self, path: str) -> None:
        """See ``Strategy.save``."""
        save_arrays(path, **csr_arrays("item_vectors", self.item_vectors_))
        self._save_params(path)

    @classmethod
    def load(cls, path: str) -> Self:
        """See ``Strategy.load``."""
        model = cls(**cls._load_params(path)["params"])
        model.item_vectors_ = csr_from(load_arrays(path), "item_vectors")
        return model
