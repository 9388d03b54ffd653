"""Seeded train/test splits of ``InteractionData``.

Every split returns ``(train, test)`` built with ``InteractionData.subset``, so both halves share
the original user and item id maps and indices stay valid across them.

``stratified_item_split`` reproduces Recommenders' ``python_stratified_split`` exactly (same
random draw, same ordering, same ``rank / count <= ratio`` rule), and ``random_split``
reproduces ``python_random_split`` (scikit-learn's ``train_test_split``), given the events in
the same order as the pandas frame they would have used (file order for MovieLens).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import scipy.sparse as sp

from features.interactions import DISLIKE, InteractionData

Split = tuple[InteractionData, InteractionData]


def _check_ratio(ratio: float) -> None:
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"split ratio must be between 0 and 1, got {ratio}")


def _stratified_mask(group: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """Train mask: within each group, events in random order, the first ``ratio`` share to train.

    Mirrors ``_do_stratification``: one ``np.random.rand`` draw per event in input order after
    ``np.random.seed(seed)``, sort by (group, draw), rank within group / group size <= ratio.
    """
    n = len(group)
    # Recommenders seeds the global generator; RandomState(seed).rand gives the same stream
    # without touching global state.
    draw = np.random.RandomState(seed).rand(n)
    order = np.lexsort((draw, group))
    g_sorted = group[order]
    starts = np.flatnonzero(np.r_[True, g_sorted[1:] != g_sorted[:-1]])
    counts = np.diff(np.r_[starts, n])
    first = np.repeat(starts, counts)
    rank = (np.arange(n) - first + 1).astype(np.float64)
    frac = rank / np.repeat(counts, counts).astype(np.float64)
    mask = np.zeros(n, dtype=bool)
    mask[order] = frac <= ratio
    return mask


def stratified_item_split(
    data: InteractionData,
    ratio: float = 0.75,
    seed: int = 42,
    filter_by: str = "item",
    min_rating: int = 1,
) -> Split:
    """Recommenders' ``python_stratified_split``: per item (or user), ``ratio`` of events to train.

    ``min_rating`` drops items (or users) with fewer events first, as Recommenders does.

    Parameters
    ----------
    data : InteractionData
        The events to split.
    ratio : float
        Training share per group, in (0, 1).
    seed : int
        Random seed of the draw.
    filter_by : str
        "item" or "user": the groups.
    min_rating : int
        Groups with fewer events are dropped first (>= 1; 1 keeps all).

    Returns
    -------
    tuple[InteractionData, InteractionData]
        ``(train, test)``, sharing ``data``'s user and item index maps.

    Raises
    ------
    ValueError
        ``ratio``, ``filter_by`` or ``min_rating`` out of range.
    """
    _check_ratio(ratio)
    if filter_by not in ("item", "user"):
        raise ValueError("filter_by must be 'item' or 'user'")
    if min_rating < 1:
        raise ValueError("min_rating must be >= 1")
    group = (data.item_idx if filter_by == "item" else data.user_idx).astype(np.int64)
    if min_rating > 1:
        counts = np.bincount(group)
        data = data.subset(counts[group] >= min_rating)
        group = (data.item_idx if filter_by == "item" else data.user_idx).astype(np.int64)
    train = _stratified_mask(group, ratio, seed)
    return data.subset(train), data.subset(~train)


def random_user_split(data: InteractionData, ratio: float = 0.75, seed: int = 42) -> Split:
    """Random per user: each user's events shuffled (seeded), ``ratio`` of them to train.

    The same stratification as ``stratified_item_split(filter_by="user")``.

    Parameters
    ----------
    data : InteractionData
        The events to split.
    ratio : float
        Training share of each user's events, in (0, 1).
    seed : int
        Random seed.

    Returns
    -------
    tuple[InteractionData, InteractionData]
        ``(train, test)``, sharing ``data``'s user and item index maps.
    """
    return stratified_item_split(data, ratio=ratio, seed=seed, filter_by="user")


def random_split(data: InteractionData, ratio: float = 0.75, seed: int = 42) -> Split:
    """Global random split, as Recommenders' ``python_random_split`` (scikit-learn's splitter).

    Parameters
    ----------
    data : InteractionData
        The events to split.
    ratio : float
        Training share of all events, in (0, 1).
    seed : int
        Random seed (scikit-learn's ``random_state``).

    Returns
    -------
    tuple[InteractionData, InteractionData]
        ``(train, test)``, sharing ``data``'s user and item index maps.
    """
    _check_ratio(ratio)
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(data))
    train_idx, _ = train_test_split(idx, test_size=None, train_size=ratio, random_state=seed)
    mask = np.zeros(len(data), dtype=bool)
    mask[train_idx] = True
    return data.subset(mask), data.subset(~mask)


def _to_unix(cutoff: str | int | float | dt.datetime) -> int:
    if isinstance(cutoff, int | float | np.integer | np.floating):
        return int(cutoff)
    if isinstance(cutoff, str):
        cutoff = dt.datetime.fromisoformat(cutoff)
    if cutoff.tzinfo is None:
        # Timestamps in the store are UTC; a naive date means UTC.
        cutoff = cutoff.replace(tzinfo=dt.UTC)
    return int(cutoff.timestamp())


def time_split(
    data: InteractionData,
    cutoff: str | int | float | dt.datetime | None = None,
    fraction: float | None = None,
) -> Split:
    """Train on events before ``cutoff``, test on events at or after it.

    ``cutoff``: ISO date/datetime (UTC when naive), unix seconds or a datetime. Without a
    cutoff, ``fraction`` (default 0.2) of the events, the newest, go to test.

    Parameters
    ----------
    data : InteractionData
        The events to split.
    cutoff : str or int or float or datetime or None
        The boundary: ISO date/datetime (UTC when naive), Unix seconds or a datetime. None:
        use ``fraction``.
    fraction : float or None
        Without ``cutoff``: share of the events, the newest, that go to test, in (0, 1);
        None means 0.2.

    Returns
    -------
    tuple[InteractionData, InteractionData]
        ``(train, test)``, sharing ``data``'s user and item index maps.

    Raises
    ------
    ValueError
        Both ``cutoff`` and ``fraction`` given, or ``fraction`` out of range.
    """
    if cutoff is not None and fraction is not None:
        raise ValueError("give either cutoff or fraction, not both")
    if cutoff is None:
        fraction = 0.2 if fraction is None else fraction
        _check_ratio(fraction)
        if len(data) == 0:
            return data.subset(np.zeros(0, bool)), data.subset(np.zeros(0, bool))
        order = np.argsort(data.ts, kind="stable")
        n_test = int(round(fraction * len(data)))
        ts_cut = int(data.ts[order[len(data) - n_test]]) if n_test else int(data.ts.max()) + 1
    else:
        ts_cut = _to_unix(cutoff)
    train = data.ts < ts_cut
    return data.subset(train), data.subset(~train)


def leave_last_out(data: InteractionData, n: int = 1) -> Split:
    """Each user's ``n`` newest events to test (ties broken by input order).

    Users with ``n`` events or fewer stay entirely in train, so every test user has history.

    Parameters
    ----------
    data : InteractionData
        The events to split.
    n : int
        Newest events per user to test, >= 1.

    Returns
    -------
    tuple[InteractionData, InteractionData]
        ``(train, test)``, sharing ``data``'s user and item index maps.

    Raises
    ------
    ValueError
        ``n`` < 1.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    m = len(data)
    order = np.lexsort((np.arange(m), data.ts, data.user_idx))
    u_sorted = data.user_idx[order]
    counts = np.bincount(u_sorted, minlength=data.n_users)
    ends = np.cumsum(counts)
    # Position from the end within the user's block (0 = newest).
    from_end = np.repeat(ends, counts) - 1 - np.arange(m)
    test_sorted = (from_end < n) & (np.repeat(counts, counts) > n)
    test = np.zeros(m, dtype=bool)
    test[order] = test_sorted
    return data.subset(~test), data.subset(test)


SPLITS = ("time", "random-user", "stratified-item", "leave-last-out")


def relevant_matrix(test: InteractionData, n_users: int, n_items: int) -> sp.csr_matrix:
    """``(n_users, n_items)`` CSR of every positive event of ``test`` (what counts as a hit).

    Parameters
    ----------
    test : InteractionData
        The test part; dislikes are not relevant.
    n_users : int
        Rows: the user index space shared with the training part.
    n_items : int
        Columns: the item index space.

    Returns
    -------
    scipy.sparse.csr_matrix
        float32, duplicates summed (a cell counts the user's positive test events on the item).
    """
    pos = test.event_type != DISLIKE
    rel = sp.csr_matrix(
        (np.ones(int(pos.sum()), np.float32), (test.user_idx[pos], test.item_idx[pos])),
        shape=(n_users, n_items),
    )
    rel.sum_duplicates()
    return rel


def split_data(
    data: InteractionData,
    split: str,
    seed: int = 42,
    ratio: float = 0.75,
    cutoff: str | None = None,
    fraction: float | None = None,
) -> tuple[InteractionData, InteractionData]:
    """One of ``SPLITS``; ``ratio`` is the training share of the random splits.

    Parameters
    ----------
    data : InteractionData
        The events to split.
    split : str
        One of ``SPLITS``.
    seed : int
        Random seed of the random splits.
    ratio : float
        Training share of the ``stratified-item`` and ``random-user`` splits, in (0, 1).
    cutoff : str or None
        ``time`` split: the boundary (see ``time_split``).
    fraction : float or None
        ``time`` split without ``cutoff``: test share (see ``time_split``).

    Returns
    -------
    tuple[InteractionData, InteractionData]
        ``(train, test)``, sharing ``data``'s user and item index maps.

    Raises
    ------
    ValueError
        An unknown split, or arguments out of range.
    """
    if split == "stratified-item":
        return stratified_item_split(data, ratio=ratio, seed=seed)
    if split == "random-user":
        return random_user_split(data, ratio=ratio, seed=seed)
    if split == "time":
        return time_split(data, cutoff=cutoff, fraction=fraction)
    if split == "leave-last-out":
        return leave_last_out(data)
    raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
