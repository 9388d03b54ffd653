"""Interactions as arrays, the user-item matrix, and request-time user batches.

``InteractionData`` is what every strategy's ``fit`` receives, whether it comes from the SQL
store (``from_store``) or from a file read by the evaluation code (``from_arrays``). The same
weighting turns a live user's history into a ``UserBatch`` at request time, so training and
serving agree on what an event is worth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from features.idmap import IdMap

EVENT_TYPES = ("view", "click", "cart", "purchase", "rating", "dislike")
EVENT_CODE = {name: i for i, name in enumerate(EVENT_TYPES)}
DISLIKE = EVENT_CODE["dislike"]
RATING = EVENT_CODE["rating"]

# Default strength of each event type: view < click < cart < purchase. A rating counts its
# value (1..5) scaled so a 5-star rating equals a purchase; dislikes are never positives.
DEFAULT_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "click": 2.0,
    "cart": 4.0,
    "purchase": 8.0,
    "rating": 1.6,  # times the rating value
    "dislike": 0.0,
}


@dataclass
class ItemMeta:
    """Item attributes aligned with the item IdMap (row i describes item index i).

    Parameters
    ----------
    titles : list of str
        Title per item index.
    descriptions : list of str
        Description per item index.
    categories : list of list of str
        Category names per item index (possibly empty).
    available : np.ndarray of bool, shape (n_items,)
        Whether each item may be recommended.
    price : np.ndarray of float, shape (n_items,), optional
        Price per item, NaN where unknown; ``None``: no prices at all.
    """

    titles: list[str]
    descriptions: list[str]
    categories: list[list[str]]
    available: np.ndarray  # bool, (n_items,)
    price: np.ndarray | None = None  # float, NaN where unknown

    def text(self, i: int) -> str:
        """Title, description and categories of item i joined by spaces.

        Parameters
        ----------
        i : int
            Item index.

        Returns
        -------
        str
        """
        return " ".join([self.titles[i], self.descriptions[i], " ".join(self.categories[i])])


@dataclass
class InteractionData:
    """Training interactions: one entry per event in parallel arrays, with the id maps.

    Parameters
    ----------
    users : IdMap
        External user ids <-> user indices.
    items : IdMap
        External item ids <-> item indices (may hold items without events).
    user_idx : np.ndarray of int32, shape (n_events,)
        User index of each event.
    item_idx : np.ndarray of int32, shape (n_events,)
        Item index of each event.
    event_type : np.ndarray of int8, shape (n_events,)
        Index into ``EVENT_TYPES`` of each event.
    value : np.ndarray of float32, shape (n_events,)
        Event value (the rating for ``rating`` events).
    ts : np.ndarray of int64, shape (n_events,)
        Event time in unix seconds.
    item_meta : ItemMeta, optional
        Item attributes aligned with ``items``; ``None``: unknown.
    info : dict
        Free-form provenance (source, counts), copied by ``subset``.
    """

    users: IdMap
    items: IdMap
    user_idx: np.ndarray  # int32, one per event
    item_idx: np.ndarray  # int32
    event_type: np.ndarray  # int8, index into EVENT_TYPES
    value: np.ndarray  # float32
    ts: np.ndarray  # int64 unix seconds
    item_meta: ItemMeta | None = None
    info: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def __len__(self) -> int:
        return len(self.user_idx)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        user_ids: Sequence[str],
        item_ids: Sequence[str],
        event_types: Sequence[str] | str = "purchase",
        values: Sequence[float] | None = None,
        timestamps: Sequence[int] | None = None,
        all_item_ids: Sequence[str] | None = None,
        item_meta: ItemMeta | None = None,
    ) -> InteractionData:
        """Build from parallel per-event sequences of external ids.

        Parameters
        ----------
        user_ids : sequence of str, length n_events
            External user id of each event; the user map is in first-seen order.
        item_ids : sequence of str, length n_events
            External item id of each event.
        event_types : sequence of str or str
            Event type name (one of ``EVENT_TYPES``) of each event, or one name for all.
        values : sequence of float, optional
            Event values; ``None``: 1.0 each.
        timestamps : sequence of int, optional
            Unix seconds per event; ``None``: 0 each.
        all_item_ids : sequence of str, optional
            The item map in index order (items without events included); ``None``: the items of
            ``item_ids`` in first-seen order. Events on items missing from it get index -1.
        item_meta : ItemMeta, optional
            Item attributes aligned with the item map.

        Returns
        -------
        InteractionData

        Raises
        ------
        KeyError
            For an event type name not in ``EVENT_TYPES``.
        """
        user_ids = np.asarray(user_ids).astype(str)
        item_ids = np.asarray(item_ids).astype(str)
        users = IdMap(dict.fromkeys(user_ids.tolist()))
        items = IdMap(
            all_item_ids if all_item_ids is not None else dict.fromkeys(item_ids.tolist())
        )
        n = len(user_ids)
        if isinstance(event_types, str):
            et = np.full(n, EVENT_CODE[event_types], dtype=np.int8)
        else:
            et = np.fromiter((EVENT_CODE[t] for t in event_types), dtype=np.int8, count=n)
        return cls(
            users=users,
            items=items,
            user_idx=users.indices(user_ids).astype(np.int32),
            item_idx=items.indices(item_ids).astype(np.int32),
            event_type=et,
            value=np.ones(n, np.float32) if values is None else np.asarray(values, np.float32),
            ts=np.zeros(n, np.int64) if timestamps is None else np.asarray(timestamps, np.int64),
            item_meta=item_meta,
        )

    def subset(self, mask: np.ndarray) -> InteractionData:
        """The events where ``mask`` is true, keeping the same id maps (indices stay valid).

        Parameters
        ----------
        mask : np.ndarray of bool, shape (n_events,)
            Events to keep (any numpy index of the event arrays works).

        Returns
        -------
        InteractionData
            A new object; ``info`` is copied.
        """
        return InteractionData(
            users=self.users,
            items=self.items,
            user_idx=self.user_idx[mask],
            item_idx=self.item_idx[mask],
            event_type=self.event_type[mask],
            value=self.value[mask],
            ts=self.ts[mask],
            item_meta=self.item_meta,
            info=dict(self.info),
        )

    # -- features ---------------------------------------------------------------------------
    def weights(self, weights: dict[str, float] | None = None) -> np.ndarray:
        """Per-event positive weight under a weighting scheme (``event_weights``).

        Parameters
        ----------
        weights : dict of str to float, optional
            Event-type weights overriding ``DEFAULT_WEIGHTS``; ``None``: the defaults.

        Returns
        -------
        np.ndarray of float32, shape (n_events,)
        """
        return event_weights(self.event_type, self.value, weights)

    def matrix(
        self,
        weights: dict[str, float] | None = None,
        half_life_days: float | None = None,
        now: int | None = None,
        binary: bool = False,
    ) -> sp.csr_matrix:
        """User-item matrix; repeated events add up; dislikes contribute nothing.

        Parameters
        ----------
        weights : dict of str to float, optional
            Event-type weights overriding ``DEFAULT_WEIGHTS``; ``None``: the defaults.
        half_life_days : float, optional
            Exponential time decay relative to ``now``, in days; ``None`` or 0: no decay.
        now : int, optional
            Reference time for the decay in unix seconds; ``None``: the newest event.
        binary : bool
            Turn every positive cell into 1.

        Returns
        -------
        scipy.sparse.csr_matrix of float32, shape (n_users, n_items)
            Canonical format (sorted, no duplicates); only cells with a positive weight are stored.
        """
        w = self.weights(weights)
        if half_life_days:
            ref = int(self.ts.max()) if now is None and len(self.ts) else int(now or 0)
            age_days = (ref - self.ts).clip(min=0) / 86400.0
            w = w * np.power(0.5, age_days / half_life_days).astype(np.float32)
        keep = w > 0
        m = sp.csr_matrix(
            (w[keep], (self.user_idx[keep], self.item_idx[keep])),
            shape=(self.n_users, self.n_items),
            dtype=np.float32,
        )
        m.sum_duplicates()
        if binary:
            m.data[:] = 1.0
        return m

    def sequences(self) -> list[np.ndarray]:
        """Per user index: item indices of positive events in time order (oldest first).

        Returns
        -------
        list of np.ndarray of int32, length n_users
            Item indices of each user's non-dislike events, ordered by timestamp.
        """
        pos = self.event_type != DISLIKE
        order = np.lexsort((self.ts[pos], self.user_idx[pos]))
        u = self.user_idx[pos][order]
        it = self.item_idx[pos][order]
        bounds = np.searchsorted(u, np.arange(self.n_users + 1))
        return [it[bounds[i] : bounds[i + 1]] for i in range(self.n_users)]


def event_weights(
    event_type: np.ndarray, value: np.ndarray, weights: dict[str, float] | None = None
) -> np.ndarray:
    """Per-event positive weight (0 for dislikes) under a weighting scheme.

    Parameters
    ----------
    event_type : np.ndarray of int, shape (n_events,)
        Index into ``EVENT_TYPES`` of each event.
    value : np.ndarray of float, shape (n_events,)
        Event values; a rating weighs its value times the ``rating`` weight.
    weights : dict of str to float, optional
        Event-type weights overriding ``DEFAULT_WEIGHTS``; ``None``: the defaults.

    Returns
    -------
    np.ndarray of float32, shape (n_events,)
    """
    table = dict(DEFAULT_WEIGHTS)
    if weights:
        table.update(weights)
    lut = np.array([table[t] for t in EVENT_TYPES], dtype=np.float32)
    w = lut[event_type.astype(np.int64)]
    is_rating = event_type == RATING
    if is_rating.any():
        w = w.copy()
        w[is_rating] = w[is_rating] * np.asarray(value, np.float32)[is_rating]
    return w


@dataclass
class History:
    """One user's history at request time, newest first as the SQL store returns it.

    Parameters
    ----------
    item_idx : np.ndarray of int, shape (n_events,)
        Item index of each event; -1 for items unknown to the model (dropped when batching).
    event_type : np.ndarray of int8, shape (n_events,)
        Index into ``EVENT_TYPES``.
    value : np.ndarray of float32, shape (n_events,)
        Event values.
    ts : np.ndarray of int64, shape (n_events,)
        Event times in unix seconds.
    """

    item_idx: np.ndarray  # int; -1 for items unknown to the model (dropped when batching)
    event_type: np.ndarray  # int8
    value: np.ndarray  # float32
    ts: np.ndarray  # int64


@dataclass
class UserBatch:
    """b users to score, described by their histories at request time.

    Built by ``user_batch``; the contract is in ``strategies.base``.

    Parameters
    ----------
    matrix : scipy.sparse.csr_matrix of float32, shape (b, n_items)
        Weighted interactions.
    sequences : list of np.ndarray of int, length b
        Item indices per user, oldest first.
    types : list of np.ndarray of int8, length b or 0
        Event type codes of the sequence items.
    user_index : np.ndarray of int64, shape (b,), optional
        Training-time user indices (-1: unknown); ``None``: all unknown.
    """

    # (b, n_items) CSR of weighted interactions (features.interactions weights, decay applied).
    matrix: sp.csr_matrix
    # Per user: item indices in time order, oldest first (for sequential models).
    sequences: list[np.ndarray] = field(default_factory=list)
    # Per user: the event type code (features.interactions.EVENT_TYPES) of each sequence item,
    # where known (sequential models may read it; empty when the caller has no types).
    types: list[np.ndarray] = field(default_factory=list)
    # Per user: training-time user index, or -1 for users unknown at training time.
    user_index: np.ndarray | None = None

    def __len__(self) -> int:
        return self.matrix.shape[0]


def user_batch(
    histories: Sequence[History],
    n_items: int,
    weights: dict[str, float] | None = None,
    user_index: np.ndarray | None = None,
):
    """Turn request-time histories into a ``UserBatch`` for one model.

    The CSR matrix is built from its own arrays: each (row, item) pair is one int64 key, and
    ``np.unique`` sorts the keys and numbers them so ``np.bincount`` sums repeated items (in
    float64, then float32). Going through scipy's COO conversion and ``sum_duplicates`` cost
    about twice the CPU for the one-user batch of every uncached request.

    Parameters
    ----------
    histories : sequence of History, length b
        Request-time histories, newest event first; items outside ``0..n_items-1`` are dropped,
        as are events of weight 0 (dislikes).
    n_items : int
        The model's number of items (matrix width).
    weights : dict of str to float, optional
        Event-type weights overriding ``DEFAULT_WEIGHTS``; ``None``: the defaults.
    user_index : np.ndarray of int64, shape (b,), optional
        Training-time user indices; ``None``: all -1 (unknown).

    Returns
    -------
    UserBatch
        Canonical CSR ``matrix`` of shape (b, n_items); ``sequences`` and ``types`` oldest first.
    """
    keys, vals, seqs, types = [], [], [], []
    for r, h in enumerate(histories):
        known = (h.item_idx >= 0) & (h.item_idx < n_items)
        w = event_weights(h.event_type[known], h.value[known], weights)
        pos = w > 0
        cols = h.item_idx[known][pos].astype(np.int64)
        keys.append(cols + r * n_items if r else cols)
        vals.append(w[pos])
        # Sequences are oldest first; the store hands us newest first.
        seqs.append(cols[::-1])
        types.append(h.event_type[known][pos][::-1])
    b = len(histories)
    key = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    uniq, inverse = np.unique(key, return_inverse=True)
    data = np.bincount(
        inverse, weights=np.concatenate(vals) if vals else None, minlength=len(uniq)
    ).astype(np.float32)
    rows, cols = np.divmod(uniq, max(n_items, 1))
    indptr = np.searchsorted(rows, np.arange(b + 1))
    m = sp.csr_matrix((data, cols, indptr), shape=(b, n_items), dtype=np.float32)
    # Sorted unique keys: each row's columns are increasing with no repeats. Said here, scipy
    # need not scan the arrays to find out (the deep model asks, per request).
    m.has_canonical_format = True
    if user_index is None:
        user_index = np.full(b, -1, dtype=np.int64)
    return UserBatch(matrix=m, sequences=seqs, types=types, user_index=user_index)
