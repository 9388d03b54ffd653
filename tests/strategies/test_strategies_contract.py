"""The shared strategy contract, run against every strategy in the registry.

As scikit-learn's ``parametrize_with_checks``: every registered strategy runs every check, none
is dropped because it fails to import or rejects its parameters (either is a failure here), and
the serving adapter (``recsys.models.batched_model.BatchedModel``, micro-batched scoring) runs the
same scoring checks as the model it wraps.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import scipy.sparse as sp

from features.interactions import History, InteractionData, ItemMeta, user_batch
from strategies import STRATEGY_NAMES, get_strategy_class
from strategies.base import Strategy, UserBatch

# Small, fast hyperparameters: the contract is about behaviour, not quality. Single-threaded
# where a strategy takes threads, so that a seed makes a fit reproducible.
FAST = {
    "als": {"factors": 8, "iterations": 3, "num_threads": 1},
    "bpr": {"factors": 8, "iterations": 5, "num_threads": 1},
    "ease": {"l2": 10.0, "topk": 6},
    "itemknn": {"k": 6},
    "deep": {"epochs": 1},
    "sequence": {"epochs": 2, "dim": 16, "max_len": 8, "device": "cpu"},
}

N_USERS, N_ITEMS = 40, 25


def _available() -> list[str]:
    """Every registered strategy: one that cannot be imported fails the test that uses it
    (``get_strategy_class`` raises), it is not left out."""
    return list(STRATEGY_NAMES)


def _make(name: str) -> Strategy:
    # A TypeError here (a FAST parameter the strategy does not take) fails the test.
    return get_strategy_class(name)(**FAST.get(name, {}))


def _batched(model: Strategy) -> Strategy:
    """``model`` behind the serving adapter: ``score`` through a micro-batcher."""
    from recsys.models.batched_model import BatchedModel

    return BatchedModel(model, max_batch=8, max_delay_ms=1.0)


@pytest.fixture(scope="module")
def data() -> InteractionData:
    rng = np.random.default_rng(3)
    n = 400
    # Two taste groups so collaborative models have something to learn.
    u = rng.integers(0, N_USERS, n)
    half = N_ITEMS // 2
    i = np.where(u % 2 == 0, rng.integers(0, half, n), rng.integers(half, N_ITEMS, n))
    kinds = rng.choice(["view", "click", "cart", "purchase"], n)
    ts = 1_700_000_000 + np.sort(rng.integers(0, 90 * 86400, n))
    meta = ItemMeta(
        titles=[f"{'red' if j < half else 'blue'} widget {j}" for j in range(N_ITEMS)],
        descriptions=[f"a {'round' if j % 3 else 'square'} thing" for j in range(N_ITEMS)],
        categories=[["kitchen"] if j < half else ["garden"] for j in range(N_ITEMS)],
        available=np.ones(N_ITEMS, dtype=bool),
    )
    return InteractionData.from_arrays(
        [f"u{x}" for x in u],
        [f"i{x}" for x in i],
        event_types=kinds.tolist(),
        timestamps=ts,
        all_item_ids=[f"i{x}" for x in range(N_ITEMS)],
        item_meta=meta,
    )


@pytest.fixture(scope="module", params=_available())
def trained(request, data):
    model = _make(request.param)
    assert model.fit(data) is model
    return model


@pytest.fixture(params=["plain", "batched"])
def fitted(request, trained):
    """Each trained strategy as fitted, and behind the serving adapter."""
    if request.param == "plain":
        yield trained
        return
    model = _batched(trained)
    yield model
    model.close()


def _batch(data: InteractionData, users: list[int]) -> UserBatch:
    x = data.matrix()
    seqs = data.sequences()
    return UserBatch(
        matrix=x[users], sequences=[seqs[u] for u in users], user_index=np.asarray(users)
    )


def test_registry_names_and_unknown_name():
    for name in STRATEGY_NAMES:
        # Importable here (torch included): a broken module fails, it is not skipped.
        cls = get_strategy_class(name)
        assert issubclass(cls, Strategy) and cls.name == name
    with pytest.raises(ValueError, match="unknown strategy"):
        get_strategy_class("nope")


def test_score_and_recommend_shapes_and_padding(fitted, data):
    batch = _batch(data, [0, 1, 2])
    scores = fitted.score(batch)
    assert scores.shape == (3, N_ITEMS)
    ids, sc = fitted.recommend(batch, n=N_ITEMS + 5)
    assert ids.shape == sc.shape == (3, N_ITEMS + 5)
    assert ids.dtype.kind == "i"
    assert (ids[:, N_ITEMS:] == -1).all() and np.isneginf(sc[:, N_ITEMS:]).all()
    # Scores come back best first.
    finite = np.where(np.isfinite(sc), sc, -np.inf)
    assert (np.diff(finite[:, :N_ITEMS], axis=1) <= 1e-6).all()


def test_exclusion_and_candidates_honoured(fitted, data):
    batch = _batch(data, [0, 1])
    seen = [data.matrix()[u].indices for u in (0, 1)]
    ids, _ = fitted.recommend(batch, n=10, exclude=seen)
    for row, ex in enumerate(seen):
        assert not set(ids[row][ids[row] >= 0]) & set(ex.tolist())
    cand = np.array([3, 7, 20])
    ids, sc = fitted.recommend(batch, n=5, candidates=cand)
    assert set(ids[ids >= 0].tolist()) <= set(cand.tolist())
    assert (ids[:, 3:] == -1).all()


def test_save_load_round_trip_gives_equal_scores(trained, data, tmp_path):
    fitted = trained
    fitted.save(str(tmp_path))
    files = os.listdir(tmp_path)
    assert "params.json" in files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".joblib"))]
    for f in files:
        if f.endswith(".npz"):
            # Every array must load without pickle (no object dtype).
            with np.load(os.path.join(tmp_path, f), allow_pickle=False) as arrays:
                for key in arrays.files:
                    assert arrays[key].dtype != object
    loaded = type(fitted).load(str(tmp_path))
    batch = _batch(data, [0, 5, 9])
    np.testing.assert_allclose(loaded.score(batch), fitted.score(batch), rtol=1e-5, atol=1e-5)
    assert loaded.get_params() == fitted.get_params()


def test_empty_history_and_unknown_user(fitted):
    empty = UserBatch(
        matrix=sp.csr_matrix((2, N_ITEMS), dtype=np.float32),
        sequences=[np.zeros(0, np.int64)] * 2,
        user_index=np.array([-1, -1]),
    )
    scores = fitted.score(empty)
    assert scores.shape == (2, N_ITEMS)
    assert not np.isnan(scores).any()
    ids, _ = fitted.recommend(empty, n=5)
    assert ids.shape == (2, 5)


def test_fresh_history_changes_results_without_refit(fitted, data):
    """A request-time history (user unknown at training) is scored from its events."""
    if fitted.name == "popular":
        pytest.skip("popularity is the same for everyone by design")
    half = N_ITEMS // 2
    hist = [
        History(
            item_idx=np.array(items),
            event_type=np.full(len(items), 3, np.int8),
            value=np.ones(len(items), np.float32),
            ts=np.arange(len(items), dtype=np.int64)[::-1],
        )
        for items in ([0, 1, 2, 3], [half, half + 1, half + 2, half + 3])
    ]
    batch = user_batch(hist, N_ITEMS)
    scores = fitted.score(batch)
    assert not np.allclose(scores[0], scores[1])


def test_similar_items_excludes_the_item_itself(fitted):
    items = np.array([0, 4, N_ITEMS - 1])
    try:
        ids, sc = fitted.similar_items(items, n=5)
    except NotImplementedError:
        pytest.skip(f"{fitted.name} has no similar_items")
    assert ids.shape == sc.shape == (3, 5)
    for row, it in enumerate(items):
        assert it not in ids[row]
    with pytest.raises(IndexError):
        fitted.similar_items(np.array([N_ITEMS + 10]), n=3)


def test_serves_cold_flags():
    assert get_strategy_class("popular").serves_cold
    assert get_strategy_class("content").serves_cold
    assert not get_strategy_class("ease").serves_cold


@pytest.mark.parametrize("seed", range(4))
def test_user_batch_is_canonical_as_it_says(seed):
    """user_batch marks its matrix canonical (sorted, no repeats) without scipy checking;
    the arrays must really be so, repeated and unknown items in the histories included."""
    from scipy.sparse._sparsetools import csr_has_canonical_format

    rng = np.random.default_rng(seed)
    hists = []
    for _ in range(int(rng.integers(1, 6))):
        k = int(rng.integers(0, 30))
        hists.append(
            History(
                item_idx=rng.integers(-1, N_ITEMS + 2, k),
                event_type=rng.integers(0, 4, k).astype(np.int8),
                value=rng.uniform(0.5, 3, k).astype(np.float32),
                ts=np.arange(k, dtype=np.int64)[::-1],
            )
        )
    m = user_batch(hists, N_ITEMS).matrix
    assert m.__dict__.get("_has_canonical_format") is True
    assert csr_has_canonical_format(m.shape[0], m.indptr, m.indices)
    plain = m.copy()
    plain.__dict__.pop("_has_canonical_format", None)
    plain.sum_duplicates()
    np.testing.assert_array_equal(plain.indices, m.indices)
    np.testing.assert_allclose(plain.data, m.data)


@pytest.mark.parametrize("seed", range(4))
def test_top_n_of_one_row_equals_that_row_in_a_batch(seed):
    """top_n has a one-row fast path (every uncached request); it must agree with the
    batched path row for row, ties, -inf and n larger than the catalogue included."""
    from strategies.base import top_n

    rng = np.random.default_rng(seed)
    for _ in range(50):
        m, n = int(rng.integers(1, 300)), int(rng.integers(1, 400))
        rows = np.round(rng.normal(size=(2, m)), 1).astype(np.float32)
        rows[0, rng.integers(0, m, int(rng.integers(0, m)))] = -np.inf
        ids1, sc1 = top_n(rows[:1].copy(), n)
        ids2, sc2 = top_n(rows.copy(), n)
        np.testing.assert_array_equal(ids1[0], ids2[0])
        np.testing.assert_array_equal(sc1[0], sc2[0])
        assert ids1.shape == (1, n) and ids1.dtype == np.int64 and sc1.dtype == np.float32


# -- scikit-learn-style checks ---------------------------------------------------------------------
@pytest.mark.parametrize("name", _available())
def test_unknown_parameter_is_a_type_error(name):
    with pytest.raises(TypeError):
        get_strategy_class(name)(no_such_parameter=1)


def _scores(model: Strategy, data: InteractionData) -> np.ndarray:
    return model.score(_batch(data, list(range(0, N_USERS, 3))))


def test_rebuilt_from_get_params_behaves_the_same(trained, data):
    """``cls(**get_params())`` is the same estimator: fitted on the same data it scores alike
    (what sklearn's ``clone`` relies on; the tuner rebuilds strategies this way)."""
    params = trained.get_params()
    rebuilt = type(trained)(**params)
    assert rebuilt.get_params() == params
    rebuilt.fit(data)
    np.testing.assert_allclose(_scores(rebuilt, data), _scores(trained, data), rtol=1e-4, atol=1e-5)


def test_same_seed_same_model_and_fit_does_not_mutate_its_input(trained, data):
    """Two fits with the same parameters (and so the same seed) give the same scores; fitting
    and scoring leave the training data and the request batch as they were."""
    x = data.matrix()
    before = (x.data.copy(), x.indices.copy(), x.indptr.copy())
    model = _make(trained.name)
    model.fit(data)
    after = data.matrix()
    for a, b in zip(before, (after.data, after.indices, after.indptr), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(_scores(model, data), _scores(trained, data), rtol=1e-4, atol=1e-5)


def test_scoring_does_not_mutate_the_request(fitted, data):
    batch = _batch(data, [0, 1, 2, 3])
    snapshot = copy.deepcopy(batch)
    fitted.score(batch)
    fitted.recommend(batch, n=5, exclude=[batch.matrix[0].indices.copy()] + [None] * 3)
    np.testing.assert_array_equal(batch.matrix.toarray(), snapshot.matrix.toarray())
    np.testing.assert_array_equal(batch.user_index, snapshot.user_index)
    for a, b in zip(batch.sequences, snapshot.sequences, strict=True):
        np.testing.assert_array_equal(a, b)


def test_scores_empty_history_is_declared_truthfully(trained):
    """A strategy that says it does not score an empty history (the router then skips it for
    a user without one) gives nothing useful for it; one that says it does gives finite
    scores."""
    empty = UserBatch(
        matrix=sp.csr_matrix((1, N_ITEMS), dtype=np.float32),
        sequences=[np.zeros(0, np.int64)],
        user_index=np.array([-1]),
    )
    scores = trained.score(empty)
    if type(trained).scores_empty_history:
        assert np.isfinite(scores).any()


@pytest.mark.parametrize("name", _available())
def test_capabilities_are_declared_consistently(name):
    """What the runtime reads from the class (``batched``, ``devices``, ``precisions``,
    ``scores_empty_history``) is declared with the right types and backed by the API it
    implies: a device choice is a ``device`` parameter, a serving precision is ``quantized``."""
    cls = get_strategy_class(name)
    assert isinstance(cls.batched, bool) and isinstance(cls.scores_empty_history, bool)
    assert "cpu" in cls.devices and set(cls.devices) <= {"cpu", "cuda"}
    params = _make(name).get_params()
    assert ("device" in params) == ("cuda" in cls.devices)
    for precision in cls.precisions:
        assert callable(getattr(cls, "quantized", None)), precision


def test_precision_variants_score_like_the_fitted_model(trained, data):
    """Each declared serving precision gives (nearly) the fitted model's ranking."""
    cls = type(trained)
    for precision in cls.precisions:
        variant = trained.quantized(precision)
        a, b = _scores(variant, data), _scores(trained, data)
        assert a.shape == b.shape and np.isfinite(a).all()
        top_a, top_b = np.argsort(-a, axis=1)[:, :5], np.argsort(-b, axis=1)[:, :5]
        overlap = np.mean([len(set(x) & set(y)) / 5 for x, y in zip(top_a, top_b, strict=True)])
        assert overlap >= 0.6, (precision, overlap)
