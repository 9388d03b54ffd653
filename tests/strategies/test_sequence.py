"""The ``sequence`` strategy (SASRec-style): order, persistence, int8, batching, HTTP freshness."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from features.interactions import EVENT_CODE, History, InteractionData, user_batch
from strategies._torch import WEIGHTS_FILE
from strategies.base import UserBatch
from strategies.sequence import SequenceStrategy

N_ITEMS = 24
FAST = {"max_len": 8, "dim": 32, "epochs": 30, "batch_size": 64, "lr": 5e-3, "seed": 3}


def _cycle_data(n_users: int = 160, seed: int = 0) -> InteractionData:
    """Every user walks the catalogue in steps of one: item i is followed by item i + 1.

    The same items, in another order, say something else: only a model that reads the order
    can tell what comes next."""
    rng = np.random.default_rng(seed)
    users, items, ts = [], [], []
    for u in range(n_users):
        start, n = int(rng.integers(N_ITEMS)), int(rng.integers(4, 12))
        for k in range(n):
            users.append(f"u{u}")
            items.append(f"i{(start + k) % N_ITEMS}")
            ts.append(1_700_000_000 + 60 * k)
    kinds = np.where(np.arange(len(users)) % 3 == 0, "view", "purchase")
    return InteractionData.from_arrays(
        users,
        items,
        event_types=kinds.tolist(),
        timestamps=ts,
        all_item_ids=[f"i{i}" for i in range(N_ITEMS)],
    )


def _batch(*sequences: list[int], kind: str = "purchase") -> UserBatch:
    """A request-time batch of users whose histories are ``sequences`` (oldest first)."""
    hist = [
        History(
            item_idx=np.asarray(s[::-1], np.int64),
            event_type=np.full(len(s), EVENT_CODE[kind], np.int8),
            value=np.ones(len(s), np.float32),
            ts=np.arange(len(s), dtype=np.int64)[::-1],
        )
        for s in sequences
    ]
    return user_batch(hist, N_ITEMS)


@pytest.fixture(scope="module")
def fitted() -> SequenceStrategy:
    return SequenceStrategy(**FAST, device="cpu").fit(_cycle_data())


def test_learns_what_comes_next(fitted):
    batch = _batch([3, 4, 5], [10, 11], [20, 21, 22, 23])
    ids, _ = fitted.recommend(batch, n=1)
    assert ids[:, 0].tolist() == [6, 12, 0]


def test_order_matters(fitted):
    forward, backward = _batch([3, 4, 5], [5, 4, 3]).sequences
    s = fitted.score(_batch([3, 4, 5], [5, 4, 3]))
    assert not np.allclose(s[0], s[1], atol=1e-3)
    assert int(np.argmax(s[0])) == 6
    # The bag of items is the same: the matrix rows are equal, only the sequences differ.
    b = _batch([3, 4, 5], [5, 4, 3])
    assert (b.matrix[0] != b.matrix[1]).nnz == 0
    assert forward.tolist() == [3, 4, 5] and backward.tolist() == [5, 4, 3]


def test_a_new_event_changes_the_next_answer(fitted):
    before = fitted.score(_batch([3, 4, 5]))
    after = fitted.score(_batch([3, 4, 5, 6]))
    assert int(np.argmax(before)) == 6 and int(np.argmax(after)) == 7


def test_event_types_are_an_input(fitted):
    assert fitted.n_types_ > 0  # views and purchases in the training data
    views = fitted.score(_batch([3, 4, 5], kind="view"))
    purchases = fitted.score(_batch([3, 4, 5], kind="purchase"))
    assert not np.allclose(views, purchases)


def test_scores_do_not_depend_on_the_batch(fitted):
    alone = fitted.score(_batch([3, 4, 5]))
    together = fitted.score(_batch([1, 2], [3, 4, 5], list(range(12))))
    np.testing.assert_allclose(together[1], alone[0], rtol=1e-5, atol=1e-5)


def test_only_the_newest_max_len_events_are_read(fitted):
    long = list(range(20))
    a = fitted.score(_batch(long))
    b = fitted.score(_batch(long[-FAST["max_len"] :]))
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_a_batch_without_sequences_scores_the_matrix_rows(fitted):
    full = _batch([3, 4, 5])
    bare = UserBatch(matrix=full.matrix)
    assert np.isfinite(fitted.score(bare)).all()


def test_save_load_round_trip_is_identical(fitted, tmp_path):
    fitted.save(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["params.json", WEIGHTS_FILE]
    with open(tmp_path / "params.json") as f:
        meta = json.load(f)
    assert meta["name"] == "sequence" and meta["n_items"] == N_ITEMS
    # Tensors only: loadable with weights_only=True (no pickle of code or objects).
    state = torch.load(tmp_path / WEIGHTS_FILE, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    loaded = SequenceStrategy.load(str(tmp_path))
    batch = _batch([3, 4, 5], [9], [])
    np.testing.assert_array_equal(loaded.score(batch), fitted.score(batch))
    assert loaded.get_params() == fitted.get_params()
    ids_a, _ = loaded.similar_items(np.array([2, 7]), n=4)
    ids_b, _ = fitted.similar_items(np.array([2, 7]), n=4)
    np.testing.assert_array_equal(ids_a, ids_b)


def test_int8_is_close_to_fp32_and_batch_independent(fitted, tmp_path):
    q = fitted.quantized("int8")
    assert q.serving_precision_ == "int8" and q.serving_device_.type == "cpu"
    batch = _batch([3, 4, 5], [10, 11], [20, 21, 22, 23], [7])
    fp, i8 = fitted.score(batch), q.score(batch)
    assert np.abs(fp - i8).max() < 0.05 * np.abs(fp).max()
    assert (fp.argmax(1) == i8.argmax(1)).all()
    alone = q.score(_batch([10, 11]))
    np.testing.assert_allclose(i8[1], alone[0], rtol=1e-5, atol=1e-5)
    # The variant derived at load time (the serving path) uses the saved input ranges.
    fitted.save(str(tmp_path))
    loaded = SequenceStrategy.load(str(tmp_path), precision="int8")
    np.testing.assert_allclose(loaded.score(batch), i8, rtol=1e-5, atol=1e-5)


def test_training_is_seeded():
    data = _cycle_data(60)
    params = {**FAST, "epochs": 3, "device": "cpu"}
    a = SequenceStrategy(**params).fit(data)
    b = SequenceStrategy(**params).fit(data)
    batch = _batch([3, 4, 5], [1])
    np.testing.assert_allclose(a.score(batch), b.score(batch), rtol=1e-5, atol=1e-6)


def test_sampled_softmax_learns_too():
    model = SequenceStrategy(**FAST, loss="sampled", n_negatives=8, device="cpu")
    model.fit(_cycle_data())
    assert model.loss_ == "sampled"
    ids, _ = model.recommend(_batch([3, 4, 5], [10, 11]), n=3)
    assert 6 in ids[0] and 12 in ids[1]


def test_budget_in_steps_and_bad_params():
    model = SequenceStrategy(**{**FAST, "max_steps": 2}, device="cpu").fit(_cycle_data(60))
    assert model.epochs_ == 1  # never under one epoch
    with pytest.raises(ValueError, match="precision"):
        SequenceStrategy(precision="int4")
    with pytest.raises(ValueError, match="loss"):
        SequenceStrategy(loss="bpr")
    with pytest.raises(ValueError, match="n_heads"):
        SequenceStrategy(dim=30, n_heads=4)


def test_served_through_the_micro_batcher(fitted):
    """Concurrent single-user calls are merged into one forward pass; each gets its own row."""
    import threading

    from recsys.models.batched_model import BatchedModel

    assert type(fitted).batched  # the runtime micro-batches it
    wrapped = BatchedModel(fitted, max_batch=8, max_delay_ms=50.0)
    histories = [[3, 4, 5], [10, 11], [20, 21, 22], [7, 8]]
    out: dict[int, np.ndarray] = {}
    barrier = threading.Barrier(len(histories))

    def call(k: int) -> None:
        barrier.wait()
        out[k] = wrapped.score(_batch(histories[k]))

    threads = [threading.Thread(target=call, args=(k,)) for k in range(len(histories))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wrapped.close()
    for k, h in enumerate(histories):
        np.testing.assert_allclose(out[k][0], fitted.score(_batch(h))[0], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_matches_cpu(tmp_path):
    model = SequenceStrategy(**FAST, device="cuda").fit(_cycle_data())
    assert model.serving_device_.type == "cuda"
    model.save(str(tmp_path))
    cpu = SequenceStrategy.load(str(tmp_path), device="cpu")
    batch = _batch([3, 4, 5], [10, 11], [])
    np.testing.assert_allclose(cpu.score(batch), model.score(batch), rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_early_stopping_scores_held_out_users_on_the_gpu():
    params = {**FAST, "epochs": 60, "patience": 3, "device": "cuda"}
    model = SequenceStrategy(**params).fit(_cycle_data(400, seed=1))
    assert model.holdout_users_ == 100 and model.serving_device_.type == "cuda"
    assert model.epochs_ - model.best_epoch_ == 3
    assert model.holdout_curve_[model.best_epoch_ - 1] == max(model.holdout_curve_)


@pytest.mark.postgres
@pytest.mark.redis
def test_a_new_event_changes_the_next_http_answer_without_retraining(make_app, redis_url):
    """Through the HTTP API, on real PostgreSQL + Redis: the user's last events come from the
    history read, a new event moves the next answer at once, and a guest session (no user) is
    scored by the same model."""
    from recsys.cli.main import main
    from recsys.models.runtime import get_runtime
    from tests.servicekit import ADMIN_TOKEN

    # A deadline no busy machine reaches: the test is about answers, not latency.
    app = make_app(REDIS_URL=redis_url, ADMIN_TOKEN=ADMIN_TOKEN, DEADLINE_MS=60_000)
    client = app.test_client()
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    train = _cycle_data()
    events = [
        {
            "user_id": str(train.users.ids[u]),
            "item_id": str(train.items.ids[i]),
            "type": ["view", "click", "cart", "purchase"][min(int(t), 3)],
            "timestamp": int(ts),
        }
        for u, i, t, ts in zip(
            train.user_idx, train.item_idx, train.event_type, train.ts, strict=True
        )
    ]
    for start in range(0, len(events), 500):
        r = client.post("/v1/events", json=events[start : start + 500])
        assert r.status_code == 201, r.get_json()
    # Trained by `recsys train`, as an operator would.
    params = [a for k, v in FAST.items() for a in ("--param", f"sequence.{k}={json.dumps(v)}")]
    r = app.test_cli_runner().invoke(main, args=["train", "sequence", *params, "--quiet", "--json"])
    assert r.exit_code == 0, r.output
    (result,) = json.loads(r.output)
    assert result["strategy"] == "sequence" and result["activated"], result
    with app.app_context():
        # Loaded now, as a worker preloads it (not left to the background poll).
        served = get_runtime(app).get("sequence")
        assert served.version == result["version"]
        # Served as trained: the runtime's int8 CPU default is the deep model's only.
        assert app.config["DEEP_CPU_PRECISION"] == "int8"
        assert served.model.serving_precision_ == "fp32"
    route = {"cold_strategies": ["sequence"], "warm_strategies": ["sequence"]}
    r = client.patch("/v1/admin/routing", json=route, headers=auth)
    assert r.status_code == 200, r.get_json()

    def top(user: str) -> str:
        body = client.get(f"/v1/users/{user}/recommendations?n=1&explain=true").get_json()
        assert set(body["model_versions"]) == {"sequence"}, body
        return body["items"][0]["item_id"]

    t = 1_700_100_000  # after every training event (not in the future: that is refused)
    for k, item in enumerate(["i3", "i4", "i5"]):
        ev = {"user_id": "guest-1", "item_id": item, "type": "purchase", "timestamp": t + k}
        assert client.post("/v1/events", json=[ev]).status_code == 201
    assert top("guest-1") == "i6"
    ev = {"user_id": "guest-1", "item_id": "i6", "type": "purchase", "timestamp": t + 10}
    assert client.post("/v1/events", json=[ev]).status_code == 201
    assert top("guest-1") == "i7"  # the cached i6 answer was invalidated and recomputed
    # A guest session (newest first), no user: the same model, the same order sense.
    r = client.post("/v1/recommendations", json={"items": ["i12", "i11", "i10"], "n": 1})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["items"][0]["item_id"] == "i13"


def test_early_stopping_picks_the_epoch_on_held_out_users():
    data = _cycle_data(400, seed=1)
    params = {**FAST, "epochs": 60, "patience": 3, "device": "cpu"}
    model = SequenceStrategy(**params).fit(data)
    assert model.holdout_users_ == 100  # 10 % of 400, within the bounds
    curve = model.holdout_curve_
    assert len(curve) == model.epochs_
    assert curve[model.best_epoch_ - 1] == max(curve)
    # The order is easy to learn: held-out nDCG plateaus, and training stops `patience`
    # epochs after its best instead of running all 60.
    assert model.epochs_ < 60 and model.epochs_ - model.best_epoch_ == 3
    ids, _ = model.recommend(_batch([3, 4, 5], [10, 11]), n=3)
    assert 6 in ids[0] and 12 in ids[1]
    # Off, or too few users to hold out: the epoch budget alone decides.
    off = SequenceStrategy(**{**params, "epochs": 4, "early_stopping": None}).fit(data)
    assert off.holdout_users_ == 0 and off.epochs_ == 4 and off.holdout_curve_ == []
    few = SequenceStrategy(**{**params, "epochs": 4}).fit(_cycle_data(120))
    assert few.holdout_users_ == 0 and few.epochs_ == 4
