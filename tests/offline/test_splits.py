"""Splits: seeded, disjoint, sharing id maps, and matching Recommenders' protocol."""

import os

import numpy as np
import pytest

from features.interactions import InteractionData
from recsys.offline.evaluation import splits


def _data(n_users=30, n_items=12, n=600, seed=0) -> InteractionData:
    rng = np.random.default_rng(seed)
    u = rng.integers(0, n_users, n)
    i = rng.integers(0, n_items, n)
    ts = rng.integers(1_600_000_000, 1_700_000_000, n)
    return InteractionData.from_arrays(
        [f"u{x}" for x in u],
        [f"i{x}" for x in i],
        timestamps=ts,
        all_item_ids=[f"i{x}" for x in range(n_items)],
    )


def _rows(d: InteractionData) -> set:
    return set(zip(d.user_idx.tolist(), d.item_idx.tolist(), d.ts.tolist(), strict=True))


@pytest.mark.parametrize(
    "split",
    [
        lambda d: splits.stratified_item_split(d, 0.75, seed=1),
        lambda d: splits.random_user_split(d, 0.75, seed=1),
        lambda d: splits.random_split(d, 0.75, seed=1),
        lambda d: splits.time_split(d, fraction=0.25),
        lambda d: splits.leave_last_out(d),
    ],
)
def test_partition_shares_maps_and_is_deterministic(split):
    d = _data()
    train, test = split(d)
    assert len(train) + len(test) == len(d)
    assert train.users is d.users and test.items is d.items
    assert _rows(train) | _rows(test) == _rows(d)
    train2, test2 = split(d)
    assert np.array_equal(train.ts, train2.ts) and np.array_equal(test.ts, test2.ts)


def test_stratified_item_ratio_per_item_and_seed_changes_result():
    d = _data()
    train, test = splits.stratified_item_split(d, 0.75, seed=42)
    n_all = np.bincount(d.item_idx, minlength=d.n_items)
    n_train = np.bincount(train.item_idx, minlength=d.n_items)
    # Recommenders' rule: rank / count <= ratio, i.e. floor(ratio * count) to train.
    assert np.array_equal(n_train, np.floor(0.75 * n_all + 1e-9).astype(int))
    other, _ = splits.stratified_item_split(d, 0.75, seed=7)
    assert _rows(other) != _rows(train)


def test_stratified_matches_reference_draw():
    # Reference: Recommenders seeds numpy's global generator and sorts by (item, draw).
    d = _data(n=200)
    np.random.seed(42)
    draw = np.random.rand(len(d))
    expected = np.zeros(len(d), bool)
    for item in np.unique(d.item_idx):
        idx = np.flatnonzero(d.item_idx == item)
        ranked = idx[np.argsort(draw[idx])]
        cut = (np.arange(1, len(idx) + 1) / len(idx)) <= 0.75
        expected[ranked[cut]] = True
    train, _ = splits.stratified_item_split(d, 0.75, seed=42)
    assert _rows(train) == _rows(d.subset(expected))


def test_time_split_cutoff_and_fraction():
    d = _data()
    cut = int(np.median(d.ts))
    train, test = splits.time_split(d, cutoff=cut)
    assert train.ts.max() < cut <= test.ts.min()
    train, test = splits.time_split(d, cutoff="2022-01-01")
    assert train.ts.max() < 1_640_995_200 <= test.ts.min()
    train, test = splits.time_split(d, fraction=0.2)
    assert len(test) == pytest.approx(0.2 * len(d), abs=2)
    assert train.ts.max() <= test.ts.min()
    with pytest.raises(ValueError):
        splits.time_split(d, cutoff=cut, fraction=0.2)


def test_leave_last_out_takes_each_users_newest():
    d = _data()
    train, test = splits.leave_last_out(d)
    counts = np.bincount(d.user_idx, minlength=d.n_users)
    assert len(test) == int((counts > 1).sum())
    for u, t in zip(test.user_idx, test.ts, strict=True):
        assert t >= train.ts[train.user_idx == u].max()


def test_bad_ratio_rejected():
    with pytest.raises(ValueError):
        splits.stratified_item_split(_data(), 1.5)


ML100K = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "datasets", "ml-100k")


@pytest.mark.ml100k
@pytest.mark.skipif(not os.path.exists(os.path.join(ML100K, "u.data")), reason="ml-100k absent")
def test_ml100k_popularity_reproduces_published_baseline():
    """Most-popular on Recommenders' random split lands within 0.01 of the published 0.248."""
    from recsys.offline.evaluation import metrics
    from recsys.offline.evaluation.datasets import load_movielens_100k
    from strategies.base import top_n

    d = load_movielens_100k(ML100K)
    train, test = splits.random_split(d, 0.75, seed=42)
    x = train.matrix(binary=True)
    users = np.unique(test.user_idx)
    scores = np.tile(np.asarray(x.sum(0)).ravel().astype(np.float32), (len(users), 1))
    scores[x[users].toarray() > 0] = -np.inf
    ids, _ = top_n(scores, 10)
    means, _ = metrics.evaluate_recommendations(ids, test.matrix(binary=True)[users], 10)
    assert means["ndcg@10"] == pytest.approx(0.248061, abs=0.01)
    assert means["precision@10"] == pytest.approx(0.223754, abs=0.01)
