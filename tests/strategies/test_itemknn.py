"""Item-kNN (strategies/itemknn.py): its neighbour lists against exact dense similarities, its
sparse (never items x items) fitted matrix, its blockwise fit and its persistence."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import strategies.itemknn as itemknn
from features.interactions import InteractionData
from strategies.base import UserBatch
from strategies.itemknn import ItemKNNStrategy, neighbours

N_USERS, N_ITEMS = 60, 18


@pytest.fixture(scope="module")
def data() -> InteractionData:
    rng = np.random.default_rng(7)
    n = 500
    u = rng.integers(0, N_USERS, n)
    # Two taste groups plus noise, and a popularity skew: similarities of many sizes.
    half = N_ITEMS // 2
    i = np.where(u % 2 == 0, rng.integers(0, half, n), rng.integers(half, N_ITEMS, n))
    noise = rng.random(n) < 0.2
    i[noise] = (rng.zipf(1.5, noise.sum()) - 1) % N_ITEMS
    return InteractionData.from_arrays(
        [f"u{x}" for x in u],
        [f"i{x}" for x in i],
        event_types=["purchase"] * n,
        timestamps=1_700_000_000 + np.arange(n),
        all_item_ids=[f"i{x}" for x in range(N_ITEMS)],
    )


def dense_similarity(data: InteractionData, shrinkage: float, similarity: str) -> np.ndarray:
    """Exact dense item-item similarity of the binary matrix, diagonal zeroed."""
    x = data.matrix().toarray() > 0
    x = x.astype(np.float64)
    c = x.T @ x
    n = x.sum(axis=0)
    if similarity == "cosine":
        denom = np.sqrt(np.outer(n, n)) + shrinkage
    else:
        denom = n[:, None] + n[None, :] - c + shrinkage
    s = np.divide(c, denom, out=np.zeros_like(c), where=denom > 0)
    np.fill_diagonal(s, 0.0)
    return s


@pytest.mark.parametrize("similarity", ["cosine", "jaccard"])
@pytest.mark.parametrize("shrinkage", [0.0, 5.0])
def test_full_k_is_the_dense_similarity(data, similarity, shrinkage):
    model = ItemKNNStrategy(k=N_ITEMS, shrinkage=shrinkage, similarity=similarity).fit(data)
    exact = dense_similarity(data, shrinkage, similarity)
    assert (exact > 0).sum() > N_ITEMS * 4  # the data gives many neighbours per item
    np.testing.assert_allclose(model.weights_.toarray(), exact, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_small_k_keeps_the_dense_top_k(data, k):
    model = ItemKNNStrategy(k=k, shrinkage=2.0).fit(data)
    exact = dense_similarity(data, 2.0, "cosine")
    w = model.weights_.tocsr()
    for item in range(N_ITEMS):
        cols = w.indices[w.indptr[item] : w.indptr[item + 1]]
        vals = w.data[w.indptr[item] : w.indptr[item + 1]]
        expected = np.sort(exact[item][exact[item] > 0])[::-1][:k]
        # The kept values are the k largest (ties may pick either item of a tie) ...
        np.testing.assert_allclose(np.sort(vals)[::-1], expected, rtol=1e-5)
        # ... and each kept neighbour's value is its exact similarity.
        np.testing.assert_allclose(vals, exact[item, cols], rtol=1e-5)
        assert item not in cols


def test_fitted_matrix_is_sparse_with_at_most_k_per_row(data):
    k = 4
    model = ItemKNNStrategy(k=k).fit(data)
    assert sp.issparse(model.weights_)
    assert model.weights_.shape == (N_ITEMS, N_ITEMS)
    per_row = np.diff(model.weights_.tocsr().indptr)
    assert per_row.max() <= k and per_row.sum() <= k * N_ITEMS
    assert per_row.sum() > N_ITEMS  # neighbours were found


def test_blocks_never_hold_items_x_items(data, monkeypatch):
    """With a tiny block budget the fit runs in many blocks, each block densified alone, and
    gives the same matrix as one block."""
    whole = ItemKNNStrategy(k=5).fit(data).weights_.toarray()
    shapes = []
    real = sp.csr_matrix.toarray

    def spy(self, *a, **kw):
        shapes.append(self.shape)
        return real(self, *a, **kw)

    monkeypatch.setattr(itemknn, "BLOCK_BYTES", 4 * N_ITEMS * 3)  # 3 rows a block
    monkeypatch.setattr(sp.csr_matrix, "toarray", spy)
    blocked = ItemKNNStrategy(k=5).fit(data).weights_
    monkeypatch.undo()
    assert itemknn.block_rows(N_ITEMS) > 3
    assert shapes and all(s[0] <= 3 for s in shapes)  # no dense items x items
    assert len(shapes) == -(-N_ITEMS // 3)
    np.testing.assert_allclose(blocked.toarray(), whole, rtol=1e-6)


def test_neighbours_rejects_nothing_on_an_empty_matrix():
    w = neighbours(sp.csr_matrix((3, 4), dtype=np.float32), 2, 0.0, "cosine")
    assert w.shape == (4, 4) and w.nnz == 0


def batch(data: InteractionData, rows: np.ndarray) -> UserBatch:
    seqs = data.sequences()
    return UserBatch(matrix=data.matrix()[rows], sequences=[seqs[u] for u in rows], user_index=rows)


def test_scores_sum_the_history_items_neighbour_rows(data):
    model = ItemKNNStrategy(k=5).fit(data)
    users = batch(data, np.arange(5))
    x = users.matrix.toarray() > 0
    expected = x.astype(np.float32) @ model.weights_.toarray()
    np.testing.assert_allclose(model.score(users), expected, rtol=1e-5)


def test_similar_items_are_the_kept_neighbours(data):
    model = ItemKNNStrategy(k=3).fit(data)
    ids, scores = model.similar_items(np.array([0, 10]), n=5)
    w = model.weights_.toarray()
    for row, item in enumerate([0, 10]):
        kept = ids[row][ids[row] >= 0]
        assert set(kept) == set(np.flatnonzero(w[item]))
        np.testing.assert_allclose(scores[row][: len(kept)], w[item, kept], rtol=1e-6)
        assert np.all(np.diff(scores[row][: len(kept)]) <= 0)
    with pytest.raises(IndexError):
        model.similar_items(np.array([N_ITEMS]))


def test_save_load_round_trip(data, tmp_path):
    model = ItemKNNStrategy(k=4, shrinkage=3.0, similarity="jaccard").fit(data)
    model.save(str(tmp_path))
    loaded = ItemKNNStrategy.load(str(tmp_path))
    assert loaded.get_params() == model.get_params()
    assert (loaded.weights_ != model.weights_).nnz == 0
    users = batch(data, np.arange(8))
    np.testing.assert_array_equal(loaded.score(users), model.score(users))
    assert {p.name for p in tmp_path.iterdir()} == {"params.json", "arrays.npz"}


@pytest.mark.parametrize("params", [{"similarity": "dot"}, {"k": 0}])
def test_bad_parameters_are_clear_errors(data, params):
    with pytest.raises(ValueError):
        ItemKNNStrategy(**params).fit(data)


def test_estimate_grows_linearly_in_items_where_ease_grows_quadratically():
    from strategies.ease import EASEStrategy

    small = ItemKNNStrategy.estimate_cost(100_000, 10_000, 1_000_000)[0]
    large = ItemKNNStrategy.estimate_cost(100_000, 100_000, 1_000_000)[0]
    ease_small = EASEStrategy.estimate_cost(100_000, 10_000, 1_000_000, {"max_items": 10**6})[0]
    ease_large = EASEStrategy.estimate_cost(100_000, 100_000, 1_000_000, {"max_items": 10**6})[0]
    assert large / small < 15
    assert ease_large / ease_small > 90
    assert large < 2 * 2**30 < ease_large
