from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from features.interactions import InteractionData
from strategies._torch import WEIGHTS_FILE, Adam, pin_row
from strategies.base import UserBatch
from strategies.deep import DeepStrategy, MultDAE, normalise_rows

N_GROUPS, GROUP_SIZE = 10, 20
N_ITEMS = N_GROUPS * GROUP_SIZE
FAST = {"hidden": (64,), "epochs": 10, "batch_size": 64, "lr": 3e-3, "seed": 7}


def _group_data(n_users: int = 300, per_user: int = 8, seed: int = 0):
    """Each user buys ``per_user`` items of one taste group (items g*20 .. g*20+19)."""
    rng = np.random.default_rng(seed)
    users, items, groups = [], [], []
    for u in range(n_users):
        g = int(rng.integers(N_GROUPS))
        groups.append(g)
        for i in rng.choice(GROUP_SIZE, size=per_user, replace=False):
            users.append(str(u))
            items.append(str(g * GROUP_SIZE + int(i)))
    data = InteractionData.from_arrays(
        users, items, "purchase", all_item_ids=[str(i) for i in range(N_ITEMS)]
    )
    return data, np.asarray(groups)


@pytest.fixture(scope="module")
def fitted():
    data, groups = _group_data()
    model = DeepStrategy(**FAST, device="cpu").fit(data)
    return model, data, groups


def _batch(data: InteractionData, rows) -> UserBatch:
    m = data.matrix()[rows]
    return UserBatch(matrix=m, user_index=np.asarray(rows))


