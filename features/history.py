"""User history features: length, recency, category affinity.

Computed either for every user of an ``InteractionData`` (training, evaluation segments) or for
one request-time ``History`` (routing: cold vs warm). Only positive events count (dislikes and
zero-weight events are not "history").
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from features.interactions import History, InteractionData, ItemMeta, event_weights

# Edges of the history-length buckets used in reports: 0, 1-4, 5-19, 20+ events.
LENGTH_EDGES = (1, 5, 20)


def history_lengths(data: InteractionData, weights: dict[str, float] | None = None) -> np.ndarray:
    """Per user index: number of positive events.

    Parameters
    ----------
    data : InteractionData
        The events.
    weights : dict of str to float, optional
        Event-type weights (see ``event_weights``); ``None``: the default weights.

    Returns
    -------
    np.ndarray of int64, shape (data.n_users,)
        Events with a weight > 0 per user index.
    """
    pos = data.weights(weights) > 0
    return np.bincount(data.user_idx[pos], minlength=data.n_users).astype(np.int64)


def last_event_ts(data: InteractionData) -> np.ndarray:
    """Per user index: unix time of the newest event (-1 for users without events).

    Parameters
    ----------
    data : InteractionData
        The events.

    Returns
    -------
    np.ndarray of int64, shape (data.n_users,)
        Unix seconds of each user's newest event (any event type), -1 where the user has none.
    """
    out = np.full(data.n_users, -1, dtype=np.int64)
    np.maximum.at(out, data.user_idx, data.ts)
    return out


def recency_days(data: InteractionData, now: int | None = None) -> np.ndarray:
    """Per user: days since the newest event (NaN for users without events).

    Parameters
    ----------
    data : InteractionData
        The events.
    now : int, optional
        Reference time in unix seconds; ``None``: the newest event of ``data`` (0 if empty).

    Returns
    -------
    np.ndarray of float64, shape (data.n_users,)
        ``(now - newest event) / 86400`` per user index, NaN for users without events.
    """
    now = int(data.ts.max()) if now is None and len(data) else int(now or 0)
    last = last_event_ts(data)
    out = (now - last) / 86400.0
    return np.where(last >= 0, out, np.nan)


def length_bucket_labels(edges: tuple[int, ...] = LENGTH_EDGES) -> list[str]:
    """Labels of the history-length buckets: ["0", "1-4", "5-19", "20+"] for the default edges.

    Parameters
    ----------
    edges : tuple of int
        Ascending lower bounds of the buckets after the first (``LENGTH_EDGES``).

    Returns
    -------
    list of str
        ``len(edges) + 1`` labels, in bucket order (as ``length_buckets`` numbers them).
    """
    labels = [f"<{edges[0]}" if edges[0] != 1 else "0"]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        labels.append(f"{lo}-{hi - 1}" if hi - 1 > lo else f"{lo}")
    labels.append(f"{edges[-1]}+")
    return labels


def length_buckets(lengths: np.ndarray, edges: tuple[int, ...] = LENGTH_EDGES) -> np.ndarray:
    """Bucket index per user (0 .. len(edges)) for the labels of ``length_bucket_labels``.

    Parameters
    ----------
    lengths : np.ndarray of int, shape (n_users,)
        History lengths (``history_lengths``).
    edges : tuple of int
        Ascending bucket edges (``LENGTH_EDGES``).

    Returns
    -------
    np.ndarray of int64, shape (n_users,)
        Bucket index per user, in ``0 .. len(edges)``.
    """
    return np.searchsorted(np.asarray(edges), np.asarray(lengths), side="right")


def category_index(meta: ItemMeta) -> tuple[list[str], sp.csr_matrix]:
    """Category names and the 0/1 item-category membership matrix.

    Parameters
    ----------
    meta : ItemMeta
        Item metadata; ``meta.categories[i]`` lists the categories of item index i.

    Returns
    -------
    names : list of str
        Sorted category names (column order of ``matrix``).
    matrix : scipy.sparse.csr_matrix of float32, shape (n_items, n_categories)
        1.0 where the item is in the category.
    """
    names = sorted({c for cats in meta.categories for c in cats})
    pos = {c: j for j, c in enumerate(names)}
    rows = [i for i, cats in enumerate(meta.categories) for _ in cats]
    cols = [pos[c] for cats in meta.categories for c in cats]
    m = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, cols)), shape=(len(meta.categories), len(names))
    )
    m.data[:] = 1.0
    return names, m


def category_affinity(user_items: sp.csr_matrix, item_categories: sp.csr_matrix) -> sp.csr_matrix:
    """Each user's weighted share of interactions per category.

    Parameters
    ----------
    user_items : scipy.sparse.csr_matrix, shape (n_users, n_items)
        Weighted user-item interactions (``InteractionData.matrix``).
    item_categories : scipy.sparse.csr_matrix, shape (n_items, n_categories)
        Membership matrix of ``category_index``.

    Returns
    -------
    scipy.sparse.csr_matrix of float32, shape (n_users, n_categories)
        Rows sum to 1; users without categorised history are all zero.
    """
    aff = sp.csr_matrix(user_items @ item_categories, dtype=np.float32)
    totals = np.asarray(aff.sum(axis=1)).ravel()
    scale = np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0)
    return sp.csr_matrix(sp.diags(scale) @ aff, dtype=np.float32)


def history_features(
    history: History,
    meta: ItemMeta | None = None,
    now: int | None = None,
    weights: dict[str, float] | None = None,
) -> dict:
    """Length, days since the newest event and top categories of one request-time history.

    Parameters
    ----------
    history : History
        The user's current history.
    meta : ItemMeta, optional
        Item metadata; ``None``: no category affinity (empty dict).
    now : int, optional
        Reference time in unix seconds; ``None``: ``recency_days`` is None.
    weights : dict of str to float, optional
        Event-type weights (see ``event_weights``); ``None``: the default weights.

    Returns
    -------
    dict
        ``{"length": int, "recency_days": float or None, "category_affinity": dict}``: the
        number of positive events; days since the newest positive event (None without events
        or without ``now``); each category's share of the positive weight (sums to 1), largest
        first.
    """
    w = event_weights(history.event_type, history.value, weights)
    pos = w > 0
    length = int(pos.sum())
    ts = history.ts[pos]
    recency = None
    if length and now is not None:
        recency = max(0.0, (int(now) - int(ts.max())) / 86400.0)
    affinity: dict[str, float] = {}
    if meta is not None and length:
        for i, wi in zip(history.item_idx[pos], w[pos], strict=True):
            if 0 <= i < len(meta.categories):
                for c in meta.categories[i]:
                    affinity[c] = affinity.get(c, 0.0) + float(wi)
        total = sum(affinity.values())
        if total > 0:
            affinity = {c: v / total for c, v in sorted(affinity.items(), key=lambda kv: -kv[1])}
    return {"length": length, "recency_days": recency, "category_affinity": affinity}
