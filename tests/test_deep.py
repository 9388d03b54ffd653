from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from features.interactions import InteractionData
from strategies.base import UserBatch
from strategies.deep import WEIGHTS_FILE, DeepStrategy

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
    assert q.serving_nbytes() < 0.5 * model.serving_nbytes()
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


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_matches_the_textbook_update(fused, weight_decay):
    from strategies.deep import _Adam

    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(5, 3, generator=gen), torch.randn(4, generator=gen)]
    grads = [[torch.randn(t.shape, generator=gen) for t in init] for _ in range(5)]
    params = [torch.nn.Parameter(t.clone()) for t in init]
    opt = _Adam(params, lr=1e-2, weight_decay=weight_decay)
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


def test_max_steps_caps_the_epochs_but_keeps_one():
    data, _ = _group_data(n_users=300)  # 300 users / batch 64 = 5 steps per epoch
    capped = DeepStrategy(**{**FAST, "epochs": 6, "max_steps": 12}, device="cpu").fit(data)
    assert capped.steps_ == 10  # 2 whole epochs fit in 12 steps
    tiny = DeepStrategy(**{**FAST, "epochs": 6, "max_steps": 1}, device="cpu").fit(data)
    assert tiny.steps_ == 5  # at least one pass over every user
    free = DeepStrategy(**{**FAST, "epochs": 3, "max_steps": None}, device="cpu").fit(data)
    assert free.steps_ == 15


def test_fit_uses_every_core_and_restores_the_thread_count(monkeypatch):
    import strategies.deep as deep

    seen = []
    train = deep.DeepStrategy._train

    def spy(self, data):
        seen.append(torch.get_num_threads())
        return train(self, data)

    monkeypatch.setattr(deep.DeepStrategy, "_train", spy)
    monkeypatch.setattr(deep, "_usable_cores", lambda: 2)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as a gunicorn worker limits it
    try:
        data, _ = _group_data(n_users=64)
        DeepStrategy(**{**FAST, "epochs": 1}, device="cpu").fit(data)
        assert seen == [2] and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
