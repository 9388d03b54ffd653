"""History-length bins of the route search (``recsys.offline.tuning.routes``): the fine bins
the validation rows are put in, and where a route boundary goes between two of them."""

from __future__ import annotations

import math

import numpy as np


def cut(left_max: int, right_min: int) -> int:
    """Where a route boundary goes between two bins: the geometric middle of the gap between
    the longest history on the left and the shortest on the right (history lengths grow by
    ratios; users seen at serving time have longer histories than in the validation slice).

    Parameters
    ----------
    left_max : int
        Longest history of the left bin.
    right_min : int
        Shortest history of the right bin.

    Returns
    -------
    int
        The left route's ``max_history`` (inclusive), in ``[left_max, right_min - 1]``.
    """
    left_max, right_min = int(left_max), int(right_min)
    if right_min - left_max <= 1:
        return left_max
    return min(max(left_max, int(math.sqrt(max(left_max, 1) * right_min))), right_min - 1)


def history_bins(
    hist_len: np.ndarray, n_bins: int, min_bin_users: int
) -> list[tuple[int, int | None]]:
    """Fine history bins ``(lo, hi)`` (inclusive; hi None = no bound) over the rows' history
    lengths ``hist_len``: an empty history alone, then quantiles of the rest, each with enough
    rows (``min_bin_users``, at most a quarter of them).

    Parameters
    ----------
    hist_len : np.ndarray
        Each validation row's history length.
    n_bins : int
        Bins wanted (fewer when the rows are too few).
    min_bin_users : int
        Rows a bin needs.

    Returns
    -------
    list[tuple[int, int or None]]
        ``(lo, hi)`` per bin, ascending, covering every length from 0.
    """
    n = hist_len
    min_users = min(min_bin_users, max(len(n) // 4, 1))
    edges: list[int] = []  # inclusive upper bounds
    if (n == 0).sum() >= min_users and (n > 0).any():
        edges.append(0)
    pos = np.sort(n[n > 0])
    parts = max(n_bins - len(edges), 1)
    for q in np.linspace(0, 1, parts + 1)[1:-1]:
        if len(pos):
            edges.append(int(np.quantile(pos, q, method="lower")))
    edges = sorted(set(edges))
    bins, lo = [], 0
    for e in edges:
        if ((n >= lo) & (n <= e)).sum() >= min_users and (n > e).sum() >= min_users:
            bins.append((lo, e))
            lo = e + 1
    bins.append((lo, None))
    return bins
