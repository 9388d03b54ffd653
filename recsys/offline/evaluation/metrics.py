"""Ranking metrics, per user (for paired tests) and averaged.

Definitions follow Recommenders' ``python_evaluation`` with ``relevancy_method="top_k"`` and
binary relevance, so our figures compare with its published benchmark:

* precision@k = hits in the top k / k (also when fewer than k items were recommended);
* recall@k = hits / number of relevant items;
* nDCG@k = sum over hits of 1/log(1 + rank) / sum_{i <= min(k, n_relevant)} 1/log(1 + i);
* MAP (Recommenders' ``map``) = sum over hits of (hit number / rank) / number of relevant items
  (normalised by all relevant items, not min(k, n_relevant));
* hit rate@k = 1 if any hit; MRR@k = 1 / rank of the first hit (0 without one).

Inputs: ``rec_ids`` is a ``(n_users, >= k)`` array of item indices, best first, padded with -1;
``relevant`` is a CSR ``(n_users, n_items)`` matrix whose nonzero cells are the relevant items
of each row (row i describes the user of ``rec_ids[i]``). Users with no relevant item should be
left out by the caller; they get NaN here so that they cannot silently count as zeros.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

PER_USER_METRICS = ("precision", "recall", "ndcg", "map", "hit_rate", "mrr")


def _hits(rec_ids: np.ndarray, relevant: sp.csr_matrix, k: int) -> np.ndarray:
    """Boolean ``(n_users, k)``: is the item at each rank relevant to that user."""
    rec = np.asarray(rec_ids)[:, :k].astype(np.int64)
    n_users, n_items = relevant.shape
    if rec.shape[0] != n_users:
        raise ValueError(f"rec_ids has {rec.shape[0]} rows but relevant has {n_users}")
    rel = relevant.tocsr()
    rows = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(rel.indptr))
    truth_keys = np.unique(rows * n_items + rel.indices.astype(np.int64))
    valid = (rec >= 0) & (rec < n_items)
    keys = np.arange(n_users, dtype=np.int64)[:, None] * n_items + np.where(valid, rec, 0)
    pos = np.searchsorted(truth_keys, keys)
    pos = np.minimum(pos, max(len(truth_keys) - 1, 0))
    found = truth_keys[pos] == keys if len(truth_keys) else np.zeros_like(keys, bool)
    hits = found & valid
    if hits.shape[1] < k:
        hits = np.pad(hits, ((0, 0), (0, k - hits.shape[1])))
    return hits


def _n_relevant(relevant: sp.csr_matrix) -> np.ndarray:
    rel = relevant.tocsr().copy()
    rel.sum_duplicates()
    rel.eliminate_zeros()
    return np.diff(rel.indptr).astype(np.float64)


def ranking_metrics(
    rec_ids: np.ndarray, relevant: sp.csr_matrix, k: int = 10
) -> dict[str, np.ndarray]:
    """Per-user arrays for every metric in ``PER_USER_METRICS`` (NaN for users with nothing
    relevant).

    Parameters
    ----------
    rec_ids : np.ndarray
        ``(n_users, >= k)`` item indices, best first, padded with -1.
    relevant : scipy.sparse.csr_matrix
        ``(n_users, n_items)``; the nonzero cells of row i are the relevant items of the user
        of ``rec_ids[i]``.
    k : int
        Cut-off: only the first ``k`` recommendations count.

    Returns
    -------
    dict[str, np.ndarray]
        Metric name (``PER_USER_METRICS``) -> ``(n_users,)`` float64 values.

    Raises
    ------
    ValueError
        ``rec_ids`` and ``relevant`` have different numbers of rows.
    """
    hits = _hits(rec_ids, relevant, k)
    n_rel = _n_relevant(relevant)
    ranks = np.arange(1, k + 1, dtype=np.float64)
    n_hits = hits.sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        discount = 1.0 / np.log1p(ranks)
        dcg = (hits * discount).sum(axis=1)
        ideal = np.cumsum(discount)
        idcg = np.where(
            n_rel > 0, ideal[np.clip(np.minimum(n_rel, k).astype(int) - 1, 0, k - 1)], 0
        )
        hit_number = np.cumsum(hits, axis=1)
        ap = (hits * hit_number / ranks).sum(axis=1) / n_rel
        first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)
        out = {
            "precision": n_hits / k,
            "recall": n_hits / n_rel,
            "ndcg": dcg / idcg,
            "map": ap,
            "hit_rate": (n_hits > 0).astype(np.float64),
            "mrr": np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0),
        }
    empty = n_rel == 0
    for v in out.values():
        v[empty] = np.nan
    return out


def precision_at_k(rec_ids: np.ndarray, relevant: sp.csr_matrix, k: int = 10) -> np.ndarray:
    """Precision@k per user (see the module docstring).

    Parameters
    ----------
    rec_ids : np.ndarray
        ``(n_users, >= k)`` item indices, best first, padded with -1.
    relevant : scipy.sparse.csr_matrix
        ``(n_users, n_items)``; the nonzero cells of row i are the relevant items of the user
        of ``rec_ids[i]``.
    k : int
        Cut-off: only the first ``k`` recommendations count.

    Returns
    -------
    np.ndarray
        ``(n_users,)`` float64: precision@k per user; NaN for a user with nothing relevant.
    """
    return ranking_metrics(rec_ids, relevant, k)["precision"]


def recall_at_k(rec_ids: np.ndarray, relevant: sp.csr_matrix, k: int = 10) -> np.ndarray:
    """Recall@k per user (see the module docstring).

    Parameters
    ----------
    rec_ids : np.ndarray
        ``(n_users, >= k)`` item indices, best first, padded with -1.
    relevant : scipy.sparse.csr_matrix
        ``(n_users, n_items)``; the nonzero cells of row i are the relevant items of the user
        of ``rec_ids[i]``.
    k : int
        Cut-off: only the first ``k`` recommendations count.

    Returns
    -------
    np.ndarray
        ``(n_users,)`` float64: recall@k per user; NaN for a user with nothing relevant.
    """
    return ranking_metrics(rec_ids, relevant, k)["recall"]


def ndcg_at_k(rec_ids: np.ndarray, relevant: sp.csr_matrix, k: int = 10) -> np.ndarray:
    """nDCG@k per user (see the module docstring).

    Parameters
    ----------
    rec_ids : np.ndarray
        ``(n_users, >= k)`` item indices, best first, padded with -1.
    relevant : scipy.sparse.csr_matrix
        ``(n_users, n_items)``; the nonzero cells of row i are the relevant items of the user
        of ``rec_ids[i]``.
    k : int
        Cut-off: only the first ``k`` recommendations count.

    Returns
    -------
    np.ndarray
        ``(n_users,)`` float64: nDCG@k per user; NaN for a user with nothing relevant.
    """
    return ranking_metrics(rec_ids, relevant, k)["ndcg"]


def average_precision(rec_ids: np.ndarray, relevant: sp.csr_matrix, k: int = 10) -> np.ndarray:
    """Recommenders' ``map`` per user (normalised by the number of relevant items).

    Parameters
    ----------
    rec_ids : np.ndarray
        ``(n_users, >= k)`` item indices, best first, padded with -1.
    relevant : scipy.sparse.csr_matrix
        ``(n_users, n_items)``; the nonzero cells of row i are the relevant items of the user
        of ``rec_ids[i]``.
    k : int
        Cut-off: only the first ``k`` recommendations count.

    Returns
    -------
    np.ndarray
        ``(n_users,)`` float64: average precision per user; NaN for a user with nothing relevant.
    """
    return ranking_metrics(rec_ids, relevant, k)["map"]


def hit_rate(rec_ids: np.ndarray, relevant: sp.csr_matrix, k: int = 10) -> np.ndarray:
    """Hit rate@k per user (see the module docstring).

    Parameters
    ----------
    rec_ids : np.ndarray
        ``(n_users, >= k)`` item indices, best first, padded with -1.
    relevant : scipy.sparse.csr_matrix
        ``(n_users, n_items)``; the nonzero cells of row i are the relevant items of the user
        of ``rec_ids[i]``.
    k : int
        Cut-off: only the first ``k`` recommendations count.

    Returns
    -------
    np.ndarray
        ``(n_users,)`` float64: hit rate@k (1.0 or 0.0) per user; NaN for a user with
        nothing relevant.
    """
    return ranking_metrics(rec_ids, relevant, k)["hit_rate"]


def mrr(rec_ids: np.ndarray, relevant: sp.csr_matrix, k: int = 10) -> np.ndarray:
    """Reciprocal rank of the first hit per user (see the module docstring).

    Parameters
    ----------
    rec_ids : np.ndarray
        ``(n_users, >= k)`` item indices, best first, padded with -1.
    relevant : scipy.sparse.csr_matrix
        ``(n_users, n_items)``; the nonzero cells of row i are the relevant items of the user
        of ``rec_ids[i]``.
    k : int
        Cut-off: only the first ``k`` recommendations count.

    Returns
    -------
    np.ndarray
        ``(n_users,)`` float64: reciprocal rank of the first hit (0.0 without one) per
        user; NaN for a user with nothing relevant.
    """
    return ranking_metrics(rec_ids, relevant, k)["mrr"]


def coverage(rec_ids: np.ndarray, n_items: int, k: int = 10) -> float:
    """Share of the catalogue that appears in at least one user's top k.

    Parameters
    ----------
    rec_ids : np.ndarray
        ``(n_users, >= k)`` item indices, best first, padded with -1.
    n_items : int
        Catalogue size; indices outside ``[0, n_items)`` are ignored.
    k : int
        Cut-off.

    Returns
    -------
    float
        In [0, 1]; 0.0 for an empty catalogue.
    """
    if n_items <= 0:
        return 0.0
    rec = np.asarray(rec_ids)[:, :k].ravel()
    rec = rec[(rec >= 0) & (rec < n_items)]
    return float(len(np.unique(rec)) / n_items)


def novelty(rec_ids: np.ndarray, item_users: np.ndarray, n_users: int, k: int = 10) -> np.ndarray:
    """Per user: mean self-information -log2(p(i)) of the recommended items.

    ``p(i)`` is the share of training users who interacted with item i (``item_users[i] /
    n_users``); items nobody interacted with count as seen by one user so the value stays
    finite. Users with nothing recommended get NaN.

    Parameters
    ----------
    rec_ids : np.ndarray
        ``(n_users, >= k)`` item indices, best first, padded with -1.
    item_users : np.ndarray
        ``(n_items,)``: number of training users who interacted with each item.
    n_users : int
        Number of training users.
    k : int
        Cut-off.

    Returns
    -------
    np.ndarray
        ``(n_users,)`` float64, in bits.
    """
    rec = np.asarray(rec_ids)[:, :k].astype(np.int64)
    valid = rec >= 0
    counts = np.maximum(np.asarray(item_users, dtype=np.float64), 1.0)
    info = -np.log2(np.minimum(counts / max(n_users, 1), 1.0))
    per = np.where(valid, info[np.where(valid, rec, 0)], 0.0)
    with np.errstate(invalid="ignore"):
        return per.sum(axis=1) / valid.sum(axis=1)


def summarize(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    """Means over users with a defined value (what Recommenders reports).

    Parameters
    ----------
    per_user : dict[str, np.ndarray]
        Metric name -> per-user values (NaN: undefined for that user).

    Returns
    -------
    dict[str, float]
        Metric name -> mean of the finite values; 0.0 when none is finite.
    """
    return {
        name: float(np.nanmean(v)) if np.isfinite(v).any() else 0.0 for name, v in per_user.items()
    }


def evaluate_recommendations(
    rec_ids: np.ndarray,
    relevant: sp.csr_matrix,
    k: int = 10,
    item_users: np.ndarray | None = None,
    n_train_users: int | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """All metrics at once: ``(means, per_user)``; keys are ``"<metric>@k"``, plus
    ``coverage@k`` (means only) and ``novelty@k`` when training popularity is given.

    Parameters
    ----------
    rec_ids : np.ndarray
        ``(n_users, >= k)`` item indices, best first, padded with -1.
    relevant : scipy.sparse.csr_matrix
        ``(n_users, n_items)`` relevant items per row of ``rec_ids``.
    k : int
        Cut-off.
    item_users : np.ndarray or None
        ``(n_items,)`` training users per item; None: no novelty.
    n_train_users : int or None
        Number of training users; None: no novelty.

    Returns
    -------
    tuple[dict[str, float], dict[str, np.ndarray]]
        ``(means, per_user)``: metric -> mean, and metric -> ``(n_users,)`` values.
    """
    per = ranking_metrics(rec_ids, relevant, k)
    if item_users is not None and n_train_users is not None:
        per["novelty"] = novelty(rec_ids, item_users, n_train_users, k)
    per = {f"{name}@{k}": v for name, v in per.items()}
    means = summarize(per)
    means[f"coverage@{k}"] = coverage(rec_ids, relevant.shape[1], k)
    return means, per