def test_learns_the_taste_groups(fitted):
    model, data, groups = fitted
    rows = np.arange(100)
    batch = _batch(data, rows)
    ids, scores = model.recommend(batch, n=10, exclude=[r.indices for r in batch.matrix])
    assert ids.shape == (100, 10) and scores.dtype == np.float32
    in_group = (ids // GROUP_SIZE) == groups[rows][:, None]
    # 12 unseen items of the user's group exist; chance would put 1 in 10 there.
    assert in_group.mean() > 0.8


def test_fresh_history_changes_scores_without_retraining(fitted):
    model, _, _ = fitted
    # A brand-new user (never seen in training) who bought three items of group 3.
    fresh = sp.csr_matrix((np.ones(3, np.float32), ([0, 0, 0], [60, 61, 62])), shape=(1, N_ITEMS))
    ids, _ = model.recommend(UserBatch(matrix=fresh), n=5, exclude=[np.array([60, 61, 62])])
    assert set((ids[0] // GROUP_SIZE).tolist()) == {3}
    other = sp.csr_matrix((np.ones(2, np.float32), ([0, 0], [140, 141])), shape=(1, N_ITEMS))
    ids2, _ = model.recommend(UserBatch(matrix=other), n=5)
    assert set((ids2[0] // GROUP_SIZE).tolist()) == {7}


def test_empty_history_scores_are_finite(fitted):
    model, _, _ = fitted
    s = model.score(UserBatch(matrix=sp.csr_matrix((2, N_ITEMS), dtype=np.float32)))
    assert s.shape == (2, N_ITEMS) and np.isfinite(s).all()


def _random_histories(n_rows: int, seed: int, weighted: bool = False) -> sp.csr_matrix:
    """Random histories, row 1 empty, row 2 every item; weighted: some entries <= 0."""
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_rows, N_ITEMS)) < 0.05).astype(np.float32)
    if weighted:
        dense *= rng.uniform(-0.5, 3.0, dense.shape).astype(np.float32)
    dense[1] = 0.0
    dense[2] = rng.uniform(0.1, 2.0, N_ITEMS) if weighted else 1.0
    m = sp.csr_matrix(dense)
    if weighted:  # explicit zeros and negatives, as a decayed/returned history may hold
        m.data[::7] = 0.0
    return m


def _dense_forward(model: DeepStrategy, matrix: sp.csr_matrix) -> np.ndarray:
    """The reference: the dense normalised input through the fp32 module (the old path)."""
    x = normalise_rows(model._inputs(matrix)).toarray()
    with torch.inference_mode():
        return model.model_(torch.from_numpy(x).to(model.device_)).float().cpu().numpy()


@pytest.mark.parametrize("binary", [True, False])
def test_sparse_rows_are_the_normalised_inputs(binary):
    m = DeepStrategy(binary=binary)
    matrix = _random_histories(40, seed=1, weighted=True)
    ref = normalise_rows(m._inputs(matrix))
    indices, indptr, values = m._serving_rows(matrix)
    np.testing.assert_array_equal(indptr, ref.indptr)
    np.testing.assert_array_equal(indices, ref.indices)
    assert values.dtype == np.float32 and np.diff(indptr)[1] == 0
    if binary:  # 1 / sqrt(count), bit for bit
        np.testing.assert_array_equal(values, ref.data)
    else:  # the squares are summed in float64 here, in float32 there
        np.testing.assert_allclose(values, ref.data, rtol=1e-6)
    # The caller's matrix is left as it was (no clamping in place).
    assert (matrix.data <= 0).any()
    # A CSR with duplicate entries takes normalise_rows itself.
    dup = sp.csr_matrix(
        (np.array([1.0, 2.0, 3.0], np.float32), np.array([4, 4, 9]), np.array([0, 3])),
        shape=(1, N_ITEMS),
    )
    assert not dup.has_canonical_format
    ref = normalise_rows(m._inputs(dup))
    indices, indptr, values = m._serving_rows(dup)
    np.testing.assert_array_equal(values, ref.data)


@pytest.mark.parametrize("weighted", [False, True])
def test_sparse_serving_equals_the_dense_forward(fitted, weighted):
    model, _, _ = fitted
    m = model.quantized("fp32") if not weighted else _with_params(model, binary=False)
    for seed in range(3):
        matrix = _random_histories(33, seed=seed, weighted=weighted)
        got, ref = m.score(UserBatch(matrix=matrix)), _dense_forward(m, matrix)
        assert got.shape == (33, N_ITEMS) and got.dtype == np.float32
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # The empty row scores decoder(tanh(b_1)), as a zero input does in the dense path.
    first = m.model_.encoder[0]
    with torch.inference_mode():
        empty = m.model_.decoder(torch.tanh(first.bias)).numpy()
    np.testing.assert_allclose(got[1], empty, rtol=1e-6, atol=1e-6)
    # Other sparse layouts and index dtypes, and a batch of no users.
    np.testing.assert_allclose(m.score(UserBatch(matrix=matrix.tocoo())), got, rtol=1e-6, atol=1e-6)
    m64 = matrix.copy()
    m64.indices, m64.indptr = m64.indices.astype(np.int64), m64.indptr.astype(np.int64)
    np.testing.assert_allclose(m.score(UserBatch(matrix=m64)), got, rtol=1e-6, atol=1e-6)
    none = m.score(UserBatch(matrix=sp.csr_matrix((0, N_ITEMS), dtype=np.float32)))
    assert none.shape == (0, N_ITEMS)
    with pytest.raises(ValueError, match="items"):
        m.score(UserBatch(matrix=sp.csr_matrix((1, N_ITEMS + 1), dtype=np.float32)))


def _with_params(model: DeepStrategy, **params) -> DeepStrategy:
    """The fitted weights of ``model`` under other (serving) parameters."""
    other = DeepStrategy(**{**model.get_params(), **params})
    other.device_, other.n_items_, other.model_ = model.device_, model.n_items_, model.model_
    other._prepare_serving()
    return other


def test_int8_serving_equals_the_dense_forward_within_quantization_error(fitted):
    model, _, _ = fitted
    q = model.quantized("int8")
    matrix = _random_histories(33, seed=5)
    got = q.score(UserBatch(matrix=matrix))
    # Exactly the dense first layer (fp32), then the same int8 decoder with its input range
    # pinned to [-1, 1] (one extra row): float tolerance.
    x = torch.from_numpy(normalise_rows(q._inputs(matrix)).toarray())
    with torch.inference_mode():
        h = torch.tanh(model.model_.encoder[0](x))
        ref = q.serving_.decoder(torch.cat([h, pin_row(h.shape[1])]))[:-1].numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # Against the fp32 dense forward: within int8 quantization error of the decoder.
    fp32 = _dense_forward(model, matrix)
    scale = np.abs(fp32).max()
    assert np.abs(got - fp32).max() < 0.02 * scale
    corr = [np.corrcoef(a, b)[0, 1] for a, b in zip(got, fp32, strict=True)]
    assert min(corr) > 0.999


@pytest.mark.parametrize("hidden", [(64,), (32, 16)])
def test_int8_scores_of_a_user_do_not_depend_on_the_batch(fitted, hidden):
    """Dynamic int8 layers quantize with the batch's range; the serving module pins it to
    tanh's [-1, 1], so a user scored alone, in a batch or in offline evaluation gets the same
    scores to the bit (requests scored together in one turn rely on it)."""
    model = fitted[0]
    if hidden != FAST["hidden"]:
        data, _ = _group_data(n_users=120)
        model = DeepStrategy(**{**FAST, "hidden": hidden, "epochs": 2}, device="cpu").fit(data)
    q = model.quantized("int8")
    matrix = _random_histories(12, seed=11)
    together = q.score(UserBatch(matrix=matrix))
    alone = np.vstack([q.score(UserBatch(matrix=matrix[[i]])) for i in range(12)])
    np.testing.assert_array_equal(together, alone)
    # Without the pin, the same batch gives other numbers for some users (what it fixes).
    q.serving_.pin_range = False
    unpinned = np.vstack([q.score(UserBatch(matrix=matrix[[i]])) for i in range(12)])
    assert not np.array_equal(q.score(UserBatch(matrix=matrix)), unpinned)


def test_deeper_encoders_serve_sparsely_too():
    data, _ = _group_data(n_users=120)
    model = DeepStrategy(**{**FAST, "hidden": (32, 16), "epochs": 2}, device="cpu").fit(data)
    matrix = _random_histories(20, seed=9)
    dense = _dense_forward(model, matrix)
    np.testing.assert_allclose(model.score(UserBatch(matrix=matrix)), dense, rtol=1e-5, atol=1e-5)
    q = model.quantized("int8")
    # Every Linear after the embedding bag is quantized, the deeper encoder layer included.
    kinds = {type(m).__module__ for m in (q.serving_.encoder[0], q.serving_.decoder)}
    assert all("quantized" in k for k in kinds), kinds
    # Within int8 quantization error of the input range pinned to tanh's [-1, 1]: coarser for
    # this two-epoch toy model, whose activations stay small, than for a trained one (ml-100k
    # nDCG@10: fp32 0.4781, int8 0.4785; bench/deep_bench.py --part accuracy).
    assert np.abs(q.score(UserBatch(matrix=matrix)) - dense).max() < 0.05 * np.abs(dense).max()


def test_serving_shares_the_first_layer_with_the_model(fitted, tmp_path):
    model, data, _ = fitted
    first = model.model_.encoder[0]
    table = model.serving_.table
    assert table.shape == (N_ITEMS, first.out_features) and table.is_contiguous()
    # One copy of W_1: the Linear layer reads the table through a transposed view, and the
    # fp32 serving path holds nothing the model does not (its state_dict is the model's).
    assert first.weight.data_ptr() == table.data_ptr()
    assert model.quantized("int8").serving_.table.data_ptr() == table.data_ptr()
    assert model.serving_.decoder is model.model_.decoder
    n_params = sum(p.numel() for p in model.model_.parameters())
    assert 4 * n_params < model.serving_nbytes() < 4 * n_params + 10_000
    # The file on disk is the plain fp32 state_dict, as before: a MultDAE loads it, and a file
    # written from contiguous weights (older models) loads into the sparse serving path.
    model.save(str(tmp_path))
    state = torch.load(tmp_path / WEIGHTS_FILE, weights_only=True)
    assert state["encoder.0.weight"].shape == (first.out_features, N_ITEMS)
    plain = MultDAE(N_ITEMS, model.hidden)
    plain.load_state_dict(state)
    b = _batch(data, np.arange(20))
    torch.save({k: v.contiguous() for k, v in state.items()}, tmp_path / WEIGHTS_FILE)
    old = DeepStrategy.load(str(tmp_path), device="cpu")
    np.testing.assert_array_equal(old.score(b), model.score(b))
    np.testing.assert_allclose(old.score(b), _dense_forward(model, b.matrix), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_recommend_excludes_and_filters_on_the_sparse_path(fitted, precision):
    model, data, _ = fitted
    m = model.quantized(precision)
    b = _batch(data, np.arange(30))
    exclude = [r.indices for r in b.matrix]
    candidates = np.arange(0, N_ITEMS, 3)
    ids, scores = m.recommend(b, n=15, exclude=exclude, candidates=candidates)
    assert ids.shape == (30, 15) and (ids >= 0).all()
    for row, ex in zip(ids, exclude, strict=True):
        assert not np.isin(row, ex).any() and np.isin(row, candidates).all()
        assert len(set(row.tolist())) == 15
    assert (np.diff(scores, axis=1) <= 0).all()
    # The same top items as the dense forward's scores with the same masks (fp32).
    if precision == "fp32":
        dense = _dense_forward(m, b.matrix)
        mask = np.ones(N_ITEMS, bool)
        mask[candidates] = False
        dense[:, mask] = -np.inf
        for r, ex in enumerate(exclude):
            dense[r, ex] = -np.inf
        top = np.argsort(-dense, axis=1, kind="stable")[:, :15]
        np.testing.assert_array_equal(np.sort(ids, axis=1), np.sort(top, axis=1))
    # Fewer allowed items than asked for: padding, never an excluded item.
    one = _batch(data, [0])
    ids, scores = m.recommend(one, n=5, exclude=[np.array([7])], candidates=np.array([3, 7, 11]))
    assert ids[0].tolist()[2:] == [-1, -1, -1] and set(ids[0, :2].tolist()) == {3, 11}
    assert np.isneginf(scores[0, 2:]).all() and np.isfinite(scores[0, :2]).all()


def test_similar_items_come_from_the_same_group(fitted):
    model, _, _ = fitted
    q = np.array([0, 45, 199])
    ids, scores = model.similar_items(q, n=5)
    assert ids.shape == (3, 5)
    assert not (ids == q[:, None]).any()
    assert ((ids // GROUP_SIZE) == (q // GROUP_SIZE)[:, None]).mean() > 0.8


def test_save_load_round_trip_gives_equal_scores(fitted, tmp_path):
    model, data, _ = fitted
    model.save(str(tmp_path))
    # Tensors only: a weights_only load must accept the file.
    state = torch.load(tmp_path / WEIGHTS_FILE, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    meta = json.loads((tmp_path / "params.json").read_text())
    assert meta["name"] == "deep" and meta["n_items"] == N_ITEMS
    loaded = DeepStrategy.load(str(tmp_path), device="cpu")
    b = _batch(data, np.arange(50))
    np.testing.assert_array_equal(model.score(b), loaded.score(b))
    np.testing.assert_array_equal(
        model.similar_items(np.arange(5))[0], loaded.similar_items(np.arange(5))[0]
    )


def test_int8_variant_is_smaller_and_ranks_like_fp32(fitted, tmp_path):
    model, data, _ = fitted
    q = model.quantized("int8")
    assert q.serving_precision_ == "int8" and q.serving_device_.type == "cpu"
    # The first layer stays the fp32 embedding-bag table (a gather); the decoder is int8:
    # its weights shrink from 4 to 1 byte each.
    decoder_fp32 = 4 * model.model_.decoder.weight.numel()
    table_fp32 = 4 * model.model_.encoder[0].weight.numel()
    assert table_fp32 < q.serving_nbytes() < model.serving_nbytes() - 0.7 * decoder_fp32
    b = _batch(data, np.arange(100))
    ex = [r.indices for r in b.matrix]
    top32, _ = model.recommend(b, n=10, exclude=ex)
    top8, _ = q.recommend(b, n=10, exclude=ex)
    overlap = np.mean([len(set(a) & set(c)) / 10 for a, c in zip(top32, top8, strict=True)])
    assert overlap >= 0.8
    # The precision can also be chosen at load time (fp32 weights on disk, quantized on load).
    model.save(str(tmp_path))
    loaded = DeepStrategy.load(str(tmp_path), precision="int8", device="cpu")
    np.testing.assert_allclose(loaded.score(b), q.score(b), rtol=1e-5, atol=1e-5)


def test_fp16_without_cuda_falls_back_to_fp32(fitted):
    model, data, _ = fitted
    if torch.cuda.is_available():
        pytest.skip("CUDA present: fp16 is real here (see the CUDA test)")
    q = model.quantized("fp16")
    assert q.serving_precision_ == "fp32"
    b = _batch(data, np.arange(10))
    np.testing.assert_array_equal(q.score(b), model.score(b))


def test_bad_precision_is_a_clear_error():
    with pytest.raises(ValueError, match="precision"):
        DeepStrategy(precision="int4")


def test_training_is_seeded():
    data, _ = _group_data(n_users=120)
    a = DeepStrategy(**{**FAST, "epochs": 3}, device="cpu").fit(data)
    b = DeepStrategy(**{**FAST, "epochs": 3}, device="cpu").fit(data)
    batch = _batch(data, np.arange(20))
    np.testing.assert_allclose(a.score(batch), b.score(batch), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_matches_cpu(tmp_path):
    data, groups = _group_data()
    model = DeepStrategy(**FAST, device="auto").fit(data)
    assert model.device_.type == "cuda"
    rows = np.arange(100)
    b = _batch(data, rows)
    ids, _ = model.recommend(b, n=10, exclude=[r.indices for r in b.matrix])
    assert ((ids // GROUP_SIZE) == groups[rows][:, None]).mean() > 0.8
    model.save(str(tmp_path))
    cpu = DeepStrategy.load(str(tmp_path), device="cpu")
    np.testing.assert_allclose(cpu.score(b), model.score(b), rtol=1e-3, atol=1e-3)
    half = model.quantized("fp16")
    assert half.serving_precision_ == "fp16"
    top16, _ = half.recommend(b, n=10, exclude=[r.indices for r in b.matrix])
    overlap = np.mean([len(set(a) & set(c)) / 10 for a, c in zip(ids, top16, strict=True)])
    assert overlap >= 0.8
    # The sparse (embedding-bag) path on the GPU, fp32 and fp16, against the dense forward.
    matrix = _random_histories(33, seed=3)
    dense = _dense_forward(model, matrix)
    assert model.serving_.table.device.type == "cuda"
    np.testing.assert_allclose(model.score(UserBatch(matrix=matrix)), dense, rtol=1e-4, atol=1e-4)
    assert half.serving_.table.dtype == torch.float16
    np.testing.assert_allclose(half.score(UserBatch(matrix=matrix)), dense, rtol=2e-2, atol=2e-2)
    q = model.quantized("int8")  # CPU kernels, from the CUDA model's weights
    assert q.serving_device_.type == "cpu" and q.serving_.table.device.type == "cpu"
    # Within int8 quantization error of the input range pinned to tanh's [-1, 1]: coarser for
    # this two-epoch toy model, whose activations stay small, than for a trained one (ml-100k
    # nDCG@10: fp32 0.4781, int8 0.4785; bench/deep_bench.py --part accuracy).
    assert np.abs(q.score(UserBatch(matrix=matrix)) - dense).max() < 0.05 * np.abs(dense).max()


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_matches_the_textbook_update(fused, weight_decay):
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(5, 3, generator=gen), torch.randn(4, generator=gen)]
    grads = [[torch.randn(t.shape, generator=gen) for t in init] for _ in range(5)]
    params = [torch.nn.Parameter(t.clone()) for t in init]
    opt = Adam(params, lr=1e-2, weight_decay=weight_decay)
    opt.fused = opt.fused and fused  # False exercises the torch._foreach_* fallback
    ref = [t.clone() for t in init]
    m = [torch.zeros_like(t) for t in init]
    v = [torch.zeros_like(t) for t in init]
    for t, gs in enumerate(grads, 1):
        for p, g in zip(params, gs, strict=True):
            p.grad = g.clone()
        opt.step()
        for r, g, mm, vv in zip(ref, gs, m, v, strict=True):
            g = g + weight_decay * r
            mm.mul_(0.9).add_(0.1 * g)
            vv.mul_(0.999).add_(0.001 * g * g)
            r -= 1e-2 * (mm / (1 - 0.9**t)) / ((vv / (1 - 0.999**t)).sqrt() + 1e-8)
    for p, r in zip(params, ref, strict=True):
        torch.testing.assert_close(p.detach(), r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_on_a_row_sparse_gradient_updates_only_those_rows(weight_decay):
    """The sampled loss's items-wide tensors get row-sparse gradients: Adam then updates the
    rows a step touched, exactly as the dense update would on them (textbook Adam), with
    their own moments, and leaves every other row (and its moments) alone."""
    from torch.nn import functional as F

    gen = torch.Generator().manual_seed(1)
    init = torch.randn(10, 4, generator=gen)
    sparse_p = torch.nn.Parameter(init.clone())
    opt = Adam([sparse_p], lr=1e-2, weight_decay=weight_decay)
    ref, m, v = init.clone(), torch.zeros_like(init), torch.zeros_like(init)
    steps = [torch.tensor([1, 3, 3]), torch.tensor([3, 7]), torch.tensor([0, 1])]
    for t, rows in enumerate(steps, 1):
        w = torch.randn(len(rows), 4, generator=gen)
        (F.embedding(rows, sparse_p, sparse=True) * w).sum().backward()
        assert sparse_p.grad.is_sparse
        opt.step()
        opt.zero_grad()
        g = torch.zeros_like(init).index_add_(0, rows, w)  # the dense gradient (repeats summed)
        for r in rows.unique():
            gr = g[r] + weight_decay * ref[r]
            m[r] = 0.9 * m[r] + 0.1 * gr
            v[r] = 0.999 * v[r] + 0.001 * gr * gr
            ref[r] -= 1e-2 * (m[r] / (1 - 0.9**t)) / ((v[r] / (1 - 0.999**t)).sqrt() + 1e-8)
    torch.testing.assert_close(sparse_p.detach(), ref, rtol=1e-5, atol=1e-6)
    untouched = [2, 4, 5, 6, 8, 9]
    assert torch.equal(sparse_p.detach()[untouched], init[untouched])
    assert not opt.m[0][untouched].any() and not opt.v[0][untouched].any()


def test_one_epoch_over_max_steps_is_cut_to_max_epoch_steps():
    data, _ = _group_data(n_users=300)  # 5 steps per epoch of batch 64
    cut = DeepStrategy(**{**FAST, "epochs": 6, "max_steps": 1, "max_epoch_steps": 3}, device="cpu")
    assert cut.fit(data).steps_ == 3  # a random 3 batches of the users
    whole = DeepStrategy(
        **{**FAST, "epochs": 6, "max_steps": 1, "max_epoch_steps": None}, device="cpu"
    )
    assert whole.fit(data).steps_ == 5
    # never under max_steps, and whole epochs as before when they fit in max_steps
    assert DeepStrategy(max_steps=4, max_epoch_steps=2, batch_size=64)._step_limit(5) == 4
    assert DeepStrategy(epochs=6, max_steps=12, max_epoch_steps=3)._step_limit(5) == 10


def test_max_steps_caps_the_epochs_but_keeps_one():
    data, _ = _group_data(n_users=300)  # 300 users / batch 64 = 5 steps per epoch
    capped = DeepStrategy(**{**FAST, "epochs": 6, "max_steps": 12}, device="cpu").fit(data)
    assert capped.steps_ == 10  # 2 whole epochs fit in 12 steps
    tiny = DeepStrategy(**{**FAST, "epochs": 6, "max_steps": 1}, device="cpu").fit(data)
    assert tiny.steps_ == 5  # at least one pass over every user
    free = DeepStrategy(**{**FAST, "epochs": 3, "max_steps": None}, device="cpu").fit(data)
    assert free.steps_ == 15


def test_fit_uses_every_core_and_restores_the_thread_count(monkeypatch):
    import strategies._torch as torch_common
    import strategies.deep as deep

    seen = []
    train = deep.DeepStrategy._train

    def spy(self, data):
        seen.append(torch.get_num_threads())
        return train(self, data)

    monkeypatch.setattr(deep.DeepStrategy, "_train", spy)
    monkeypatch.setattr(torch_common, "usable_cores", lambda: 2)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as a gunicorn worker limits it
    try:
        data, _ = _group_data(n_users=64)
        DeepStrategy(**{**FAST, "epochs": 1}, device="cpu").fit(data)
        assert seen == [2] and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_sampled_softmax_drawing_every_item_is_the_full_softmax():
    """With negatives drawn so many times that every item is in (and each one's chance of being
    drawn is 1), the sampled loss is the full multinomial loss of the same batch."""
    import torch
    from torch.nn import functional as F

    n_items, b, h = 25, 6, 8
    gen = torch.Generator().manual_seed(0)
    decoder = torch.nn.Linear(h, n_items)
    hidden = torch.randn(b, h, generator=gen)
    row_of = torch.repeat_interleave(torch.arange(b), torch.tensor([2, 3, 1, 4, 2, 3]))
    ind = torch.randint(0, n_items, (len(row_of),), generator=gen)
    target = torch.rand(len(row_of), generator=gen)
    model = DeepStrategy(loss="sampled", n_negatives=5000)
    model.n_items_ = n_items
    sampled = model._sampled_loss(decoder, hidden, ind, target, row_of, gen)
    logp = F.log_softmax(decoder(hidden), dim=1)
    full = -(logp[row_of, ind] * target).sum() / b
    assert sampled.item() == pytest.approx(full.item(), rel=1e-5)


def test_sampled_softmax_is_chosen_past_the_threshold_and_fits():
    import strategies.deep as deep_module

    assert not DeepStrategy()._sampled(deep_module.FULL_SOFTMAX_MAX_ITEMS)
    assert DeepStrategy()._sampled(deep_module.FULL_SOFTMAX_MAX_ITEMS + 1)
    assert not DeepStrategy(loss="softmax")._sampled(10**6)
    with pytest.raises(ValueError, match="loss must be one of"):
        DeepStrategy(loss="nce")
    data, groups = _group_data()
    model = DeepStrategy(**FAST, device="cpu", loss="sampled", n_negatives=32).fit(data)
    assert model.loss_ == "sampled"
    batch = _batch(data, np.arange(100))
    ids, _ = model.recommend(batch, n=10, exclude=[r.indices for r in batch.matrix])
    assert ((ids // GROUP_SIZE) == groups[:100][:, None]).mean() > 0.8
