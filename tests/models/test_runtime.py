"""The multi-model runtime on the real PostgreSQL store and model repository.

Models are small real strategies (tests/runtime_support.py) saved through the repository, so
checksums, manifests and activation history are the production code paths.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from features.interactions import History, user_batch
from recsys.errors import ModelError
from recsys.models.batched_model import BatchedModel
from recsys.models.repository import get_repository
from recsys.models.runtime import get_runtime
from recsys.store.db import session_scope
from recsys.store.models import StrategySetting
from tests import runtime_support as rs
from tests.clocks import ManualClock
from tests.waiting import wait_until

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def make(make_app):
    def _make(**config):
        config.setdefault("ADMIN_TOKEN", TOKEN)
        config.setdefault("CONFIG_POLL_SECONDS", 0.05)
        app = make_app(**config)
        get_repository(app).resolver = rs.resolver
        return app

    return _make


def save(app, name="tiny", version=None, activate=False, **params) -> str:
    return get_repository(app).save_version(
        rs.fit(name, **params), rs.sample_data(), version=version, activate=activate
    )


def corrupt(app, name: str, version: str) -> None:
    path = get_repository(app).get_version(name, version)["path"]
    with open(os.path.join(path, "arrays.npz"), "r+b") as f:
        f.seek(-5, os.SEEK_END)
        byte = f.read(1)
        f.seek(-5, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_lazy_load_on_first_use(make):
    app = make()
    save(app, version="v1", activate=True)
    rt = get_runtime(app)
    assert rt.active_versions() == {}  # nothing loaded until asked
    lm = rt.get("tiny")
    assert lm is not None and lm.version == "v1" and lm.nbytes > 0
    assert rt.active_versions() == {"tiny": "v1"}
    assert rt.get("tiny") is lm  # cached, not reloaded
    assert rt.get("no_such_strategy") is None


def test_preload_warms_before_ready(make):
    app = make(PRELOAD_MODELS=True)
    # Scoring waits for the test: the warm-up is still running when /readyz is asked.
    rs.SCORE_GATE.clear()
    save(app, version="v1", activate=True, gated=True)
    save(app, name="tiny_b", version="v1", activate=True)
    with session_scope(app) as s:
        s.add(StrategySetting(name="tiny_b", load_mode="lazy"))
    client = app.test_client()
    r = client.get("/readyz")
    assert r.status_code == 503
    body = r.get_json()
    assert body["status"] == "loading"
    # A lazy model is not loaded, but it is awaited until its files verify (after "tiny").
    assert [p["strategy"] for p in body["pending"]] == ["tiny", "tiny_b"]
    rs.SCORE_GATE.set()
    wait_until(lambda: client.get("/readyz").status_code == 200, "/readyz ready after warm-up")
    r = client.get("/readyz")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["models"] == {"tiny": "v1"}
    status = {row["strategy"]: row for row in get_runtime(app).status()}
    assert status["tiny"]["warmed"] and status["tiny"]["state"] == "loaded"
    assert status["tiny_b"]["state"] == "not_loaded" and status["tiny_b"]["load_mode"] == "lazy"


def test_readyz_reports_a_broken_preload_model(make):
    app = make(PRELOAD_MODELS=True)
    save(app, version="v1", activate=True)
    corrupt(app, "tiny", "v1")
    rt = get_runtime(app)
    assert rt.preload() == ["tiny"]
    r = app.test_client().get("/readyz")
    assert r.status_code == 503
    # The model is named to anyone; why it failed (paths, checksums) only to an admin.
    assert r.get_json()["pending"] == [{"strategy": "tiny", "version": "v1"}]
    r = app.test_client().get("/readyz", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 503
    (pending,) = r.get_json()["pending"]
    assert pending["strategy"] == "tiny" and "checksum" in pending["error"]


def test_an_unloaded_corrupt_version_still_holds_readyz(make):
    # Issue 30 (5h): an admin unload switches the strategy to lazy loading; readiness still
    # checks every active version, so a corrupt one keeps /readyz at 503.
    app = make(PRELOAD_MODELS=True)
    save(app, version="v1", activate=True)
    save(app, name="tiny_b", version="v1", activate=True)
    corrupt(app, "tiny", "v1")
    assert get_runtime(app).preload() == ["tiny"]
    client = app.test_client()
    assert client.get("/readyz").status_code == 503
    r = client.post("/v1/admin/models/tiny/unload", headers=AUTH)
    assert r.status_code == 200 and r.get_json()["load_mode"] == "lazy", r.get_json()
    r = client.get("/readyz", headers=AUTH)
    assert r.status_code == 503, r.get_json()
    (pending,) = r.get_json()["pending"]
    assert pending["strategy"] == "tiny" and "checksum" in pending["error"]

    # A process that never held it (another worker, a restart) verifies the lazy version's
    # files and refuses too; a healthy lazy version does not hold readiness.
    other = make(PRELOAD_MODELS=True).test_client()

    def reason():
        body = other.get("/readyz", headers=AUTH).get_json()
        return [(p["strategy"], "error" in p) for p in body["pending"]]

    wait_until(lambda: reason() == [("tiny", True)], "the corrupt lazy version refused")
    assert other.get("/readyz").status_code == 503
    r = client.post("/v1/admin/models/tiny_b/unload", headers=AUTH)
    assert r.status_code == 200
    third = make(PRELOAD_MODELS=True).test_client()
    wait_until(
        lambda: [p["strategy"] for p in third.get("/readyz").get_json()["pending"]] == ["tiny"],
        "the healthy lazy version verified",
    )


def test_lru_eviction_under_a_tiny_budget(make):
    app = make()
    for name in ("tiny_a", "tiny_b", "tiny_c"):
        save(app, name=name, version="v1", activate=True, pad_items=10_000)
    rt = get_runtime(app)
    rt.clock = clock = ManualClock()
    one = rt.get("tiny_a").nbytes
    rt.budget_bytes = int(one * 2.5)  # room for two models
    clock.advance(1)
    rt.get("tiny_b")
    assert set(rt.active_versions()) == {"tiny_a", "tiny_b"}
    clock.advance(1)
    rt.get("tiny_a")  # a is now the most recently used
    clock.advance(1)
    rt.get("tiny_c")
    assert set(rt.active_versions()) == {"tiny_a", "tiny_c"}  # b was the idle one
    states = {row["strategy"]: row["state"] for row in rt.status()}
    assert states["tiny_b"] == "evicted"
    assert rt.get("tiny_b") is not None  # reloads on use, evicting the LRU (a)
    assert set(rt.active_versions()) == {"tiny_b", "tiny_c"}


def test_hot_swap_with_corrupt_version_keeps_old(make):
    app = make()
    save(app, version="v1", activate=True)
    save(app, version="v2")
    corrupt(app, "tiny", "v2")
    rt = get_runtime(app)
    old = rt.get("tiny")
    client = app.test_client()
    r = client.post("/v1/admin/models/tiny/activate", json={"version": "v2"}, headers=AUTH)
    assert r.status_code == 409
    body = r.get_json()
    assert body["name"] == "Model Error" and "checksum" in body["description"]
    assert rt.get("tiny") is old  # old keeps serving
    assert get_repository(app).active_versions()["tiny"] == "v1"  # SQL untouched
    # A good version swaps in; a request that held the old model can still use it.
    save(app, version="v3")
    r = client.post("/v1/admin/models/tiny/activate", json={"version": "v3"}, headers=AUTH)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["previous_version"] == "v1"
    assert rt.get("tiny").version == "v3"
    assert get_repository(app).active_versions()["tiny"] == "v3"
    batch = user_batch([_history([0, 1])], len(old.items))
    assert old.model.recommend(batch, n=3)[0].shape == (1, 3)
    # Unknown version: 404 JSON, nothing changes.
    r = client.post("/v1/admin/models/tiny/activate", json={"version": "v9"}, headers=AUTH)
    assert r.status_code == 404 and rt.get("tiny").version == "v3"
    # Bad input: 4xx JSON.
    r = client.post("/v1/admin/models/tiny/activate", json={"ver": "v3"}, headers=AUTH)
    assert 400 <= r.status_code < 500 and r.get_json()["code"] == r.status_code


def test_rollback_loads_previous_first(make):
    app = make()
    save(app, version="v1", activate=True)
    save(app, version="v2")
    rt = get_runtime(app)
    rt.activate("tiny", "v2", actor="test")
    assert rt.get("tiny").version == "v2"
    client = app.test_client()
    r = client.post("/v1/admin/models/tiny/rollback", headers=AUTH)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["version"] == "v1" and rt.get("tiny").version == "v1"
    r = client.post("/v1/admin/models/tiny/rollback", headers=AUTH)
    assert r.status_code == 409  # nothing before v1
    # A rollback onto a corrupt version fails and keeps the current one.
    rt.activate("tiny", "v2", actor="test")
    corrupt(app, "tiny", "v1")
    with pytest.raises(ModelError):
        rt.rollback("tiny")
    assert rt.get("tiny").version == "v2"
    assert get_repository(app).active_versions()["tiny"] == "v2"


def test_other_process_notices_activation(make):
    a, b = make(), make()
    save(a, version="v1", activate=True)
    save(a, version="v2")
    rt_a, rt_b = get_runtime(a), get_runtime(b)
    assert rt_b.get("tiny").version == "v1"
    rt_a.activate("tiny", "v2")
    # b polls at most every CONFIG_POLL_SECONDS and swaps in the background.
    wait_until(lambda: rt_b.get("tiny").version == "v2", "b swapping to v2")


def test_load_and_unload_endpoints(make):
    app = make()
    save(app, version="v1", activate=True)
    client = app.test_client()
    r = client.post("/v1/admin/models/tiny/load", json={}, headers=AUTH)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["state"] == "loaded" and r.get_json()["load_mode"] == "preload"
    r = client.post("/v1/admin/models/tiny/unload", headers=AUTH)
    assert r.status_code == 200
    assert r.get_json()["state"] == "not_loaded" and r.get_json()["load_mode"] == "lazy"
    assert "tiny" not in get_runtime(app).active_versions()
    r = client.post("/v1/admin/models/nope/load", json={}, headers=AUTH)
    assert r.status_code == 404
    r = client.post("/v1/admin/models/tiny/load", json={"version": "v0"}, headers=AUTH)
    assert r.status_code == 409
    listing = client.get("/v1/admin/models", headers=AUTH).get_json()
    assert [v["version"] for v in listing["versions"]] == ["v1"]
    assert listing["runtime"][0]["strategy"] == "tiny"


def test_admin_models_auth(make):
    app = make()
    client = app.test_client()
    assert client.get("/v1/admin/models").status_code == 401
    bad = {"Authorization": "Bearer wrong"}
    assert client.post("/v1/admin/models/tiny/rollback", headers=bad).status_code == 401
    off = make(ADMIN_TOKEN=None).test_client()
    r = off.get("/v1/admin/models", headers=AUTH)
    assert r.status_code == 403 and r.get_json()["code"] == 403


def _history(items) -> History:
    k = len(items)
    return History(
        item_idx=np.asarray(items),
        event_type=np.full(k, 3, np.int8),
        value=np.ones(k, np.float32),
        ts=np.zeros(k, np.int64),
    )


def test_batched_model_shares_forward_passes():
    inner = rs.fit("tiny", delay_s=0.01)
    wrapped = BatchedModel(inner, max_batch=16, max_delay_ms=5)
    n_items = len(inner.counts_)
    batches = [user_batch([_history([i % n_items])], n_items) for i in range(32)]
    out: dict[int, np.ndarray] = {}

    def call(i):
        out[i] = wrapped.score(batches[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(32):
        np.testing.assert_allclose(out[i], inner.score(batches[i]))
    stats = wrapped.batcher_stats()
    assert stats["requests"] == 32 and stats["batches"] < 32  # some calls shared a pass
    wrapped.close()
    # Closed (swapped out): still answers, unbatched.
    np.testing.assert_allclose(wrapped.score(batches[0]), inner.score(batches[0]))


# -- deadlines and priorities ---------------------------------------------------------------------
def test_run_with_deadline_drops_the_slow_task():
    from recsys.core import runners

    release = threading.Event()  # the slow task finishes only after the call returned

    def misses() -> float:
        from prometheus_client import REGISTRY

        value = REGISTRY.get_sample_value("recsys_deadline_misses_total", {"strategy": "slowpoke"})
        return value or 0.0

    before = misses()
    try:
        results, missed = runners.run_with_deadline(
            {"fast": lambda: 1, "slowpoke": lambda: release.wait(30) and 2, "boom": lambda: 1 / 0},
            deadline_s=1.0,
        )
    finally:
        release.set()
    assert results == {"fast": 1}
    assert missed == ["slowpoke", "boom"]
    assert misses() == before + 1
    # No deadline (offline evaluation): everything finishes.
    results, missed = runners.run_with_deadline({"a": lambda: 3, "b": lambda: 4}, None)
    assert results == {"a": 3, "b": 4} and missed == []


def test_deadline_miss_makes_the_response_degraded():
    from recsys.core import runners
    from recsys.core.config import ServingConfig
    from recsys.core.recommender import Recommender
    from recsys.core.types import RecRequest, UserHistory
    from recsys.models.repository import LoadedModel

    data = rs.sample_data()

    def loaded(name, **params):
        model = rs.TinyPop(**params).fit(data)
        return LoadedModel(name, "v1", model, data.items, data.users, {}, "", 0)

    models = {"popular": loaded("popular"), "ease": loaded("ease", delay_s=0.5)}
    config = ServingConfig.from_dict(
        {"routing": {"cold_threshold": 1, "warm_strategies": ["ease", "popular"]}}
    )
    rec = Recommender(models.get, config, runner=runners.run_with_deadline)
    history = UserHistory.from_items("u1", ["i1", "i2"], type="click")
    # The slow strategy (0.5 s) is dropped, whatever the machine's load did to the fast one.
    res = rec.recommend(history, RecRequest(n=5, deadline_s=0.25))
    assert res.route == "warm" and res.degraded and "ease" in res.dropped
    assert "ease" not in res.model_versions
    res = rec.recommend(history, RecRequest(n=5, deadline_s=30.0))
    assert not res.degraded and set(res.model_versions) == {"ease", "popular"}


def test_admission_sheds_low_priority_under_overload():
    from recsys.errors import RecsysError
    from recsys.serving import admission

    normal = admission.admission("", base_deadline_ms=200, overload_in_flight=2)
    assert normal == admission.Admission("normal", 0.2, False)
    assert admission.admission("high", 200, 2).deadline_s == pytest.approx(0.4)
    for _ in range(3):
        admission.request_started()
    try:
        assert admission.admission("low", 200, 2).shed
        assert not admission.admission("normal", 200, 2).shed
        assert not admission.admission("low", 200, 5).shed
    finally:
        for _ in range(3):
            admission.request_finished()
    assert not admission.admission("LOW", 200, 2).shed
    with pytest.raises(RecsysError):
        admission.parse_priority("urgent")


def test_batched_strategies_are_served_through_the_batcher(make, monkeypatch):
    # A strategy that declares the capability (as deep and sequence do) is micro-batched.
    monkeypatch.setattr(rs.TinyPop, "batched", True)
    app = make()
    save(app, version="v1", activate=True)
    rt = get_runtime(app)
    lm = rt.get("tiny")
    assert isinstance(lm.model, BatchedModel) and lm.model.name == "tiny"
    ids, _ = lm.model.recommend(user_batch([_history([1, 2])], len(lm.items)), n=4)
    assert ids.shape == (1, 4)
    assert lm.model.batcher_stats()["requests"] >= 1
    assert {row["strategy"]: row["batched"] for row in rt.status()} == {"tiny": True}


def test_stack_csr_equals_scipy_vstack():
    import scipy.sparse as sp

    from recsys.models.batched_model import stack_csr

    mats = [
        sp.random(1, 50, density=0.1, format="csr", dtype=np.float32, random_state=i)
        for i in range(5)
    ]
    mats.append(sp.csr_matrix((1, 50), dtype=np.float32))  # an empty history
    mats.append(sp.random(3, 50, density=0.2, format="csr", dtype=np.float32, random_state=9))
    got, want = stack_csr(mats), sp.vstack(mats, format="csr")
    assert got.shape == want.shape == (9, 50)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got.toarray(), want.toarray())
    np.testing.assert_array_equal(got.indptr, want.indptr)
    # The canonical flag is passed on only when every part is known to be canonical.
    assert "_has_canonical_format" not in got.__dict__
    for m in mats:
        m.has_canonical_format = True
    assert stack_csr(mats).__dict__.get("_has_canonical_format") is True
    # Anything but same-width csr_matrix goes through scipy itself.
    coo = sp.random(2, 50, density=0.1, format="coo", dtype=np.float32, random_state=3)
    np.testing.assert_array_equal(
        stack_csr([mats[0], coo]).toarray(), sp.vstack([mats[0], coo]).toarray()
    )


@pytest.mark.parametrize("setting, want", [(None, "int8"), ("fp32", "fp32"), ("", "fp32")])
def test_deep_serves_in_the_cpu_precision_setting(make_app, setting, want):
    """The runtime derives the CPU serving variant of the deep model at load
    (DEEP_CPU_PRECISION, default int8); the stored version stays the fp32 weights."""
    from strategies.deep import DeepStrategy

    config = {} if setting is None else {"DEEP_CPU_PRECISION": setting}
    app = make_app(**config)
    data = rs.sample_data()
    model = DeepStrategy(hidden=(16,), epochs=2, max_steps=None, device="cpu").fit(data)
    repo = get_repository(app)
    version = repo.save_version(model, data, activate=True)
    served = get_runtime(app).get("deep")
    inner = served.model.inner if isinstance(served.model, BatchedModel) else served.model
    assert served.version == version
    assert inner.serving_precision_ == want
    assert repo.load_version("deep", version).model.serving_precision_ == "fp32"  # as saved
    batch = user_batch(
        [
            History(
                np.array([0, 1]),
                np.array([3, 3], np.int8),
                np.ones(2, np.float32),
                np.zeros(2, np.int64),
            )
        ],
        len(served.items),
    )
    np.testing.assert_allclose(inner.score(batch), model.score(batch), atol=0.05)
